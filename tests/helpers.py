"""Test helpers: compose configs the way the CLI does (in-process), and run the real CLI (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from advtrain.config import register_resolvers
from advtrain.resources import config_dir

CONFIG_DIR = config_dir()
REPO = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path = REPO, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    """`python -m advtrain ARGS` as a user types it, with `env` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "advtrain", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


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
