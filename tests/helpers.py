"""Compose configs the way the CLI does, without starting a Hydra app (fast, in-process)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from advtrain.config import register_resolvers
from advtrain.resources import config_dir

CONFIG_DIR = config_dir()


def compose_plain(
    overrides: list[str], config_name: str = "train", run_dir: Path | None = None
) -> dict[str, Any]:
    """Resolved config as a plain dict, with `run_dir` set (it comes from Hydra's runtime in the CLI)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides))
    if "run_dir" in cfg:
        OmegaConf.set_struct(cfg, False)
        cfg.run_dir = str(run_dir or "/tmp/advtrain-test-run")
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
