"""`advtrain.train(cfg) -> TrainResult`: adversarial training as one library call.

The config is the resolved training config: a plain dict (what `python -m advtrain train --cfg job`
prints, what every run saves as config.json) or an OmegaConf object composed with Hydra. No Hydra
app, no printing: `python -m advtrain train` (advtrain/cli/train.py) composes the config, calls this
and prints the summary; a notebook does the same in two lines:

    import json, advtrain
    cfg = json.loads(open("runs/train/2026-12-06/12-00-00/config.json").read())
    result = advtrain.train({**cfg, "run_dir": "runs/notebook", "resume": None})
    result.test_robust_acc, result.last_checkpoint

One code path for one process and for `torchrun --nproc_per_node=N` (DDP): the process group comes
from the launcher's environment, `data.batch_size` is the global batch (each rank trains on
batch_size / world_size), rank 0 alone writes to the run directory. Everything that can be checked
without data is checked before any data is loaded, so a config mistake costs a second.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advtrain.config import validate_config
from advtrain.engine import signals
from advtrain.engine.build import (
    assemble_trainer,
    build_attack,
    build_loss,
)
from advtrain.engine.fastpath import resolve_fast_paths
from advtrain.engine.resume import apply_resume, finished_run, load_resume, on_rank0
from advtrain.engine.trainer import EvalSet, Trainer
from advtrain.errors import ConfigError, DataError
from advtrain.models.loading import model_from_config
from advtrain.utils import distributed as dist_utils
from advtrain.utils.distributed import DistEnv
from advtrain.utils.logging import MetricsLogger
from advtrain.utils.seed import seed_everything

__all__ = ["TrainResult", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run returns; `to_dict()` is the content of `<run_dir>/final.json`.

    `metrics` holds the last epoch's record (train_*, val_*, lr, eps, ...) and the final test metrics
    (`test_examples`, `test_clean_acc`, `test_pgd<steps>_acc`), exactly as final.json and the last
    lines of metrics.jsonl have them; the typed fields name what callers usually want.
    """

    run_dir: Path
    #: The last epoch trained and the optimiser steps taken (a resumed run counts from its start).
    epochs: int
    step: int
    world_size: int
    global_batch_size: int
    per_rank_batch_size: int
    metrics: dict[str, Any] = field(default_factory=dict)
    #: True when `resume` found the run already finished and nothing was trained or written
    #: (`metrics` are then its final.json, as it was).
    already_finished: bool = False

    @property
    def last_checkpoint(self) -> Path:
        """The newest checkpoint (`last.pt`, what `eval ckpt=` and `resume=` take)."""
        return self.run_dir / "last.pt"

    @property
    def best_checkpoint(self) -> Path | None:
        """The checkpoint of the best validation PGD accuracy, if validation ran."""
        path = self.run_dir / "best.pt"
        return path if path.exists() else None

    @property
    def test_clean_acc(self) -> float | None:
        """Clean accuracy of the selected weights on the test subset (None with trainer.test_examples=0)."""
        return self.metrics.get("test_clean_acc")

    @property
    def test_robust_acc(self) -> float | None:
        """PGD accuracy on the test subset (`test_pgd<trainer.test_pgd_steps>_acc`), if measured."""
        for key, value in self.metrics.items():
            if key.startswith("test_pgd") and key.endswith("_acc"):
                return float(value)
        return None

    def to_dict(self) -> dict[str, Any]:
        """The final.json payload (a plain, JSON-ready dict)."""
        return {
            **self.metrics,
            "world_size": self.world_size,
            "global_batch_size": self.global_batch_size,
            "per_rank_batch_size": self.per_rank_batch_size,
        }


def _plain(cfg: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A resolved plain dict from a dict or an OmegaConf config (what checkpoints store)."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        return {str(k): v for k, v in container.items()}
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"train(cfg): cfg must be a dict or an OmegaConf config, got {type(cfg)}")
    return dict(cfg)


