"""Optimiser and learning-rate schedules.

The schedule is a pure function of (epoch, iteration) rather than a stateful torch scheduler, so a resumed run
recomputes exactly the same learning rate from the position alone and nothing can drift.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from advtrain.errors import ConfigError
from advtrain.values import positive

SCHEDULES = ("constant", "multistep", "cosine", "cosine_official")


def build_optimizer(
    params: Iterable[torch.nn.Parameter],
    *,
    name: str = "sgd",
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay on every parameter (as the TRADES/GKL reference scripts)."""
    if name != "sgd":
        raise ConfigError(f"optim.name={name!r} is not supported; use optim=sgd")
    lr = positive("optim.lr", lr)  # the one check of a positive number (advtrain/config/values.py)
    if nesterov and momentum <= 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


@dataclass(frozen=True)
class LRSchedule:
    """lr(epoch, iteration) for epochs 1..E with `steps_per_epoch` iterations each.

    Schedules (`optim.schedule`):

    - constant: lr.
    - multistep: lr * decay**k, k = the number of milestones m with epoch >= m. A milestone m is the
      epoch at whose START the lr changes (epochs 1..m-1 keep the previous value), exactly as the
      TRADES/MART `adjust_learning_rate` (`if epoch >= 75: ...`). A milestone in (0, 1] is a fraction
      of the run and stands for epoch f * E (0.75 of 100 epochs = 75; a non-integral f * E takes
      effect at the next whole epoch). A milestone of 1 as an epoch would change the lr before the
      first step, so (0, 1] is free for fractions. The value is set once per epoch either way.
    - cosine: half cosine from lr towards 0 over the run: per iteration lr * 0.5 (1 + cos(pi p / E))
      with p = epochs completed before the step; per epoch (per_iteration=false) the same with
      p = epoch - 1 (the DKL TRADES script's 0.5 (1 + cos(pi (t - 1) / E))).
    - cosine_official: the GKL/DKL scripts' `adjust_learning_rate_cosine`, set once per epoch:
      lr * 0.5 (1 + cos(pi t / (E + 1))), t = 1..E.

    Warm-up over W = `warmup_epochs`:

    - per epoch (per_iteration=false), as the official `adjust_learning_rate_cosine` with
      `--lr-warmup W`: epochs t < W run at lr * t / W (epoch 1: lr / W), epoch W reaches lr, and
      both cosines are shifted to start there: lr * 0.5 (1 + cos(pi (t - W) / (E - W + 1))) for
      t >= W (for `cosine` with W <= 1 this is its unshifted (t - 1) / E form). Multistep
      milestones are epoch numbers and do not move.
    - per iteration: a linear ramp from lr / (steps * W) at the first step to lr at the end of
      epoch W multiplies the schedule. cosine_official is a per-epoch schedule and refuses it.
    """

    lr: float
    epochs: int
    steps_per_epoch: int
    schedule: str = "multistep"
    milestones: Sequence[float] = (0.75, 0.9)
    decay: float = 0.1
    warmup_epochs: float = 0.0
    per_iteration: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"optim.schedule={self.schedule!r}: choose one of {', '.join(SCHEDULES)}"
            )
        if self.epochs < 1:
            raise ConfigError(f"trainer.epochs must be >= 1, got {self.epochs}")
        for m in self.milestones:
            if isinstance(m, bool) or not isinstance(m, int | float) or not m > 0:
                raise ConfigError(
                    f"optim.milestones={list(self.milestones)!r}: each milestone is an epoch number "
                    "(> 1, the epoch at whose start the lr changes) or a fraction of the run in (0, 1]"
                )
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(
                f"optim.warmup_epochs={self.warmup_epochs} must be in [0, trainer.epochs="
                f"{self.epochs}]"
            )
        if self.schedule == "cosine_official" and self.per_iteration and self.warmup_epochs > 0:
            raise ConfigError(
                "optim.schedule=cosine_official is the official per-epoch schedule and its warm-up "
                "is per epoch too: set optim.per_iteration=false"
            )

    def milestone_epochs(self) -> list[float]:
        """The epoch at whose start each milestone takes effect (fractions times the run length)."""
        return [m * self.epochs if m <= 1 else float(m) for m in self.milestones]

    def __call__(self, epoch: int, iteration: int = 0) -> float:
        """Learning rate for 1-based `epoch` at 0-based `iteration` within it."""
        steps = max(self.steps_per_epoch, 1)
        warmup = self.warmup_epochs
        if not self.per_iteration and warmup > 0 and epoch < warmup:
            return self.lr * epoch / warmup
        progress = (epoch - 1) + (iteration / steps if self.per_iteration else 0.0)
        if self.schedule == "constant":
            lr = self.lr
        elif self.schedule == "multistep":
            # The tolerance keeps 0.9 * 100 = 90.00000000000001 at epoch 90.
            passed = sum(1 for m in self.milestone_epochs() if epoch >= m - 1e-9)
            lr = self.lr * self.decay**passed
        elif self.schedule == "cosine":
            if self.per_iteration:
                frac = progress / self.epochs
            else:
                start = max(warmup, 1.0)
                frac = (epoch - start) / (self.epochs - start + 1)
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * frac))
        else:  # cosine_official
            frac = (epoch - warmup) / (self.epochs - warmup + 1)
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * frac))
        if self.per_iteration and warmup > 0 and progress < warmup:
            lr *= (progress + 1.0 / steps) / warmup
        return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
