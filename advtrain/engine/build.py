"""Build every training object from the resolved config (a plain dict).

Configs are the single source of parameters: each group's keys map one-to-one onto constructor arguments. The
builders check the group they read through `advtrain.config.check_group` (the group's schema), so a library
caller who skips `advtrain.config.validate_config` still gets a ConfigError naming the group and the key instead
of a key silently ignored.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advtrain.engine.fastpath import FastPaths, configure_cudnn, resolve_fast_paths
from advtrain.engine.hooks import Callback
from advtrain.engine.trainer import EvalSet, Trainer
from advtrain.errors import ConfigError
from advtrain.losses.base import RobustLoss
from advtrain.utils.distributed import DistEnv
from advtrain.utils.logging import MetricsLogger

log = logging.getLogger(__name__)


def build_loss(cfg: dict[str, Any]) -> nn.Module:
    """The loss of `cfg['loss']`; its keys are checked against the loss class's own signature."""
    from advtrain.config import check_group
    from advtrain.data import get_info
    from advtrain.losses import LOSSES

    # An unknown loss, unknown keys and wrong types: one line each, from the loss's schema.
    lcfg = check_group("loss", cfg["loss"])
    cls = LOSSES[lcfg.pop("name")]
    if "num_classes" in inspect.signature(cls).parameters:
        lcfg["num_classes"] = get_info(cfg["data"]["name"]).num_classes
    return cls(**lcfg)


def build_attack(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """The training attack and its per-epoch budget schedule."""
    from advtrain.attacks import ConstantBudget, LinearEpsRamp, PGDAttack, PhasedBudget
    from advtrain.config import check_group

    a = check_group("attack", cfg["attack"])  # keys, types, eps ("8/255" too) against its norm
    attack = PGDAttack(
        norm=a["norm"],
        eps=a["eps"],
        step_size=a["step_size"],
        steps=a["steps"],
        random_start=a["random_start"],
        restarts=a["restarts"],
        eval_mode=a["eval_mode"],
        objective=a["objective"] or "ce",
    )
    schedule_name = a.get("schedule", "constant")
    if schedule_name == "constant":
        schedule = ConstantBudget(a["eps"], a["step_size"], a["steps"])
    elif schedule_name == "linear_ramp":
        schedule = LinearEpsRamp(a["eps"], a["steps"], a["step_ratio"])
    elif schedule_name == "phased":
        schedule = PhasedBudget(a["eps"])
    else:
        raise ConfigError(
            f"attack.schedule={schedule_name!r}: choose constant, linear_ramp or phased"
        )
    return attack, schedule


def build_callbacks(cfg: dict[str, Any], model: nn.Module, schedule: Any) -> list[Callback]:
    """Callbacks in hook order: attack budget, AWP (restores weights first), EMA, epoch average."""
    from advtrain.engine.callbacks import AWP, AttackSchedule, EpochWeightAverage, ModelEMA

    t = cfg["trainer"]
    cbs: list[Callback] = [AttackSchedule(schedule)]
    if t.get("awp_gamma"):  # AWP averages its proxy gradient over ranks itself (see AWP)
        cbs.append(
            AWP(model, t["awp_gamma"], t.get("awp_warmup_epochs", 10), lr=cfg["optim"]["lr"])
        )
    if t.get("ema_decay"):
        cbs.append(ModelEMA(model, t["ema_decay"], t.get("ema_start_epoch", 1)))
    if t.get("weight_average_tau"):
        cbs.append(EpochWeightAverage(model, t["weight_average_tau"]))
    return cbs


def build_optimization(
    cfg: dict[str, Any], model: nn.Module, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Any, Any]:
    """Optimiser, LR schedule and trainer settings from the `optim` and `trainer` groups.

    One place for both `advtrain train` and the benchmarks, so the benchmarked step is the trained one.
    """
    from advtrain.engine.optim import LRSchedule, build_optimizer
    from advtrain.engine.trainer import TrainerSettings

    o, t = cfg["optim"], cfg["trainer"]
    optimizer = build_optimizer(
        model.parameters(),
        name=o["name"],
        lr=o["lr"],
        momentum=o["momentum"],
        nesterov=o["nesterov"],
        weight_decay=o["weight_decay"],
    )
    fields = TrainerSettings.__dataclass_fields__
    settings = TrainerSettings(**{k: v for k, v in t.items() if k in fields})
    lr_schedule = LRSchedule(
        lr=o["lr"],
        epochs=settings.epochs,
        steps_per_epoch=steps_per_epoch,
        schedule=o["schedule"],
        milestones=tuple(o["milestones"]),
        decay=o["decay"],
        warmup_epochs=o["warmup_epochs"],
        per_iteration=o["per_iteration"],
    )
    return optimizer, lr_schedule, settings


def assemble_trainer(
    cfg: dict[str, Any],
    *,
    model: nn.Module,
    loss: RobustLoss,
    attack: Any,
    schedule: Any,
    device: torch.device,
    steps_per_epoch: int,
    run_dir: Path,
    env: DistEnv | None = None,
    train_loader: Any = None,
    val_set: EvalSet | None = None,
    test_set: EvalSet | None = None,
    logger: MetricsLogger | None = None,
    fast: FastPaths | None = None,
) -> Trainer:
    """The one assembly of a `Trainer` from built parts: `advtrain.train` and the benchmarks both
    call it, so the step a benchmark times is the step a run trains with.

    Resolves the fast paths of `cfg['trainer']` (memory format, autocast, compile) for `device`,
    moves model and loss there, converts BatchNorm to SyncBatchNorm and wraps the model in DDP
    when `env` has several processes, and builds optimiser, LR schedule, settings and callbacks
    (the callbacks copy the model as placed, so their averages match its layout). A benchmark
    leaves out the loader, the evaluation sets and the logger: `train_step` does not use them.
    `fast` is the already resolved fast-path choice (`advtrain.train` resolves it before loading
    data, so a bad `trainer.channels_last` fails early); by default it is resolved here.
    """
    env = env or DistEnv()
    t = cfg["trainer"]
    fast = fast or resolve_fast_paths(t, device)
    configure_cudnn(fast, device)  # cuDNN autotuning on CUDA unless trainer.deterministic
    fmt = torch.channels_last if fast.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    if t.get("sync_bn") and env.is_distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    loss = loss.to(device)
    optimizer, lr_schedule, settings = build_optimization(cfg, model, steps_per_epoch)
    callbacks = build_callbacks(cfg, model, schedule)
    compiled = torch.compile(model) if fast.compile else None
    ddp = None
    if env.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (BatchNorm statistics) are re-broadcast from rank 0 at every forward (DDP's default).
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    return Trainer(
        model=model,
        loss=loss,
        attack=attack,
        optimizer=optimizer,
        lr_schedule=lr_schedule,
        train_loader=train_loader,
        val_set=val_set,
        test_set=test_set,
        callbacks=callbacks,
        settings=settings,
        run_dir=run_dir,
        device=device,
        config=cfg,
        seed=int(cfg["seed"]),
        logger=logger,
        autocast_dtype=fast.autocast_dtype,
        attack_autocast_dtype=fast.attack_autocast_dtype,
        channels_last=fast.channels_last,
        compiled_model=compiled,
        ddp_model=ddp,
        dist_env=env,
    )