def train(cfg: Mapping[str, Any] | Any, *, run_dir: str | Path | None = None) -> TrainResult:
    """Train as configured and return the result; checkpoints and metrics go to the run directory.

    `run_dir` (or `cfg['run_dir']`, which the command line sets from Hydra) is where checkpoints,
    metrics.jsonl, config.json and final.json are written. Under torchrun (or a multi-task submitit
    job) this joins the process group (unless the Hydra callback or an earlier run in this process
    already did); the group lives until the process exits.
    """
    cfg = _plain(cfg)
    if run_dir is not None:
        cfg["run_dir"] = str(run_dir)
    if not cfg.get("run_dir"):
        raise ConfigError("train(cfg): no run directory; pass run_dir=PATH or set cfg['run_dir']")
    env = dist_utils.env_info()
    cfg = validate_config(cfg, env.world_size)  # checked and normalised ("8/255" -> 0.0313...)
    dcfg = cfg.get("distributed") or {}
    env, device, _ = dist_utils.init_distributed(
        str(cfg.get("device", "auto")),
        backend=str(dcfg.get("backend", "auto")),
        timeout_minutes=float(dcfg.get("timeout_minutes", 30)),
    )
    return _train(cfg, env, device)


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"run directory {run_dir} is not writable ({e.strerror}); choose another with run_dir=PATH "
            "(or hydra.run.dir=PATH, or ADVTRAIN_RUNS_DIR)"
        ) from None


def _check_no_earlier_run(run_dir: Path) -> None:
    """A fresh start never writes over another run's record: its checkpoints, final.json and
    metrics would be replaced while its config.json still described it."""
    held = [name for name in ("final.json", "last.pt") if (run_dir / name).is_file()] + (
        ["checkpoints/"] if any((run_dir / "checkpoints").glob("step_*.pt")) else []
    )
    if held:
        state = "a finished run" if "final.json" in held else "an unfinished run"
        raise ConfigError(
            f"run directory {run_dir} already holds {state} ({', '.join(held)}); a new run would "
            f"overwrite it: add resume=auto to continue it (a larger trainer.epochs trains on), or "
            "choose another run_dir=PATH"
        )


