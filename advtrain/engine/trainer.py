"""The training loop: attack -> (callbacks) -> forward -> loss -> backward -> clip -> step -> (callbacks).

Everything method-specific lives in the loss (what to compute, what the attack maximises, its running
state) and in callbacks (AWP, averaging, eps schedules); this file only orders the passes, guards against
non-finite values, validates, logs and checkpoints. It reaches both only through their declared hooks
(engine/hooks.py `Callback`, losses/base.py `RobustLoss`): it never asks which callback or loss it runs.
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

from advtrain.engine.guard import Interval, StepGuard
from advtrain.engine.hooks import Batch, Callback
from advtrain.engine.optim import LRSchedule, set_lr
from advtrain.errors import ConfigError, DataError, NonFiniteLossError
from advtrain.eval.evaluate import clean_correct, pgd_correct
from advtrain.losses.base import RobustLoss, as_float
from advtrain.utils import distributed as dist_utils
from advtrain.utils.checkpoint import save_checkpoint, strip_prefixes
from advtrain.utils.distributed import DistEnv
from advtrain.utils.images import check_unit_range, likely_cause
from advtrain.utils.logging import MetricsLogger
from advtrain.utils.seed import rng_state, set_rng_state

log = logging.getLogger(__name__)


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

    def add(self, interval: Interval) -> None:
        """Fold in the applied steps of an interval read from the device."""
        for k, v in interval.sums.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += interval.taken
        self.examples += interval.examples

    def means(self) -> dict[str, float]:
        return {f"train_{k}": v / max(self.count, 1) for k, v in self.sums.items()}


class Trainer:
    """Runs adversarial training for `settings.epochs` epochs; resumable from any checkpoint it writes.

    Models: `model` is the plain module (weights, checkpoints, EMA/AWP, evaluation); the training forward goes
    through `ddp_model` (DistributedDataParallel) and/or `compiled_model` when given. The attack always runs on the
    unwrapped (possibly compiled) module: its forwards and input gradients must not trigger DDP's gradient
    all-reduce, and they need no communication since each rank attacks its own examples.

    Distributed (`dist_env.world_size > 1`): every rank runs this loop on its shard of each global batch; rank 0
    alone writes checkpoints, metrics and wandb; validation and the final test run on rank 0 while the others wait
    at a barrier; every collective (non-finite flag, epoch metrics, checkpoint state) is entered by all ranks at
    the same points, so a rank never waits for a collective the others skip.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        loss: RobustLoss,
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
        attack_autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compiled_model: nn.Module | None = None,
        is_main_process: bool = True,
        ddp_model: nn.Module | None = None,
        dist_env: DistEnv | None = None,
    ) -> None:
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(
                "the model has no trainable parameters (all requires_grad=False); unfreeze it before training"
            )
        self.unwrapped_model = model
        self.attack_model = compiled_model if compiled_model is not None else model
        if ddp_model is not None:
            self.model = torch.compile(ddp_model) if compiled_model is not None else ddp_model
        else:
            self.model = self.attack_model
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
        self.attack_autocast_dtype = attack_autocast_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.dist = dist_env or DistEnv()
        self.is_main = is_main_process and self.dist.is_main
        if attack_autocast_dtype is not None and self.is_main:
            name = {torch.bfloat16: "bf16"}.get(attack_autocast_dtype, str(attack_autocast_dtype))
            log.warning(
                "trainer.autocast_attack=%s: the training attack and the adversarial forward run under "
                "%s autocast, whose 8-bit mantissa rounds away perturbations below about 1/256 of the "
                "pixel value (the 0.001 N(0, 1) start, an early eps ramp): the attack's gradient signs "
                "can be close to random. The default (fp32) is what the official scripts run",
                name,
                name,
            )
        # Each rank draws its own attack noise (different examples); rank 0 of a 1-process run keeps seed + 1.
        self.attack_gen = torch.Generator(device=device).manual_seed(
            seed + 1 + 1_000_003 * self.dist.rank
        )
        # attack.objective=ce|kl|... (not null) wins over the loss's own attack objective.
        self._objective_override = (config.get("attack") or {}).get("objective") or None
        self.epoch = 1
        self.step = 0
        self.best: dict[str, Any] = {"val_pgd_acc": -1.0, "epoch": 0}
        self._stats = _EpochStats()
        self._guard = StepGuard(
            device, mode=settings.nonfinite, max_skipped=settings.max_skipped_batches
        )
        # `step` counts every train_step call between two `settle()` calls; settle() corrects it to
        # the updates actually applied (this is where the interval began).
        self._settled_step = 0
        self._inputs_checked = False
        self._logged_step = self._saved_step = -1

    # ----------------------------------------------------------------- helpers
    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision of the natural forward (and its backward): `trainer.autocast`."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def attack_autocast(self) -> contextlib.AbstractContextManager:
        """The precision of the attack and of the adversarial forward: fp32 unless `trainer.autocast_attack`.

        fp32 by default on every device, also when `trainer.autocast` puts the natural pass in bf16: the
        perturbations an attack starts from (x + 0.001 N(0, 1), eps_t of an early ramp epoch) are below bf16's
        resolution near pixel values of 0.5-1, so a bf16 attack follows rounding noise. TF32 matmuls and
        convolutions stay as PyTorch's defaults set them.
        """
        if self.attack_autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.attack_autocast_dtype)
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, enabled=False)

    def _averaged_model(self) -> nn.Module | None:
        """The last callback's weight average (an epoch average listed after the EMA wins), if any."""
        for cb in reversed(self.callbacks):
            module = cb.averaged_model()
            if module is not None:
                return module
        return None

    @property
    def eval_model(self) -> nn.Module:
        """The weights we select and report: the epoch average if any, else the EMA, else the raw model."""
        averaged = self._averaged_model()
        return self.unwrapped_model if averaged is None else averaged

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True)

    # ----------------------------------------------------------------- one step
    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, iteration: int
    ) -> dict[str, torch.Tensor]:
        """One adversarial step that reads nothing back from the device (no host sync).

        Returns the step's metrics as 0-d device tensors. Whether its update is applied is decided on
        the device (engine/guard.py): a step with a non-finite loss or gradient norm changes no weight,
        optimiser state, weight average or loss state, and is reported (a warning under
        `trainer.nonfinite=skip`, else NonFiniteLossError) by the next :meth:`settle`, which `fit` calls
        at every step log, checkpoint and epoch end. `step` counts calls until then. The first call also
        checks that the inputs are images in [0, 1] (one sync); later calls keep their range on the device.
        """
        lr = self.lr_schedule(self.epoch, iteration)
        set_lr(self.optimizer, lr)
        if not self._inputs_checked:
            check_unit_range(x, "training inputs")
            self._inputs_checked = True
        else:
            self._guard.watch_range(x)
        batch = Batch(x, y)
        objective = self._objective_override or self.loss.attack_objective()
        # Train mode before the attack: an attack with attack.eval_mode=false (Rice et al.'s PGD-AT) sees the
        # training model (BN batch statistics), also on the first step after a validation.
        self.model.train()
        with self.attack_autocast():
            # The range of x is watched here, not by a sync inside every attack.
            batch.x_adv = self.attack(
                self.attack_model,
                x,
                y,
                objective=objective,
                generator=self.attack_gen,
                check_range=False,
            )
        for cb in self.callbacks:
            cb.before_update(self, batch)
        self.model.train()
        with self.attack_autocast():
            logits_adv = self.model(batch.x_adv)
        with self.autocast():
            logits_nat = self.model(x) if self.loss.needs_natural else None
        # Upcast 16-bit logits only: a float64 run (the step-by-step comparison with the official script)
        # keeps float64, where .float() would round its loss to float32.
        logits_adv = as_float(logits_adv)
        if logits_nat is not None:
            logits_nat = as_float(logits_nat)
        # The loss's running state (GKL's class weights) is fed below, only where the step is applied.
        out = self.loss(logits_adv, logits_nat, y, update_state=False)
        loss = out.loss
        self.optimizer.zero_grad(set_to_none=True)
        # Every rank runs backward (DDP's gradient all-reduce needs all of them); a bad step is undone below.
        loss.backward()
        finite = torch.isfinite(loss.detach())
        if self.settings.grad_clip:
            gnorm = nn.utils.clip_grad_norm_(
                self.unwrapped_model.parameters(),
                self.settings.grad_clip,
                error_if_nonfinite=False,
            )
            # Gradients are all-reduced by now, so every rank sees the same norm.
            finite = finite & torch.isfinite(gnorm)
        # A MIN all-reduce of the flag tensor: every rank applies or drops the step together.
        finite = dist_utils.all_true_tensor(finite)
        self._guard.configure(self.settings.nonfinite, self.settings.max_skipped_batches)
        applied = self._guard.decide(finite, loss, out.metrics, lr)
        batch.applied = applied
        self._guard.masked_step(self.optimizer, applied)
        self.loss.update_state(logits_adv.detach(), _detach(logits_nat), y, applied=applied)
        for cb in self.callbacks:  # AWP removes its perturbation, the EMA blends where applied
            cb.after_update(self, batch)
        self.step += 1
        metrics = {"loss": loss.detach()}
        metrics.update(out.metrics)
        metrics["adv_acc"] = (logits_adv.detach().argmax(1) == y).float().mean()
        if logits_nat is not None:
            metrics["nat_acc"] = (logits_nat.detach().argmax(1) == y).float().mean()
        self._guard.tally(metrics, len(y), applied)
        return metrics

    def settle(self) -> Interval | None:
        """Read what the steps since the last call left on the device, in one transfer, and act on it.

        Folds their metrics into the epoch's, sets `step` to the number of updates applied, logs each
        skipped batch (`trainer.nonfinite=skip`) and raises NonFiniteLossError for a stopping one, or
        DataError for inputs outside [0, 1]. Returns the interval read (None if no step ran).
        """
        interval = self._guard.read()
        if interval is None:
            return None
        base = self._settled_step
        self._stats.add(interval)
        self.step = self._settled_step = base + interval.taken
        lo, hi = interval.low, interval.high
        if not (0.0 <= lo and hi <= 1.0) and not (lo == math.inf and hi == -math.inf):
            raise DataError(
                f"training inputs must be images in [0, 1], got values in [{lo:.4g}, {hi:.4g}]: "
                f"{likely_cause(lo, hi)}"
            )
        for bad in interval.skipped:
            self._report_nonfinite(bad, base)
        return interval

    def _report_nonfinite(self, bad: Any, base: int) -> None:
        terms = ", ".join(f"{k}={v:.4g}" for k, v in bad.terms.items())
        msg = (
            f"non-finite loss or gradient at epoch {self.epoch} step {base + bad.taken_before + 1} "
            f"(loss={bad.loss:.4g}; {terms}; lr={bad.lr:.4g})"
        )
        self._stats.skipped += 1
        if (
            self.settings.nonfinite == "skip"
            and self._stats.skipped <= self.settings.max_skipped_batches
        ):
            log.warning("%s: batch skipped (%d so far this epoch)", msg, self._stats.skipped)
            return
        if self.settings.nonfinite == "skip":
            msg += f"; more than trainer.max_skipped_batches={self.settings.max_skipped_batches} skipped this epoch"
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

            it = tqdm(
                it,
                total=total,
                initial=start,
                desc=f"epoch {self.epoch}/{self.epochs}",
                leave=False,
                dynamic_ncols=True,
            )
        for i, (x, y) in enumerate(it, start=start):
            yield i, x, y

    def train_epoch(self) -> dict[str, float]:
        t0 = time.perf_counter()
        log_every = self.settings.log_every_steps if self.logger else 0
        every = self.settings.checkpoint_every_steps
        for i, x, y in self._batches():
            x, y = self._to_device(x, y)
            metrics = self.train_step(x, y, i)
            # `step` counts steps until settle() corrects it to the updates applied: a multiple of an
            # interval triggers a settle, and the line or checkpoint goes out if the corrected count
            # still is one and its step was applied (not yet written for this count).
            # Step lines go out before the checkpoint of the same step, so a resumed run keeps exactly the
            # lines with step <= its checkpoint's step.
            if log_every and self.step % log_every == 0:
                self.settle()
                if self.step % log_every == 0 and self.step != self._logged_step:
                    self._logged_step = self.step
                    values = torch.stack([v.detach().double() for v in metrics.values()])
                    floats = dict(zip(metrics, values.cpu().tolist()))
                    self.logger.log({"epoch": self.epoch, "step": self.step, **floats})  # type: ignore[union-attr]
            if every and self.step % every == 0 and self.step > 0 and i + 1 < len(self.loader):
                self.settle()
                if self.step % every == 0 and self.step != self._saved_step:
                    self._stats.seconds += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save()
        self.settle()
        self._stats.seconds += time.perf_counter() - t0
        return self._epoch_summary()

    def _epoch_summary(self) -> dict[str, float]:
        """This epoch's mean training metrics over all ranks' batches, plus throughput and skipped batches."""
        s = self._stats
        keys = sorted(s.sums)
        # Every rank has the same keys (same loss) and the same number of batches.
        if self.dist.is_distributed:
            summed = dist_utils.all_reduce_sum(
                [*(s.sums[k] for k in keys), s.count, s.examples], self.device
            )
            sums, count, examples = dict(zip(keys, summed[: len(keys)])), summed[-2], summed[-1]
        else:
            sums, count, examples = s.sums, s.count, s.examples
        out = {f"train_{k}": sums[k] / max(count, 1) for k in keys}
        out.update(
            train_seconds=s.seconds,
            train_images_per_s=examples / max(s.seconds, 1e-9),
            skipped_batches=s.skipped,
        )
        return out

    def _main_only(self, fn: Any) -> dict[str, Any]:
        """Run `fn` on rank 0, hold the other ranks at a barrier, and give every rank rank 0's result."""
        result = fn() if self.is_main or not self.dist.is_distributed else {}
        if self.dist.is_distributed:
            dist_utils.barrier()
            result = dist_utils.broadcast_object(result if self.dist.is_main else None)
        return result

    def validate(self) -> dict[str, float]:
        """Clean and PGD accuracy of the selected weights on the held-out split; {} without one
        (data.val_size=0 trains on every image and skips validation)."""
        if self.val_set is None or self.settings.val_examples <= 0 or len(self.val_set.labels) == 0:
            return {}
        n = min(self.settings.val_examples, len(self.val_set.labels))
        x, y = self.val_set.images[:n], self.val_set.labels[:n]
        model = self.eval_model
        eps = float(self.config["attack"]["eps"])
        clean = clean_correct(model, x, y)
        robust = pgd_correct(
            model, x, y, norm=self.attack.norm, eps=eps, steps=self.settings.val_pgd_steps, seed=0
        )
        return {
            "val_clean_acc": clean.float().mean().item(),
            "val_pgd_acc": robust.float().mean().item(),
        }

    def test(self) -> dict[str, float]:
        if self.test_set is None or self.settings.test_examples <= 0:
            return {}
        n = min(self.settings.test_examples, len(self.test_set.labels))
        x, y = self.test_set.images[:n], self.test_set.labels[:n]
        model = self.eval_model
        eps = float(self.config["attack"]["eps"])
        clean = clean_correct(model, x, y)
        robust = pgd_correct(
            model, x, y, norm=self.attack.norm, eps=eps, steps=self.settings.test_pgd_steps, seed=0
        )
        return {
            "test_examples": n,
            "test_clean_acc": clean.float().mean().item(),
            f"test_pgd{self.settings.test_pgd_steps}_acc": robust.float().mean().item(),
        }

    def begin_epoch(self) -> None:
        """Start `self.epoch`: fresh epoch metrics, then the callbacks' and the loss's epoch-start hooks.

        `fit` calls it before an epoch's first batch; a caller driving `train_step` itself (the
        benchmarks) calls it once so the step runs with the epoch's attack budget and loss state.
        """
        self.settle()
        self._stats = _EpochStats()
        self._guard.new_epoch()
        for cb in self.callbacks:
            cb.on_epoch_start(self, self.epoch)
        self.loss.on_epoch_start(self.epoch)

    def _replicated_state(self) -> list[torch.Tensor]:
        """Tensors that must be bit-identical on every rank: parameters and the loss's state (GKL's W)."""
        return [*self.unwrapped_model.parameters(), *self.loss.state_dict().values()]

    def fit(self) -> dict[str, Any]:
        """Train to the last epoch (continuing a resumed run), then evaluate on the test subset.

        The model may come in either mode: every step trains in train mode, validation runs in eval mode, and
        the model is left in eval mode (ready for evaluation or export) when `fit` returns.
        """
        record: dict[str, Any] = {}
        while self.epoch <= self.epochs:
            # A fresh epoch (not a mid-epoch resume).
            if self.loader.state_dict()["batch_index"] == 0:
                self.loader.set_epoch(self.epoch)
                self.begin_epoch()
            # The epoch's schedule as the run applies it: the lr of its first step and the attack budget.
            record = {
                "epoch": self.epoch,
                "lr": self.lr_schedule(self.epoch, 0),
                "eps": float(self.attack.eps),
                "attack_steps": int(self.attack.steps),
                "attack_step_size": float(self.attack.step_size),
            }
            record.update(self.train_epoch())
            # The step the epoch ended at (= the epoch checkpoint's step).
            record["step"] = self.step
            self.loss.on_epoch_end(self.epoch)
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch)
            if self.dist.is_distributed:
                in_sync = dist_utils.replicas_agree(self._replicated_state())
                record["replicas_in_sync"] = in_sync
                if not in_sync:
                    log.error(
                        "epoch %d: parameters or loss state differ between ranks (desynchronised job)",
                        self.epoch,
                    )
            if self.epoch % self.settings.eval_every == 0 or self.epoch == self.epochs:
                record.update(self._main_only(self.validate))
            if self.logger:
                self.logger.log(record)
            if self.is_main:
                log.info("epoch %d: %s", self.epoch, _fmt(record))
            improved = record.get("val_pgd_acc", -math.inf) > self.best["val_pgd_acc"]
            if improved:
                self.best = {"val_pgd_acc": record["val_pgd_acc"], "epoch": self.epoch}
            self.epoch += 1
            self.loader.set_epoch(self.epoch)
            path = self.save()
            if improved and path is not None:
                _link_atomic(path, self.run_dir / "best.pt")
        final = self._main_only(self.test)
        if final and self.logger:
            self.logger.log({"epoch": self.epochs, "step": self.step, "final": True, **final})
        self.unwrapped_model.eval()
        return {**record, **final}

    # ----------------------------------------------------------------- checkpoints
    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks and is needed to continue each one exactly (all CPU tensors).

        RNG streams, the loss's running state (GKL's partial class sums), the epoch's metric sums, and the
        buffers (BatchNorm statistics) of the model and of the averaged copies: without SyncBatchNorm each rank's
        running statistics follow its own examples between DDP's per-forward buffer broadcasts.
        """

        def cpu(sd: Any) -> dict[str, Any]:
            return {k: v.detach().cpu() for k, v in sd.items()}

        averaged = {
            cb.name: cpu(dict(module.named_buffers()))
            for cb in self.callbacks
            if (module := cb.averaged_model()) is not None
        }
        s = self._stats
        return {
            "rng": {**rng_state(), "attack": self.attack_gen.get_state()},
            "loss": cpu(self.loss.state_dict()),
            "buffers": cpu(dict(self.unwrapped_model.named_buffers())),
            "averaged_buffers": averaged,
            "epoch_stats": {
                "sums": dict(s.sums),
                "count": s.count,
                "examples": s.examples,
                "skipped": s.skipped,
                "seconds": s.seconds,
            },
        }

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint payload. Rank 0's state is the shared one; with several ranks the `per_rank` list holds
        each rank's own RNG/loss/buffer state (a collective: every rank must call this together)."""
        import advtrain

        averaged = self._averaged_model()
        ema = None if averaged is None else averaged.state_dict()
        payload = {
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
            "epoch_stats": {
                "sums": dict(self._stats.sums),
                "count": self._stats.count,
                "examples": self._stats.examples,
                "skipped": self._stats.skipped,
                "seconds": self._stats.seconds,
            },
            "rng": {**rng_state(), "attack": self.attack_gen.get_state()},
            "config": self.config,
            "world_size": self.dist.world_size,
            "versions": {"advtrain": str(advtrain.__version__), "torch": str(torch.__version__)},
        }
        if self.dist.is_distributed:
            payload["per_rank"] = dist_utils.all_gather_object(self._rank_state())
        return payload

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
        self._stats = _EpochStats(
            dict(s["sums"]), s["count"], s["examples"], s["skipped"], s["seconds"]
        )
        self._settled_step = self.step
        set_rng_state(ckpt["rng"])
        self.attack_gen.set_state(ckpt["rng"]["attack"].cpu())
        per_rank = ckpt.get("per_rank")
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.dist.world_size:
            log.warning(
                "resuming a %d-process checkpoint with %d processes: training continues, but not "
                "bit-identically (each rank's data shard and random streams change)",
                saved_world,
                self.dist.world_size,
            )
            # Rank 0's partial sums would be counted twice when summed over ranks.
            if self.dist.rank > 0:
                self.loss.reset_running_state()
                self._stats = _EpochStats(seconds=self._stats.seconds)
        elif per_rank is not None:
            self._load_rank_state(per_rank[self.dist.rank])
        self._guard.reset(skipped=self._stats.skipped)
        # Mid-epoch: what the epoch-start hooks set up that the checkpoint does not hold (the budget).
        if self.loader.state_dict()["batch_index"] > 0:
            for cb in self.callbacks:
                cb.on_epoch_resume(self, self.epoch)

    def _load_rank_state(self, st: dict[str, Any]) -> None:
        set_rng_state(st["rng"])
        self.attack_gen.set_state(st["rng"]["attack"].cpu())
        self.loss.load_state_dict(st["loss"])
        _copy_buffers(self.unwrapped_model, st["buffers"])
        for cb in self.callbacks:
            module = cb.averaged_model()
            if module is not None and cb.name in st["averaged_buffers"]:
                _copy_buffers(module, st["averaged_buffers"][cb.name])
        e = st["epoch_stats"]
        self._stats = _EpochStats(
            dict(e["sums"]), e["count"], e["examples"], e["skipped"], e["seconds"]
        )

    def save(self) -> Path | None:
        """Write a rolling checkpoint and point `last.pt` at it; only the main process writes.

        Collective with several ranks (each contributes its own state); returns the path on rank 0, else None.
        Rotation keeps the newest `keep_last` checkpoints up to this step and never touches `last.pt`/`best.pt`
        (hard links: a deleted step file stays readable through them).
        """
        self.settle()  # never save after an unreported non-finite step
        self._saved_step = self.step
        payload = self.state_dict()
        if not self.is_main:
            return None
        ckdir = self.run_dir / "checkpoints"
        path = save_checkpoint(ckdir / f"step_{self.step:09d}.pt", payload)
        _link_atomic(path, self.run_dir / "last.pt")
        olds = sorted(ckdir.glob("step_*.pt"))
        for old in olds[: max(len(olds) - max(self.settings.keep_last, 1), 0)]:
            old.unlink(missing_ok=True)
        return path


def _detach(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach()


def _copy_buffers(module: nn.Module, buffers: dict[str, torch.Tensor]) -> None:
    own = dict(module.named_buffers())
    with torch.no_grad():
        for name, value in buffers.items():
            if name in own:
                own[name].copy_(value)


def _link_atomic(src: Path, dst: Path) -> None:
    """Make `dst` a hard link to `src` atomically (a copy where hard links are impossible).

    Checkpoints are never written in place (always tmp + rename), so a hard link can never expose a half-written
    file, and deleting the step file it came from leaves `dst` intact.
    """
    import os
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, dst)


def _fmt(record: dict[str, Any]) -> str:
    keys = (
        "train_loss",
        "train_adv_acc",
        "val_clean_acc",
        "val_pgd_acc",
        "eps",
        "lr",
        "train_images_per_s",
    )
    return " ".join(f"{k}={record[k]:.4g}" for k in keys if k in record)
