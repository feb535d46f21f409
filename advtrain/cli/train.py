"""`python -m advtrain train`: the composed config -> `advtrain.train` -> a one-line summary."""

from __future__ import annotations

from typing import Any

from advtrain.engine.api import TrainResult, train
from advtrain.utils.distributed import current

__all__ = ["run_train"]


def run_train(cfg: dict[str, Any]) -> TrainResult:
    """Train with the resolved config (run_dir set from Hydra); rank 0 prints where and how it ended."""
    result = train(cfg)
    if result.already_finished:
        if current().is_main:
            print(
                f"[advtrain] {result.run_dir} is already finished (epoch {result.epochs} of "
                f"{result.epochs}, final.json): nothing to do, no file touched. To train longer, resume with "
                f"trainer.epochs={result.epochs + 1} or more"
            )
        return result
    if current().is_main:
        summary = " | ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in result.metrics.items()
            if k.startswith(("test_", "val_"))
        )
        print(f"[advtrain] finished {cfg['name']} in {result.run_dir}: {summary}")
    return result
