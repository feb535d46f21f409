"""The study drivers (scripts/experiments): configs say what the docs claim, commands are exact and
restartable, the report states only what its numbers show, and a tiny study runs end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from helpers import compose_plain

REPO_ROOT = Path(__file__).resolve().parents[1]
EXP_DIR = REPO_ROOT / "scripts" / "experiments"


def _load(name: str) -> ModuleType:
    """Import a driver module by path (scripts/experiments is not a package; its modules import `common`)."""
    if str(EXP_DIR) not in sys.path:
        sys.path.insert(0, str(EXP_DIR))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXP_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


common = _load("common")
report = _load("report")
study_a = _load("study_a_cifar10")
study_b = _load("study_b_fashion_mnist")

STUDIES = {"a": study_a.STUDY, "b": study_b.STUDY}


# ------------------------------------------------------------------------------------------------
# configs: the shared budget and the scaled GKL recipe
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["a", "b"])
def test_methods_share_model_data_epochs_and_attack_steps(which: str) -> None:
    cfgs = {m.slug: compose_plain([f"+exp={m.exp}"]) for m in STUDIES[which].methods}
    ref = cfgs["gkl"]
    for slug, cfg in cfgs.items():
        assert cfg["model"] == ref["model"], slug
        assert cfg["data"] == ref["data"], slug
        assert cfg["trainer"]["epochs"] == ref["trainer"]["epochs"], slug
        assert cfg["attack"]["steps"] == ref["attack"]["steps"] == 5, slug
        assert cfg["attack"]["eps"] == ref["attack"]["eps"], slug
        assert cfg["trainer"]["eval_every"] == 1, slug  # one point per epoch on the curves
    eps, steps = ref["attack"]["eps"], ref["attack"]["steps"]
    for slug in ("pgdat", "trades"):  # Madry's rule 2.5 eps / steps, = GKL's eps / 2
        assert cfgs[slug]["attack"]["step_size"] == pytest.approx(2.5 * eps / steps)
        assert cfgs[slug]["attack"]["schedule"] == "constant"
    assert cfgs["trades"]["loss"] == {"name": "trades", "beta": 6.0}
    assert cfgs["pgdat"]["loss"]["name"] == "pgdat"


@pytest.mark.parametrize("which", ["a", "b"])
def test_gkl_loss_arm_is_the_trades_arm_with_the_gkl_loss(which: str) -> None:
    """The ablation arm separates the loss from the recipe: everything but the loss is TRADES's."""
    exps = {m.slug: m.exp for m in STUDIES[which].methods}
    trades = compose_plain([f"+exp={exps['trades']}"])
    arm = compose_plain([f"+exp={exps['gkl_loss']}"])
    gkl = compose_plain([f"+exp={exps['gkl']}"])
    for group in sorted(set(trades) - {"loss", "name", "run_dir"}):
        assert arm[group] == trades[group], group
    assert arm["loss"] == gkl["loss"]  # alpha 4, beta 20, gamma 1, T 4: not TRADES's beta 6
    assert arm["attack"]["schedule"] == "constant" and arm["attack"]["eps"] == gkl["attack"]["eps"]
    assert arm["trainer"]["awp_gamma"] is None and arm["trainer"]["ema_decay"] is None
    assert arm["trainer"]["weight_average_tau"] is None


