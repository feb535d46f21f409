"""End-to-end tests of `python -m advtrain eval` (advtrain.cli.eval over advtrain.eval.api).

The checkpoint is a smoke-experiment checkpoint (the `+exp=smoke` config, small_cnn) written with
advtrain's own save_checkpoint after a few seconds of training. Every number in results.json is
checked against an independent computation (direct forward passes, pgd_correct, run_autoattack),
and the file's invariants (robust <= clean per example, per-class vs overall) are asserted.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advtrain.cli.eval import run_eval
from advtrain.errors import CheckpointError, ConfigError
from advtrain.models.loading import ModelSource, load_model, model_from_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import compose_plain  # noqa: E402

N = 16


@pytest.fixture(scope="module")
def smoke_ckpt(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A smoke-config small_cnn (width 4) trained for 60 steps, saved as an advtrain checkpoint with EMA."""
    from advtrain.utils.checkpoint import save_checkpoint

    cfg = compose_plain(["+exp=smoke", "model.width=4", f"data.root={data_dir}"])
    torch.manual_seed(0)
    model = model_from_config(cfg)
    x, y = _train_head(data_dir, 4096)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, 4096, (64,), generator=g)
        loss = F.cross_entropy(model(x[idx].float() / 255), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    ema = {k: (v * 0.98 if v.is_floating_point() else v.clone()) for k, v in sd.items()}
    root = tmp_path_factory.mktemp("ckpt")
    path = save_checkpoint(
        root / "last.pt", {"model": sd, "ema": ema, "config": cfg, "epoch": 1, "step": 60}
    )
    plain = root / "plain.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, plain)
    return {"path": path, "plain": plain, "config": cfg, "sd": sd, "ema": ema}


def _train_head(data_dir: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n training images without decoding all 50,000 (the npz members are memory-mapped)."""
    import numpy as np

    from advtrain.data.datasets import nhwc_to_tensor, read_npz

    arrays, _ = read_npz(data_dir / "cifar10_train.npz")
    return nhwc_to_tensor(arrays["image"][:n]), torch.from_numpy(
        np.asarray(arrays["label"][:n], dtype=np.int64)
    )


def _eval(overrides: list[str], run_dir: Path) -> dict:
    cfg = compose_plain(overrides, config_name="eval", run_dir=run_dir)
    return run_eval(cfg)


def _model(smoke_ckpt: dict, weights: str = "sd") -> torch.nn.Module:
    m = model_from_config(smoke_ckpt["config"])
    m.load_state_dict(smoke_ckpt[weights])
    return m.eval()


def _test_set(data_dir: Path, n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    from advtrain.data import load_arrays

    x, y = load_arrays("cifar10", data_dir, "test")
    return x[:n].float() / 255, y[:n]


def test_eval_clean_and_pgd20(smoke_ckpt: dict, data_dir: Path, tmp_path: Path) -> None:
    base = [
        f"ckpt={smoke_ckpt['path']}",
        f"n_examples={N}",
        f"data.root={data_dir}",
        "batch_size=8",
        "progress=false",
    ]
    clean = _eval([*base, "eval=clean", "use_ema=false"], tmp_path / "clean")
    x, y = _test_set(data_dir)
    with torch.no_grad():
        expected = _model(smoke_ckpt)(x).argmax(1) == y
    assert clean["clean_acc"] == pytest.approx(float(expected.float().mean()))
    assert clean["robust_acc"] is None and clean["kind"] == "clean"
    on_disk = json.loads((tmp_path / "clean" / "results.json").read_text())
    assert on_disk["clean_acc"] == clean["clean_acc"]
    assert (
        on_disk["checkpoint"]["sha256"]
        == hashlib.sha256(Path(smoke_ckpt["path"]).read_bytes()).hexdigest()
    )
    assert on_disk["checkpoint"]["use_ema"] is False
    assert on_disk["eps_str"] == "8/255" and on_disk["eps"] == pytest.approx(8 / 255)
    assert (
        on_disk["n_examples"] == N
        and on_disk["test_set_size"] == 10000
        and on_disk["complete"] is False
    )
    assert set(on_disk["versions"]) >= {"torch", "pyautoattack", "robustbench", "advtrain"}
    assert on_disk["versions"]["pyautoattack"] == "0.2.0"
    # per-class accuracies weighted by class counts give the overall accuracy
    counts = torch.bincount(y, minlength=10).float()
    per_class = torch.tensor([0.0 if v is None else v for v in on_disk["per_class"]["clean_acc"]])
    assert float((per_class * counts).sum() / N) == pytest.approx(clean["clean_acc"])

    pgd = _eval([*base, "eval=pgd20", "use_ema=false"], tmp_path / "pgd")
    from advtrain.eval.evaluate import pgd_correct

    ref = pgd_correct(_model(smoke_ckpt), x, y, eps=8 / 255, steps=20, batch_size=8, seed=0)
    assert pgd["robust_acc"] == pytest.approx(float(ref.float().mean()))
    assert pgd["pgd"]["step_size"] == pytest.approx(2 / 255) and pgd["robust_metric"] == "PGD-20"
    pe = torch.load(tmp_path / "pgd" / "per_example.pt")
    assert torch.equal(pe["robust_correct"], ref)
    assert not (pe["robust_correct"] & ~pe["clean_correct"]).any()  # robust <= clean per example


def test_eval_uses_ema_by_default(smoke_ckpt: dict, data_dir: Path, tmp_path: Path) -> None:
    res = _eval(
        [f"ckpt={smoke_ckpt['path']}", "n_examples=16", f"data.root={data_dir}", "eval=clean"],
        tmp_path,
    )
    x, y = _test_set(data_dir, 16)
    with torch.no_grad():
        expected = _model(smoke_ckpt, "ema")(x).argmax(1) == y
    assert res["checkpoint"]["use_ema"] is True
    assert res["clean_acc"] == pytest.approx(float(expected.float().mean()))


def test_eval_plain_state_dict(smoke_ckpt: dict, data_dir: Path, tmp_path: Path) -> None:
    common = ["n_examples=16", f"data.root={data_dir}", "eval=clean"]
    plain = _eval(
        [f"ckpt={smoke_ckpt['plain']}", "model=small_cnn", "model.width=4", *common], tmp_path / "a"
    )
    ours = _eval([f"ckpt={smoke_ckpt['path']}", "use_ema=false", *common], tmp_path / "b")
    assert (
        plain["model"]["source"] == "state_dict" and plain["model"]["hash"] == ours["model"]["hash"]
    )
    assert plain["clean_acc"] == ours["clean_acc"]
    with pytest.raises(CheckpointError, match="shape mismatch"):  # strict load: wrong width
        _eval(
            [f"ckpt={smoke_ckpt['plain']}", "model=small_cnn", "model.width=8", *common],
            tmp_path / "c",
        )


def test_evaluate_library_call_equals_the_command(
    smoke_ckpt: dict, data_dir: Path, tmp_path: Path
) -> None:
    """advtrain.eval.api without Hydra: the same results.json as `advtrain eval` from the same inputs."""
    from advtrain.eval.api import EvalData, EvalSpec, evaluate

    cli = _eval(
        [
            f"ckpt={smoke_ckpt['path']}",
            "use_ema=false",
            "eval=pgd20",
            f"n_examples={N}",
            f"data.root={data_dir}",
            "batch_size=8",
        ],
        tmp_path / "cli",
    )
    loaded = load_model(ModelSource(ckpt=smoke_ckpt["path"], use_ema=False))
    data = EvalData.test_split("cifar10", data_dir, N)
    spec = EvalSpec(kind="pgd", name="pgd20", eps="8/255", pgd_steps=20, batch_size=8)
    lib = evaluate(loaded, data, spec).save(tmp_path / "lib")
    volatile = ("wall_time_s", "run_dir")
    assert {k: v for k, v in lib.items() if k not in volatile} == {
        k: v for k, v in cli.items() if k not in volatile
    }
    assert (tmp_path / "lib" / "per_example.pt").is_file()
    # a plain nn.Module: same weights, same hash, no file behind it
    plain = evaluate(_model(smoke_ckpt), data, EvalSpec(kind="clean", batch_size=8))
    assert plain.model.source == "module" and plain.model.hash == lib["model"]["hash"]
    assert plain.checkpoint.sha256 is None and plain.clean_acc == cli["clean_acc"]
    assert plain.robust_acc is None and plain.to_dict()["robust_metric"] is None


@pytest.mark.slow
def test_eval_aa_custom_cli_end_to_end(smoke_ckpt: dict, data_dir: Path, tmp_path: Path) -> None:
    """The real command (Hydra app in a subprocess); flags equal a direct run_autoattack."""
    env = {**os.environ, "ADVTRAIN_RUNS_DIR": str(tmp_path), "ADVTRAIN_DATA_DIR": str(data_dir)}
    cmd = [
        sys.executable,
        "-m",
        "advtrain",
        "eval",
        f"ckpt={smoke_ckpt['path']}",
        "use_ema=false",
        "eval=aa_custom",
        "n_examples=16",
        "batch_size=8",
        "shard_size=8",
        "progress=false",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list((tmp_path / "eval").iterdir())
    res = json.loads((run_dir / "results.json").read_text())
    assert "AutoAttack (custom)" in proc.stdout and "clean" in proc.stdout
    assert (
        res["attacks"] == ["apgd-ce", "apgd-t"]
        and res["n_restarts"] == 1
        and res["eps_str"] == "8/255"
    )
    assert res["robust_acc"] <= res["clean_acc"]
    accs = list(res["per_attack_robust_acc"].values())
    assert accs == sorted(accs, reverse=True) and accs[-1] == pytest.approx(res["robust_acc"])
    assert res["pgd"]["name"] == "PGD-20"
    log = (run_dir / "autoattack.log").read_text()
    assert f"robust accuracy: {res['robust_acc']:.2%}" in log and "apgd-ce - 1/1" in log
    assert sorted(p.name for p in (run_dir / "aa_state").glob("shard_*.pt")) == [
        "shard_00000.pt",
        "shard_00001.pt",
    ]
    from advtrain.eval.autoattack import run_autoattack

    x, y = _test_set(data_dir, 16)
    ref = run_autoattack(
        _model(smoke_ckpt),
        x,
        y,
        eps=8 / 255,
        version="custom",
        attacks=["apgd-ce", "apgd-t"],
        batch_size=8,
        shard_size=8,
        progress=False,
    )
    pe = torch.load(run_dir / "per_example.pt")
    assert torch.equal(pe["robust_correct"], ref.robust_correct)
    assert torch.equal(pe["clean_correct"], ref.clean_correct)


def test_eval_cli_user_error_is_one_line(smoke_ckpt: dict, data_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ADVTRAIN_RUNS_DIR": str(tmp_path), "ADVTRAIN_DATA_DIR": str(data_dir)}
    cmd = [
        sys.executable,
        "-m",
        "advtrain",
        "eval",
        f"ckpt={smoke_ckpt['path']}",
        "eval=pgd20",
        "eval.eps=8",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "8/255" in errors[0] and "Traceback" not in proc.stderr


def test_eval_config_errors(smoke_ckpt: dict, data_dir: Path, tmp_path: Path) -> None:
    base = [f"data.root={data_dir}", "eval=clean"]
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        _eval(base, tmp_path)
    with pytest.raises(ConfigError, match="test split has 10000"):
        _eval([*base, f"ckpt={smoke_ckpt['path']}", "n_examples=20000"], tmp_path)
    with pytest.raises(ConfigError, match="use_ema=true"):
        _eval(
            [
                *base,
                f"ckpt={smoke_ckpt['plain']}",
                "model=small_cnn",
                "model.width=4",
                "use_ema=true",
            ],
            tmp_path,
        )
    with pytest.raises(ConfigError, match="pixel units"):
        _eval(
            [*base, f"ckpt={smoke_ckpt['path']}", "eval=pgd20", "eval.norm=L2", "eval.eps=127.5"],
            tmp_path,
        )
    with pytest.raises(CheckpointError, match="not found"):
        _eval([*base, "ckpt=/nonexistent/last.pt"], tmp_path)


def test_robustbench_zoo_model_from_local_dir(data_dir: Path, tmp_path: Path) -> None:
    """A zoo model is loaded only from <model_dir>/<dataset>/<threat>/<name>.pt; else a clear error."""
    name = "Ding2020MMA"  # WideResNet-28-4, the smallest CIFAR-10 Linf zoo architecture
    rb = [
        f"robustbench.name={name}",
        f"robustbench.model_dir={tmp_path / 'models'}",
        f"data.root={data_dir}",
    ]
    with pytest.raises(CheckpointError, match=f"put them at .*cifar10/Linf/{name}.pt"):
        load_model(ModelSource.from_config(compose_plain([*rb, "eval=clean"], config_name="eval")))
    with pytest.raises(ConfigError, match="not a RobustBench"):
        load_model(
            ModelSource.from_config(
                compose_plain(
                    [*rb[1:], "robustbench.name=Ours2026GKL", "eval=clean"], config_name="eval"
                )
            )
        )
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    torch.manual_seed(0)
    arch = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf][name]["model"]()
    target = tmp_path / "models" / "cifar10" / "Linf" / f"{name}.pt"
    target.parent.mkdir(parents=True)
    torch.save({"state_dict": arch.state_dict()}, target)
    res = _eval([*rb, "eval=clean", "n_examples=8", "batch_size=8"], tmp_path / "run")
    x, y = _test_set(data_dir, 8)
    with torch.no_grad():
        expected = arch.eval()(x).argmax(1) == y
    assert res["model"]["source"] == "robustbench" and res["model"]["name"] == name
    assert res["clean_acc"] == pytest.approx(float(expected.float().mean()))
