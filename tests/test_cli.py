"""The command line as a user meets it: usage, exit codes, composed configs, one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import run_cli as advtrain

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_commands() -> None:
    r = advtrain("--help")
    assert r.returncode == 0
    for cmd in ("train", "eval", "export", "bench"):
        assert f"  {cmd} " in r.stdout


def test_unknown_command_prints_usage_and_exits_2() -> None:
    r = advtrain("trian")
    assert r.returncode == 2
    assert "unknown command 'trian'" in r.stderr and "usage:" in r.stderr


def test_cfg_job_prints_the_trades_paper_setting() -> None:
    r = advtrain("train", "+exp=cifar10_trades", "--cfg", "job", "--resolve")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "name: wrn34_10" in out and "widen_factor: 10" in out
    assert "eps: 0.03137254901960784" in out and "step_size: 0.00784313725490196" in out
    assert "beta: 6.0" in out and "epochs: 76" in out
    assert "- 75" in out and "- 90" in out and "- 100" in out


def test_cfg_job_prints_the_official_gkl_setting() -> None:
    r = advtrain("train", "+exp=cifar10_gkl", "--cfg", "job")
    assert r.returncode == 0, r.stderr
    for line in (
        "name: gkl",
        "alpha: 4.0",
        "beta: 20.0",
        "weight_temperature: 4.0",
        "lr: 0.2",
        "schedule: cosine_official",
        "awp_gamma: 0.005",
        "weight_average_tau: 0.9",
        "schedule: linear_ramp",
        "epochs: 200",
    ):
        assert line in r.stdout, line


def _one_error_line(r: subprocess.CompletedProcess) -> str:
    """The run failed with exit code 1 and exactly one `error:` line on stderr, no traceback."""
    assert r.returncode == 1, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("error: ")
    return lines[0]


def test_unknown_override_key_is_one_clear_line(tmp_path: Path) -> None:
    """Hydra's own message suggests `+trainer.epochz=3`; ours names the valid keys instead."""
    r = advtrain(
        "train", "+exp=smoke", "trainer.epochz=3", env={"ADVTRAIN_RUNS_DIR": str(tmp_path)}
    )
    line = _one_error_line(r)
    assert "unknown key(s) ['epochz'] in the 'trainer' config; valid keys: [" in line
    assert "'epochs'" in line and "+trainer" not in line


def test_unknown_group_option_is_one_clear_line(tmp_path: Path) -> None:
    r = advtrain("train", "model=resnet1000", env={"ADVTRAIN_RUNS_DIR": str(tmp_path)})
    line = _one_error_line(r)
    assert "model=resnet1000 is not an option; choose one of:" in line
    assert "small_cnn" in line and "wrn34_10" in line


def test_wrong_value_type_is_one_clear_line(tmp_path: Path) -> None:
    r = advtrain(
        "train",
        "+exp=smoke",
        "seed=abc",
        f"data.root={tmp_path / 'none'}",
        env={"ADVTRAIN_RUNS_DIR": str(tmp_path)},
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: seed='abc' must be an integer"]


def test_pixel_eps_is_one_line_with_hint(tmp_path: Path, data_dir: Path) -> None:
    r = advtrain(
        "train",
        "+exp=smoke",
        "attack.eps=8",
        f"data.root={data_dir}",
        env={"ADVTRAIN_RUNS_DIR": str(tmp_path)},
    )
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "8/255" in lines[0] and "Traceback" not in r.stderr


def test_missing_dataset_is_one_line(tmp_path: Path) -> None:
    r = advtrain(
        "train",
        "+exp=smoke",
        f"data.root={tmp_path / 'none'}",
        env={"ADVTRAIN_RUNS_DIR": str(tmp_path)},
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cifar10_train.npz" in r.stderr


@pytest.mark.slow
def test_smoke_train_from_the_command_line(tmp_path: Path, data_dir: Path) -> None:
    r = advtrain(
        "train",
        "+exp=smoke",
        f"data.root={data_dir}",
        "trainer.epochs=1",
        env={"ADVTRAIN_RUNS_DIR": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[advtrain] finished smoke" in r.stdout and "test_clean_acc" in r.stdout
    runs = list((tmp_path / "smoke").iterdir())
    assert (
        len(runs) == 1 and (runs[0] / "last.pt").exists() and (runs[0] / "metrics.jsonl").exists()
    )


@pytest.mark.slow
def test_multirun_sweep_gives_one_run_dir_per_job(tmp_path: Path, data_dir: Path) -> None:
    r = advtrain(
        "train",
        "-m",
        "+exp=smoke",
        f"data.root={data_dir}",
        "seed=0,1",
        "trainer.epochs=1",
        "data.train_subset=64",
        "trainer.test_examples=0",
        "trainer.val_examples=32",
        env={"ADVTRAIN_RUNS_DIR": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = sorted((tmp_path / "multirun").rglob("metrics.jsonl"))
    assert len(metrics) == 2
    assert metrics[0].parent != metrics[1].parent