@pytest.mark.parametrize("which", ["a", "b"])
def test_gkl_recipe_is_scaled_as_documented(which: str) -> None:
    gkl = next(m for m in STUDIES[which].methods if m.slug == "gkl")
    cfg = compose_plain([f"+exp={gkl.exp}"])
    loss, t, a = cfg["loss"], cfg["trainer"], cfg["attack"]
    assert (loss["alpha"], loss["beta"], loss["gamma"], loss["weight_temperature"]) == (
        4.0,
        20.0,
        1.0,
        4.0,
    )
    assert (a["schedule"], a["step_ratio"], a["random_start"]) == ("linear_ramp", 0.5, "normal")
    epochs = t["epochs"]
    steps_per_epoch = math.ceil(cfg["data"]["train_subset"] / cfg["data"]["batch_size"])
    # AWP from epoch 10 of 200 -> the same 5% of the run.
    assert t["awp_gamma"] == 0.005
    assert t["awp_warmup_epochs"] == max(1, round(0.05 * epochs))
    # tau 0.9 per epoch over 200 epochs = a 10-epoch (5%) time constant, kept per optimiser step.
    assert t["weight_average_tau"] is None
    assert t["ema_decay"] == pytest.approx(1 - 1 / (0.05 * epochs * steps_per_epoch), abs=5e-5)
    assert cfg["optim"]["schedule"] == "cosine_official" and cfg["optim"]["lr"] == 0.2


def test_milestones_are_fractions_of_the_run() -> None:
    """The full-scale files give epoch numbers (101/151 of 200, 75/90/100): they would never fire."""
    for m in study_a.STUDY.methods + study_b.STUDY.methods:
        cfg = compose_plain([f"+exp={m.exp}"])
        if cfg["optim"]["schedule"] == "multistep":
            assert all(0 < x < 1 for x in cfg["optim"]["milestones"]), m.exp


# ------------------------------------------------------------------------------------------------
# plans: exact, fixed, restartable commands
# ------------------------------------------------------------------------------------------------


def test_plan_gives_fixed_dirs_and_exact_commands(tmp_path: Path) -> None:
    pipes = common.plan(study_a.STUDY, tmp_path / "runs", Path("/data"), threads=1)
    assert len(pipes) == 8  # 4 methods x 2 seeds
    assert pipes[0].method.slug == "gkl"  # most expensive first
    dirs = {p.train.run_dir for p in pipes}
    assert len(dirs) == 8
    for p in pipes:
        argv = list(p.train.argv)
        assert argv[:3] == ["-m", "advtrain", "train"]
        assert f"+exp={p.method.exp}" in argv and f"seed={p.seed}" in argv
        assert "resume=auto" in argv and f"hydra.run.dir={p.train.run_dir}" in argv
        assert "data.root=/data" in argv
        # what the README prints is what ran
        shown = shlex.split(p.train.display())
        assert shown == ["OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "python", *argv]
        keys = [k for k, _ in p.evals]
        assert keys == ["pgd20", "aa"]
        for _, job in p.evals:
            assert f"ckpt={p.train.run_dir / 'last.pt'}" in job.argv
            assert "n_examples=1000" in job.argv
            assert job.run_dir.parent == p.root
    aa = dict(pipes[0].evals)["aa"].argv
    assert "eval=aa_standard" in aa


def test_study_b_evaluates_at_its_own_radius(tmp_path: Path) -> None:
    for p in common.plan(study_b.STUDY, tmp_path, Path("/data"), threads=2):
        for _, job in p.evals:
            assert "eval.eps=0.1" in job.argv
        assert p.train.env == (("OMP_NUM_THREADS", "2"), ("MKL_NUM_THREADS", "2"))


def test_customise_replaces_evals_and_adds_overrides() -> None:
    args = common.parse_args(
        study_a.STUDY,
        [
            "--seeds",
            "3",
            "--methods",
            "gkl",
            "--train-override",
            "trainer.epochs=1",
            "--eval",
            "aa=eval=aa_custom eval.attacks=[apgd-ce] n_examples=8",
        ],
    )
    s = common.customise(study_a.STUDY, args)
    assert s.seeds == (3,) and [m.slug for m in s.methods] == ["gkl"]
    assert s.train_overrides[-1] == "trainer.epochs=1"
    aa = dict((e.key, e) for e in s.evals)["aa"]
    assert aa.overrides == ("eval=aa_custom", "eval.attacks=[apgd-ce]", "n_examples=8")
    with pytest.raises(SystemExit):
        common.customise(study_a.STUDY, common.parse_args(study_a.STUDY, ["--eval", "nope=x"]))


def test_eval_done_requires_results_of_this_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"weights v1")
    ev = tmp_path / "eval"
    assert not common.eval_done(ev, ckpt)
    ev.mkdir()
    (ev / "results.json").write_text(
        json.dumps({"checkpoint": {"sha256": common.file_sha256(ckpt)}})
    )
    assert common.eval_done(ev, ckpt)
    ckpt.write_bytes(b"weights v2 (retrained)")
    assert not common.eval_done(ev, ckpt)
    (ev / "results.json").write_text("{not json")
    assert not common.eval_done(ev, ckpt)


