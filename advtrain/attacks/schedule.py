"""Attack-budget schedules for adversarial training: ``schedule(epoch, total_epochs) -> budget``.

A schedule is a small callable object; the trainer calls it at the start of every epoch (epochs
are 1-based) and hands the result to :meth:`advtrain.attacks.pgd.PGDAttack.set_budget`. Phases
are given as fractions of the run, so a 10-epoch smoke test follows the same shape as 200 epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from advtrain.attacks.threat import as_count, as_number
from advtrain.errors import ConfigError

__all__ = [
    "GKL_INTENDED_PHASES",
    "AttackBudget",
    "BudgetSchedule",
    "ConstantBudget",
    "LinearEpsRamp",
    "PhasedBudget",
]


@dataclass(frozen=True)
class AttackBudget:
    """One epoch's attack budget: radius, step length and number of steps."""

    eps: float
    step_size: float
    steps: int


def _check_epoch(epoch: int, total_epochs: int) -> None:
    if total_epochs < 1:
        raise ConfigError(f"total_epochs={total_epochs} must be >= 1")
    if not 1 <= epoch <= total_epochs:
        raise ConfigError(
            f"epoch={epoch} is outside 1..{total_epochs}; epochs are 1-based and at most the total"
        )


def _positive(name: str, value: object) -> float:
    number = as_number(name, value)
    if number <= 0:
        raise ConfigError(f"{name}={number:g} must be > 0")
    return number


def _ratio(name: str, value: object) -> float:
    """A step length as a fraction of eps_t, in (0, 2].

    Above 1 only makes sense after a uniform random start (FGSM-RS uses 1.25); the attack checks
    that against its own start mode when it adopts the budget.
    """
    number = as_number(name, value)
    if not 0 < number <= 2:
        raise ConfigError(f"{name}={number:g} must be in (0, 2] (step size as a fraction of eps)")
    return number


class BudgetSchedule:
    """Base class: ``schedule(epoch, total_epochs) -> AttackBudget``, epoch 1-based."""

    def __call__(self, epoch: int, total_epochs: int) -> AttackBudget:
        raise NotImplementedError


class ConstantBudget(BudgetSchedule):
    """The same budget every epoch (PGD-AT, TRADES, MART as published)."""

    def __init__(self, eps: float, step_size: float, steps: int) -> None:
        self.eps = _positive("eps", eps)
        self.step_size = _positive("step_size", step_size)
        self.steps = as_count("steps", steps)

    def __call__(self, epoch: int, total_epochs: int) -> AttackBudget:
        _check_epoch(epoch, total_epochs)
        return AttackBudget(self.eps, self.step_size, self.steps)

    def __repr__(self) -> str:
        return f"ConstantBudget(eps={self.eps:g}, step_size={self.step_size:g}, steps={self.steps})"


class LinearEpsRamp(BudgetSchedule):
    """``eps_t = eps * t / E`` with ``steps`` steps of ``step_ratio * eps_t``.

    This is what the official GKL-AT code (DKLv2, ``--train_budget high``) actually runs:
    ``LinearEpsRamp(8/255, steps=5, step_ratio=0.5)``. The radius reaches ``eps`` only in the
    last epoch, so the mean training radius is about ``eps / 2`` (docs/gkl.md §10, oddity 2).
    """

    def __init__(self, eps: float, steps: int, step_ratio: float) -> None:
        self.eps = _positive("eps", eps)
        self.steps = as_count("steps", steps)
        self.step_ratio = _ratio("step_ratio", step_ratio)

    def __call__(self, epoch: int, total_epochs: int) -> AttackBudget:
        _check_epoch(epoch, total_epochs)
        eps_t = self.eps * epoch / total_epochs
        return AttackBudget(eps_t, self.step_ratio * eps_t, self.steps)

    def __repr__(self) -> str:
        return (
            f"LinearEpsRamp(eps={self.eps:g}, steps={self.steps}, step_ratio={self.step_ratio:g})"
        )


#: The schedule the GKL authors evidently intended for ``--train_budget high`` (200 epochs:
#: <= 50 -> 2 steps of eps_t, <= 100 -> 3 of 2 eps_t / 3, <= 150 -> 4 of eps_t / 2, else 5 of
#: eps_t / 2), written as fractions of the run.
GKL_INTENDED_PHASES: tuple[tuple[float, int, float], ...] = (
    (0.25, 2, 1.0),
    (0.50, 3, 2.0 / 3.0),
    (0.75, 4, 0.5),
    (1.00, 5, 0.5),
)


class PhasedBudget(BudgetSchedule):
    """Step count and step ratio by phase of the run, with an optional linear eps ramp.

    ``phases``: ``(until_fraction, steps, step_ratio)`` rows with increasing fractions, the last
    equal to 1. Epoch ``t`` of ``E`` uses the first row with ``t <= until_fraction * E``. With
    ``ramp`` the radius is ``eps * t / E`` (as in GKL-AT), otherwise ``eps``.

    The default phases are the *intended* official GKL-AT schedule. The official code does not run
    it: its phase thresholds are chained ``if`` blocks rather than ``elif`` (DKLv2
    ``train_dkl_cifar10.py`` lines 258-273, docs/gkl.md §10, oddity 1), so the last block always wins and
    every epoch uses 5 steps of ``eps_t / 2``. To reproduce the shipped behaviour use
    ``LinearEpsRamp(eps, steps=5, step_ratio=0.5)``; use this class for the intended one.
    """

    def __init__(
        self,
        eps: float,
        phases: Sequence[Sequence[float]] = GKL_INTENDED_PHASES,
        ramp: bool = True,
    ) -> None:
        self.eps = _positive("eps", eps)
        if not isinstance(ramp, bool):
            raise ConfigError(f"ramp={ramp!r} must be true or false")
        self.ramp = ramp
        rows: list[tuple[float, int, float]] = []
        for index, row in enumerate(phases):
            if len(row) != 3:
                raise ConfigError(
                    f"phases[{index}]={list(row)!r} must be [until_fraction, steps, step_ratio]"
                )
            until = as_number(f"phases[{index}] until_fraction", row[0])
            previous = rows[-1][0] if rows else 0.0
            if not previous < until <= 1.0:
                raise ConfigError(
                    f"phases[{index}] until_fraction={until:g} must be in ({previous:g}, 1]; "
                    "fractions must increase"
                )
            rows.append(
                (
                    until,
                    as_count(f"phases[{index}] steps", row[1]),
                    _ratio(f"phases[{index}] step_ratio", row[2]),
                )
            )
        if not rows or rows[-1][0] != 1.0:
            raise ConfigError("the last phase must end at until_fraction 1.0 to cover every epoch")
        self.phases: tuple[tuple[float, int, float], ...] = tuple(rows)

    def __call__(self, epoch: int, total_epochs: int) -> AttackBudget:
        _check_epoch(epoch, total_epochs)
        eps_t = self.eps * epoch / total_epochs if self.ramp else self.eps
        for until, steps, ratio in self.phases:
            # Tolerance so that e.g. 0.25 * 200 = 50.000000000000004 still includes epoch 50.
            if epoch <= until * total_epochs + 1e-9:
                return AttackBudget(eps_t, ratio * eps_t, steps)
        raise AssertionError("unreachable: the last phase ends at 1.0")

    def __repr__(self) -> str:
        return f"PhasedBudget(eps={self.eps:g}, phases={list(self.phases)!r}, ramp={self.ramp})"
