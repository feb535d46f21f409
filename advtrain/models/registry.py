"""Model names -> constructors, and strict checkpoint loading with readable errors.

The registry is a fixed, read-only name -> (class, default kwargs) map: no decorators or global
registration, so the set of models is what this file says. Adding a model = one architecture
file + one line here + one YAML file in `configs/model/`.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from advtrain.errors import CheckpointError, ConfigError
from advtrain.models.normalize import StatsLike
from advtrain.models.preact_resnet import PreActResNet18
from advtrain.models.resnet import ResNet18
from advtrain.models.small_cnn import SmallCNN
from advtrain.models.wide_resnet import DMWideResNet, WideResNet

# name -> (class, defaults that define the named variant). Keyword arguments given to
# build_model override the defaults, e.g. wrn34_10 with depth=10, widen_factor=1 for tests.
_REGISTRY: Mapping[str, tuple[type[nn.Module], Mapping[str, Any]]] = MappingProxyType(
    {
        "small_cnn": (SmallCNN, MappingProxyType({})),
        "preact_resnet18": (PreActResNet18, MappingProxyType({})),
        "resnet18": (ResNet18, MappingProxyType({})),
        "wrn34_10": (WideResNet, MappingProxyType({"depth": 34, "widen_factor": 10})),
        "wrn28_10_swish": (
            DMWideResNet,
            MappingProxyType({"depth": 28, "width": 10, "activation_fn": nn.SiLU}),
        ),
    }
)

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Arguments build_model handles itself (or that define the named variant and so are not
# user-settable, such as the activation of wrn28_10_swish).
_RESERVED = frozenset({"num_classes", "in_channels", "mean", "std", "activation_fn"})

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_MAX_LISTED = 5


def model_kwargs(name: str) -> tuple[str, ...]:
    """The extra keyword arguments `build_model(name, ...)` accepts (e.g. `width`, `depth`)."""
    cls, _ = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return tuple(
        p
        for p, spec in params.items()
        if p != "self"
        and p not in _RESERVED
        and spec.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    )


def model_class(name: str) -> type[nn.Module]:
    """The architecture class behind `name` (its constructor's annotations type the `model` config)."""
    return _lookup(name)[0]


def _lookup(name: str) -> tuple[type[nn.Module], Mapping[str, Any]]:
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)} (config model.name)"
        )
    return _REGISTRY[name]


def build_model(
    name: str,
    num_classes: int = 10,
    *,
    in_channels: int = 3,
    mean: StatsLike = None,
    std: StatsLike = None,
    **kwargs: Any,
) -> nn.Module:
    """Build model `name` taking (N, in_channels, H, W) inputs in [0, 1] and returning logits.

    `mean`/`std` (per channel or scalar) set the model's internal normalisation; `None` means
    none (identity). Architecture kwargs (`width`, `depth`, `widen_factor`, ...) are checked
    against the constructor so a config typo fails with a ConfigError naming the key instead of a
    TypeError deep inside.
    """
    cls, defaults = _lookup(name)
    allowed = model_kwargs(name)
    for key in kwargs:
        if key not in allowed:
            valid = ", ".join(allowed) if allowed else "none"
            raise ConfigError(
                f"model {name!r} got unknown option {key!r}; valid options: {valid} "
                f"(plus num_classes, in_channels, mean, std)"
            )
    options = {**defaults, **kwargs}
    try:
        return cls(num_classes, in_channels=in_channels, mean=mean, std=std, **options)
    except TypeError as exc:
        # A wrongly typed value (e.g. width="16") surfaces as TypeError inside torch.
        raise ConfigError(f"model {name!r} could not be built with {options}: {exc}") from exc


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DataParallel/DDP and torch.compile wrappers (they share weights)."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _strip_wrapper_prefixes(
    state_dict: Mapping[str, Any], model_keys: set[str]
) -> OrderedDict[str, Any]:
    """Remove `module.` / `_orig_mod.` added by DDP / torch.compile, repeatedly and in any order.

    A prefix is stripped only when *every* key carries it and the model's own keys do not, so a
    model that really has a submodule called `module` is left alone.
    """
    keys = list(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    stripped_total = ""
    changed = True
    while changed and keys:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in keys) and not (
                model_keys and all(k.startswith(prefix) for k in model_keys)
            ):
                keys = [k[len(prefix) :] for k in keys]
                stripped_total += prefix
                changed = True
    out: OrderedDict[str, Any] = OrderedDict(zip(keys, state_dict.values()))
    if metadata is not None:
        # Keep per-module version info (BatchNorm uses it), re-keyed like the weights.
        new_meta: OrderedDict[str, Any] = OrderedDict()
        cut = stripped_total.rstrip(".")
        for key, value in metadata.items():
            if key == cut:
                new_meta[""] = value
            elif cut and key.startswith(cut + "."):
                new_meta[key[len(cut) + 1 :]] = value
            elif not cut:
                new_meta[key] = value
        out._metadata = new_meta  # type: ignore[attr-defined]
    return out


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def load_model_state(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load `state_dict` into `model` strictly, after removing DDP/compile key prefixes.

    Raises CheckpointError (one line) naming up to 5 missing and 5 unexpected keys and the shape
    mismatches, so "wrong architecture / wrong width / wrong num_classes" is obvious at a glance.
    """
    target = _unwrap(model)
    model_name = type(target).__name__
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"checkpoint weights for model {model_name} must be a state dict (mapping of names to "
            f"tensors), got {type(state_dict).__name__}"
        )
    expected = target.state_dict()
    sd = _strip_wrapper_prefixes(state_dict, set(expected))
    non_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and isinstance(sd[k], torch.Tensor) and sd[k].shape != v.shape
    ]
    if missing or unexpected or mismatched or non_tensors:
        parts = [f"missing {_listed(missing)}", f"unexpected {_listed(unexpected)}"]
        if mismatched:
            parts.append(f"shape mismatch {_listed(mismatched)}")
        if non_tensors:
            parts.append(f"non-tensor values {_listed(non_tensors)}")
        hint = "build the model with the name and options it was trained with"
        if "model" in sd and isinstance(sd["model"], Mapping):
            hint = "this looks like a whole advtrain checkpoint: pass checkpoint['model']"
        raise CheckpointError(
            f"checkpoint does not match model {model_name}: {', '.join(parts)}; {hint}"
        )
    try:
        target.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied; keep it one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint does not load into model {model_name}: {first}") from exc