def _train(cfg: dict[str, Any], env: DistEnv, device: torch.device) -> TrainResult:
    # Rank 0's run directory is authoritative (the Hydra callback already agrees on it; library callers may not).
    run_dir = Path(dist_utils.broadcast_object(str(cfg["run_dir"]) if env.is_main else None))
    cfg = {**cfg, "run_dir": str(run_dir)}
    on_rank0(env, lambda: _check_writable(run_dir))
    if not cfg.get("resume"):
        on_rank0(env, lambda: _check_no_earlier_run(run_dir))
    t, d = cfg["trainer"], cfg["data"]
    seed_everything(int(cfg["seed"]), deterministic=bool(t.get("deterministic", False)))
    fast = resolve_fast_paths(t, device)
    global_batch = int(d["batch_size"])
    per_rank = dist_utils.per_rank_batch_size(global_batch, env.world_size)
    if env.is_distributed and env.is_main:
        log.info(
            "DDP over %d processes: global batch %d = %d per rank",
            env.world_size,
            global_batch,
            per_rank,
        )
    if t.get("sync_bn") and not env.is_distributed:
        log.info(
            "trainer.sync_bn=true with one process: nothing to synchronise, plain BatchNorm is used"
        )

    # Everything that needs no data first: config mistakes fail before the (slow) data loading.
    model = model_from_config(cfg)
    loss = build_loss(cfg)
    attack, schedule = build_attack(cfg)
    resume = load_resume(cfg, run_dir, env, model)
    if resume is not None:
        record = on_rank0(env, lambda: finished_run(cfg, run_dir, *resume))
        if record is not None:  # nothing to train: the run's files stay exactly as they are
            return TrainResult(
                run_dir=run_dir,
                epochs=int(record["epoch"]),
                step=int(record.get("step", resume[1].get("step", 0))),
                world_size=int(record.get("world_size", env.world_size)),
                global_batch_size=int(record.get("global_batch_size", global_batch)),
                per_rank_batch_size=int(record.get("per_rank_batch_size", per_rank)),
                metrics={
                    k: v
                    for k, v in record.items()
                    if k not in ("world_size", "global_batch_size", "per_rank_batch_size")
                },
                already_finished=True,
            )

    from advtrain.data import AuxDataset, TrainLoader, make_datasets

    data = make_datasets(
        d["name"],
        d["root"],
        download=bool(d["download"]),
        val_size=d["val_size"],
        train_subset=d["train_subset"],
    )
    aux = AuxDataset(d["aux_path"], info=data.info) if d.get("aux_path") else None
    loader = TrainLoader(
        data.train_images,
        data.train_labels,
        batch_size=per_rank,
        augment=d["augment"],
        pad_mode=str(d.get("pad_mode", "zeros")),
        seed=int(cfg["seed"]),
        aux=aux,
        aux_fraction=float(d.get("aux_fraction") or 0.0),
        two_view=bool(d.get("two_view")),
        cutout=int(d.get("cutout") or 0),
        rank=env.rank,
        world_size=env.world_size,
        # Batches delivered on the training device; auto crops/flips there on a GPU (#15).
        device=device,
        augment_on=str(d.get("augment_on") or "auto"),
    )
    if data.info.num_classes != _num_outputs(model, data):
        raise DataError("the model's number of outputs does not match the dataset's classes")
    if env.is_main:
        log.info(
            "training %s on %s: %s (%s parameters), %d train images (%s), %d steps per epoch x %d "
            "epochs, global batch %d; run directory %s; %s",
            cfg.get("name", "run"),
            device,
            cfg["model"]["name"],
            f"{sum(p.numel() for p in model.parameters()):,}",
            len(data.train_labels),
            d["name"],
            len(loader),
            int(t["epochs"]),
            global_batch,
            run_dir,
            fast.describe(),
        )
    logger = MetricsLogger(
        run_dir, enabled=env.is_main, wandb_cfg=_wandb_settings(cfg, run_dir, env), config=cfg
    )
    try:
        trainer = assemble_trainer(
            cfg,
            model=model,
            loss=loss,
            attack=attack,
            schedule=schedule,
            device=device,
            steps_per_epoch=len(loader),
            run_dir=run_dir,
            env=env,
            train_loader=signals.StoppableLoader(loader),  # SIGINT/SIGTERM stop between steps
            val_set=EvalSet(data.val_images, data.val_labels),
            test_set=EvalSet(data.test_images, data.test_labels),
            logger=logger,
            fast=fast,
        )
        if resume is not None:
            apply_resume(trainer, *resume, run_dir, env)
        if env.is_main:
            (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        try:
            metrics = trainer.fit()
        except signals.Interrupted as stop:
            _note_stop(stop, trainer, run_dir, env)
            raise
    finally:
        logger.close()
    if "epoch" not in metrics:  # resumed after the last epoch (stopped in the test pass): say which
        metrics = {"epoch": trainer.epoch - 1, "step": trainer.step, **metrics}
    result = TrainResult(
        run_dir=run_dir,
        epochs=trainer.epoch - 1,
        step=trainer.step,
        world_size=env.world_size,
        global_batch_size=global_batch,
        per_rank_batch_size=per_rank,
        metrics=metrics,
    )
    if env.is_main:
        (run_dir / "final.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def _note_stop(stop: signals.Interrupted, trainer: Trainer, run_dir: Path, env: DistEnv) -> None:
    """Record where a signal stopped the run and which checkpoint continues it.

    At a step boundary (`stop.deferred`) the state is that of a mid-epoch checkpoint: it is saved
    unless the newest checkpoint already holds this step. Anywhere else (the epoch's end, the
    final test) the last checkpoint written stays the one to resume from.
    """
    if stop.deferred:
        trainer.settle()  # the step count of the updates applied (the step itself is sync-free)
    ckdir = run_dir / "checkpoints"
    newest = max(ckdir.glob("step_*.pt"), default=None) if ckdir.is_dir() else None
    newest_step = int(newest.stem.split("_")[1]) if newest is not None else -1
    if stop.deferred and trainer.step > newest_step and not env.is_distributed:
        stop.checkpoint = trainer.save()
        stop.saved = stop.checkpoint is not None
        stop.where = f"at epoch {trainer.epoch}, step {trainer.step} (a step boundary)"
        return
    last = run_dir / "last.pt"
    stop.checkpoint = last if last.is_file() else None
    if stop.deferred:
        stop.where = (
            f"at epoch {trainer.epoch}, step {trainer.step} (a step boundary, already saved)"
        )
    else:
        stop.where = (
            f"after the last epoch ({trainer.epochs}, step {trainer.step}), in the final test pass"
            if trainer.epoch > trainer.epochs
            else f"in epoch {trainer.epoch} after step {trainer.step}, at the epoch's end "
            "(validation or checkpoint)"
        )
        if newest_step >= 0:
            stop.where += f"; the newest checkpoint holds step {newest_step}"


def _wandb_settings(cfg: dict[str, Any], run_dir: Path, env: DistEnv) -> dict[str, Any] | None:
    """The `logger=wandb` settings for rank 0 (the run is named after its directory by default)."""
    lg = cfg.get("logger") or {"name": "jsonl"}
    if lg.get("name") != "wandb" or not env.is_main:
        return None
    settings = {k: v for k, v in lg.items() if k != "name"}
    settings.setdefault("name", run_dir.name)
    return settings


def _num_outputs(model: torch.nn.Module, data: Any) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        images = data.val_images if len(data.val_images) else data.train_images
        out = model(images[:1].float().div(255))
        model.train(was)
    return int(out.shape[1])
