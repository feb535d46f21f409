"""User mistakes: each one fails with one clear ConfigError / DataError / CheckpointError that says how to fix it.

Config and checkpoint mistakes must fail before any data is loaded: those tests point `data.root` at an empty folder,
so reaching the data loader would raise a DataError instead of the expected error. docs/common_mistakes.md (and the
README's "Common mistakes" section) lists every case.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import compose_plain

import advtrain
from advtrain.config import parse_train_config, validate_config, validate_eval
from advtrain.data import TrainLoader
from advtrain.engine.build import build_attack
from advtrain.engine.optim import LRSchedule, build_optimizer
from advtrain.engine.trainer import Trainer, TrainerSettings
from advtrain.errors import CheckpointError, ConfigError, DataError
from advtrain.models import build_model
from advtrain.utils.checkpoint import save_checkpoint
from advtrain.utils.distributed import per_rank_batch_size

NO_GPU = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the CPU-only machine's message"
)


def early(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    """A smoke config whose data folder is empty: only errors raised before data loading can match."""
    return compose_plain(
        ["+exp=smoke", f"data.root={tmp_path / 'no-data'}", *overrides], run_dir=tmp_path / "run"
    )


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["+lrr=3"], r"unknown key\(s\) \['lrr'\] in the 'top level' config"),
        (["+distributed.backnd=gloo"], r"unknown key\(s\) \['backnd'\] in the 'distributed'"),
        (["+trainer.epochz=3"], r"'epochz'.*'trainer'"),
        (["attack.eps=8"], r"eps=8 looks like a pixel count; write 8/255"),
        (["attack.eps=0.5"], r"0.5 is an L2-sized value for an Linf attack; Linf uses e.g. 8/255"),
        (
            ["attack=pgd_l2", "attack.eps=${frac:8/255}"],
            r"looks like an Linf value .* L2 uses e.g. 0.5",
        ),
        (["attack.step_size=${frac:16/255}"], r"step_size=0.0627451 is larger than eps=0.0313725"),
        (["attack.steps=0"], r"steps=0 must be >= 1"),
        (["attack.steps=-3"], r"steps=-3 must be >= 1"),
        (["data.aux_fraction=1.0"], r"data.aux_fraction=1.0 must be in \[0, 1\)"),
        (["data.aux_fraction=-0.1"], r"data.aux_fraction=-0.1 must be in \[0, 1\)"),
        (
            ["data.aux_fraction=0.5"],
            r"data.aux_fraction=0.5 needs auxiliary images: set data.aux_path",
        ),
        (["data.aux_path=???"], r"this experiment needs auxiliary data: add data.aux_path="),
        (["data.two_view=true"], r"data.two_view=true needs loss.aug_weight"),
        (["+model.num_classes=100"], r"model.num_classes=100 disagrees with data=cifar10 \(10\)"),
        (["+model.in_channels=1"], r"model.in_channels=1 disagrees with data=cifar10 \(3\)"),
        (["trainer.nonfinite=ignore"], r"trainer.nonfinite='ignore': use stop or skip"),
        (
            ["trainer.checkpoint_every_steps=0"],
            r"trainer.checkpoint_every_steps must be an integer >= 1 or null",
        ),
        (["trainer.keep_last=0"], r"trainer.keep_last must be an integer >= 1"),
        (["trainer.epochs=0"], r"trainer.epochs must be an integer >= 1"),
        (["trainer.sync_bn=true"], r"sync_bn=true needs CUDA GPUs"),
        (["distributed.backend=nccl", "device=cpu"], r"backend=nccl needs CUDA"),
        (["distributed.timeout_minutes=0"], r"timeout_minutes=0 must be a number > 0"),
        (["data.name=cifar11"], r"unknown dataset 'cifar11'"),
        (["device=tpu"], r"device='tpu' is not a device"),
        # types: a one-line error instead of a traceback or a silently truncated value
        (["seed=abc"], r"^seed='abc' must be an integer$"),
        (["seed=1.5"], r"^seed=1.5 must be an integer$"),
        (["optim.lr=abc"], r"^optim.lr='abc' must be a number$"),
        (["model.width=abc"], r"^model.width='abc' must be an integer$"),
        (["trainer.progress=maybe"], r"^trainer.progress='maybe' must be true or false$"),
        (["attack.eps=abc"], r"attack.eps='abc' is not a number; write e.g. 8/255 or 0.5"),
        # per-option groups: the keys come from the constructor the option names
        (
            ["+loss.betta=3"],
            r"unknown key\(s\) \['betta'\] in the 'loss' config; valid keys: \['beta', 'name'\]",
        ),
        (
            ["+model.depthh=3"],
            r"unknown key\(s\) \['depthh'\] in the 'model' config; valid keys: \[.*'width'",
        ),
        (["+attack.stepz=3"], r"unknown key\(s\) \['stepz'\] in the 'attack' config"),
        (["data.pad_mode=mirror"], r"data.pad_mode='mirror': use zeros or reflect"),
        (
            ["attack.schedule=cosine"],
            r"attack.schedule='cosine': use constant, linear_ramp or phased",
        ),
        (["attack.norm=L1"], r"attack.norm='L1': use Linf or L2"),
        (["logger.name=tensorboard"], r"logger='tensorboard': use jsonl or wandb"),
        (["resume=' '"], r"resume=' ': use null, auto, or the path of a checkpoint"),
    ],
)
def test_config_mistakes_fail_before_loading_data(
    tmp_path: Path, overrides: list[str], pattern: str
) -> None:
    if "sync_bn" in overrides[0] and torch.cuda.is_available():
        pytest.skip("sync_bn is valid with CUDA")
    with pytest.raises(ConfigError, match=pattern):
        advtrain.train(early(tmp_path, *overrides))


def test_budgets_may_be_written_as_plain_fractions(tmp_path: Path) -> None:
    """`attack.eps=8/255` (no ${frac:}) reads as 8/255 wherever a budget is read; the checked config holds the
    float, so config.json and checkpoints store numbers."""
    plain = ["attack.eps=8/255", "attack.step_size=2/255"]
    cfg = validate_config(early(tmp_path, *plain))
    assert cfg["attack"]["eps"] == pytest.approx(8 / 255) and isinstance(
        cfg["attack"]["eps"], float
    )
    assert cfg["attack"]["step_size"] == pytest.approx(2 / 255)
    attack, schedule = build_attack(compose_plain(plain))
    assert attack.eps == pytest.approx(8 / 255) and schedule(1, 10).step_size == pytest.approx(
        2 / 255
    )
    ev = validate_eval(compose_plain(["eval=pgd20", "eval.eps=4/255"], config_name="eval"))
    assert ev["eval"]["eps"] == pytest.approx(4 / 255)
    with pytest.raises(ConfigError, match=r"eval.eps=8 looks like a pixel count; write 8/255"):
        validate_eval(compose_plain(["eval=pgd20", "eval.eps=8"], config_name="eval"))


def test_checked_config_keeps_the_keys_and_values_it_was_given(tmp_path: Path) -> None:
    """Checking changes no key and no value (checkpoints store the checked config and resume compares it);
    only types are normalised (a YAML 0 for a float key becomes 0.0)."""
    given = early(tmp_path)
    checked = validate_config(given)
    assert checked.keys() == given.keys()
    for group in ("data", "model", "attack", "loss", "optim", "trainer", "logger", "distributed"):
        assert checked[group] == given[group], group
    typed = parse_train_config(given)
    assert typed.trainer.epochs == given["trainer"]["epochs"] and typed.data.name == "cifar10"


def test_fgsm_rs_step_up_to_twice_eps_is_allowed() -> None:
    """FGSM-RS (uniform start, step 1.25 eps) is legitimate; without the uniform start the same step is refused."""
    cfg = compose_plain(
        ["attack=fgsm", "attack.random_start=uniform", "attack.step_size=${frac:10/255}"]
    )
    attack, _ = build_attack(cfg)
    assert attack.step_size == pytest.approx(10 / 255)
    cfg = compose_plain(["attack=fgsm", "attack.step_size=${frac:10/255}"])
    with pytest.raises(ConfigError, match="larger than eps"):
        build_attack(cfg)


def test_budget_checks_accept_the_standard_values() -> None:
    """The norm-scale checks must not reject real budgets: Linf 8/255 and 0.3 (MNIST), L2 0.5 and 3.0."""
    for overrides in (
        ["attack.eps=${frac:8/255}"],
        ["attack.eps=0.3", "attack.step_size=0.01"],
        ["attack=pgd_l2"],
        ["attack=pgd_l2", "attack.eps=3.0", "attack.step_size=0.5"],
    ):
        build_attack(compose_plain(overrides))


@NO_GPU
def test_cuda_requested_on_a_cpu_machine(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="device=cuda but no CUDA GPU is available here; use device=cpu"
    ):
        advtrain.train(early(tmp_path, "device=cuda"))


def test_global_batch_must_divide_by_world_size(tmp_path: Path) -> None:
    assert per_rank_batch_size(128, 4) == 32
    with pytest.raises(
        ConfigError,
        match=r"data.batch_size=100 is the global batch .* 3 processes; "
        r"use e.g. data.batch_size=99 or 102",
    ):
        per_rank_batch_size(100, 3)
    with pytest.raises(ConfigError, match="must divide by the 3 processes"):
        validate_config(early(tmp_path), world_size=3)  # smoke: batch 64


def test_wandb_requested_but_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    with pytest.raises(
        ConfigError,
        match=r"wandb package is not installed: `pip install wandb` or use logger=jsonl",
    ):
        advtrain.train(early(tmp_path, "logger=wandb"))


def test_run_directory_not_writable(tmp_path: Path) -> None:
    # As root, chmod cannot make a directory unwritable; a file in the way can.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = {**early(tmp_path), "run_dir": str(blocker / "run")}
    with pytest.raises(ConfigError, match=r"run directory .* is not writable .* run_dir=PATH"):
        advtrain.train(cfg)


# ------------------------------------------------------------------------------------------------ data files
def _write_cifar(root: Path, images: np.ndarray, labels: np.ndarray, **extra: Any) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        arrays = {"image": images, "label": labels, **extra}
        np.savez(
            root / f"cifar10_{split}.npz", **{k: v for k, v in arrays.items() if v is not None}
        )


GOOD_X = np.zeros((300, 32, 32, 3), np.uint8)
GOOD_Y = np.arange(300, dtype=np.int64) % 10


@pytest.mark.parametrize(
    ("images", "labels", "pattern"),
    [
        (None, GOOD_Y, r"has no 'image' array \(found: label\); save it with np.savez"),
        (GOOD_X.astype(np.float32), GOOD_Y, r"image has dtype float32, expected uint8"),
        (
            np.zeros((300, 28, 28, 3), np.uint8),
            GOOD_Y,
            r"image has shape \(300, 28, 28, 3\), expected \(N, 32, 32, 3\)",
        ),
        (GOOD_X, GOOD_Y + 1, r"labels range over \[1, 10\] but must be \[0, 9\]"),
        (GOOD_X, GOOD_Y.astype(np.float32), r"label has dtype float32, expected integer"),
        (GOOD_X, GOOD_Y[:299], r"300 images but 299 labels"),
    ],
)
def test_bad_data_files(
    tmp_path: Path, images: np.ndarray | None, labels: np.ndarray, pattern: str
) -> None:
    _write_cifar(tmp_path / "data", images, labels)
    cfg = compose_plain(["+exp=smoke", f"data.root={tmp_path / 'data'}"], run_dir=tmp_path / "run")
    with pytest.raises(DataError, match=pattern):
        advtrain.train(cfg)


# ------------------------------------------------------------------------------------------------ checkpoints
def _fake_checkpoint(path: Path, cfg: dict[str, Any], model: torch.nn.Module) -> Path:
    """A structurally valid checkpoint (checksum and all) holding `model`'s weights and `cfg` as its config."""
    return save_checkpoint(
        path, {"model": model.state_dict(), "config": cfg, "step": 1, "epoch": 1}
    )


