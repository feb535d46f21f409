"""Adversarial-training losses: PGD-AT, TRADES, MART, GKL and IKL.

Every loss is a :class:`RobustLoss` working on logits; ``LOSSES`` maps the config name to the class.
"""

from __future__ import annotations

from typing import Any

from advtrain.errors import ConfigError
from advtrain.losses.base import LossOutput, Objective, RobustLoss
from advtrain.losses.ce import PGDATLoss, ce_objective
from advtrain.losses.gkl import (
    ClassWeightTracker,
    GKLLoss,
    IKLLoss,
    gkl_components,
    gkl_kd_loss,
    gkl_loss,
    ikl_loss,
    soft_cross_entropy,
)
from advtrain.losses.mart import MARTLoss
from advtrain.losses.trades import TRADESLoss, kl_objective, trades_kl

#: Config name -> loss class.
LOSSES: dict[str, type[RobustLoss]] = {
    "pgdat": PGDATLoss,
    "trades": TRADESLoss,
    "mart": MARTLoss,
    "gkl": GKLLoss,
    "ikl": IKLLoss,
}


def build_loss(name: str, **kwargs: Any) -> RobustLoss:
    """Instantiate the loss registered as ``name`` with ``kwargs``; config mistakes -> ConfigError."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    try:
        return LOSSES[name](**kwargs)
    except TypeError as exc:  # an unknown or missing keyword in the loss config
        raise ConfigError(f"bad arguments for loss {name!r}: {exc}") from exc


__all__ = [
    "LOSSES",
    "ClassWeightTracker",
    "GKLLoss",
    "IKLLoss",
    "LossOutput",
    "MARTLoss",
    "Objective",
    "PGDATLoss",
    "RobustLoss",
    "TRADESLoss",
    "build_loss",
    "ce_objective",
    "gkl_components",
    "gkl_kd_loss",
    "gkl_loss",
    "ikl_loss",
    "kl_objective",
    "soft_cross_entropy",
    "trades_kl",
]