# ------------------------------------------------------------------------------------------------
# the generated reading
# ------------------------------------------------------------------------------------------------


def _s(*vals: float) -> object:
    return report.summarize(list(vals))


def test_mcnemar_exact_p() -> None:
    assert report.mcnemar_p(0, 0) == 1.0 and report.mcnemar_p(5, 5) == 1.0
    assert report.mcnemar_p(0, 20) == report.mcnemar_p(20, 0) == pytest.approx(2 / 2**20)
    # 2 vs 8 of 10 discordant: P(X <= 2) = (1 + 10 + 45) / 1024, two-sided doubles it
    assert report.mcnemar_p(2, 8) == pytest.approx(2 * 56 / 1024)


def test_summarize_and_binomial_se() -> None:
    s = report.summarize([0.30, None, 0.34])
    assert (s.n, s.lo, s.hi) == (2, 0.30, 0.34) and s.mean == pytest.approx(0.32)
    assert report.summarize([None]) is None
    assert report.binomial_se(0.5, 1000) == pytest.approx(math.sqrt(0.25 / 1000))


def test_reading_ranks_by_mean_and_flags_overlapping_seeds() -> None:
    summaries = {
        "clean": {"PGD-AT": _s(0.50, 0.52), "TRADES": _s(0.48, 0.53), "GKL": _s(0.40, 0.41)},
        "aa": {"PGD-AT": _s(0.20, 0.21), "TRADES": _s(0.25, 0.26), "GKL": _s(0.22, 0.23)},
    }
    lines = report.reading(summaries, {"clean": "Clean", "aa": "AutoAttack"}, n_test=1000)
    clean, aa = lines[0], lines[1]
    assert clean.startswith("Clean (mean over seeds): PGD-AT 51.0%, TRADES 50.5%, GKL 40.5%.")
    assert "seed ranges overlap" in clean and "not established" in clean
    assert aa.startswith("AutoAttack (mean over seeds): TRADES 25.5%, GKL 22.5%, PGD-AT 20.5%.")
    assert "every TRADES seed is above every GKL seed" in aa
    assert f"±{100 * math.sqrt(0.51 * 0.49 / 1000):.1f} points" in clean
    spread = next(x for x in lines if x.startswith("Seed spread"))
    assert "5.0 points (TRADES, Clean)" in spread


def test_reading_per_class_ties_and_single_seed() -> None:
    summaries = {"aa": {"GKL": _s(0.3), "TRADES": _s(0.2)}, "clean": {"A": _s(0.5), "B": _s(0.5)}}
    names = ["cat", "dog", "ship", "frog"]
    diff = ("GKL", "TRADES", names, [0.10, 0.30, 0.45, 0.2], [0.15, 0.20, 0.40, 0.2])
    lines = report.reading(summaries, {"aa": "AA", "clean": "Clean"}, n_test=None, class_diff=diff)
    assert "with one seed there is no spread" in lines[0]
    assert "A and B are tied on the mean." in lines[1] and "leads" not in lines[1]
    per_class = next(x for x in lines if x.startswith("Per class"))
    assert "2 of 4 classes favour GKL, 1 favour TRADES, 1 tied" in per_class
    assert "largest gain +10.0 points (dog)" in per_class
    assert "largest loss -5.0 points (cat)" in per_class
    assert "Weakest class for GKL: cat (10.0% robust)." in lines
    assert "Weakest class for TRADES: cat (15.0% robust)." in lines


