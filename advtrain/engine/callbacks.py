"""Training tricks as callbacks, so the loop itself has no method-specific branches.

The hooks and the order the trainer calls them in are defined in engine/hooks.py (`Callback`,
`LoopState`); the callbacks here see the loop only through that protocol. Each callback's
`state_dict()` goes into the checkpoint, so resume restores it exactly.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from advtrain.engine.hooks import Batch, Callback, LoopState
from advtrain.errors import ConfigError
from advtrain.losses.base import as_float
from advtrain.utils.distributed import average_gradients

__all__ = ["AWP", "AttackSchedule", "Callback", "EpochWeightAverage", "ModelEMA"]

log = logging.getLogger(__name__)


class AttackSchedule(Callback):
    """Sets the training attack's eps / step size / steps at the start of every epoch from a budget schedule."""

    name = "attack_schedule"

    def __init__(self, schedule: Any) -> None:
        self.schedule = schedule

    def on_epoch_start(self, loop: LoopState, epoch: int) -> None:
        loop.attack.set_budget(self.schedule(epoch, loop.epochs))

    def on_epoch_resume(self, loop: LoopState, epoch: int) -> None:
        # The budget is not in the checkpoint: it is a function of the epoch.
        self.on_epoch_start(loop, epoch)


class _Averaged(Callback):
    """Shared machinery of the weight averages: a frozen copy of the model whose tensors we blend."""

    def __init__(self, model: nn.Module) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.initialised = False

    @torch.no_grad()
    def _blend(self, model: nn.Module, keep: float, applied: torch.Tensor | None = None) -> None:
        """avg <- keep * avg + (1 - keep) * current for float tensors (BN stats too); ints are copied.

        `applied` (a 0-d bool device tensor) makes the blend a no-op where false, without a host sync.
        """
        src = model.state_dict()
        weights: dict[torch.dtype, torch.Tensor] = {}
        for k, v in self.module.state_dict().items():
            s = src[k].detach()
            if applied is None:
                if not self.initialised or not v.dtype.is_floating_point:
                    v.copy_(s)
                else:
                    v.lerp_(s.to(v.dtype), 1.0 - keep)
            elif not self.initialised or not v.dtype.is_floating_point:
                torch.where(applied, s.to(v.dtype), v, out=v)
            else:
                if v.dtype not in weights:
                    weights[v.dtype] = applied.to(v.dtype) * (1.0 - keep)
                v.lerp_(s.to(v.dtype), weights[v.dtype])
        self.initialised = True

    def averaged_model(self) -> nn.Module | None:
        return self.module if self.initialised else None

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.module.state_dict(), "initialised": self.initialised}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["state"])
        self.initialised = bool(state["initialised"])


class ModelEMA(_Averaged):
    """Iteration-level EMA of all weights and BN buffers (decay per optimiser step) from `start_epoch` on.

    Before `start_epoch` the EMA simply tracks the current weights, so it starts from them. The official GKL
    code's in-loop EMA (never saved, epoch 150 of 200) differs in one detail we do not copy: in its start epoch
    it stores the model's own tensors, not copies, so its first blend of the next epoch equals the current
    weights rather than 0.9996 * previous + 0.0004 * current (measured in results/official_equivalence/ema).
    """

    name = "ema"

    def __init__(self, model: nn.Module, decay: float, start_epoch: int = 1) -> None:
        super().__init__(model)
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"trainer.ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.start_epoch = start_epoch

    def after_update(self, loop: LoopState, batch: Batch) -> None:
        keep = self.decay if loop.epoch >= self.start_epoch else 0.0
        self._blend(loop.unwrapped_model, keep, batch.applied)


