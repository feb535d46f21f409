"""data: how much of a training step the data pipeline costs.

Our `TrainLoader` (one uint8 gather + vectorised crop/flip per batch, then float conversion and
the trainer's device/memory-format copy) is timed per batch, interleaved with one training step on
the same batch size, for the cheapest step we ship (small CNN, PGD-AT) and a standard one
(PreActResNet-18). The target is loading < 5% of the step. For reference the same images go
through a torchvision-style per-sample PIL pipeline (what the official GKL scripts use) and, if
asked, the two-view AutoAugment loader of the GKL autoaug recipe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch

from advtrain.data import TrainLoader
from benchmarks.common import (
    BenchContext,
    BenchResult,
    Target,
    check_settings,
    interleave,
    paired_ratio,
    summarize,
)
from benchmarks.harness import bench_data, build_trainer, cycle, official_dataloader, train_config

log = logging.getLogger(__name__)

NAME = "data"
TITLE = "Data loading vs training step"
DEFAULTS: dict[str, Any] = {
    "steps": [
        {"model": "small_cnn", "model_kwargs": {"width": 16}, "loss": "pgdat", "batch_size": 128},
        {
            "model": "preact_resnet18",
            "model_kwargs": {"width": 64},
            "loss": "pgdat",
            "batch_size": 64,
        },
    ],
    "attack_steps": 10,
    "batches_per_call": 4,
    "num_images": 4096,
    "repeats": 5,
    "warmup": 1,
    "two_view": True,
    "pil_reference": True,
    "target": 0.05,
}
#: Dry-run sizes (seconds): exercises the code, measures nothing meaningful.
TINY: dict[str, Any] = {
    "steps": [
        {"model": "small_cnn", "model_kwargs": {"width": 4}, "loss": "pgdat", "batch_size": 16}
    ],
    "attack_steps": 1,
    "batches_per_call": 2,
    "num_images": 64,
    "repeats": 2,
    "warmup": 0,
}


def _step(trainer: Any, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any]:
    it = iter(range(10**9))
    return lambda: trainer.train_step(x, y, next(it))


def _load(trainer: Any, src: Iterator[Any], k: int) -> Callable[[], None]:
    """`k` batches from `src`, each copied as `Trainer.train_epoch` does (device + format)."""

    def fn() -> None:
        for _ in range(k):
            xb, yb = next(src)
            trainer._to_device(xb, yb)

    return fn


def run(settings: dict[str, Any], ctx: BenchContext) -> BenchResult:
    s = check_settings(NAME, settings, DEFAULTS)
    images, labels, source = bench_data(ctx.data_root, s["num_images"], seed=ctx.seed)
    k = int(s["batches_per_call"])
    rows, targets = [], []
    results: dict[str, Any] = {"data": source, "configs": {}}
    for st in s["steps"]:
        bs = int(st["batch_size"])
        cfg = train_config(
            model=st["model"],
            loss=st["loss"],
            model_kwargs=st["model_kwargs"],
            batch_size=bs,
            attack_kwargs={"steps": s["attack_steps"]},
        )
        torch.manual_seed(ctx.seed)
        trainer = build_trainer(cfg, ctx.device)
        loader = TrainLoader(images, labels, batch_size=bs, seed=ctx.seed)
        batches = cycle(loader)
        x0, y0 = trainer._to_device(*loader.batch(0, 0))
        loaders: dict[str, Any] = {"ours": batches}
        if s["two_view"]:
            # Two views double the rows; half the batch keeps the step's row count comparable.
            loaders["ours_two_view_autoaugment"] = cycle(
                TrainLoader(
                    images, labels, batch_size=max(bs // 2, 1), seed=ctx.seed, two_view=True
                )
            )
        if s["pil_reference"]:
            loaders["per_sample_pil_dataloader"] = cycle(
                official_dataloader(images, labels, batch_size=bs, seed=ctx.seed)
            )

        sides = {"step": _step(trainer, x0, y0)}
        sides.update({name: _load(trainer, src, k) for name, src in loaders.items()})
        times = interleave(sides, repeats=s["repeats"], warmup=s["warmup"], device=ctx.device)
        step_med = summarize(times.wall["step"])["median"]
        key = f"{st['model']} {st['model_kwargs']} {st['loss']} batch {bs}"
        res: dict[str, Any] = {
            "step_s": summarize(times.wall["step"]),
            "step_images_per_s": bs / step_med,
            "loaders": {},
        }
        for name in loaders:
            per_batch = [t / k for t in times.wall[name]]
            frac = paired_ratio(per_batch, times.wall["step"])
            med = summarize(per_batch)["median"]
            res["loaders"][name] = {
                "batch_s": summarize(per_batch),
                "images_per_s": bs / med,
                "fraction_of_step": frac,
            }
            rows.append(
                {
                    "step": key,
                    "loader": name,
                    "loader images/s": bs / med,
                    "step images/s": bs / step_med,
                    "load / step": frac,
                }
            )
            if name == "ours":
                targets.append(Target(f"{key}: load / step", frac, s["target"], "<="))
        results["configs"][key] = res
    return BenchResult(
        name=NAME,
        title=TITLE,
        settings=s,
        results=results,
        tables=[(f"{k} batches per timed call, {s['repeats']} interleaved rounds", rows)],
        targets=targets,
        notes=[
            f"data: {source}",
            "load / step: median over rounds of (time per batch of the loader, including the "
            "trainer's device and memory-format copy) / (one training step).",
            "ours_two_view_autoaugment uses half the batch size: each batch has 2 views, so "
            "it feeds the step the same number of rows.",
        ],
    )
