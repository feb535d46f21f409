"""Benchmarks: the measuring machinery, the re-implemented official loop, and every benchmark end to end.

Nothing here asserts a timing (the machine is shared and its load changes by the second). The
tests check what must hold whatever the load: the interleaving order, the statistics, that the
official-loop re-implementation and the bare bound compute exactly our math, and that each
benchmark's JSON has the documented structure with positive times and finite ratios.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from reference.official_loop import (
    OfficialLoop,
    PILCifarDataset,
    check_same_math,
    official_dkl_loss,
    official_perturb,
    official_train_transform,
)

from advtrain.attacks import get_objective, make_threat, pgd
from advtrain.errors import ConfigError
from advtrain.losses import GKLLoss
from advtrain.models import build_model
from benchmarks import BENCHMARKS, get_benchmark
from benchmarks.cli import run_bench
from benchmarks.common import (
    BenchContext,
    BenchResult,
    Target,
    check_settings,
    interleave,
    markdown_table,
    paired_ratio,
    peak_memory,
    summarize,
    write_result,
)
from benchmarks.harness import BareStep, build_trainer, train_config

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _net(seed: int = 0, width: int = 4) -> torch.nn.Module:
    """small_cnn with non-trivial BN running statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(
        "small_cnn", 10, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), width=width
    )
    with torch.no_grad():
        model.train()
        model(torch.rand(16, 3, 32, 32))
    return model.eval()


