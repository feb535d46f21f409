"""Build every training object from the resolved config (a plain dict), checking keys as we go.

Configs are the single source of parameters: each group's keys map one-to-one onto constructor arguments, and an
unknown key is a ConfigError naming the group and the key instead of being silently ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from advtrain.errors import ConfigError

TOP_LEVEL_KEYS = {
    "data", "model", "attack", "loss", "optim", "trainer", "logger", "name", "seed", "device", "resume",
    "run_dir", "exp", "distributed",
}


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


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; a CUDA request on a CPU machine is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto")
    return dev


def build_model(cfg: dict[str, Any]) -> nn.Module:
    """The model of `cfg['model']` for the dataset of `cfg['data']` (normalisation inside)."""
    from advtrain.data import get_info
    from advtrain.models import build_model as zoo_build

    mcfg = dict(cfg["model"])
    name = mcfg.pop("name")
    normalize = mcfg.pop("normalize", True)
    info = get_info(cfg["data"]["name"])
    return zoo_build(
        name,
        info.num_classes,
        in_channels=info.channels,
        mean=info.mean if normalize else None,
        std=info.std if normalize else None,
        **mcfg,
    )


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


ATTACK_KEYS = {"norm", "eps", "step_size", "steps", "random_start", "restarts", "objective", "eval_mode",
               "schedule", "step_ratio"}


def build_attack(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """The training attack and its per-epoch budget schedule."""
    from advtrain.attacks import ConstantBudget, LinearEpsRamp, PGDAttack, PhasedBudget

    a = dict(cfg["attack"])
    check_keys("attack", a, ATTACK_KEYS)
    attack = PGDAttack(
        norm=a["norm"], eps=a["eps"], step_size=a["step_size"], steps=a["steps"],
        random_start=a["random_start"], restarts=a["restarts"], eval_mode=a["eval_mode"],
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


def build_callbacks(cfg: dict[str, Any], model: nn.Module, schedule: Any) -> list[Any]:
    """Callbacks in hook order: attack budget, AWP (restores weights first), EMA, epoch average."""
    from advtrain.engine.callbacks import AWP, AttackSchedule, EpochWeightAverage, ModelEMA

    t = cfg["trainer"]
    cbs: list[Any] = [AttackSchedule(schedule)]
    if t.get("awp_gamma"):
        cbs.append(AWP(model, t["awp_gamma"], t.get("awp_warmup_epochs", 10), lr=cfg["optim"]["lr"]))
    if t.get("ema_decay"):
        cbs.append(ModelEMA(model, t["ema_decay"], t.get("ema_start_epoch", 1)))
    if t.get("weight_average_tau"):
        cbs.append(EpochWeightAverage(model, t["weight_average_tau"]))
    return cbs
