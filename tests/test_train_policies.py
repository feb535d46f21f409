"""Training-step policies: attack precision, attack mode, and what a skipped batch may touch.

* Precision: with bf16 autocast for the natural pass, the training attack and the adversarial forward
  stay fp32 by default (the first attack step's gradient signs equal fp32's), while the explicit
  opt-in `trainer.autocast_attack=bf16` visibly does not.
* Mode: `attack.eval_mode=false` (Rice et al.'s PGD-AT) attacks the model in train mode, also right
  after a validation left it in eval mode.
* A batch skipped for a non-finite loss does not feed GKL's class-weight sums.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
import torch

from advtrain.engine.fastpath import resolve_attack_autocast, resolve_fast_paths
from advtrain.errors import ConfigError
from benchmarks.harness import build_trainer, train_config

CPU = torch.device("cpu")


def _trainer(loss: str, *, autocast: Any = "bf16", autocast_attack: Any = False, **attack: Any):
    cfg = train_config(
        model="small_cnn",
        loss=loss,
        model_kwargs={"width": 8},
        batch_size=32,
        attack_kwargs=attack,
        trainer_kwargs={
            "autocast": autocast,
            "autocast_attack": autocast_attack,
            "channels_last": False,
        },
    )
    torch.manual_seed(0)
    return build_trainer(cfg, CPU)


def _batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    # Pixel values in [0.5, 1): where bf16's spacing (1/256) exceeds the 0.001 N(0, 1) start.
    return 0.5 + 0.5 * torch.rand(n, 3, 32, 32, generator=g), torch.arange(n) % 10


def _start_gradient(trainer: Any, x: torch.Tensor, y: torch.Tensor, *contexts: Any) -> torch.Tensor:
    """The input gradient of the trainer's attack objective at the attack's start x + 0.001 N(0, 1),
    in the attack's mode, computed inside `contexts` (the natural logits too, as in `pgd`)."""
    from advtrain.attacks.objectives import get_objective, needs_natural
    from advtrain.attacks.pgd import model_mode

    model = trainer.attack_model
    objective = get_objective(trainer.loss.attack_objective())
    x0 = x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
    with contextlib.ExitStack() as stack:
        stack.enter_context(model_mode(model, training=False))
        for ctx in contexts:
            stack.enter_context(ctx)
        nat = None
        if needs_natural(objective):
            with torch.no_grad():
                nat = model(x)
        xa = x0.clone().requires_grad_(True)
        return torch.autograd.grad(objective(model(xa), y, nat).sum(), xa)[0]


@pytest.mark.parametrize("loss", ["trades", "gkl"])
def test_default_attack_keeps_fp32_signs_under_bf16_autocast(loss: str) -> None:
    """First attack step's gradient signs: the default policy equals fp32 (>= 99%) although the
    run's autocast is bf16; the bf16 opt-in does not. GKL: soft-CE objective at its start."""
    x, y = _batch()
    ref = _start_gradient(_trainer(loss, autocast=False), x, y).sign()

    default = _trainer(loss, autocast="bf16")
    assert default.autocast_dtype == torch.bfloat16 and default.attack_autocast_dtype is None
    ours = _start_gradient(default, x, y, default.autocast(), default.attack_autocast())
    agree_default = float((ours.sign() == ref).float().mean())
    assert agree_default >= 0.99

    opt_in = _trainer(loss, autocast="bf16", autocast_attack="bf16")
    theirs = _start_gradient(opt_in, x, y, opt_in.autocast(), opt_in.attack_autocast())
    agree_bf16 = float((theirs.sign() == ref).float().mean())
    assert agree_bf16 < 0.99, agree_bf16
    assert agree_default - agree_bf16 > 0.05


def _record_autocast(model: torch.nn.Module) -> list[bool]:
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda m, a: seen.append(torch.is_autocast_enabled("cpu")))
    return seen


@pytest.mark.parametrize("opt_in", [False, True])
def test_train_step_runs_only_the_natural_forward_under_autocast(opt_in: bool) -> None:
    trainer = _trainer("trades", autocast="bf16", autocast_attack="bf16" if opt_in else False)
    trainer.attack.steps = 2
    seen = _record_autocast(trainer.unwrapped_model)
    x, y = _batch(16)
    trainer.train_step(x, y, 0)
    # Attack: 1 natural (KL target) + 2 steps; training: adversarial + natural forward.
    assert len(seen) == 5
    if opt_in:
        assert all(seen)
    else:
        assert seen == [False, False, False, False, True]


def test_opt_in_is_explicit_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    assert resolve_attack_autocast(False) is None and resolve_attack_autocast("fp32") is None
    assert resolve_attack_autocast("bf16") is torch.bfloat16
    with pytest.raises(ConfigError, match="autocast_attack"):
        resolve_attack_autocast("auto")
    cuda = torch.device("cuda")
    fast = resolve_fast_paths({"autocast": "auto"}, cuda)
    assert fast.autocast_dtype == torch.bfloat16 and fast.attack_autocast_dtype is None
    assert "attack fp32" in fast.describe()
    with caplog.at_level(logging.WARNING):
        _trainer("pgdat", autocast_attack="bf16")
    assert any("autocast_attack=bf16" in r.getMessage() for r in caplog.records)


def test_train_mode_attack_sees_batch_statistics_after_validation() -> None:
    trainer = _trainer("pgdat", autocast=False, eval_mode=False, steps=2)
    modes: list[bool] = []
    trainer.unwrapped_model.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    trainer.unwrapped_model.eval()  # as a validation pass leaves it
    x, y = _batch(16)
    trainer.train_step(x, y, 0)
    assert modes == [True, True, True]  # 2 attack steps + the training forward

    evals = _trainer("pgdat", autocast=False, steps=2)
    modes.clear()
    evals.unwrapped_model.register_forward_pre_hook(lambda m, a: modes.append(m.training))
    evals.train_step(x, y, 0)
    assert modes == [False, False, True]


def test_skipped_batch_does_not_feed_the_class_weights() -> None:
    trainer = _trainer("gkl", autocast=False, schedule="constant", steps=1)
    trainer.settings.nonfinite = "skip"
    tracker = trainer.loss.tracker
    x, y = _batch(16)
    real_attack = trainer.attack

    def nan_attack(model: Any, xb: torch.Tensor, yb: torch.Tensor, **kw: Any) -> torch.Tensor:
        return torch.full_like(xb, float("nan"))  # adversarial logits NaN, natural ones finite

    trainer.attack = nan_attack
    trainer.train_step(x, y, 0)  # skipped
    assert len(trainer.settle().skipped) == 1
    assert int(tracker.counts.sum()) == 0 and float(tracker.accumulator.abs().sum()) == 0.0
    trainer.attack = real_attack
    trainer.train_step(x, y, 1)
    assert trainer.settle().taken == 1
    assert int(tracker.counts.sum()) == 16


def test_no_held_out_images_means_no_validation() -> None:
    """data.val_size=0 (train on every image, as the official scripts) skips validation instead of
    logging NaN accuracies."""
    from advtrain.engine.trainer import EvalSet

    trainer = _trainer("pgdat", autocast=False)
    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    trainer.val_set = EvalSet(empty, torch.zeros(0, dtype=torch.long))
    assert trainer.validate() == {}
