"""The training loop: attack -> (callbacks) -> forward -> loss -> backward -> clip -> step -> (callbacks).

Everything method-specific lives in the loss (what to compute, what the attack maximises) and in callbacks
(AWP, averaging, eps schedules); this file only orders the passes, guards against non-finite values, validates,
logs and checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advtrain.engine.callbacks import Callback
from advtrain.engine.optim import LRSchedule, set_lr
from advtrain.errors import CheckpointError, NonFiniteLossError
from advtrain.eval.evaluate import clean_correct, pgd_correct
from advtrain.utils.checkpoint import save_checkpoint, strip_prefixes
from advtrain.utils.logging import MetricsLogger
from advtrain.utils.seed import rng_state, set_rng_state

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One training batch as the callbacks see it."""

    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor | None = None


@dataclass
class TrainerSettings:
    """The `trainer:` config group (see configs/trainer/default.yaml for the meaning of each field)."""

    epochs: int = 10
    grad_clip: float | None = None
    eval_every: int = 1
    val_examples: int = 1024
    val_pgd_steps: int = 10
    test_examples: int = 1000
    test_pgd_steps: int = 20
    checkpoint_every_steps: int | None = None
    keep_last: int = 2
    nonfinite: str = "stop"
    max_skipped_batches: int = 10
    progress: bool = True
    log_every_steps: int = 0


@dataclass
class EvalSet:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor


@dataclass
class _EpochStats:
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    examples: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def add(self, metrics: dict[str, float], n: int) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1
        self.examples += n

    def means(self) -> dict[str, float]:
        return {f"train_{k}": v / max(self.count, 1) for k, v in self.sums.items()}


