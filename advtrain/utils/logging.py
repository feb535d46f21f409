"""Metric sinks: `metrics.jsonl` always, wandb optionally; a console logger for the CLI."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from advtrain.errors import ConfigError

log = logging.getLogger("advtrain")


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Appends one JSON object per call to `<run_dir>/metrics.jsonl` and mirrors it to wandb if enabled."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        enabled: bool = True,
        wandb_cfg: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._wandb = None
        if enabled and wandb_cfg is not None:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "logger=wandb but the wandb package is not installed: `pip install wandb` or use logger=jsonl"
                ) from None
            try:
                self._wandb = wandb.init(
                    project=wandb_cfg.get("project", "advtrain"),
                    entity=wandb_cfg.get("entity"),
                    name=wandb_cfg.get("name"),
                    group=wandb_cfg.get("group"),
                    mode=wandb_cfg.get("mode"),
                    dir=str(run_dir),
                    config=config,
                    reinit=True,
                )
            except wandb.errors.Error as e:
                # no API key, no network, a bad entity: the user's setup, not a bug
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(
                    f"logger=wandb could not start a run ({first}); log in with `wandb login` (or "
                    "set WANDB_API_KEY), use logger.mode=offline, or use logger=jsonl"
                ) from None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _plain(v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log(record, step=record.get("step"))

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a run's metrics.jsonl (empty list if none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
