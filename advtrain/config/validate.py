"""A resolved config -> a checked one: the schemas of each command plus the rules that span config groups.

Everything here needs neither data nor a model, so a typo fails in a second, not after loading data. The CLI
calls these through the library (``run_training`` and friends), so a notebook caller gets the same one-line
:class:`~advtrain.errors.ConfigError` messages as the command line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from advtrain import values as V
from advtrain.config.schema import (
    BenchConfig,
    EvalConfig,
    ExportConfig,
    TrainConfig,
    check_node,
)
from advtrain.errors import ConfigError

__all__ = [
    "parse_train_config",
    "register_resolvers",
    "validate_bench",
    "validate_config",
    "validate_eval",
    "validate_export",
]


def register_resolvers() -> None:
    """``${frac:8/255}`` -> 0.0313...: eps and step sizes are written as fractions, never as pixel counts."""
    if not OmegaConf.has_resolver("frac"):
        OmegaConf.register_new_resolver("frac", V.parse_fraction)


def _plain(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        register_resolvers()
        container = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(container, dict)
        return container  # type: ignore[return-value]
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"a config must be a mapping of keys to values, got {type(cfg).__name__}")
    return dict(cfg)


def validate_config(cfg: Mapping[str, Any] | DictConfig, world_size: int = 1) -> dict[str, Any]:
    """The training config checked (schema of every group, then the rules between groups), normalised.

    Returns a plain dict with the same keys, every value converted to its schema type (``"8/255"`` -> float);
    absent optional groups (``distributed``, ``logger``) get their defaults. Raises ConfigError naming the
    key and the fix. ``world_size``: the number of processes the global batch is split over.
    """
    out = check_node(TrainConfig, _plain(cfg), label="top level")
    _check_train_together(out, world_size)
    return out


def parse_train_config(cfg: Mapping[str, Any] | DictConfig, world_size: int = 1) -> TrainConfig:
    """The training config as one typed object (the groups as dataclasses; `model`, `loss` and `logger` as
    the dicts their option's schema checked)."""
    checked = validate_config(cfg, world_size)
    typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), checked))
    assert isinstance(typed, TrainConfig)
    return typed


def _check_train_together(cfg: dict[str, Any], world_size: int) -> None:
    """Rules that read several groups (the schemas check one group each)."""
    from advtrain.utils.distributed import per_rank_batch_size

    data, model, loss = cfg["data"], cfg["model"], cfg["loss"]
    per_rank_batch_size(int(data["batch_size"]), world_size)
    if bool(data["two_view"]) != bool(loss.get("aug_weight")):
        raise ConfigError(
            "data.two_view=true needs loss.aug_weight (the AutoAugment view's weight) and "
            "loss.aug_weight needs data.two_view=true"
        )
    from advtrain.data import get_info

    info = get_info(data["name"])
    for key, want in (("num_classes", info.num_classes), ("in_channels", info.channels)):
        if key in model and model[key] != want:
            raise ConfigError(
                f"model.{key}={model[key]} disagrees with data={info.name} ({want}); the model takes it from "
                f"the dataset, remove model.{key}"
            )
    if cfg["trainer"]["sync_bn"]:
        import torch

        if not torch.cuda.is_available() or str(cfg["device"]).startswith("cpu"):
            raise ConfigError(
                "trainer.sync_bn=true needs CUDA GPUs (SyncBatchNorm has no CPU kernel); "
                "set trainer.sync_bn=false on the CPU"
            )
    if cfg["logger"]["name"] == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(
                "logger=wandb but the wandb package is not installed: `pip install wandb` or use logger=jsonl"
            ) from None


def validate_eval(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """The eval command's config checked and normalised (the preset's eps as a float, its norm canonical).

    What needs the model or the data (which source to load, the test-set size, eps against the input size)
    is checked where those are loaded.
    """
    return check_node(EvalConfig, _plain(cfg), label="eval top level")


def validate_export(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """The export command's config checked and normalised (leaderboard rules are export's own)."""
    return check_node(ExportConfig, _plain(cfg), label="export top level")


def validate_bench(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """The bench command's top level checked; each benchmark checks its own settings (its DEFAULTS)."""
    return check_node(BenchConfig, _plain(cfg), label="bench top level")
