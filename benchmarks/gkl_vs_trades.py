"""gkl_vs_trades: one GKL training step vs one TRADES step, same model, batch and attack budget.

Both run through our `Trainer.train_step`: the same number of attack steps from the same
`x + 0.001 N(0, 1)` start, one natural forward for the attack, two training forwards and one
backward. What differs is only the math on the logits (GKL: closed-form wMSE + soft-CE + CE and
the class-matrix update; TRADES: KL + CE) and the attack objective (soft-CE vs KL), so the
ratio shows what GKL costs over TRADES. The same ratio for the bare bound is reported next to it:
it is the part of the difference that is inherent in the math rather than in our code.
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

NAME = "gkl_vs_trades"
TITLE = "GKL step vs TRADES step (same model, batch and attack steps)"
DEFAULTS: dict[str, Any] = {
    "model": "small_cnn",
    "model_kwargs": {"width": 16},
    "batch_size": 64,
    "attack_steps": 5,
    "repeats": 15,
    "warmup": 1,
    "target": 1.03,
}
#: Dry-run sizes (seconds): exercises the code, measures nothing meaningful.
TINY: dict[str, Any] = {
    "model_kwargs": {"width": 4},
    "batch_size": 8,
    "attack_steps": 1,
    "repeats": 2,
    "warmup": 0,
}


def run(settings: dict[str, Any], ctx: BenchContext) -> BenchResult:
    s = check_settings(NAME, settings, DEFAULTS)
    images, labels, source = bench_data(ctx.data_root, s["batch_size"], seed=ctx.seed)
    attack = {"steps": s["attack_steps"], "step_size": 2 / 255, "random_start": "normal"}
    trainers, bares = {}, {}
    torch.manual_seed(ctx.seed)
    base = None
    for loss in ("gkl", "trades"):
        cfg = train_config(
            model=s["model"],
            loss=loss,
            model_kwargs=s["model_kwargs"],
            batch_size=s["batch_size"],
            attack_kwargs=attack,
        )
        if base is None:
            from advtrain.models.loading import model_from_config

            base = model_from_config(cfg)
        trainers[loss] = build_trainer(cfg, ctx.device, model=copy.deepcopy(base))
        bares[loss] = BareStep.like(trainers[loss], copy.deepcopy(base))
    fmt = trainers["gkl"].memory_format
    x = to_float(images).to(ctx.device).contiguous(memory_format=fmt)
    y = labels.to(ctx.device)
    it = iter(range(10**9))
    sides = {
        "gkl": lambda: trainers["gkl"].train_step(x, y, next(it)),
        "trades": lambda: trainers["trades"].train_step(x, y, next(it)),
        "bare_gkl": lambda: bares["gkl"](x, y),
        "bare_trades": lambda: bares["trades"](x, y),
    }
    times = interleave(sides, repeats=s["repeats"], warmup=s["warmup"], device=ctx.device)
    ours = compare(times, "gkl", "trades")
    bare = compare(times, "bare_gkl", "bare_trades")
    rows = [
        {
            "side": "ours (Trainer.train_step)",
            "GKL s/step": ours["gkl_s"]["median"],
            "TRADES s/step": ours["trades_s"]["median"],
            "GKL / TRADES": ours["ratio"],
            "CPU-time ratio": ours["cpu_ratio"],
        },
        {
            "side": "bare bound",
            "GKL s/step": bare["bare_gkl_s"]["median"],
            "TRADES s/step": bare["bare_trades_s"]["median"],
            "GKL / TRADES": bare["ratio"],
            "CPU-time ratio": bare["cpu_ratio"],
        },
    ]
    log.info("gkl_vs_trades: ours %.3f, bare %.3f", ours["ratio"], bare["ratio"])
    return BenchResult(
        name=NAME,
        title=TITLE,
        settings=s,
        results={"data": source, "ours": ours, "bare": bare, "attack": {**attack, "eps": 8 / 255}},
        tables=[
            (
                f"{s['model']} {s['model_kwargs']}, batch {s['batch_size']}, "
                f"{s['attack_steps']} attack steps, {s['repeats']} interleaved rounds",
                rows,
            )
        ],
        targets=[
            Target(
                "GKL / TRADES step (ours)",
                ours["ratio"],
                s["target"],
                "<=",
                note=f"bare bound: {bare['ratio']:.3f}",
            )
        ],
        notes=[
            f"data: {source}",
            "GKL uses the official CIFAR-10 setting (alpha 4, beta 20, gamma 1, attack = "
            "soft-CE); TRADES beta 6 with its KL attack.",
        ],
    )