def _fake_results(n: int, clean: float, robust: float, per_class: list[float], pgd: float) -> dict:
    return {
        "n_examples": n,
        "clean_acc": clean,
        "robust_acc": robust,
        "pgd": {"acc": pgd},
        "per_class": {"names": ["cat", "dog"], "robust_acc": per_class},
        "warnings": [],
        "unreliable": False,
        "wall_time_s": 10.0,
        "checkpoint": {"sha256": "x"},
    }


def test_report_tables_from_run_directories(tmp_path: Path) -> None:
    """write_report on hand-made run dirs: per-run rows, seed means/ranges, per-class means, PNGs."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    pipes = common.plan(study_a.STUDY, runs, Path("/data"), threads=1)
    common.write_plan(study_a.STUDY, pipes, runs, jobs=1, threads=1)
    acc = {  # slug -> per seed (clean, aa, pgd)
        "pgdat": [(0.50, 0.20, 0.25), (0.52, 0.21, 0.26)],
        "trades": [(0.45, 0.24, 0.27), (0.47, 0.25, 0.28)],
        "gkl": [(0.48, 0.22, 0.26), (0.49, 0.27, 0.30)],
        "gkl_loss": [(0.46, 0.23, 0.26), (0.46, 0.23, 0.27)],
    }
    for p in pipes:
        clean, aa, pgd = acc[p.method.slug][p.seed]
        p.train.run_dir.mkdir(parents=True)
        (p.train.run_dir / "final.json").write_text("{}")
        (p.train.run_dir / "metrics.jsonl").write_text(
            "".join(
                json.dumps({"epoch": e, "val_clean_acc": 0.3 + 0.1 * e, "val_pgd_acc": 0.1 * e})
                + "\n"
                for e in (1, 2, 2)  # epoch 2 logged twice (a resumed epoch): the last one counts
            )
        )
        for key, job in p.evals:
            job.run_dir.mkdir(parents=True)
            res = _fake_results(1000, clean, aa if key == "aa" else pgd, [aa - 0.1, aa + 0.1], pgd)
            (job.run_dir / "results.json").write_text(json.dumps(res))
            if key == "aa":  # per-image flags: the first round(aa * 1000) images stay robust
                k = round(aa * 1000)
                flags = torch.tensor([True] * k + [False] * (1000 - k))
                torch.save({"robust_correct": flags}, job.run_dir / "per_example.pt")
    readme = report.write_report(runs, out).read_text()
    assert "| GKL | 2 | 48.5 (48.0–49.0) | 28.0 (26.0–30.0) | 24.5 (22.0–27.0) |" in readme
    assert "| PGD-AT | 1 | 52.0 | 26.0 | 21.0 |" in readme
    # per-class means in PGD-AT, TRADES, GKL, GKL-loss-only order
    assert "| cat | 10.5 | 14.5 | 14.5 | 13.0 |" in readme
    # paired: per seed on the same images, McNemar on the discordant images, the verdict
    assert (
        "| GKL − TRADES | s0 -2.0, s1 +2.0 | +0.0 | 4.0 | s0 0/20 p=1.9e-06, s1 20/0 p=1.9e-06 "
        "| no: the seeds disagree in sign (spread 4.0) |"
    ) in readme
    assert (
        "| GKL loss only − TRADES | s0 -1.0, s1 -2.0 | -1.5 | 1.0 | s0 0/10 p=0.002, s1 0/20 "
        "p=1.9e-06 | yes: every seed has the same sign and |mean| 1.5 > spread 1.0 |"
    ) in readme
    assert "| GKL − PGD-AT | s0 +2.0, s1 +6.0 |" in readme
    assert "AutoAttack (mean over seeds): TRADES 24.5%, GKL 24.5%" in readme
    assert "TRADES and GKL are tied on the mean" in readme
    assert (
        "Clean (mean over seeds): PGD-AT 51.0%" in readme and "every PGD-AT seed is above" in readme
    )
    summary = json.loads((out / "summary.json").read_text())
    gkl1 = next(r for r in summary["runs"] if r["slug"] == "gkl" and r["seed"] == 1)
    assert [e["val_pgd_acc"] for e in gkl1["val_curve"]] == [0.1, 0.2]
    assert summary["n_test"] == {"clean": 1000, "pgd": 1000, "aa": 1000}
    for png in ("val_curves.png", "clean_vs_aa.png", "per_class_robust.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------
# a tiny study end to end: train + evaluate through the CLI, report, rerun skips everything
# ------------------------------------------------------------------------------------------------

TINY = [
    "--methods",
    "trades",
    "gkl",
    "--seeds",
    "0",
    "--jobs",
    "2",
    "--train-override",
    "data.train_subset=64",
    "--train-override",
    "data.val_size=64",
    "--train-override",
    "data.batch_size=32",
    "--train-override",
    "model.width=4",
    "--train-override",
    "attack.steps=1",
    "--train-override",
    "trainer.epochs=2",
    "--train-override",
    "trainer.val_examples=32",
    "--train-override",
    "trainer.val_pgd_steps=1",
    "--eval",
    "pgd20=eval=pgd20 eval.steps=2 n_examples=8",
    "--eval",
    "aa=eval=aa_custom eval.attacks=[apgd-ce] eval.pgd_steps=0 n_examples=8",
]


@pytest.mark.slow
def test_tiny_study_end_to_end_and_rerun_skips(tmp_path: Path, data_dir: Path, capsys) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    argv = [*TINY, "--runs-dir", str(runs), "--out", str(out), "--data-dir", str(data_dir)]
    assert study_a.main(argv) == 0, capsys.readouterr().out

    finals = {k: runs / f"{k}_seed0" / "train" / "final.json" for k in ("trades", "gkl")}
    results = {
        (k, e): runs / f"{k}_seed0" / f"eval_{e}" / "results.json"
        for k in ("trades", "gkl")
        for e in ("pgd20", "aa")
    }
    for f in [*finals.values(), *results.values()]:
        assert f.is_file(), f
    mtimes = {f: f.stat().st_mtime_ns for f in [*finals.values(), *results.values()]}

    # the report's numbers are the results.json numbers
    readme = (out / "README.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["runs"]:
        aa = json.loads(results[(row["slug"], "aa")].read_text())
        pgd = json.loads(results[(row["slug"], "pgd20")].read_text())
        assert aa["n_examples"] == 8 and aa["attacks"] == ["apgd-ce"]
        assert row["aa"] == aa["robust_acc"] and row["clean"] == aa["clean_acc"]
        assert row["pgd"] == pgd["robust_acc"]
        assert [e["epoch"] for e in row["val_curve"]] == [1, 2]
        line = next(x for x in readme.splitlines() if x.startswith(f"| {row['method']} | 0 |"))
        cells = [c.strip() for c in line.split("|")]
        assert cells[3:6] == [
            f"{100 * row['clean']:.1f}",
            f"{100 * row['pgd']:.1f}",
            f"{100 * row['aa']:.1f}",
        ]
        assert f"+exp=study_cifar10_{row['slug']}" in line and "resume=auto" in line
        assert "data.train_subset=64" in line and "eval.attacks=[apgd-ce]" in line
    assert "## Reading" in readme and "## Per-class robust accuracy" in readme
    for png in ("val_curves.png", "clean_vs_aa.png", "per_class_robust.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, png
    capsys.readouterr()

    # rerun: nothing is retrained or re-evaluated
    assert study_a.main(argv) == 0
    printed = [x.split() for x in capsys.readouterr().out.splitlines() if "_seed0" in x]
    assert len(printed) == 6 and all(x[2] == "skipped" for x in printed), printed
    assert {f: f.stat().st_mtime_ns for f in mtimes} == mtimes
