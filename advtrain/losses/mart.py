"""MART (Wang et al., ICLR 2020): boosted CE on adversarial examples plus a
misclassification-weighted KL, exactly as the official ``mart_loss`` computes it.

Per sample, with p = softmax(adv), q = softmax(nat) and y' the strongest wrong class of p::

    BCE   = CE(adv, y) - log(1.0001 - p_y' + 1e-12)
    KL    = sum_k q_k (log q_k - log(p_k + 1e-12))
    total = BCE + beta * KL * (1.0000001 - q_y)

averaged over the batch. The constants are the official code's guards (YisenWang/MART ``mart.py``): they
keep the logarithms finite when the softmax saturates, and they change the loss there by far more than
rounding (at p_y' = 1 the boosted term is -log(1e-4) = 9.2 instead of +inf, and its gradient is bounded by
1e4 instead of growing without limit), so they are part of the method as published and are reproduced.
The cross-entropy is the exact log-softmax one, as in the official code. As there, the natural logits are
not detached: they receive gradient through the KL and through the weight ``1 - q_y``.

One deliberate difference: ``q_k log q_k`` is computed as ``q_k * log_softmax(nat)_k``, equal in value and
gradient wherever q_k > 0; where q_k underflows to 0 (a natural logit gap beyond the float range) the
official ``KLDivLoss`` gradient is NaN and ours is 0.
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

#: The official guards: log(1.0001 - p + 1e-12) in the boosted term, log(p + 1e-12) in the KL, and the
#: weight 1.0000001 - q_y.
BOOST_SHIFT = 1.0001
LOG_GUARD = 1e-12
WEIGHT_SHIFT = 1.0000001


def strongest_wrong_class(logits_adv: Tensor, y: Tensor) -> Tensor:
    """Per sample, the most probable class other than ``y`` (the official top-2 ``argsort`` choice)."""
    z = as_float(logits_adv)
    return z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).argmax(dim=1)


def boosted_term(logits_adv: Tensor, y: Tensor) -> Tensor:
    """Per-sample ``-log(1.0001 - p_y' + 1e-12)``, p = softmax(logits_adv), y' the strongest wrong class."""
    z = as_float(logits_adv)
    p_wrong = F.softmax(z, dim=1).gather(1, strongest_wrong_class(z, y)[:, None]).squeeze(1)
    return -torch.log(BOOST_SHIFT - p_wrong + LOG_GUARD)


def mart_kl(logits_adv: Tensor, logits_nat: Tensor) -> Tensor:
    """Per-sample ``sum_k q_k (log q_k - log(p_k + 1e-12))``, both sides differentiable."""
    adv, nat = as_float(logits_adv), as_float(logits_nat)
    log_q = F.log_softmax(nat, dim=1)
    q = log_q.exp()
    log_p = torch.log(F.softmax(adv, dim=1) + LOG_GUARD)
    return (q * log_q - q * log_p).sum(dim=1)


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
        bce = F.cross_entropy(adv, y) + boosted_term(adv, y).mean()
        q_true = F.softmax(nat, dim=1).gather(1, y[:, None]).squeeze(1)
        kl = (mart_kl(adv, nat) * (WEIGHT_SHIFT - q_true)).mean()
        robust = self.beta * kl
        metrics = {"bce": bce.detach(), "kl": kl.detach(), "robust": robust.detach()}
        return LossOutput(loss=bce + robust, metrics=metrics)

    def attack_objective(self) -> Objective:
        """MART generates its training examples with a cross-entropy PGD attack."""
        return ce_objective

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
