"""overhead: our `Trainer.train_step` vs the bare plain-torch bound, per loss (PGD-AT, TRADES, GKL).

Both sides start from the same weights, see the same batch (already on the device, in the memory
format the run uses) and run the same attack budget, loss math and fast paths. The ratio
ours / bare is what the framework costs on top of the arithmetic: argument validation, the
attack's mode bookkeeping, callbacks, the non-finite guard and the per-step metrics.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from advtrain.data import to_float
from benchmarks.common import (
    BenchContext,
    BenchResult,
    Target,
    check_settings,
    compare,
    interleave,
)
from benchmarks.harness import BareStep, bench_data, build_trainer, train_config

log = logging.getLogger(__name__)

NAME = "overhead"
TITLE = "Framework overhead: Trainer.train_step vs a bare plain-torch step"
DEFAULTS: dict[str, Any] = {
    "losses": ["pgdat", "trades", "gkl"],
    "model": "small_cnn",
    "model_kwargs": {"width": 16},
    "batch_size": 64,
    "attack_steps": 5,
    "repeats": 15,
    "warmup": 1,
    "target": 1.05,
    "channels_last": "auto",
    "autocast": "auto",
}
#: Dry-run sizes (seconds): exercises the code, measures nothing meaningful.
TINY: dict[str, Any] = {
    "model_kwargs": {"width": 4},
    "batch_size": 8,
    "attack_steps": 1,
    "repeats": 2,
    "warmup": 0,
}


def _sides(
    loss: str, s: dict[str, Any], ctx: BenchContext, x: torch.Tensor, y: torch.Tensor
) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = train_config(
        model=s["model"],
        loss=loss,
        model_kwargs=s["model_kwargs"],
        batch_size=s["batch_size"],
        attack_kwargs={"steps": s["attack_steps"], "step_size": 2 / 255},
        trainer_kwargs={"channels_last": s["channels_last"], "autocast": s["autocast"]},
    )
    torch.manual_seed(ctx.seed)
    trainer = build_trainer(cfg, ctx.device)
    bare = BareStep.like(trainer, copy.deepcopy(trainer.unwrapped_model))
    xb = x.to(ctx.device).contiguous(memory_format=trainer.memory_format)
    yb = y.to(ctx.device)
    it = iter(range(10**9))
    sides = {
        "ours": lambda: trainer.train_step(xb, yb, next(it)),
        "bare": lambda: bare(xb, yb),
    }
    info = {
        "attack": {
            "eps": trainer.attack.eps,
            "step_size": trainer.attack.step_size,
            "steps": trainer.attack.steps,
            "random_start": trainer.attack.random_start,
        },
        "channels_last": trainer.memory_format == torch.channels_last,
        "autocast": str(trainer.autocast_dtype),
    }
    return sides, info


def run(settings: dict[str, Any], ctx: BenchContext) -> BenchResult:
    s = check_settings(NAME, settings, DEFAULTS)
    images, labels, source = bench_data(ctx.data_root, s["batch_size"], seed=ctx.seed)
    x, y = to_float(images), labels
    results: dict[str, Any] = {"data": source, "per_loss": {}}
    rows, targets = [], []
    for loss in s["losses"]:
        sides, info = _sides(loss, s, ctx, x, y)
        times = interleave(sides, repeats=s["repeats"], warmup=s["warmup"], device=ctx.device)
        c = compare(times, "ours", "bare")
        results["per_loss"][loss] = {**c, **info}
        rows.append(
            {
                "loss": loss,
                "attack steps": info["attack"]["steps"],
                "ours s/step": c["ours_s"]["median"],
                "bare s/step": c["bare_s"]["median"],
                "ratio (median of paired)": c["ratio"],
                "ratio of medians": c["ratio_of_medians"],
                "CPU-time ratio": c["cpu_ratio"],
                "ours IQR s": c["ours_s"]["iqr"],
                "bare IQR s": c["bare_s"]["iqr"],
            }
        )
        ratio = c["ratio"]
        log.info(
            "overhead %s: ours %.3fs bare %.3fs ratio %.3f (cpu %.3f)",
            loss,
            c["ours_s"]["median"],
            c["bare_s"]["median"],
            ratio,
            c["cpu_ratio"],
        )
        targets.append(
            Target(
                f"{loss}: ours / bare",
                ratio,
                s["target"],
                "<=",
                note=f"CPU-time ratio {c['cpu_ratio']:.3f}",
            )
        )
    return BenchResult(
        name=NAME,
        title=TITLE,
        settings=s,
        results=results,
        tables=[
            (
                f"{s['model']} {s['model_kwargs']}, batch {s['batch_size']}, "
                f"{s['repeats']} interleaved rounds",
                rows,
            )
        ],
        targets=targets,
        notes=[
            f"data: {source}",
            "ratio = median over rounds of (ours / bare) measured back to back (ABBA order).",
            "Both sides use the run's fast paths (trainer.channels_last / autocast = "
            f"{s['channels_last']} / {s['autocast']}).",
        ],
    )
