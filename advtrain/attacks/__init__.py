"""Adversarial attacks: norm balls, objectives, the PGD loop and training-budget schedules.

``pgd(model, x, y, eps=..., step_size=..., steps=...)`` is the functional form and
:class:`PGDAttack` the configured object the trainer and evaluator hold.
"""

from __future__ import annotations

from advtrain.attacks.objectives import (
    OBJECTIVES,
    Objective,
    ce,
    cw,
    dlr,
    get_objective,
    kl,
    needs_natural,
)
from advtrain.attacks.pgd import PGDAttack, check_budget, fgsm, model_mode, pgd, start_mode
from advtrain.attacks.schedule import (
    GKL_INTENDED_PHASES,
    AttackBudget,
    BudgetSchedule,
    ConstantBudget,
    LinearEpsRamp,
    PhasedBudget,
)
from advtrain.attacks.threat import L2Ball, LinfBall, ThreatModel, make_threat, normalize_norm

__all__ = [
    "GKL_INTENDED_PHASES",
    "OBJECTIVES",
    "AttackBudget",
    "BudgetSchedule",
    "ConstantBudget",
    "L2Ball",
    "LinearEpsRamp",
    "LinfBall",
    "Objective",
    "PGDAttack",
    "PhasedBudget",
    "ThreatModel",
    "ce",
    "check_budget",
    "cw",
    "dlr",
    "fgsm",
    "get_objective",
    "kl",
    "make_threat",
    "model_mode",
    "needs_natural",
    "normalize_norm",
    "pgd",
    "start_mode",
]
