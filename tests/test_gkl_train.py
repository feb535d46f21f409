"""GKL end to end on real CIFAR-10: the official experiment, shrunk, trains without NaN and becomes robust."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import compose_plain

import advtrain
from advtrain.utils.checkpoint import load_checkpoint
from advtrain.utils.logging import read_metrics


@pytest.mark.slow
def test_short_gkl_run_learns_robustness_above_chance(tmp_path: Path, data_dir: Path) -> None:
    cfg = compose_plain(
        [
            "+exp=cifar10_gkl",
            f"data.root={data_dir}",
            "model=small_cnn",
            "model.width=8",
            "data.train_subset=2048",
            "data.batch_size=128",
            "trainer.epochs=4",
            "trainer.eval_every=1",
            "trainer.val_examples=512",
            "trainer.val_pgd_steps=5",
            "trainer.test_examples=0",
            "trainer.awp_warmup_epochs=3",
            "trainer.progress=false",
            "optim.lr=0.05",
        ],
        run_dir=tmp_path,
    )
    advtrain.train(cfg)
    records = [r for r in read_metrics(tmp_path) if not r.get("final")]
    assert len(records) == 4
    for r in records:  # no NaN anywhere, the eps ramp reaches 8/255 at the last epoch
        assert all(v == v for v in r.values() if isinstance(v, float))
    assert [round(r["eps"] * 255, 6) for r in records] == [2.0, 4.0, 6.0, 8.0]
    assert records[-1]["val_pgd_acc"] > 0.12  # chance is 0.10 on 10 balanced classes
    assert records[-1]["val_pgd_acc"] > records[0]["val_pgd_acc"] - 0.02
    ckpt = load_checkpoint(tmp_path / "last.pt")
    w = ckpt["loss"]["tracker.weights"]
    assert torch.allclose(w.sum(1), torch.ones(10), atol=1e-5)  # rows are class-mean softmaxes
    assert not torch.allclose(w, torch.full_like(w, 0.1))  # collected, no longer uniform
    assert ckpt["ema"] is not None  # the epoch weight average is saved and is what we validated
