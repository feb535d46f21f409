"""The contract between the training loop and the training tricks (callbacks).

A callback sees the loop through :class:`LoopState` (a Protocol the Trainer satisfies), never the
Trainer class itself: this module imports nothing from trainer.py, so callbacks and trainer do not
import each other. Every hook the loop calls is a method of :class:`Callback` with a no-op default;
the loop calls each hook on every callback and never asks which callback it is (no names, no
attribute probing).

Order per epoch: `on_epoch_start` -> per batch: attack -> `before_update` -> forward / loss /
backward / optimiser step -> `after_update` -> `on_epoch_end` (before validation and the epoch
checkpoint). A run resumed in the middle of an epoch calls `on_epoch_resume` instead of
`on_epoch_start` for that epoch.

No host sync per step: `after_update` runs for every batch, also one whose update was dropped
(non-finite loss or gradient). `batch.applied` is then a 0-d bool tensor on the device, false for
a dropped batch; by then the trainer has already put the weights back as they were before the
optimiser step (so AWP's perturbation is still on them and AWP removes it as usual). A callback
that changes state per step makes that change conditional on `batch.applied` with tensor ops
(`torch.where`, a weight multiplied by it), never with `if batch.applied:` (a device sync).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from advtrain.attacks.pgd import PGDAttack
    from advtrain.losses.base import RobustLoss

__all__ = ["Batch", "Callback", "LoopState"]


@dataclass
class Batch:
    """One training batch as the callbacks see it (`x_adv` is set once the attack has run)."""

    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor | None = None
    #: 0-d bool device tensor, set before `after_update`: whether this batch's update was applied.
    #: None outside the trainer (then treat the update as applied).
    applied: torch.Tensor | None = None


class LoopState(Protocol):
    """What a callback may read or use from the running loop."""

    #: The current epoch (1-based) and the last one.
    epoch: int
    epochs: int
    #: The plain module being trained (not the DDP / compiled wrapper): weights to perturb or average.
    unwrapped_model: nn.Module
    #: The run's training loss (AWP's proxy step reuses it) and training attack (its budget).
    loss: RobustLoss
    attack: PGDAttack

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision of the natural forward pass."""
        ...

    def attack_autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The precision of the attack and of the adversarial forward pass."""
        ...


class Callback:
    """Base class of the training tricks: every hook is a no-op until overridden.

    `name` keys the callback's `state_dict()` in the checkpoint (so it must be stable); the loop
    never branches on it.
    """

    name: str = "callback"

    def on_epoch_start(self, loop: LoopState, epoch: int) -> None:
        """Before the first batch of `epoch`."""

    def on_epoch_resume(self, loop: LoopState, epoch: int) -> None:
        """A run resumes in the middle of `epoch`: re-establish what `on_epoch_start` set up that
        the checkpoint does not hold (e.g. the attack budget), without repeating per-epoch work."""

    def before_update(self, loop: LoopState, batch: Batch) -> None:
        """After the attack, before the training forward pass of `batch`."""

    def after_update(self, loop: LoopState, batch: Batch) -> None:
        """After the optimiser step of `batch`, for every batch: where `batch.applied` is false the
        step was dropped and the weights are as `before_update` left them (see the module notes)."""

    def on_epoch_end(self, loop: LoopState, epoch: int) -> None:
        """After the last batch of `epoch`, before validation and the epoch checkpoint."""

    def averaged_model(self) -> nn.Module | None:
        """The weight average this callback maintains, once it holds one; None otherwise.

        The trainer evaluates and exports the last callback's average that is not None (so an epoch
        average listed after an EMA wins), saves it as the checkpoint's `ema`, and keeps its buffers
        per rank under DDP.
        """
        return None

    def state_dict(self) -> dict[str, Any]:
        """What resume needs to continue exactly (saved under `name` in the checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`."""
