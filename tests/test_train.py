"""End-to-end training on real data: the smoke run, exact resume, NaN guard, bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import compose_plain

import advtrain
from advtrain.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError
from advtrain.utils.checkpoint import find_latest_valid, load_checkpoint
from advtrain.utils.logging import read_metrics

pytestmark = pytest.mark.usefixtures("data_dir")


def smoke(tmp: Path, data_dir: Path, *extra: str) -> dict:
    return compose_plain(["+exp=smoke", f"data.root={data_dir}", *extra], run_dir=tmp)


@pytest.mark.slow
def test_smoke_run_end_to_end(tmp_path: Path, data_dir: Path) -> None:
    cfg = smoke(tmp_path, data_dir)
    result = advtrain.train(cfg)
    records = [r for r in read_metrics(tmp_path) if not r.get("final")]
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert 0.0 <= r["val_pgd_acc"] <= r["val_clean_acc"] + 0.05 <= 1.05
        assert r["train_loss"] > 0 and r["train_images_per_s"] > 0
    assert isinstance(result, advtrain.TrainResult)
    assert 0.0 <= result.metrics["test_pgd5_acc"] <= 1.0 and result.metrics["test_examples"] == 128
    assert result.test_robust_acc == result.metrics["test_pgd5_acc"]
    assert (result.epochs, result.step, result.last_checkpoint) == (2, 8, tmp_path / "last.pt")
    ckpt = load_checkpoint(tmp_path / "last.pt")  # weights_only=True + checksum inside
    assert ckpt["epoch"] == 3 and ckpt["step"] == 8  # 256 images / 64 per batch * 2 epochs
    assert ckpt["config"]["model"]["name"] == "small_cnn"
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])
    assert (tmp_path / "best.pt").exists()
    assert json.loads((tmp_path / "final.json").read_text())["test_examples"] == 128


@pytest.mark.slow
def test_resume_from_mid_run_checkpoint_is_bit_identical(tmp_path: Path, data_dir: Path) -> None:
    """Train 2 epochs straight; separately resume from the step-3 checkpoint: identical final weights."""
    extra = (
        "trainer.checkpoint_every_steps=3",
        "trainer.keep_last=10",
        "trainer.deterministic=true",
        "loss=gkl",
        "attack=gkl",
        "trainer.ema_decay=0.9",
        "trainer.weight_average_tau=0.5",
        "trainer.awp_gamma=0.005",
        "trainer.awp_warmup_epochs=2",
    )
    full = tmp_path / "full"
    advtrain.train(smoke(full, data_dir, *extra))
    mid = full / "checkpoints" / "step_000000003.pt"
    assert mid.exists()
    resumed = tmp_path / "resumed"
    advtrain.train(smoke(resumed, data_dir, *extra, f"resume={mid}"))
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(resumed / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert torch.equal(a["loss"]["tracker.weights"], b["loss"]["tracker.weights"])
    assert not torch.allclose(
        a["loss"]["tracker.weights"], torch.full_like(a["loss"]["tracker.weights"], 0.1)
    )


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, data_dir: Path) -> None:
    cfg = smoke(tmp_path, data_dir, "trainer.epochs=3", "trainer.checkpoint_every_steps=2")
    cfg["optim"]["lr"] = 1e12  # diverges within a few steps
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* lr="):
        advtrain.train(cfg)
    good = find_latest_valid(tmp_path / "checkpoints")
    if good is not None:  # whatever was written before the blow-up still loads and verifies
        load_checkpoint(good)


def test_train_takes_an_omegaconf_config_and_needs_a_run_directory(data_dir: Path) -> None:
    """The library call: a composed OmegaConf config works like the plain dict, and without the
    run directory Hydra would have set it says so instead of writing somewhere."""
    from omegaconf import OmegaConf

    cfg = compose_plain(["+exp=smoke", f"data.root={data_dir}"])
    del cfg["run_dir"]
    with pytest.raises(ConfigError, match="no run directory"):
        advtrain.train(OmegaConf.create(cfg))


def test_missing_dataset_says_where_and_how(tmp_path: Path) -> None:
    cfg = compose_plain(
        ["+exp=smoke", f"data.root={tmp_path / 'nowhere'}"], run_dir=tmp_path / "run"
    )
    with pytest.raises(DataError, match="cifar10_train.npz"):
        advtrain.train(cfg)


def test_resume_with_changed_model_is_refused(tmp_path: Path, data_dir: Path) -> None:
    first = tmp_path / "a"
    advtrain.train(smoke(first, data_dir, "trainer.epochs=1", "trainer.test_examples=0"))
    cfg = smoke(tmp_path / "b", data_dir, "model.width=16", f"resume={first / 'last.pt'}")
    with pytest.raises(CheckpointError, match="model config changed"):
        advtrain.train(cfg)


def test_unknown_top_level_and_trainer_keys(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="epochz"):
        advtrain.train(smoke(tmp_path, data_dir, "+trainer.epochz=3"))
    with pytest.raises(ConfigError, match="lrr"):
        advtrain.train(smoke(tmp_path, data_dir, "+lrr=3"))


def test_corrupt_checkpoint_is_detected_and_auto_resume_skips_it(
    tmp_path: Path, data_dir: Path
) -> None:
    advtrain.train(
        smoke(
            tmp_path,
            data_dir,
            "trainer.checkpoint_every_steps=2",
            "trainer.keep_last=10",
            "trainer.epochs=1",
            "trainer.test_examples=0",
        )
    )
    ckpts = sorted((tmp_path / "checkpoints").glob("step_*.pt"))
    newest = ckpts[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncate
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(newest)
    assert find_latest_valid(tmp_path / "checkpoints") == ckpts[-2]


class Evil:
    """Any class: unpickling it would run code from this module."""


def test_pickled_object_in_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "advtrain-checkpoint", "model": {}, "obj": Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)
