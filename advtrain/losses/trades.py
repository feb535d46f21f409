"""TRADES (Zhang et al., 2019): natural cross-entropy plus beta * KL(p_nat || p_adv)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from advtrain.losses.base import (
    LossOutput,
    Objective,
    RobustLoss,
    as_float,
    check_logits,
    check_nonneg,
    require_natural,
)

_REDUCTIONS = ("batchmean", "sum", "none")


def trades_kl(logits_adv: Tensor, logits_nat: Tensor, reduction: str = "batchmean") -> Tensor:
    """KL(softmax(nat) || softmax(adv)), i.e. ``F.kl_div(log_softmax(adv), softmax(nat))``.

    Computed with ``log_target=True`` (same value): with a probability target, a class whose
    natural probability underflows to 0 makes the target's gradient ``0 * log 0`` = NaN, while its
    log-probability stays finite. Gradient flows into both arguments, as in the official TRADES
    code; detach ``logits_nat`` yourself where it must be a constant.

    ``reduction``: ``"batchmean"`` (sum / B, the TRADES training term), ``"sum"`` (the TRADES attack
    loss) or ``"none"`` (per-sample KL, shape (B,)).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    log_p_adv = F.log_softmax(as_float(logits_adv), dim=1)
    log_p_nat = F.log_softmax(as_float(logits_nat), dim=1)
    per_class = F.kl_div(log_p_adv, log_p_nat, reduction="none", log_target=True)
    per_sample = per_class.sum(dim=1)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total / logits_adv.shape[0] if reduction == "batchmean" else total


def kl_objective(logits_adv: Tensor, y: Tensor, logits_nat: Tensor | None = None) -> Tensor:
    """The TRADES attack target: per-sample KL(p_nat || p_adv) with the natural side constant.

    ``y`` is unused (TRADES' attack is label-free); it is accepted for the common signature.
    """
    nat = require_natural(logits_nat, "the TRADES KL attack objective")
    return trades_kl(logits_adv, nat.detach(), reduction="none")


class TRADESLoss(RobustLoss):
    """``CE(logits_nat, y) + beta * KL(p_nat || p_adv)`` (batchmean), gradient through both sides.

    ``beta`` 6.0 is TRADES' CIFAR-10 value; the DKL repository's CIFAR-100 baseline uses 9.0.
    """

    needs_natural = True

    def __init__(self, beta: float = 6.0) -> None:
        super().__init__()
        self.beta = check_nonneg("beta", beta, "TRADESLoss")

    def forward(
        self,
        logits_adv: Tensor,
        logits_nat: Tensor | None,
        y: Tensor,
        *,
        update_state: bool = True,
    ) -> LossOutput:
        """Return the TRADES loss; metrics ``ce`` (natural CE), ``kl`` and ``robust`` (beta*kl)."""
        nat = require_natural(logits_nat, "TRADESLoss")
        check_logits(logits_adv, nat, y)
        ce = F.cross_entropy(as_float(nat), y)
        kl = trades_kl(logits_adv, nat, reduction="batchmean")
        robust = self.beta * kl
        metrics = {"ce": ce.detach(), "kl": kl.detach(), "robust": robust.detach()}
        return LossOutput(loss=ce + robust, metrics=metrics)

    def attack_objective(self) -> Objective:
        """TRADES' attack maximises the per-sample KL to the (constant) natural prediction."""
        return kl_objective

    @property
    def attack_needs_natural(self) -> bool:
        """The KL objective compares against the natural logits."""
        return True

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
