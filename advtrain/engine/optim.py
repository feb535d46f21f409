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
    if lr <= 0:
        raise ConfigError(f"optim.lr must be > 0, got {lr}")
    if nesterov and momentum <= 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


@dataclass(frozen=True)
class LRSchedule:
    """lr(epoch, iteration) for epochs 1..E with `steps_per_epoch` iterations each.

    - constant: lr.
    - multistep: lr * decay**(number of milestones passed); milestones < 1 are fractions of the run.
    - cosine: half cosine from lr to 0 over the run (per iteration when per_iteration).
    - cosine_official: the GKL/DKL scripts' per-epoch lr_t = lr * 0.5 (1 + cos(pi t / (E + 1))), t = 1..E.
    Linear warm-up over `warmup_epochs` multiplies any of them.
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

    def _milestone_epochs(self) -> list[float]:
        return [m * self.epochs if m < 1 else float(m) for m in self.milestones]

    def __call__(self, epoch: int, iteration: int = 0) -> float:
        """Learning rate for 1-based `epoch` at 0-based `iteration` within it."""
        frac = iteration / max(self.steps_per_epoch, 1) if self.per_iteration else 0.0
        progress = (epoch - 1) + frac  # epochs completed before this step
        if self.schedule == "constant":
            lr = self.lr
        elif self.schedule == "multistep":
            passed = sum(1 for m in self._milestone_epochs() if epoch > m)
            lr = self.lr * self.decay**passed
        elif self.schedule == "cosine":
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * progress / self.epochs))
        else:  # cosine_official
            lr = self.lr * 0.5 * (1 + math.cos(math.pi * epoch / (self.epochs + 1)))
        if self.warmup_epochs > 0 and progress < self.warmup_epochs:
            lr *= (progress + (1.0 / max(self.steps_per_epoch, 1))) / self.warmup_epochs
        return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