@pytest.mark.parametrize(
    ("ckpt_overrides", "pattern"),
    [
        (["model=preact_resnet18"], r"cannot resume: the model config changed .*'preact_resnet18'"),
        (["model.width=16"], r"cannot resume: the model config changed .*'width': 16"),
        (["data=cifar100"], r"cannot resume: dataset changed \(cifar100 -> cifar10\)"),
        (["loss=gkl"], r"cannot resume: the loss changed \(gkl -> trades\)"),
    ],
)
def test_resume_from_an_incompatible_checkpoint(
    tmp_path: Path, ckpt_overrides: list[str], pattern: str
) -> None:
    other = compose_plain(["+exp=smoke", *ckpt_overrides])
    ckpt = _fake_checkpoint(tmp_path / "other.pt", other, torch.nn.Linear(2, 2))
    cfg = early(tmp_path, f"resume={ckpt}")
    with pytest.raises(CheckpointError, match=pattern):
        advtrain.train(cfg)


def test_checkpoint_whose_weights_do_not_fit(tmp_path: Path) -> None:
    """The config claims the same model, the tensors are another width: named shape mismatches, no crash."""
    cfg = early(tmp_path)
    wider = build_model("small_cnn", 10, width=16)
    ckpt = _fake_checkpoint(tmp_path / "wider.pt", cfg, wider)
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatch .*checkpoint \(16, 3, 3, 3\) vs model \(8, 3, 3, 3\)",
    ):
        advtrain.train({**cfg, "resume": str(ckpt)})


