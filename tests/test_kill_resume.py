"""Crash safety: SIGKILL at an arbitrary step + `resume=auto` in the same run directory ends bit-identical to a run
that never stopped; corrupt newest checkpoints are skipped; the non-finite guard keeps the last good checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import compose_plain

import advtrain
from advtrain.engine.resume import latest_checkpoint
from advtrain.engine.trainer import _link_atomic
from advtrain.errors import NonFiniteLossError
from advtrain.utils.checkpoint import load_checkpoint, save_checkpoint
from advtrain.utils.logging import read_metrics

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("data_dir")

# 4 steps per epoch of 32 images; short validation (the tests are about state, not accuracy).
# Everything with state: GKL tracker, EMA, epoch average, AWP (from epoch 2), mid-epoch checkpoints every step.
LIGHT = [
    "data.train_subset=128",
    "data.batch_size=32",
    "trainer.val_examples=32",
    "trainer.val_pgd_steps=2",
]
STATEFUL = [
    "+exp=smoke",
    *LIGHT,
    "loss=gkl",
    "attack=gkl",
    "trainer.ema_decay=0.9",
    "trainer.weight_average_tau=0.5",
    "trainer.awp_gamma=0.005",
    "trainer.awp_warmup_epochs=2",
    "trainer.deterministic=true",
    "trainer.test_examples=0",
    "trainer.checkpoint_every_steps=1",
    "trainer.keep_last=3",
]


def _cli(run_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "advtrain",
        "train",
        *STATEFUL,
        f"data.root={data_dir}",
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def _env() -> dict[str, str]:
    # The same thread count for every run: kernels may sum in a different order with another one.
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


def _step_files(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*.pt"))


def _assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for group in ("model", "ema", "loss"):
        if a[group] is None or b[group] is None:
            assert a[group] is None and b[group] is None, group
            continue
        assert a[group].keys() == b[group].keys()
        for key in a[group]:
            assert torch.equal(a[group][key], b[group][key]), (group, key)
    ma, mb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(ma[k]["momentum_buffer"], mb[k]["momentum_buffer"]) for k in ma)


@pytest.mark.slow
def test_sigkill_then_resume_auto_is_bit_identical(tmp_path: Path, data_dir: Path) -> None:
    full = tmp_path / "full"
    subprocess.run(_cli(full, data_dir), env=_env(), check=True, capture_output=True, timeout=300)

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        _cli(crashed, data_dir), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if (crashed / "checkpoints").is_dir() and any(s >= 3 for s in _step_files(crashed)):
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (crashed / "final.json").exists()
    killed_at = max(_step_files(crashed))
    assert 3 <= killed_at < 8  # 8 steps in all: it died mid-run

    subprocess.run(
        _cli(crashed, data_dir, "resume=auto"),
        env=_env(),
        check=True,
        capture_output=True,
        timeout=300,
    )
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(crashed / "last.pt")
    _assert_same_state(a, b)
    assert torch.equal(a["rng"]["attack"], b["rng"]["attack"])
    w = b["loss"]["tracker.weights"]
    assert not torch.allclose(w, torch.full_like(w, 0.1))  # W was collected
    epochs = [r["epoch"] for r in read_metrics(crashed) if not r.get("final")]
    assert epochs == [1, 2]  # each epoch logged once, whatever the killed attempt had written
    # Keep-last-K rotation, and last.pt is a hard link to the newest step file (not a copy, not a stale one).
    assert _step_files(crashed) == [6, 7, 8]
    assert (crashed / "last.pt").stat().st_ino == (
        crashed / "checkpoints" / "step_000000008.pt"
    ).stat().st_ino


@pytest.mark.slow
def test_resume_auto_skips_truncated_newest_and_recreates_it(
    tmp_path: Path, data_dir: Path
) -> None:
    extra = [
        f"data.root={data_dir}",
        "trainer.epochs=1",
        "trainer.test_examples=0",
        "data.val_size=0",
        "trainer.checkpoint_every_steps=1",
        "trainer.keep_last=4",
        "trainer.deterministic=true",
    ]
    advtrain.train(compose_plain(["+exp=smoke", *LIGHT, *extra], run_dir=tmp_path))
    newest = tmp_path / "checkpoints" / "step_000000004.pt"
    good = load_checkpoint(newest)
    # A torn write of the newest file: last.pt is the same inode, so it is torn too.
    newest.write_bytes(newest.read_bytes()[:5000])
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_000000003.pt"
    advtrain.train(compose_plain(["+exp=smoke", *LIGHT, *extra, "resume=auto"], run_dir=tmp_path))
    redone = load_checkpoint(newest)  # re-trained step 4 from step 3, identical to the lost one
    _assert_same_state(good, redone)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4
    assert (
        tmp_path / "checkpoints" / "step_000000004.pt.abandoned"
    ).is_file()  # set aside, not deleted


def test_hard_links_survive_rewrites_and_rotation(tmp_path: Path) -> None:
    """last.pt/best.pt are hard links: a rewrite of the step file (tmp + rename) or its deletion never reaches them."""
    step = tmp_path / "checkpoints" / "step_000000001.pt"
    save_checkpoint(step, {"model": {"w": torch.zeros(3)}, "step": 1})
    _link_atomic(step, tmp_path / "best.pt")
    assert (tmp_path / "best.pt").stat().st_ino == step.stat().st_ino
    save_checkpoint(step, {"model": {"w": torch.ones(3)}, "step": 1})  # same name, new content
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.zeros(3))
    _link_atomic(step, tmp_path / "best.pt")  # re-pointing replaces the link atomically
    assert torch.equal(load_checkpoint(tmp_path / "best.pt")["model"]["w"], torch.ones(3))
    step.unlink()  # rotation
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def _nan_at(monkeypatch: pytest.MonkeyPatch, calls: set[int], stamps: list[float]) -> None:
    """Make the training loss NaN at the given (1-based) forward calls, recording when it happened."""
    import advtrain.engine.api as api

    build = api.build_loss
    count = [0]

    def build_loss(cfg: dict[str, Any]) -> Any:
        loss = build(cfg)
        inner = loss.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            count[0] += 1
            if count[0] in calls:
                stamps.append(time.time())
                out.loss = out.loss * float("nan")
            return out

        loss.forward = forward
        return loss

    monkeypatch.setattr(api, "build_loss", build_loss)


@pytest.mark.slow
def test_nonfinite_stop_keeps_last_good_checkpoint_untouched(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamps: list[float] = []
    _nan_at(monkeypatch, {6}, stamps)
    extra = [
        f"data.root={data_dir}",
        "trainer.test_examples=0",
        "data.val_size=0",
        "trainer.checkpoint_every_steps=1",
        "trainer.keep_last=10",
    ]
    cfg = compose_plain(["+exp=smoke", *LIGHT, *extra], run_dir=tmp_path)
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 2 step 6 \(loss=nan; ce=.*kl=.*; lr=0\.0005\)"
    ) as e:
        advtrain.train(cfg)
    assert "last good checkpoint" in str(e.value)
    assert _step_files(tmp_path) == [1, 2, 3, 4, 5]  # nothing written for the failed step
    files = [*(tmp_path / "checkpoints").glob("step_*.pt"), tmp_path / "last.pt"]
    assert all(p.stat().st_mtime <= stamps[0] for p in files)  # nothing rewritten after the failure
    last = load_checkpoint(tmp_path / "last.pt")  # loads and verifies its checksum
    assert last["step"] == 5 and all(torch.isfinite(v).all() for v in last["model"].values())
    monkeypatch.undo()
    result = advtrain.train(
        compose_plain(["+exp=smoke", *LIGHT, *extra, "resume=auto"], run_dir=tmp_path)
    )
    assert result.step == 8


@pytest.mark.slow
def test_nonfinite_skip_counts_and_limits(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamps: list[float] = []
    _nan_at(monkeypatch, {2, 6}, stamps)
    extra = [
        f"data.root={data_dir}",
        "trainer.test_examples=0",
        "trainer.nonfinite=skip",
        "data.val_size=0",
    ]
    result = advtrain.train(compose_plain(["+exp=smoke", *LIGHT, *extra], run_dir=tmp_path / "a"))
    records = [r for r in read_metrics(tmp_path / "a") if not r.get("final")]
    assert [r["skipped_batches"] for r in records] == [1, 1]
    # 8 batches, 2 of them without an optimiser step; the skipped losses are not averaged in
    assert [r["step"] for r in records] == [3, 6] and result.step == 6
    assert all(json.dumps(r).count("NaN") == 0 for r in records)

    monkeypatch.undo()
    _nan_at(monkeypatch, {2, 3}, stamps)
    cfg = compose_plain(
        ["+exp=smoke", *LIGHT, *extra, "trainer.max_skipped_batches=1"], run_dir=tmp_path / "b"
    )
    with pytest.raises(NonFiniteLossError, match="max_skipped_batches=1"):
        advtrain.train(cfg)
