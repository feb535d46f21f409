"""The training step's non-finite guard and metric sums, kept on the device: no host sync per step.

On a GPU every read of a device value on the host (``bool(t)``, ``float(t)``, ``t.item()``) waits
for the whole launch queue to drain, and at millisecond step times such stalls can cost more than
the arithmetic. So the step never reads anything back:

* whether its update is applied is a 0-d bool tensor ``applied`` = (loss and, with clipping, the
  gradient norm are finite on every rank) and (the guard has not halted); the optimiser step always
  runs and :meth:`StepGuard.masked_step` puts back the parameters and optimiser state of a step
  that is not applied (``torch.where``, so NaN never leaks through), callbacks and the loss's
  running state make their own updates conditional on the same tensor;
* the step's metrics, its example count and, for a skipped step, the values its error message
  needs (loss, loss terms, learning rate, how many updates preceded it) are added to small device
  tensors;
* :meth:`StepGuard.read` reads all of it in one transfer, at the trainer's logging points (step
  logs, checkpoints, epoch end), where the trainer turns it into the same warnings and
  :class:`~advtrain.errors.NonFiniteLossError` messages a per-step check would have given.

With ``nonfinite=stop`` the first non-finite step *halts* the guard: from then on no update is
applied, so the weights, averages and loss state the error leaves behind are those before the bad
step, however many batches run until the next logging point. ``skip`` halts once an epoch has
skipped more than ``max_skipped_batches``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class SkippedStep:
    """A step whose update was not applied because a value was not finite."""

    #: Updates applied in the same interval before it.
    taken_before: int
    loss: float
    terms: dict[str, float]
    lr: float


@dataclass
class Interval:
    """What the steps since the previous :meth:`StepGuard.read` left on the device, read back."""

    steps: int
    sums: dict[str, float] = field(default_factory=dict)
    #: Updates applied, and the examples of those steps.
    taken: int = 0
    examples: int = 0
    skipped: list[SkippedStep] = field(default_factory=list)
    halted: bool = False
    #: The smallest and largest input pixel seen (inf/-inf when no input was watched).
    low: float = float("inf")
    high: float = float("-inf")


class StepGuard:
    """Device-side non-finite guard and metric sums of one trainer (see the module docstring)."""

    def __init__(self, device: torch.device, *, mode: str, max_skipped: int) -> None:
        self.device = device
        # float64 sums, as the host sums of a per-step reader would be (MPS has no float64).
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.configure(mode, max_skipped)
        self.halted = torch.zeros((), dtype=torch.bool, device=device)
        self.skipped_epoch = torch.zeros((), dtype=torch.int64, device=device)
        self._metric_keys: list[str] | None = None
        self._term_keys: list[str] | None = None
        self._saved: list[Tensor] = []
        self._reset_interval()

    def configure(self, mode: str, max_skipped: int) -> None:
        """Follow `trainer.nonfinite` / `trainer.max_skipped_batches` (host values, checked per step)."""
        self.mode, self.max_skipped = mode, int(max_skipped)
        slots = 1 if mode == "stop" else self.max_skipped + 1
        if slots != getattr(self, "slots", slots):
            self._records = None  # resized at the next decide (only before any record is kept)
        self.slots = slots

    # ------------------------------------------------------------------ interval
    def _reset_interval(self) -> None:
        z = self._z()
        self.steps = 0  # host count of steps since the last read (no device value behind it)
        self._sums: Tensor | None = None
        count = {"dtype": torch.int64, "device": self.device}
        self._taken = torch.zeros((), **count)  # updates applied
        self._examples = torch.zeros((), **count)  # their examples
        self._skipped = torch.zeros((), **count)
        self._records: Tensor | None = None
        self._range = torch.stack([torch.full((), v, **z) for v in (math.inf, -math.inf)])

    def new_epoch(self, skipped: int = 0) -> None:
        """Start an epoch's skip count at `skipped` (a mid-epoch resume restores it)."""
        self.skipped_epoch.fill_(int(skipped))

    def reset(self, skipped: int = 0) -> None:
        """Forget the unread interval and the halt (after loading a checkpoint)."""
        self.halted.fill_(False)
        self.new_epoch(skipped)
        self._reset_interval()

    # ------------------------------------------------------------------ per step
    def watch_range(self, x: Tensor) -> None:
        """Keep the smallest and largest input value on the device (NaN propagates)."""
        lo, hi = torch.aminmax(x.detach())
        mm = torch.stack([lo, hi]).to(self.dtype)
        self._range = torch.stack(
            [torch.minimum(self._range[0], mm[0]), torch.maximum(self._range[1], mm[1])]
        )

    def decide(self, finite: Tensor, loss: Tensor, terms: dict[str, Tensor], lr: float) -> Tensor:
        """Whether this step's update is applied (a 0-d bool device tensor); record it if not.

        `finite` must already agree over the ranks. A step that is not finite while the guard has
        not halted counts as skipped and has its loss, terms and lr recorded for the message.
        """
        if self._term_keys is None:
            self._term_keys = list(terms)
        halted = self.halted
        applied = finite & ~halted
        newly_bad = ~finite & ~halted
        slot = self._skipped
        values = torch.stack(
            [
                loss.detach().to(self.dtype),
                *(terms[k].detach().to(self.dtype) for k in self._term_keys),
                torch.full((), lr, dtype=self.dtype, device=self.device),
                self._taken.to(self.dtype),
            ]
        )
        if self._records is None or self._records.shape[0] != self.slots:
            self._records = torch.zeros(self.slots, values.numel(), **self._z())
        here = (torch.arange(self.slots, device=self.device) == slot) & newly_bad
        self._records = torch.where(here[:, None], values[None, :], self._records)
        self._skipped = slot + newly_bad.to(torch.int64)
        self.skipped_epoch += newly_bad.to(torch.int64)
        if self.mode == "stop":
            self.halted = halted | newly_bad
        else:
            self.halted = halted | (newly_bad & (self.skipped_epoch > self.max_skipped))
        self._taken = self._taken + applied.to(torch.int64)
        return applied

    def _z(self) -> dict[str, object]:
        return {"dtype": self.dtype, "device": self.device}

    @torch.no_grad()
    def masked_step(self, optimizer: torch.optim.Optimizer, applied: Tensor) -> None:
        """`optimizer.step()`, then put back every parameter and state tensor where not `applied`.

        State tensors the step created (momentum buffers at the first step) are zeroed instead,
        which is what a never-taken step leaves for SGD (its buffer starts as the first gradient).
        Tensors on another device than the flag (CPU step counters of some optimisers) cannot be
        put back without a sync and are left as the step made them.
        """
        before = self._tensors(optimizer)
        if len(self._saved) != len(before) or any(
            s.shape != t.shape or s.dtype != t.dtype for s, t in zip(self._saved, before)
        ):
            self._saved = [torch.empty_like(t) for t in before]
        if before:
            torch._foreach_copy_(self._saved, before)
        optimizer.step()
        known = {id(t) for t in before}
        for t, s in zip(before, self._saved):
            torch.where(applied, t, s, out=t)
        for t in self._tensors(optimizer):
            if id(t) not in known:
                torch.where(applied, t, torch.zeros_like(t), out=t)

    def _tensors(self, optimizer: torch.optim.Optimizer) -> list[Tensor]:
        out: list[Tensor] = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None and p not in optimizer.state:
                    continue
                out.append(p)
                for v in optimizer.state.get(p, {}).values():
                    if isinstance(v, Tensor) and v.device == p.device:
                        out.append(v)
        return out

    def tally(self, metrics: dict[str, Tensor], examples: int, applied: Tensor) -> None:
        """Add a step's metrics (0-d tensors) and examples to the interval, where `applied`."""
        if self._metric_keys is None:
            self._metric_keys = list(metrics)
        vec = torch.stack([metrics[k].detach().to(self.dtype) for k in self._metric_keys])
        vec = torch.where(applied, vec, torch.zeros_like(vec))  # NaN * 0 would be NaN
        self._sums = vec if self._sums is None else self._sums + vec
        self._examples = self._examples + applied.to(torch.int64) * int(examples)
        self.steps += 1

    # ------------------------------------------------------------------ read
    def read(self) -> Interval | None:
        """Everything since the previous read, in one device-to-host transfer; None if no step ran."""
        if self.steps == 0:
            return None
        keys = self._metric_keys or []
        sums = self._sums if self._sums is not None else torch.zeros(0, **self._z())
        records = self._records if self._records is not None else torch.zeros(0, 0, **self._z())
        parts: Sequence[Tensor] = [
            sums,
            self._taken[None],
            self._examples[None],
            self._skipped.to(self.dtype)[None],
            self.halted.to(self.dtype)[None],
            self._range,
            records.flatten(),
        ]
        flat = torch.cat([p.to(self.dtype) for p in parts]).cpu().tolist()
        k = len(keys)
        out = Interval(steps=self.steps)
        out.sums = dict(zip(keys, flat[:k]))
        out.taken, out.examples = int(flat[k]), int(flat[k + 1])
        skipped, out.halted = int(flat[k + 2]), bool(flat[k + 3])
        out.low, out.high = flat[k + 4], flat[k + 5]
        rec = flat[k + 6 :]
        width = records.shape[1] if records.dim() == 2 else 0
        terms = self._term_keys or []
        for i in range(min(skipped, self.slots)):
            row = rec[i * width : (i + 1) * width]
            out.skipped.append(
                SkippedStep(
                    taken_before=int(row[-1]),
                    loss=row[0],
                    terms=dict(zip(terms, row[1 : 1 + len(terms)])),
                    lr=row[-2],
                )
            )
        self._reset_interval()
        return out