def _batch(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


# --------------------------------------------------------------------------------------------
# statistics and interleaving
# --------------------------------------------------------------------------------------------


def test_summarize_and_paired_ratio() -> None:
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["n"] == 5 and s["median"] == 3.0 and s["min"] == 1.0 and s["mean"] == 3.0
    assert s["iqr"] == 2.0  # q1 = 2, q3 = 4
    # a load spike in one round (both sides slow) does not move the paired median
    assert paired_ratio([1.0, 10.0, 1.1], [1.0, 10.0, 1.0]) == 1.0
    assert math.isnan(paired_ratio([1.0], [0.0]))


def test_interleave_runs_warmup_then_abba_rounds() -> None:
    calls: list[str] = []
    t = interleave(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=4, warmup=2
    )
    assert calls == ["a", "a", "b", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert set(t.wall) == set(t.cpu) == {"a", "b"}
    assert all(len(v) == 4 and min(v) >= 0 for v in t.wall.values())
    with pytest.raises(ConfigError, match="repeats"):
        interleave({"a": lambda: None}, repeats=0)


def test_target_met_and_margin() -> None:
    assert Target("x", 1.02, 1.05).met and Target("x", 1.02, 1.05).margin == pytest.approx(
        0.03 / 1.05
    )
    assert not Target("x", 1.1, 1.05).met
    up = Target("speed", 1.5, 1.4, ">=")
    assert up.met and up.margin == pytest.approx(0.1 / 1.4)
    assert not Target("x", float("nan"), 1.0).met


def test_check_settings_rejects_unknown_keys() -> None:
    assert check_settings("b", {"x": 2}, {"x": 1, "y": 3}) == {"x": 2, "y": 3}
    with pytest.raises(ConfigError, match=r"\['zz'\] in bench\.b"):
        check_settings("b", {"zz": 1}, {"x": 1})


def test_write_result_files(tmp_path: Path) -> None:
    ctx = BenchContext(
        out_dir=tmp_path, device=CPU, threads=1, command="python -m advtrain bench x"
    )
    res = BenchResult(
        name="demo",
        title="Demo",
        settings={"k": 1},
        results={"ratio": 1.01, "bad": float("nan")},
        tables=[("T", [{"a": 1.0, "b": "x"}])],
        targets=[Target("r", 1.01, 1.05)],
        notes=["n1"],
    )
    payload = write_result(res, ctx)
    data = json.loads((tmp_path / "demo.json").read_text())
    assert data == payload
    assert data["command"] == "python -m advtrain bench x" and data["results"]["bad"] == "nan"
    for key in ("cpu", "cores", "torch", "torch_threads", "device"):
        assert key in data["machine"]
    assert data["targets"][0]["met"] is True
    md = (tmp_path / "demo.md").read_text()
    assert "`python -m advtrain bench x`" in md and "| r | 1.01 | <= 1.05 | yes |" in md


def test_markdown_table_union_of_columns() -> None:
    out = markdown_table([{"a": 1}, {"b": 2.5}])
    assert out.splitlines()[0] == "| a | b |" and out.splitlines()[3] == "| - | 2.5 |"


def test_peak_memory_sees_a_torch_allocation() -> None:
    got = peak_memory(lambda: torch.ones(16_000_000).sum(), CPU)  # 64 MB, touched
    if got["bytes"] is None:
        pytest.skip(f"no peak-RSS counter here: {got['method']}")
    assert 50e6 < got["bytes"] < 1e9


# --------------------------------------------------------------------------------------------
# attack: reusing the natural logits vs recomputing them
# --------------------------------------------------------------------------------------------


def _recompute_pgd(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: Any,
    gen: torch.Generator,
    steps: int = 4,
) -> torch.Tensor:
    """Our PGD loop, but with the natural logits recomputed (and recorded) at every step."""
    threat = make_threat("Linf", 8 / 255)
    x_adv = threat.init(x, "normal", gen)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        values = objective(model(x_adv), y, model(x))
        (grad,) = torch.autograd.grad(values.sum(), x_adv)
        x_adv = threat.project(threat.step(x_adv.detach(), grad, 2 / 255), x)
    return x_adv.detach()


@pytest.mark.parametrize("objective", ["kl", "gkl_wmse"])
def test_logits_reuse_and_recompute_give_identical_examples_in_eval_mode(objective: str) -> None:
    model = _net()
    x, y = _batch(12)
    if objective == "gkl_wmse":  # the CIFAR-100 attack: wMSE + soft-CE, non-uniform prior
        loss = GKLLoss(10, attack_beta=1.0)
        loss.tracker.weights.copy_(torch.softmax(torch.randn(10, 10), dim=1))
        fn = loss.attack_objective()
    else:
        fn = get_objective("kl")
    ours = pgd(
        model,
        x,
        y,
        eps=8 / 255,
        step_size=2 / 255,
        steps=4,
        objective=fn,
        random_start="normal",
        generator=torch.Generator().manual_seed(5),
    )
    recomputed = _recompute_pgd(model, x, y, fn, torch.Generator().manual_seed(5))
    assert torch.equal(ours, recomputed)
    assert (ours - x).abs().max() <= 8 / 255 + 1e-7 and not torch.equal(ours, x)


def test_official_perturb_matches_our_attack() -> None:
    """Same start, eval mode, NCHW fp32: the official loop (batch-mean loss, natural logits
    recomputed) and our PGD give the same points up to the projections' rounding."""
    model = _net()
    x, y = _batch(16)
    loss = GKLLoss(10)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    ours = pgd(
        model,
        x,
        y,
        eps=8 / 255,
        step_size=4 / 255,
        steps=5,
        objective=loss.attack_objective(),
        random_start="normal",
        generator=gen,
    )
    gen.set_state(state)
    noise = torch.randn(x.shape, generator=gen)
    prior = F.one_hot(y, 10).float() @ loss.tracker.weights
    theirs = official_perturb(model, x, prior, eps=8 / 255, step_size=4 / 255, steps=5, noise=noise)
    assert ((ours - theirs).abs() <= 1e-6).float().mean() >= 0.999


# --------------------------------------------------------------------------------------------
# the official-loop re-implementation computes our math
# --------------------------------------------------------------------------------------------


def test_official_pairwise_loss_reproduces_the_spec_worked_example() -> None:
    """docs/gkl.md §7 worked example (C = 3): wMSE 0.48734 (γ 1) / 0.46496 (γ 0.4), soft-CE
    0.62554, α·softCE + β·wMSE = 12.24902 (α 4, β 20)."""
    nat = torch.tensor([[3.0, 0.5, -1.0]], dtype=torch.float64)
    adv = torch.tensor([[1.5, 1.0, -0.5]], dtype=torch.float64)
    u = torch.tensor([[0.4204, 0.3258, 0.2537]], dtype=torch.float64)
    wmse1 = official_dkl_loss(adv, nat, u, alpha=0.0, beta=1.0)
    sce = official_dkl_loss(adv, nat, u, alpha=1.0, beta=0.0)
    assert float(wmse1) == pytest.approx(0.48734, abs=2e-5)
    assert float(sce) == pytest.approx(0.62554, abs=2e-5)
    assert float(official_dkl_loss(adv, nat, u, alpha=4.0, beta=20.0)) == pytest.approx(
        12.24902, abs=5e-4
    )
    assert float(official_dkl_loss(adv, nat, u, alpha=0.0, beta=1.0, gamma=0.4)) == pytest.approx(
        0.46496, abs=2e-5
    )


@pytest.mark.parametrize("gamma", [1.0, 0.4])
def test_official_loss_equals_ours_value_and_gradients(gamma: float) -> None:
    gen = torch.Generator().manual_seed(0)
    b, c = 24, 10
    la = (torch.randn(b, c, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    ln = (torch.randn(b, c, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    y = torch.randint(0, c, (b,), generator=gen)
    w = torch.softmax(torch.randn(c, c, generator=gen, dtype=torch.float64) * 2, dim=1)
    ours = GKLLoss(c, alpha=4.0, beta=20.0, gamma=gamma).double()
    ours.tracker.weights.copy_(w)
    official = OfficialLoop(
        torch.nn.Linear(1, 1),
        num_classes=c,
        eps=8 / 255,
        step_size=2 / 255,
        steps=1,
        lr=0.1,
        loss_cfg={"alpha": 4.0, "beta": 20.0, "gamma": gamma},
    )
    official.weights = w
    a = ours(la, ln, y, update_state=False).loss
    o = official.loss(la, ln, y, official.prior(y))
    assert float(a.detach()) == pytest.approx(float(o.detach()), rel=1e-12)
    ga = torch.autograd.grad(a, (la, ln))
    go = torch.autograd.grad(o, (la, ln))
    for g1, g2 in zip(ga, go):
        assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14)


def test_official_loop_and_ours_same_loss_on_the_same_batch() -> None:
    cfg = train_config(
        model="small_cnn",
        loss="gkl",
        model_kwargs={"width": 4},
        batch_size=8,
        attack="gkl",
        attack_kwargs={"steps": 2, "step_size": 4 / 255, "eps": 8 / 255},
    )
    base = _net()
    trainer = build_trainer(cfg, CPU, model=copy.deepcopy(base))
    official = OfficialLoop(
        copy.deepcopy(base),
        num_classes=10,
        eps=8 / 255,
        step_size=4 / 255,
        steps=2,
        lr=0.1,
        loss_cfg=cfg["loss"],
    )
    x, y = _batch(8)
    check = check_same_math(trainer, official, x, y)
    assert check["same_loss"] and check["loss_rel_diff"] < 1e-5, check
    assert check["same_x_adv"], check
    # the check must not disturb the benchmarked models (it works on copies)
    for p, q in zip(trainer.unwrapped_model.state_dict().values(), base.state_dict().values()):
        assert torch.equal(p, q)


def test_official_step_updates_weights_and_class_accumulator() -> None:
    official = OfficialLoop(
        _net(),
        num_classes=10,
        eps=8 / 255,
        step_size=4 / 255,
        steps=1,
        lr=0.1,
        loss_cfg={
            "alpha": 4.0,
            "beta": 20.0,
            "gamma": 1.0,
            "attack_alpha": 1.0,
            "attack_beta": 0.0,
            "attack_gamma": 1.0,
            "weight_temperature": 4.0,
        },
    )
    before = [p.detach().clone() for p in official.model.parameters()]
    x, y = _batch(8)
    loss = official.step(x, y)
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, official.model.parameters()))
    # each softmax row sums to 1, so row c of A sums to the number of class-c samples
    counts = torch.bincount(y, minlength=10).float()
    assert torch.allclose(official.accumulator.sum(1), counts, atol=1e-5)


def test_pil_dataset_is_a_crop_and_flip_of_the_padded_image() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=gen).numpy()
    ds = PILCifarDataset(img, torch.tensor([3, 7]).numpy(), official_train_transform())
    torch.manual_seed(0)
    out, label = ds[1]
    assert label == 7 and out.shape == (3, 32, 32) and out.dtype == torch.float32
    padded = F.pad(torch.from_numpy(img[1]).permute(2, 0, 1).float() / 255, (4, 4, 4, 4))
    found = any(
        torch.equal(out, crop.flip(-1) if flip else crop)
        for dy in range(9)
        for dx in range(9)
        for flip in (False, True)
        for crop in [padded[:, dy : dy + 32, dx : dx + 32]]
    )
    assert found


# --------------------------------------------------------------------------------------------
# the bare bound computes the trainer's math
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["pgdat", "trades", "gkl"])
def test_bare_step_does_the_same_math_as_the_trainer(loss: str) -> None:
    """From the same weights and the same random start (same generator seed and draws), both
    take the same attack steps, compute the same loss and make the same SGD update."""
    cfg = train_config(
        model="small_cnn",
        loss=loss,
        model_kwargs={"width": 4},
        batch_size=8,
        attack_kwargs={"steps": 2, "step_size": 2 / 255},
        trainer_kwargs={"channels_last": False},
    )
    base = _net()
    trainer = build_trainer(cfg, CPU, model=copy.deepcopy(base))
    bare = BareStep.like(trainer, copy.deepcopy(base))
    assert bare.kind == loss and bare.steps == 2
    trainer.attack_gen.manual_seed(11)
    bare.generator.manual_seed(11)
    x, y = _batch(8)
    x_ours = trainer.attack(
        trainer.model, x, y, objective=trainer.loss.attack_objective(), generator=trainer.attack_gen
    )
    x_bare = bare.attack(x, y)
    assert ((x_ours - x_bare).abs() <= 1e-6).float().mean() >= 0.999
    trainer.attack_gen.manual_seed(11)
    bare.generator.manual_seed(11)
    ours = trainer.train_step(x, y, 0)
    theirs = bare(x, y)
    assert float(ours["loss"]) == pytest.approx(float(theirs), rel=1e-5)
    for p, q in zip(trainer.unwrapped_model.parameters(), bare.model.parameters()):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# configs and the command line
# --------------------------------------------------------------------------------------------


def _bench_yaml(name: str) -> dict[str, Any]:
    from advtrain.config import register_resolvers

    register_resolvers()
    cfg = OmegaConf.to_container(
        OmegaConf.load(REPO / "configs" / "bench" / f"{name}.yaml"), resolve=True
    )
    assert isinstance(cfg, dict)
    return cfg


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_each_bench_config_sets_exactly_its_benchmark_settings(name: str) -> None:
    """configs/bench/<name>.yaml is the single source of the settings: same keys as DEFAULTS,
    and TINY only shrinks existing keys."""
    module = get_benchmark(name)
    cfg = _bench_yaml(name)
    assert list(cfg) == [name]
    assert cfg[name] == module.DEFAULTS  # the Python defaults are the config, not a second copy
    assert set(module.TINY) <= set(module.DEFAULTS)


def test_gpu_config_only_resizes_known_settings() -> None:
    from hydra import compose, initialize_config_dir

    from advtrain.config import register_resolvers
    from advtrain.resources import config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="bench", overrides=["bench=gpu"])
    benches = OmegaConf.to_container(cfg.bench, resolve=True)
    assert isinstance(benches, dict) and sorted(benches) == sorted(BENCHMARKS)
    for name, settings in benches.items():
        assert set(settings) == set(get_benchmark(name).DEFAULTS), name
    assert benches["fastpath"]["variants"] == ["cl_fp32", "nchw_bf16", "cl_bf16"]


