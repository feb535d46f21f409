"""`train` end to end: config dict -> data, model, attack, loss, optimiser, callbacks -> Trainer.fit()."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from advtrain.engine.build import (
    TOP_LEVEL_KEYS,
    build_attack,
    build_callbacks,
    build_loss,
    build_model,
    check_keys,
    resolve_device,
)
from advtrain.engine.fastpath import fast_path_defaults
from advtrain.engine.optim import LRSchedule, build_optimizer
from advtrain.engine.trainer import EvalSet, Trainer, TrainerSettings, check_resume_compatible
from advtrain.errors import CheckpointError, ConfigError, DataError
from advtrain.utils.checkpoint import find_latest_valid, load_checkpoint
from advtrain.utils.logging import MetricsLogger
from advtrain.utils.seed import seed_everything

log = logging.getLogger(__name__)

TRAINER_EXTRA_KEYS = {
    "ema_decay", "ema_start_epoch", "weight_average_tau", "awp_gamma", "awp_warmup_epochs",
    "deterministic", "channels_last", "autocast", "compile",
}
OPTIM_KEYS = {"name", "lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones", "decay",
              "warmup_epochs", "per_iteration"}
DATA_KEYS = {"name", "root", "download", "val_size", "train_subset", "batch_size", "eval_batch_size",
             "augment", "aux_path", "aux_fraction", "two_view", "cutout"}


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"run directory {run_dir} is not writable ({e.strerror}); set hydra.run.dir") from None


def run_training(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train as configured; returns the last epoch's record plus the final test metrics."""
    check_keys("top level", cfg, TOP_LEVEL_KEYS)
    check_keys("data", cfg["data"], DATA_KEYS)
    check_keys("optim", cfg["optim"], OPTIM_KEYS)
    check_keys("trainer", cfg["trainer"], set(TrainerSettings.__dataclass_fields__) | TRAINER_EXTRA_KEYS)
    run_dir = Path(cfg["run_dir"])
    _check_writable(run_dir)
    t = cfg["trainer"]
    seed_everything(int(cfg["seed"]), deterministic=bool(t.get("deterministic", False)))
    device = resolve_device(str(cfg.get("device", "auto")))
    channels_last, autocast_dtype = fast_path_defaults(t, device)

    from advtrain.data import AuxDataset, TrainLoader, make_datasets

    d = cfg["data"]
    if d.get("aux_path") == "???":
        raise ConfigError("this experiment needs auxiliary data: add data.aux_path=/path/to/generated.npz "
                          "(keys image uint8 NHWC, label)")
    data = make_datasets(d["name"], d["root"], download=bool(d["download"]), val_size=d["val_size"],
                         train_subset=d["train_subset"])
    aux = AuxDataset(d["aux_path"], info=data.info) if d.get("aux_path") else None
    loader = TrainLoader(data.train_images, data.train_labels, batch_size=d["batch_size"],
                         augment=d["augment"], seed=int(cfg["seed"]), aux=aux,
                         aux_fraction=float(d.get("aux_fraction") or 0.0),
                         two_view=bool(d.get("two_view")), cutout=int(d.get("cutout") or 0))
    if bool(d.get("two_view")) != bool(cfg["loss"].get("aug_weight")):
        raise ConfigError("data.two_view=true needs loss.aug_weight (the AutoAugment view's weight) and "
                          "loss.aug_weight needs data.two_view=true")
    model = build_model(cfg)
    if data.info.num_classes != _num_outputs(model, data):
        raise DataError("the model's number of outputs does not match the dataset's classes")
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    loss = build_loss(cfg).to(device)
    attack, schedule = build_attack(cfg)
    o = dict(cfg["optim"])
    optimizer = build_optimizer(model.parameters(), name=o["name"], lr=o["lr"], momentum=o["momentum"],
                                nesterov=o["nesterov"], weight_decay=o["weight_decay"])
    settings = TrainerSettings(**{k: v for k, v in t.items() if k in TrainerSettings.__dataclass_fields__})
    lr_schedule = LRSchedule(lr=o["lr"], epochs=settings.epochs, steps_per_epoch=len(loader),
                             schedule=o["schedule"], milestones=tuple(o["milestones"]), decay=o["decay"],
                             warmup_epochs=o["warmup_epochs"], per_iteration=o["per_iteration"])
    callbacks = build_callbacks(cfg, model, schedule)
    compiled = torch.compile(model) if t.get("compile") else None
    lg = cfg.get("logger") or {"name": "jsonl"}
    wandb_cfg = None
    if lg.get("name") == "wandb":
        wandb_cfg = {k: v for k, v in lg.items() if k != "name"}
        wandb_cfg.setdefault("name", run_dir.name)
    logger = MetricsLogger(run_dir, wandb_cfg=wandb_cfg, config=cfg)
    trainer = Trainer(
        model=model, loss=loss, attack=attack, optimizer=optimizer, lr_schedule=lr_schedule,
        train_loader=loader, val_set=EvalSet(data.val_images, data.val_labels),
        test_set=EvalSet(data.test_images, data.test_labels), callbacks=callbacks, settings=settings,
        run_dir=run_dir, device=device, config=cfg, seed=int(cfg["seed"]), logger=logger,
        autocast_dtype=autocast_dtype, channels_last=channels_last, compiled_model=compiled,
    )
    _maybe_resume(trainer, cfg, run_dir)
    (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    try:
        result = trainer.fit()
    finally:
        logger.close()
    (run_dir / "final.json").write_text(json.dumps(result, indent=2))
    return result


def _num_outputs(model: torch.nn.Module, data: Any) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(data.val_images[:1].float().div(255) if len(data.val_images) else
                    data.train_images[:1].float().div(255))
        model.train(was)
    return int(out.shape[1])


def _maybe_resume(trainer: Trainer, cfg: dict[str, Any], run_dir: Path) -> None:
    resume = cfg.get("resume")
    if not resume:
        return
    if resume == "auto":
        path = find_latest_valid(run_dir / "checkpoints")
        if path is None:
            log.info("resume=auto: no valid checkpoint in %s, starting fresh", run_dir / "checkpoints")
            return
    else:
        path = Path(os.path.expanduser(str(resume)))
    ckpt = load_checkpoint(path, map_location=trainer.device)
    check_resume_compatible(ckpt["config"], cfg)
    try:
        trainer.load_state_dict(ckpt)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot resume from {path}: {e}") from None
    log.info("resumed from %s at epoch %d step %d", path, trainer.epoch, trainer.step)
