"""MART (Wang et al., ICLR 2020): boosted CE on adversarial examples plus a
misclassification-weighted KL.

Per sample, with p = softmax(adv) and q = softmax(nat)::

    BCE   = -log p_y - log(1 - max_{k != y} p_k)
    total = BCE + beta * KL(q || p) * (1 - q_y)

averaged over the batch. The official code evaluates ``log(1.0001 - p + 1e-12)`` and
``log(p + 1e-12)``; we compute the same quantities exactly and stably in log space
(``log(1 - p_k) = logsumexp_{j != k} z_j - logsumexp_j z_j``), which differs from the official
values only by those fudge constants (about 1e-4 relative) and never produces ``log 0``.
As in the official code the natural logits are not detached: they receive gradient through both
the KL and the weight ``1 - q_y``.
"""

from __future__ import annotations

import torch
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
from advtrain.losses.ce import ce_objective
from advtrain.losses.trades import trades_kl


def boosted_term(logits_adv: Tensor, y: Tensor) -> Tensor:
    """Per-sample ``-log(1 - max_{k != y} softmax(logits_adv)_k)``, computed in log space."""
    z = as_float(logits_adv)
    true_mask = F.one_hot(y, z.shape[1]).bool()
    # The strongest wrong class (MART's argsort trick: top-1 unless it is y, then top-2).
    other = z.masked_fill(true_mask, float("-inf")).argmax(dim=1)
    rest = z.scatter(1, other[:, None], float("-inf"))  # every class except that wrong one
    log_one_minus = torch.logsumexp(rest, dim=1) - torch.logsumexp(z, dim=1)
    return -log_one_minus


class MARTLoss(RobustLoss):
    """The MART loss; the training attack maximises plain cross-entropy (as in the paper's code)."""

    needs_natural = True

    def __init__(self, beta: float = 6.0) -> None:
        super().__init__()
        self.beta = check_nonneg("beta", beta, "MARTLoss")

    def forward(
        self,
        logits_adv: Tensor,
        logits_nat: Tensor | None,
        y: Tensor,
        *,
        update_state: bool = True,
    ) -> LossOutput:
        """Return the MART loss; metrics ``bce`` (boosted CE), ``kl`` (weighted KL) and ``robust``."""
        nat = require_natural(logits_nat, "MARTLoss")
        check_logits(logits_adv, nat, y)
        adv = as_float(logits_adv)
        nat = as_float(nat)
        bce = (F.cross_entropy(adv, y, reduction="none") + boosted_term(adv, y)).mean()
        q_true = F.softmax(nat, dim=1).gather(1, y[:, None]).squeeze(1)
        kl = (trades_kl(adv, nat, reduction="none") * (1.0 - q_true)).mean()
        robust = self.beta * kl
        metrics = {"bce": bce.detach(), "kl": kl.detach(), "robust": robust.detach()}
        return LossOutput(loss=bce + robust, metrics=metrics)

    def attack_objective(self) -> Objective:
        """MART generates its training examples with a cross-entropy PGD attack."""
        return ce_objective

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
