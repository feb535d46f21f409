"""Build every training object from the resolved config (a plain dict), checking keys as we go.

Configs are the single source of parameters: each group's keys map one-to-one onto constructor arguments, and an
unknown key is a ConfigError naming the group and the key instead of being silently ignored.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advtrain.engine.fastpath import FastPaths, resolve_fast_paths
from advtrain.engine.hooks import Callback
from advtrain.engine.trainer import EvalSet, Trainer
from advtrain.errors import ConfigError
from advtrain.losses.base import RobustLoss

# Re-exported while engine/, bench/ and the tests switch to their homes (issue #13): device resolution lives in
# utils/distributed.py, building a model from a config in models/loading.py.
from advtrain.models.loading import model_from_config as build_model  # noqa: F401
from advtrain.utils.distributed import (
    DistEnv,
    resolve_device,  # noqa: F401
)
from advtrain.utils.logging import MetricsLogger

log = logging.getLogger(__name__)

TOP_LEVEL_KEYS = {
    "data",
    "model",
    "attack",
    "loss",
    "optim",
    "trainer",
    "logger",
    "name",
    "seed",
    "device",
    "resume",
    "run_dir",
    "exp",
    "distributed",
}
TRAINER_EXTRA_KEYS = {
    "ema_decay",
    "ema_start_epoch",
    "weight_average_tau",
    "awp_gamma",
    "awp_warmup_epochs",
    "deterministic",
    "channels_last",
    "autocast",
    "autocast_attack",
    "compile",
    "sync_bn",
}
OPTIM_KEYS = {
    "name",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "milestones",
    "decay",
    "warmup_epochs",
    "per_iteration",
}
DATA_KEYS = {
    "name",
    "root",
    "download",
    "val_size",
    "train_subset",
    "batch_size",
    "eval_batch_size",
    "augment",
    "pad_mode",
    "aux_path",
    "aux_fraction",
    "two_view",
    "cutout",
}
DISTRIBUTED_KEYS = {"backend", "timeout_minutes"}
NONFINITE_MODES = ("stop", "skip")

#: Budgets outside these ranges are almost surely written for the other norm (images in [0, 1]).
#: Linf: 8/255 (CIFAR) ... 0.3 (MNIST, the largest standard value). L2: 0.5 (CIFAR) ... 3 (ImageNet); an L2
#: radius below 0.05 moves a 32x32x3 image by less than 1/255 per pixel on average.
LINF_EPS_MAX = 0.3
L2_EPS_MIN = 0.05


def check_keys(group: str, given: dict[str, Any], allowed: set[str] | list[str]) -> None:
    """Raise ConfigError for any key of `given` not in `allowed`."""
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in the '{group}' config; valid keys: {sorted(allowed)}"
        )


def _call_with(group: str, fn: Callable[..., Any], kwargs: dict[str, Any], **fixed: Any) -> Any:
    """Call `fn(**fixed, **kwargs)` after checking kwargs against its signature (one clear error)."""
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        check_keys(group, kwargs, [k for k in params if k not in fixed and k != "self"])
    return fn(**fixed, **kwargs)


def _int_at_least(where: str, value: Any, minimum: int, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{where} must be an integer >= {minimum}{extra}, got {value!r}")


def _check_eps_scale(a: dict[str, Any]) -> None:
    """Catch a budget written for the other norm (the threat models catch pixel units)."""
    norm = str(a.get("norm", "")).strip().lower()
    eps = a.get("eps")
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        return  # the attack's own validation names the type error
    if norm in ("linf", "inf") and LINF_EPS_MAX < eps <= 1:
        raise ConfigError(
            f"attack.eps={eps:g} is an L2-sized value for an Linf attack; Linf uses e.g. 8/255 on CIFAR "
            f"(at most {LINF_EPS_MAX:g}, the MNIST value), or set attack=pgd_l2 for an L2 budget"
        )
    if norm in ("l2", "2") and 0 < eps < L2_EPS_MIN:
        raise ConfigError(
            f"attack.eps={eps:g} looks like an Linf value for an L2 attack (8/255 = 0.0314); L2 uses e.g. 0.5 "
            f"on CIFAR (at least {L2_EPS_MIN:g}), or set attack=pgd_linf"
        )


def validate_config(cfg: dict[str, Any], world_size: int = 1) -> None:
    """Every check that needs neither data nor a model, so a typo fails in a second, not after loading data.

    Raises ConfigError naming the key and the fix. (Value checks of attacks, losses and models happen when
    they are built, which `run_training` also does before loading any data.)
    """
    from advtrain.engine.trainer import TrainerSettings

    check_keys("top level", cfg, TOP_LEVEL_KEYS)
    for group in ("data", "model", "attack", "loss", "optim", "trainer"):
        if not isinstance(cfg.get(group), dict):
            raise ConfigError(
                f"the '{group}' config group is missing; add {group}=NAME (see configs/{group}/)"
            )
    check_keys("data", cfg["data"], DATA_KEYS)
    check_keys("optim", cfg["optim"], OPTIM_KEYS)
    check_keys(
        "trainer", cfg["trainer"], set(TrainerSettings.__dataclass_fields__) | TRAINER_EXTRA_KEYS
    )
    check_keys("distributed", cfg.get("distributed") or {}, DISTRIBUTED_KEYS)
    t, d = cfg["trainer"], cfg["data"]
    _int_at_least("trainer.epochs", t.get("epochs", 1), 1)
    _int_at_least("trainer.eval_every", t.get("eval_every", 1), 1)
    _int_at_least(
        "trainer.checkpoint_every_steps", t.get("checkpoint_every_steps"), 1, allow_none=True
    )
    _int_at_least("trainer.keep_last", t.get("keep_last", 2), 1)
    _int_at_least("trainer.max_skipped_batches", t.get("max_skipped_batches", 0), 0)
    for key in ("val_examples", "test_examples", "log_every_steps"):
        _int_at_least(f"trainer.{key}", t.get(key, 0), 0)
    for key in ("val_pgd_steps", "test_pgd_steps"):
        _int_at_least(f"trainer.{key}", t.get(key, 1), 1)
    if t.get("nonfinite", "stop") not in NONFINITE_MODES:
        raise ConfigError(f"trainer.nonfinite={t.get('nonfinite')!r}: use stop or skip")
    clip = t.get("grad_clip")
    if clip is not None and (
        isinstance(clip, bool) or not isinstance(clip, int | float) or clip <= 0
    ):
        raise ConfigError(f"trainer.grad_clip={clip!r} must be > 0 or null (no clipping)")
    _int_at_least("data.batch_size", d.get("batch_size"), 1)
    from advtrain.utils.distributed import per_rank_batch_size

    per_rank_batch_size(int(d["batch_size"]), world_size)
    frac = d.get("aux_fraction") or 0.0
    if isinstance(frac, bool) or not isinstance(frac, int | float) or not 0.0 <= frac < 1.0:
        raise ConfigError(
            f"data.aux_fraction={frac!r} must be in [0, 1): the share of each batch drawn from data.aux_path "
            "(0.7 in the synthetic-data recipes)"
        )
    from advtrain.data.transforms import PAD_MODES

    if d.get("pad_mode", "zeros") not in PAD_MODES:
        raise ConfigError(
            f"data.pad_mode={d.get('pad_mode')!r}: use zeros (torchvision's RandomCrop padding) or "
            "reflect (Rice et al.'s train_cifar.py)"
        )
    if d.get("aux_path") == "???":
        raise ConfigError(
            "this experiment needs auxiliary data: add data.aux_path=/path/to/generated.npz "
            "(keys image uint8 NHWC, label)"
        )
    if frac > 0 and not d.get("aux_path"):
        raise ConfigError(
            f"data.aux_fraction={frac} needs auxiliary images: set data.aux_path=/path/to/aux.npz "
            "(keys image, label) or data.aux_fraction=0"
        )
    if bool(d.get("two_view")) != bool(cfg["loss"].get("aug_weight")):
        raise ConfigError(
            "data.two_view=true needs loss.aug_weight (the AutoAugment view's weight) and "
            "loss.aug_weight needs data.two_view=true"
        )
    mcfg = cfg["model"]
    if "name" not in mcfg:
        raise ConfigError("model.name is missing; choose one with model=NAME (see configs/model/)")
    from advtrain.data import get_info

    info = get_info(d.get("name"))
    for key, want in (("num_classes", info.num_classes), ("in_channels", info.channels)):
        if key in mcfg and mcfg[key] != want:
            raise ConfigError(
                f"model.{key}={mcfg[key]} disagrees with data={info.name} ({want}); the model takes it from "
                f"the dataset, remove model.{key}"
            )
    _check_eps_scale(cfg["attack"])
    resume = cfg.get("resume")
    if resume is not None and (not isinstance(resume, str) or not resume.strip()):
        raise ConfigError(f"resume={resume!r}: use null, auto, or the path of a checkpoint")
    if t.get("sync_bn"):
        dev = str(cfg.get("device", "auto"))
        if not torch.cuda.is_available() or dev.startswith("cpu"):
            raise ConfigError(
                "trainer.sync_bn=true needs CUDA GPUs (SyncBatchNorm has no CPU kernel); "
                "set trainer.sync_bn=false on the CPU"
            )
    dc = cfg.get("distributed") or {}
    timeout = dc.get("timeout_minutes", 30)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigError(f"distributed.timeout_minutes={timeout!r} must be a number > 0")
    logger = cfg.get("logger") or {}
    if logger.get("name") not in (None, "jsonl", "wandb"):
        raise ConfigError(f"logger={logger.get('name')!r}: use jsonl or wandb")
    if logger.get("name") == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(
                "logger=wandb but the wandb package is not installed: `pip install wandb` or use logger=jsonl"
            ) from None


def build_loss(cfg: dict[str, Any]) -> nn.Module:
    from advtrain.data import get_info
    from advtrain.losses import LOSSES

    lcfg = dict(cfg["loss"])
    name = lcfg.pop("name")
    if name not in LOSSES:
        raise ConfigError(f"loss={name!r} is unknown; choose one of {sorted(LOSSES)}")
    cls = LOSSES[name]
    fixed = {}
    if "num_classes" in inspect.signature(cls).parameters:
        fixed["num_classes"] = get_info(cfg["data"]["name"]).num_classes
    return _call_with("loss", cls, lcfg, **fixed)


ATTACK_KEYS = {
    "norm",
    "eps",
    "step_size",
    "steps",
    "random_start",
    "restarts",
    "objective",
    "eval_mode",
    "schedule",
    "step_ratio",
}


def build_attack(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """The training attack and its per-epoch budget schedule."""
    from advtrain.attacks import ConstantBudget, LinearEpsRamp, PGDAttack, PhasedBudget

    a = dict(cfg["attack"])
    check_keys("attack", a, ATTACK_KEYS)
    _check_eps_scale(a)
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