class EpochWeightAverage(_Averaged):
    """The official `swa.py` average, taken online: after each epoch avg = tau * avg + (1 - tau) * weights.

    The first epoch initialises the average (so epoch 1 ends with weight tau**(E-1)), BN running statistics are
    averaged like weights and not recalibrated, exactly as the official offline script over per-epoch checkpoints.
    """

    name = "weight_average"

    def __init__(self, model: nn.Module, tau: float) -> None:
        super().__init__(model)
        if not 0.0 < tau < 1.0:
            raise ConfigError(f"trainer.weight_average_tau must be in (0, 1), got {tau}")
        self.tau = tau

    def on_epoch_end(self, loop: LoopState, epoch: int) -> None:
        self._blend(loop.unwrapped_model, self.tau)


@dataclass
class _AWPDiff:
    params: list[nn.Parameter]
    diffs: list[torch.Tensor]


class AWP(Callback):
    """Adversarial Weight Perturbation (Wu et al. 2020) as in the official TRADES-AWP / GKL code.

    Per batch from `warmup_epochs` on: a proxy copy of the model (train mode) takes one SGD step that *increases*
    the training loss on (x_adv, x_nat); for every weight tensor of dimension > 1 whose name contains 'weight'
    the step is rescaled to the weight's norm, diff = ||w|| / (||delta|| + 1e-20) * delta; the model trains on
    w + gamma * diff and the perturbation is removed after the optimiser step. BN parameters are not perturbed.
    The loss is the run's own RobustLoss with `update_state=False`, so GKL's class-weight tracker sees only the
    real training forward. Under DDP the proxy is a plain (unwrapped) copy on every rank; its gradient is averaged
    over the ranks before the proxy step, so every rank applies the same perturbation, that of the global batch.
    """

    name = "awp"

    def __init__(
        self, model: nn.Module, gamma: float, warmup_epochs: int = 10, lr: float = 0.01
    ) -> None:
        if gamma <= 0:
            raise ConfigError(f"trainer.awp_gamma must be > 0, got {gamma}")
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs
        self.proxy = copy.deepcopy(model)
        self.proxy_opt = torch.optim.SGD(self.proxy.parameters(), lr=lr)
        self._applied: _AWPDiff | None = None

    def _names(self, model: nn.Module) -> list[str]:
        return [n for n, p in model.named_parameters() if p.dim() > 1 and "weight" in n]

    def before_update(self, loop: LoopState, batch: Batch) -> None:
        if loop.epoch < self.warmup_epochs:
            return
        model = loop.unwrapped_model
        self.proxy.load_state_dict(model.state_dict())
        self.proxy.train()
        # The trainer's precision policy: adversarial forward in the attack's precision (fp32 by
        # default), natural forward under trainer.autocast.
        with loop.attack_autocast():
            logits_adv = self.proxy(batch.x_adv)
        with loop.autocast():
            logits_nat = self.proxy(batch.x) if loop.loss.needs_natural else None
        out = loop.loss(
            as_float(logits_adv),
            None if logits_nat is None else as_float(logits_nat),
            batch.y,
            update_state=False,
        )
        self.proxy_opt.zero_grad(set_to_none=True)
        (-as_float(out.loss)).backward()
        # DDP: every rank applies the perturbation of the global batch, as a single process would.
        average_gradients(self.proxy.parameters())
        self.proxy_opt.step()
        names = set(self._names(model))
        proxy_params = dict(self.proxy.named_parameters())
        params, diffs = [], []
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n not in names:
                    continue
                delta = proxy_params[n] - p
                diff = p.norm() / (delta.norm() + 1e-20) * delta
                p.add_(diff, alpha=self.gamma)
                params.append(p)
                diffs.append(diff)
        self._applied = _AWPDiff(params, diffs)

    def after_update(self, loop: LoopState, batch: Batch) -> None:
        # Also for a dropped batch: the trainer has put the weights back to w + gamma * diff.
        self._restore()

    def _restore(self) -> None:
        """Remove the perturbation applied in `before_update` (if any)."""
        if self._applied is None:
            return
        with torch.no_grad():
            for p, d in zip(self._applied.params, self._applied.diffs):
                p.sub_(d, alpha=self.gamma)
        self._applied = None
