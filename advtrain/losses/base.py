"""The contract every training loss follows, plus the small helpers they share.

A robust loss works on *logits*, never on ``(model, x, y)``: the training attack, the AWP proxy step
and the outer loss all evaluate the same divergence on different forward passes, so the loss must
not own an attack or an optimiser (the fused design of many research repos makes that impossible).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from advtrain.errors import ConfigError

#: What the training attack maximises: ``(logits_adv, y, logits_nat | None) -> (B,)`` per-sample
#: values. Per-sample (not batch-mean) so the attack can pick the best restart for each example.
Objective = Callable[[Tensor, Tensor, Tensor | None], Tensor]


@dataclass
class LossOutput:
    """A training loss and its detached parts.

    ``loss`` is the scalar to back-propagate; ``metrics`` holds detached scalar tensors (not floats,
    so logging them does not force a device sync on every step).
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


class RobustLoss(nn.Module):
    """Base class of the adversarial-training losses.

    Subclasses set ``needs_natural`` (False lets the trainer skip the natural forward pass, as in
    PGD-AT) and implement :meth:`forward` and :meth:`attack_objective`. Any state (GKL's class-weight
    matrix) lives in buffers so that ``state_dict()`` saves it with the checkpoint.
    """

    #: Whether :meth:`forward` uses ``logits_nat``; the trainer skips the natural forward if not.
    needs_natural: ClassVar[bool] = True

    def forward(
        self,
        logits_adv: Tensor,
        logits_nat: Tensor | None,
        y: Tensor,
        *,
        update_state: bool = True,
    ) -> LossOutput:
        """Return the training loss.

        ``update_state=True`` also records the batch in the loss's running state (see
        :meth:`update_state`). ``update_state=False`` is for evaluations that must not count as
        training data (the AWP proxy step, a validation loss) and for callers that record the batch
        themselves once they know it is used: the trainer calls :meth:`update_state` with
        ``applied``, the device-side flag of a finite loss and gradient, so a skipped batch never
        feeds the state.
        """
        raise NotImplementedError

    def update_state(  # noqa: B027 - an optional hook, no-op by default
        self,
        logits_adv: Tensor,
        logits_nat: Tensor | None,
        y: Tensor,
        *,
        applied: Tensor | None = None,
    ) -> None:
        """Record a training batch in the running state (GKL's class-weight sums). Default: none.

        ``applied``: a 0-d bool tensor; where it is false the batch must leave no trace. Use it in
        tensor ops (``torch.where``, a mask): the trainer calls this every step and never reads the
        flag on the host (a device sync). None means record the batch.
        """

    def reset_running_state(self) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Forget what :meth:`update_state` recorded in the epoch in progress; keep the state already
        published (GKL's class matrix). The trainer calls it when partial sums restored from a
        checkpoint would otherwise be counted twice (a rank > 0 resuming a checkpoint written by a
        different number of processes). Default: nothing to forget.
        """

    def attack_objective(self) -> Objective:
        """The per-sample value the training attack maximises."""
        raise NotImplementedError

    @property
    def attack_needs_natural(self) -> bool:
        """Whether :meth:`attack_objective` reads ``logits_nat`` (the attack must then pass them)."""
        return False

    def on_epoch_start(self, epoch: int) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Called by the trainer before the first batch of ``epoch``."""

    def on_epoch_end(self, epoch: int) -> None:  # noqa: B027 - an optional hook, no-op by default
        """Called by the trainer after the last batch of ``epoch``."""


def as_float(x: Tensor) -> Tensor:
    """Upcast 16-bit logits to float32.

    Softmax/log-softmax and the squared logit differences of GKL lose most of their precision in
    half or bfloat16; the cast is differentiable, so the gradient still reaches the 16-bit logits.
    """
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


def check_logits(logits_adv: Tensor, logits_nat: Tensor | None, y: Tensor) -> None:
    """Raise a clear error for logits/labels whose shapes cannot belong together.

    These are programming errors of the caller (not user configuration), hence ``ValueError``.
    """
    if logits_adv.dim() != 2:
        raise ValueError(f"logits must be (batch, classes), got shape {tuple(logits_adv.shape)}")
    if logits_nat is not None and logits_nat.shape != logits_adv.shape:
        raise ValueError(
            f"natural and adversarial logits differ in shape: {tuple(logits_nat.shape)} vs "
            f"{tuple(logits_adv.shape)}"
        )
    if y.shape != (logits_adv.shape[0],):
        raise ValueError(
            f"labels must be ({logits_adv.shape[0]},) to match the logits, got {tuple(y.shape)}"
        )


def require_natural(logits_nat: Tensor | None, who: str) -> Tensor:
    """Return ``logits_nat`` or say that this loss needs the natural forward pass."""
    if logits_nat is None:
        raise ValueError(f"{who} needs the natural logits (logits_nat), got None")
    return logits_nat


def check_nonneg(name: str, value: float, owner: str) -> float:
    """Validate a loss weight from the config (negative weights flip what the loss optimises)."""
    value = float(value)
    if not value >= 0.0:  # also catches NaN
        raise ConfigError(
            f"{owner}: {name} must be >= 0, got {value}; fix loss.{name} in the config"
        )
    return value


def check_positive(name: str, value: float, owner: str) -> float:
    """Validate a strictly positive config value (temperatures)."""
    value = float(value)
    if not value > 0.0:
        raise ConfigError(
            f"{owner}: {name} must be > 0, got {value}; fix loss.{name} in the config"
        )
    return value
