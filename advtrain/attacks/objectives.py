"""Attack objectives: per-sample values that the attack MAXIMISES.

Signature ``(logits_adv, y, logits_nat | None) -> Tensor (B,)``. Per-sample (not a batch mean) so
that the attack can sum them for one gradient call (the samples do not interact in eval mode) and
still pick, per example, the best of several restarts.

An objective may carry the attribute ``needs_natural`` (bool). ``False`` lets :func:`pgd` skip the
natural forward pass; an objective without the attribute is treated as needing the natural logits,
which costs one extra forward per attack but is never wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch.nn.functional as F
from torch import Tensor

from advtrain.errors import ConfigError

__all__ = ["OBJECTIVES", "Objective", "ce", "cw", "dlr", "get_objective", "kl", "needs_natural"]

Objective = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]

_F = TypeVar("_F", bound=Callable[..., Any])


def _declare(*, natural: bool) -> Callable[[_F], _F]:
    """Attach ``needs_natural`` to a built-in objective."""

    def wrap(fn: _F) -> _F:
        fn.needs_natural = natural  # type: ignore[attr-defined]
        return fn

    return wrap


def needs_natural(objective: Callable[..., Tensor]) -> bool:
    """Whether ``objective`` reads ``logits_nat``; unknown callables are assumed to (the safe side)."""
    return bool(getattr(objective, "needs_natural", True))


def _label_logit_and_best_other(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``(z_y, max_{j != y} z_j)`` per sample."""
    z_y = logits.gather(1, y.unsqueeze(1)).squeeze(1)
    is_label = F.one_hot(y, logits.shape[1]).bool()
    best_other = logits.masked_fill(is_label, float("-inf")).amax(dim=1)
    return z_y, best_other


@_declare(natural=False)
def ce(logits_adv: Tensor, y: Tensor, logits_nat: Tensor | None = None) -> Tensor:
    """Cross-entropy of the adversarial logits (PGD-AT, Madry et al.)."""
    return F.cross_entropy(logits_adv, y, reduction="none")


@_declare(natural=True)
def kl(logits_adv: Tensor, y: Tensor, logits_nat: Tensor | None = None) -> Tensor:
    """TRADES attack target ``KL(softmax(logits_nat) || softmax(logits_adv))`` per sample.

    The natural side is detached: the attack moves only ``x_adv``, and a stray graph through the
    natural pass would keep its activations alive for nothing. ``y`` is unused (label-free).
    """
    if logits_nat is None:
        raise ConfigError(
            "objective 'kl' needs the natural logits; pass logits_nat= (pgd computes them itself)"
        )
    log_p_nat = F.log_softmax(logits_nat.detach(), dim=1)
    log_p_adv = F.log_softmax(logits_adv, dim=1)
    return F.kl_div(log_p_adv, log_p_nat, reduction="none", log_target=True).sum(dim=1)


@_declare(natural=False)
def cw(logits_adv: Tensor, y: Tensor, logits_nat: Tensor | None = None) -> Tensor:
    """Carlini-Wagner margin ``max_{j != y} z_j - z_y``: positive exactly when misclassified."""
    z_y, best_other = _label_logit_and_best_other(logits_adv, y)
    return best_other - z_y


@_declare(natural=False)
def dlr(logits_adv: Tensor, y: Tensor, logits_nat: Tensor | None = None) -> Tensor:
    """Croce & Hein's difference of logits ratio ``-(z_y - max_{j != y} z_j) / (z_(1) - z_(3))``.

    ``z_(k)`` is the k-th largest logit. Dividing the margin by a logit spread makes it invariant to
    shifting and rescaling the logits, so gradient masking by logit scale cannot hide a model's
    weakness. It needs at least 3 classes (for ``z_(3)``).
    """
    num_classes = logits_adv.shape[1]
    if num_classes < 3:
        raise ConfigError(
            f"objective 'dlr' needs >= 3 classes, got {num_classes}; use 'cw' instead"
        )
    z_y, best_other = _label_logit_and_best_other(logits_adv, y)
    top3 = logits_adv.topk(3, dim=1).values
    spread = top3[:, 0] - top3[:, 2] + 1e-12
    return (best_other - z_y) / spread


OBJECTIVES: dict[str, Objective] = {"ce": ce, "kl": kl, "cw": cw, "dlr": dlr}


def get_objective(objective: str | Objective) -> Objective:
    """The objective named ``objective`` (see :data:`OBJECTIVES`), or the callable itself."""
    if callable(objective):
        return objective
    if isinstance(objective, str) and objective.lower() in OBJECTIVES:
        return OBJECTIVES[objective.lower()]
    raise ConfigError(
        f"unknown attack objective {objective!r}; use one of {', '.join(OBJECTIVES)} or a callable"
    )
