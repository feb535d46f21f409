"""PGD-AT (Madry et al., 2018): cross-entropy on the adversarial examples only."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from advtrain.losses.base import LossOutput, Objective, RobustLoss, check_logits


def ce_objective(logits_adv: Tensor, y: Tensor, logits_nat: Tensor | None = None) -> Tensor:
    """Per-sample cross-entropy of the adversarial logits (the PGD-AT and MART attack target).

    ``logits_nat`` is accepted and ignored so the callable fits the attack-objective signature.
    """
    return F.cross_entropy(logits_adv, y, reduction="none")


# The attack reads this to skip the natural forward pass (one saved pass per attack).
ce_objective.needs_natural = False  # type: ignore[attr-defined]


class PGDATLoss(RobustLoss):
    """Mean cross-entropy on adversarial logits; the natural forward pass is not needed."""

    needs_natural = False

    def forward(
        self,
        logits_adv: Tensor,
        logits_nat: Tensor | None,
        y: Tensor,
        *,
        update_state: bool = True,
    ) -> LossOutput:
        """Return ``CE(logits_adv, y)``; ``logits_nat`` may be None and is ignored."""
        check_logits(logits_adv, None, y)
        loss = F.cross_entropy(logits_adv, y)
        return LossOutput(loss=loss, metrics={"ce": loss.detach(), "robust": loss.detach()})

    def attack_objective(self) -> Objective:
        """PGD-AT's attack maximises the cross-entropy."""
        return ce_objective