class Trainer:
    """Runs adversarial training for `settings.epochs` epochs; resumable from any checkpoint it writes."""

    def __init__(
        self,
        *,
        model: nn.Module,
        loss: nn.Module,
        attack: Any,
        optimizer: torch.optim.Optimizer,
        lr_schedule: LRSchedule,
        train_loader: Any,
        val_set: EvalSet | None,
        test_set: EvalSet | None,
        callbacks: list[Callback],
        settings: TrainerSettings,
        run_dir: Path,
        device: torch.device,
        config: dict[str, Any],
        seed: int = 0,
        logger: MetricsLogger | None = None,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compiled_model: nn.Module | None = None,
        is_main_process: bool = True,
    ) -> None:
        self.unwrapped_model = model
        self.model = compiled_model if compiled_model is not None else model
        self.loss = loss
        self.attack = attack
        self.optimizer = optimizer
        self.lr_schedule = lr_schedule
        self.loader = train_loader
        self.val_set, self.test_set = val_set, test_set
        self.callbacks = callbacks
        self.settings = settings
        self.epochs = settings.epochs
        self.run_dir = Path(run_dir)
        self.device = device
        self.config = config
        self.logger = logger
        self.autocast_dtype = autocast_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.is_main = is_main_process
        self.attack_gen = torch.Generator(device=device).manual_seed(seed + 1)
        self.epoch = 1
        self.step = 0
        self.best: dict[str, Any] = {"val_pgd_acc": -1.0, "epoch": 0}
        self._stats = _EpochStats()

    # ----------------------------------------------------------------- helpers
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def eval_model(self) -> nn.Module:
        """The weights we select and report: the epoch average if any, else the EMA, else the raw model."""
        for cb in reversed(self.callbacks):
            module = getattr(cb, "module", None)
            if module is not None and getattr(cb, "initialised", False):
                return module
        return self.unwrapped_model

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    # ----------------------------------------------------------------- one step
    def train_step(self, x: torch.Tensor, y: torch.Tensor, iteration: int) -> dict[str, float] | None:
        """One adversarial step; returns its scalar metrics, or None if the batch was skipped (non-finite)."""
        lr = self.lr_schedule(self.epoch, iteration)
        set_lr(self.optimizer, lr)
        batch = Batch(x, y)
        with self.autocast():
            batch.x_adv = self.attack(
                self.model, x, y, objective=self.loss.attack_objective(), generator=self.attack_gen
            )
        for cb in self.callbacks:
            cb.before_update(self, batch)
        self.model.train()
        with self.autocast():
            logits_adv = self.model(batch.x_adv)
            logits_nat = self.model(x) if self.loss.needs_natural else None
            out = self.loss(logits_adv.float(), None if logits_nat is None else logits_nat.float(), y)
        loss = out.loss
        self.optimizer.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        if finite:
            loss.backward()
            if self.settings.grad_clip:
                gnorm = nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
            else:
                gnorm = None
            if gnorm is not None and not torch.isfinite(gnorm):
                finite = False
        if not finite:
            self._handle_nonfinite(out, lr)
            for cb in self.callbacks:  # undo AWP's perturbation even though we do not step
                if cb.name == "awp":
                    cb.after_update(self, batch)
            return None
        self.optimizer.step()
        for cb in self.callbacks:
            cb.after_update(self, batch)
        self.step += 1
        metrics = {"loss": loss.detach()}
        metrics.update(out.metrics)
        metrics["adv_acc"] = (logits_adv.detach().argmax(1) == y).float().mean()
        if logits_nat is not None:
            metrics["nat_acc"] = (logits_nat.detach().argmax(1) == y).float().mean()
        return {k: float(v) for k, v in metrics.items()}

    def _handle_nonfinite(self, out: Any, lr: float) -> None:
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in out.metrics.items())
        msg = (
            f"non-finite loss or gradient at epoch {self.epoch} step {self.step + 1} "
            f"(loss={float(out.loss.detach()):.4g}; {terms}; lr={lr:.4g})"
        )
        self._stats.skipped += 1
        if self.settings.nonfinite == "skip" and self._stats.skipped <= self.settings.max_skipped_batches:
            log.warning("%s: batch skipped (%d so far this epoch)", msg, self._stats.skipped)
            return
        raise NonFiniteLossError(
            msg + "; stopped, the last good checkpoint in "
            f"{self.run_dir / 'checkpoints'} is intact (lower optim.lr or set trainer.grad_clip)"
        )

    # ----------------------------------------------------------------- epochs
    def _batches(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        start = self.loader.state_dict()["batch_index"]
        it: Any = iter(self.loader)
        total = len(self.loader)
        if self.settings.progress and self.is_main:
            from tqdm import tqdm

            it = tqdm(it, total=total, initial=start, desc=f"epoch {self.epoch}/{self.epochs}",
                      leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(it, start=start):
            yield i, x, y

    def train_epoch(self) -> dict[str, float]:
        t0 = time.perf_counter()
        for i, x, y in self._batches():
            x, y = self._to_device(x, y)
            metrics = self.train_step(x, y, i)
            if metrics is not None:
                self._stats.add(metrics, len(y))
            every = self.settings.checkpoint_every_steps
            if every and self.step % every == 0 and self.step > 0 and i + 1 < len(self.loader):
                self._stats.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                self.save()
            if self.settings.log_every_steps and self.logger and self.step % self.settings.log_every_steps == 0:
                self.logger.log({"epoch": self.epoch, "step": self.step, **(metrics or {})})
        self._stats.seconds += time.perf_counter() - t0
        out = self._stats.means()
        out.update(
            train_seconds=self._stats.seconds,
            train_images_per_s=self._stats.examples / max(self._stats.seconds, 1e-9),
            skipped_batches=self._stats.skipped,
        )
        return out

    def validate(self) -> dict[str, float]:
        if self.val_set is None or self.settings.val_examples <= 0:
            return {}
        n = min(self.settings.val_examples, len(self.val_set.labels))
        x, y = self.val_set.images[:n], self.val_set.labels[:n]
        model = self.eval_model
        eps = float(self.config["attack"]["eps"])
        clean = clean_correct(model, x, y)
        robust = pgd_correct(model, x, y, norm=self.attack.norm, eps=eps,
                             steps=self.settings.val_pgd_steps, seed=0)
        return {"val_clean_acc": clean.float().mean().item(), "val_pgd_acc": robust.float().mean().item()}

    def test(self) -> dict[str, float]:
        if self.test_set is None or self.settings.test_examples <= 0:
            return {}
        n = min(self.settings.test_examples, len(self.test_set.labels))
        x, y = self.test_set.images[:n], self.test_set.labels[:n]
        model = self.eval_model
        eps = float(self.config["attack"]["eps"])
        clean = clean_correct(model, x, y)
        robust = pgd_correct(model, x, y, norm=self.attack.norm, eps=eps,
                             steps=self.settings.test_pgd_steps, seed=0)
        return {
            "test_examples": n,
            "test_clean_acc": clean.float().mean().item(),
            f"test_pgd{self.settings.test_pgd_steps}_acc": robust.float().mean().item(),
        }

    def fit(self) -> dict[str, Any]:
        """Train to the last epoch (continuing a resumed run), then evaluate on the test subset."""
        record: dict[str, Any] = {}
        while self.epoch <= self.epochs:
            if self.loader.state_dict()["batch_index"] == 0:  # a fresh epoch (not a mid-epoch resume)
                self.loader.set_epoch(self.epoch)
                self._stats = _EpochStats()
                for cb in self.callbacks:
                    cb.on_epoch_start(self, self.epoch)
                self.loss.on_epoch_start(self.epoch)
            record = {"epoch": self.epoch, "step": self.step,
                      "lr": self.lr_schedule(self.epoch, 0),
                      "eps": float(self.attack.eps), "attack_steps": int(self.attack.steps)}
            record.update(self.train_epoch())
            self.loss.on_epoch_end(self.epoch)
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch)
            if self.epoch % self.settings.eval_every == 0 or self.epoch == self.epochs:
                record.update(self.validate())
            if self.logger:
                self.logger.log(record)
            log.info("epoch %d: %s", self.epoch, _fmt(record))
            improved = record.get("val_pgd_acc", -math.inf) > self.best["val_pgd_acc"]
            if improved:
                self.best = {"val_pgd_acc": record["val_pgd_acc"], "epoch": self.epoch}
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            path = self.save()
            if improved and path is not None:
                _link_atomic(path, self.run_dir / "best.pt")
        final = self.test()
        if final and self.logger:
            self.logger.log({"epoch": self.epochs, "step": self.step, "final": True, **final})
        return {**record, **final}

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        import advtrain

        ema = next((cb.module.state_dict() for cb in reversed(self.callbacks)
                    if getattr(cb, "module", None) is not None and getattr(cb, "initialised", False)), None)
        return {
            "model": strip_prefixes(self.unwrapped_model.state_dict()),
            "ema": None if ema is None else strip_prefixes(ema),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"epoch": self.epoch},
            "loss": self.loss.state_dict(),
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks},
            "loader": self.loader.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best": dict(self.best),
            "epoch_stats": {"sums": dict(self._stats.sums), "count": self._stats.count,
                            "examples": self._stats.examples, "skipped": self._stats.skipped,
                            "seconds": self._stats.seconds},
            "rng": {**rng_state(), "attack": self.attack_gen.get_state()},
            "config": self.config,
            "versions": {"advtrain": str(advtrain.__version__), "torch": str(torch.__version__)},
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        from advtrain.models import load_model_state

        load_model_state(self.unwrapped_model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.loss.load_state_dict(ckpt["loss"])
        for cb in self.callbacks:
            if cb.name in ckpt["callbacks"]:
                cb.load_state_dict(ckpt["callbacks"][cb.name])
        self.loader.load_state_dict(ckpt["loader"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.best = dict(ckpt["best"])
        s = ckpt["epoch_stats"]
        self._stats = _EpochStats(dict(s["sums"]), s["count"], s["examples"], s["skipped"], s["seconds"])
        set_rng_state(ckpt["rng"])
        self.attack_gen.set_state(ckpt["rng"]["attack"])
        if self.loader.state_dict()["batch_index"] > 0:  # mid-epoch: re-apply this epoch's attack budget
            for cb in self.callbacks:
                if cb.name == "attack_schedule":
                    cb.on_epoch_start(self, self.epoch)

    def save(self) -> Path | None:
        """Write a rolling checkpoint and point `last.pt` at it; only the main process writes."""
        if not self.is_main:
            return None
        ckdir = self.run_dir / "checkpoints"
        path = save_checkpoint(ckdir / f"step_{self.step:09d}.pt", self.state_dict())
        _link_atomic(path, self.run_dir / "last.pt")
        olds = sorted(ckdir.glob("step_*.pt"))
        for old in olds[: max(len(olds) - max(self.settings.keep_last, 1), 0)]:
            old.unlink(missing_ok=True)
        return path


def _link_atomic(src: Path, dst: Path) -> None:
    """Make `dst` a hard link to `src` atomically (a copy where hard links are impossible)."""
    import os
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _fmt(record: dict[str, Any]) -> str:
    keys = ("train_loss", "train_adv_acc", "val_clean_acc", "val_pgd_acc", "eps", "lr", "train_images_per_s")
    return " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)


def check_resume_compatible(ckpt_cfg: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Refuse to resume when the model or dataset changed (weights would not fit or mean something else)."""
    for key in ("model",):
        if ckpt_cfg.get(key) != cfg.get(key):
            raise CheckpointError(
                f"cannot resume: the {key} config changed (checkpoint: {ckpt_cfg.get(key)}, now: {cfg.get(key)})"
            )
    if ckpt_cfg.get("data", {}).get("name") != cfg.get("data", {}).get("name"):
        raise CheckpointError(
            f"cannot resume: dataset changed ({ckpt_cfg['data'].get('name')} -> {cfg['data'].get('name')})"
        )