def test_all_runs_every_benchmark() -> None:
    cfg = OmegaConf.load(REPO / "configs" / "bench" / "all.yaml")
    assert sorted(cfg.defaults) == sorted(BENCHMARKS)


def test_unknown_benchmark_and_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown benchmark 'nope'"):
        run_bench({"bench": {"nope": {}}, "out_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="gkl_loss"):
        run_bench({"bench": {"gkl_loss": {"clases": [10]}}, "out_dir": str(tmp_path)})
    with pytest.raises(ConfigError, match="no benchmark"):
        run_bench({"bench": {}, "out_dir": str(tmp_path)})


@pytest.mark.slow  # an interpreter start with torch + Hydra
def test_cli_unknown_setting_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "ADVTRAIN_RUNS_DIR": str(tmp_path / "runs")}
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "advtrain",
            "bench",
            "bench=gkl_loss",
            "+bench.gkl_loss.clases=[10]",
            f"out_dir={tmp_path}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert bad.returncode == 1 and "clases" in bad.stderr and "Traceback" not in bad.stderr


def test_scaling_plot_writes_a_png(tmp_path: Path) -> None:
    from benchmarks.scaling import plot

    def entry(model: str, bs: int, t: float) -> dict[str, Any]:
        return {
            "model": model,
            "model_kwargs": {},
            "batch_size": bs,
            "params": 1e6,
            "ours_s": {"median": t * 1.01},
            "bare_s": {"median": t},
            "ratio": 1.01,
            "images_per_s": bs / t,
            "bare_images_per_s": bs / t,
        }

    res = {
        "batch_sweep": [entry("m", 8, 0.1), entry("m", 16, 0.18)],
        "model_sweep": [entry("a", 8, 0.1), entry("b", 8, 1.0)],
    }
    path = plot(res, tmp_path / "s.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# every benchmark, tiny, end to end
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Every benchmark at tiny sizes, through the real CLI in a child process: the benchmarks
    run native fast-path kernels, and a native crash there (an abort, a segfault) must fail
    these tests with its message instead of taking the whole test session down."""
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "ADVTRAIN_RUNS_DIR": str(out / "runs")}
    cmd = [sys.executable, "-m", "advtrain", "bench", "bench=all", "dry_run=true", "threads=1"]
    cmd += ["device=cpu", "seed=0", "data_root=null", f"out_dir={out}"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    if r.returncode != 0:
        pytest.fail(
            f"benchmark dry run exited with code {r.returncode}:\n{r.stderr[-3000:]}", pytrace=False
        )
    payloads = {name: json.loads((out / f"{name}.json").read_text()) for name in BENCHMARKS}
    return out, payloads


def _finite_positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_json_structure(name: str, dry_run: tuple[Path, dict[str, Any]]) -> None:
    out, payloads = dry_run
    data = payloads[name]
    assert (out / f"{name}.md").read_text().startswith("# ")
    assert data["benchmark"] == name and data["date"]
    # the command that reproduces it, as typed (Hydra's overrides)
    assert (
        data["command"].startswith("python -m advtrain bench ") and "bench=all" in data["command"]
    )
    assert data["machine"]["torch_threads"] == 1 and data["machine"]["cores"] >= 1
    assert data["settings"] == {**get_benchmark(name).DEFAULTS, **get_benchmark(name).TINY}
    for t in data["targets"]:
        # A ratio or a rate is > 0; a count with a limit of 0 (host syncs per step) may be 0 itself.
        is_count = t["limit"] == 0 and t["op"] == "<="
        assert (_finite_positive(t["value"]) or (is_count and t["value"] == 0)) and isinstance(
            t["met"], bool
        )
    r = data["results"]
    if name == "overhead":
        assert set(r["per_loss"]) == {"pgdat", "trades", "gkl"}
        for v in r["per_loss"].values():
            assert _finite_positive(v["ratio"]) and _finite_positive(v["ours_s"]["median"])
            assert _finite_positive(v["bare_s"]["median"]) and _finite_positive(v["cpu_ratio"])
    elif name == "gkl_vs_trades":
        for side in ("ours", "bare"):
            assert _finite_positive(r[side]["ratio"])
    elif name == "official_loop":
        assert r["check"]["same_loss"] and r["check"]["same_x_adv"]
        assert _finite_positive(r["speedup"])
        assert all(_finite_positive(v) for v in r["images_per_s"].values())
    elif name == "data":
        (cfg,) = r["configs"].values()
        assert _finite_positive(cfg["step_images_per_s"])
        assert set(cfg["loaders"]) == {
            "ours",
            "ours_two_view_autoaugment",
            "per_sample_pil_dataloader",
        }
        for v in cfg["loaders"].values():
            assert _finite_positive(v["fraction_of_step"]) and _finite_positive(v["images_per_s"])
    elif name == "gkl_loss":
        assert set(r["sizes"]) == {"B8_C10", "B8_C100"}
        for v in r["sizes"].values():
            assert v["pairwise_run"] and v["value_rel_diff"] < 1e-5
            assert _finite_positive(v["speedup"]) and v["bcc_tensor_bytes"] == 4 * 8 * v["C"] ** 2
    elif name == "eval":
        # pyautoattack is a dependency: the benchmark must run, not report itself skipped
        assert "skipped" not in r, r.get("skipped")
        assert r["same_per_example_result"] is True
        assert _finite_positive(r["timing"]["ratio"]) and r["n_examples"] >= 1
    elif name == "scaling":
        assert [e["batch_size"] for e in r["batch_sweep"]] == [4, 8]
        assert [e["model"] for e in r["model_sweep"]] == [
            "small_cnn",
            "preact_resnet18",
            "wrn34_10",
        ]
        assert all(_finite_positive(e["ratio"]) for e in r["batch_sweep"] + r["model_sweep"])
        assert (out / r["plot"]).read_bytes()[:4] == b"\x89PNG"
    elif name == "fastpath":
        assert r["recommended_auto"]["device"] == "cpu"
        assert r["recommended_auto"]["autocast"] is None  # bf16 not eligible on CPU by policy
        # where the CPU fails the channels_last self-check the layout is left out, with the reason
        skipped = r["skipped_variants"]
        assert set(skipped) <= {"cl_fp32"}
        assert all("unsafe on this CPU" in why for why in skipped.values())
        ran = [v for v in ("nchw_fp32", "cl_fp32", "nchw_bf16") if v not in skipped]
        if skipped:
            assert r["recommended_auto"]["channels_last"] is False
        for m in r["models"].values():
            for p in ("train", "attack"):
                for v in ran:
                    assert _finite_positive(m["passes"][p][v]["median_s"])
                if "cl_fp32" in ran:
                    assert m["checks"][f"cl_fp32/{p}"]["correct"]  # channels_last is exact fp32