def test_resume_path_that_does_not_exist(tmp_path: Path) -> None:
    cfg = early(tmp_path, f"resume={tmp_path / 'nope.pt'}")
    with pytest.raises(CheckpointError, match=r"no such checkpoint file \(use resume=auto"):
        advtrain.train(cfg)


# ------------------------------------------------------------------------------------------------ model mode
def _tiny_trainer(tmp_path: Path, model: torch.nn.Module) -> Trainer:
    from advtrain.attacks import PGDAttack
    from advtrain.losses import build_loss

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(16) % 10
    loader = TrainLoader(images, labels, batch_size=8)
    settings = TrainerSettings(epochs=1, val_examples=0, test_examples=0, progress=False)
    return Trainer(
        model=model,
        loss=build_loss("pgdat"),
        attack=PGDAttack("Linf", 8 / 255, 2 / 255, 1),
        optimizer=build_optimizer(model.parameters(), lr=0.01),
        lr_schedule=LRSchedule(0.01, 1, len(loader)),
        train_loader=loader,
        val_set=None,
        test_set=None,
        callbacks=[],
        settings=settings,
        run_dir=tmp_path,
        device=torch.device("cpu"),
        config={"attack": {"eps": 8 / 255}},
    )


def test_model_handed_over_in_eval_mode_trains_in_train_mode(tmp_path: Path) -> None:
    """Decision: the trainer owns the mode. A model given in eval mode still trains with batch statistics (its BN
    running mean moves) and `fit` returns it in eval mode, ready for evaluation."""
    model = build_model("small_cnn", 10, width=4).eval()
    bn = model.features[0][1]
    before = bn.running_mean.clone()
    trainer = _tiny_trainer(tmp_path, model)
    trainer.fit()
    assert not torch.equal(bn.running_mean, before)  # train-mode forwards happened
    assert int(bn.num_batches_tracked) == 2  # two batches; the eval-mode attack did not count
    assert not model.training


def test_model_without_trainable_parameters(tmp_path: Path) -> None:
    model = build_model("small_cnn", 10, width=4)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        _tiny_trainer(tmp_path, model)
