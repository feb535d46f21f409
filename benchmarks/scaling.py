"""scaling: training-step time vs batch size and vs model, with the ratio to the bare bound.

Two sweeps of one GKL step (our `Trainer.train_step` and the plain-torch `BareStep`, same
weights and batch, interleaved): batch sizes for one model, and the models small_cnn,
preact_resnet18 and wrn34_10 at one batch size. Images/s show where throughput saturates; the
ratio to the bare bound shows whether the framework's fixed per-step cost ever matters (it
should shrink as the step grows). A PNG plot (matplotlib, Agg backend) goes next to the JSON.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
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

NAME = "scaling"
TITLE = "Step time vs batch size and model, ours vs the bare bound"
DEFAULTS: dict[str, Any] = {
    "loss": "gkl",
    "attack_steps": 2,
    "batch_model": {"model": "preact_resnet18", "model_kwargs": {"width": 32}},
    "batch_sizes": [8, 16, 32, 64, 128],
    "models": [
        {"model": "small_cnn", "model_kwargs": {}},
        {"model": "preact_resnet18", "model_kwargs": {}},
        {"model": "wrn34_10", "model_kwargs": {}},
    ],
    "model_batch_size": 8,
    "repeats": 5,
    "warmup": 1,
    "target": 1.05,
    "plot": True,
}
#: Dry-run sizes (seconds): exercises the code, measures nothing meaningful.
TINY: dict[str, Any] = {
    "batch_model": {"model": "small_cnn", "model_kwargs": {"width": 4}},
    "batch_sizes": [4, 8],
    "models": [
        {"model": "small_cnn", "model_kwargs": {"width": 4}},
        {"model": "preact_resnet18", "model_kwargs": {"width": 4}},
        {"model": "wrn34_10", "model_kwargs": {"depth": 10, "widen_factor": 1}},
    ],
    "model_batch_size": 4,
    "attack_steps": 1,
    "repeats": 2,
    "warmup": 0,
}


def _measure(
    model: str,
    model_kwargs: dict[str, Any],
    bs: int,
    s: dict[str, Any],
    ctx: BenchContext,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
) -> dict[str, Any]:
    cfg = train_config(
        model=model,
        loss=s["loss"],
        model_kwargs=model_kwargs,
        batch_size=bs,
        attack_kwargs={"steps": s["attack_steps"]},
    )
    torch.manual_seed(ctx.seed)
    trainer = build_trainer(cfg, ctx.device)
    bare = BareStep.like(trainer, copy.deepcopy(trainer.unwrapped_model))
    x = x_all[:bs].to(ctx.device).contiguous(memory_format=trainer.memory_format)
    y = y_all[:bs].to(ctx.device)
    it = iter(range(10**9))
    times = interleave(
        {"ours": lambda: trainer.train_step(x, y, next(it)), "bare": lambda: bare(x, y)},
        repeats=s["repeats"],
        warmup=s["warmup"],
        device=ctx.device,
    )
    c = compare(times, "ours", "bare")
    params = sum(p.numel() for p in trainer.unwrapped_model.parameters())
    return {
        "model": model,
        "model_kwargs": model_kwargs,
        "batch_size": bs,
        "params": params,
        "ours_s": c["ours_s"],
        "bare_s": c["bare_s"],
        "ratio": c["ratio"],
        "cpu_ratio": c["cpu_ratio"],
        "images_per_s": bs / c["ours_s"]["median"],
        "bare_images_per_s": bs / c["bare_s"]["median"],
    }


def _row(e: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": f"{e['model']} {e['model_kwargs'] or ''}".strip(),
        "params (M)": e["params"] / 1e6,
        "batch": e["batch_size"],
        "ours s/step": e["ours_s"]["median"],
        "bare s/step": e["bare_s"]["median"],
        "ours / bare": e["ratio"],
        "CPU-time ratio": e["cpu_ratio"],
        "images/s": e["images_per_s"],
    }


def plot(results: dict[str, Any], path: Path, title: str) -> Path:
    """Two panels: images/s and ours/bare vs batch size; s/step and ours/bare per model."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"wspace": 0.45})
    batch = results["batch_sweep"]
    ax = axes[0]
    if batch:
        bs = [e["batch_size"] for e in batch]
        ax.plot(bs, [e["images_per_s"] for e in batch], "o-", label="ours images/s")
        ax.plot(bs, [e["bare_images_per_s"] for e in batch], "s--", label="bare images/s")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax2 = ax.twinx()
        ax2.plot(bs, [e["ratio"] for e in batch], "k^:", label="ours / bare")
        ax2.axhline(1.0, color="grey", lw=0.5)
        ax2.set_ylabel("ours / bare (time)")
        ratios = [e["ratio"] for e in batch]
        ax2.set_ylim(min(0.9, min(ratios) - 0.05), max(1.1, max(ratios) + 0.05))
        e0 = batch[0]
        ax.set_title(f"{e0['model']} {e0['model_kwargs'] or ''}: batch sweep")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="upper left")
    ax = axes[1]
    models = results["model_sweep"]
    if models:
        names = [f"{e['model']}\n{e['params'] / 1e6:.1f}M" for e in models]
        pos = range(len(models))
        ax.bar([p - 0.2 for p in pos], [e["ours_s"]["median"] for e in models], 0.4, label="ours")
        ax.bar([p + 0.2 for p in pos], [e["bare_s"]["median"] for e in models], 0.4, label="bare")
        ax.set_yscale("log")
        ax.set_xticks(list(pos))
        ax.set_xticklabels(names, fontsize=8)
        ax.set_ylabel("seconds / step")
        for p, e in zip(pos, models):
            ax.annotate(
                f"{e['ratio']:.3f}x",
                (p, e["ours_s"]["median"]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(f"models at batch {models[0]['batch_size']} (label: ours / bare)")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def run(settings: dict[str, Any], ctx: BenchContext) -> BenchResult:
    s = check_settings(NAME, settings, DEFAULTS)
    n = max([*s["batch_sizes"], s["model_batch_size"]])
    images, labels, source = bench_data(ctx.data_root, n, seed=ctx.seed)
    x_all, y_all = to_float(images), labels
    bm = s["batch_model"]
    batch_sweep = [
        _measure(bm["model"], bm["model_kwargs"], int(b), s, ctx, x_all, y_all)
        for b in s["batch_sizes"]
    ]
    model_sweep = [
        _measure(m["model"], m["model_kwargs"], int(s["model_batch_size"]), s, ctx, x_all, y_all)
        for m in s["models"]
    ]
    results: dict[str, Any] = {
        "data": source,
        "batch_sweep": batch_sweep,
        "model_sweep": model_sweep,
    }
    notes = [
        f"data: {source}",
        f"{s['loss']} step with {s['attack_steps']} attack steps, fast paths auto.",
    ]
    if s["plot"]:
        path = plot(
            results,
            ctx.out_dir / "scaling.png",
            f"{s['loss']} training step, {ctx.device.type}, {torch.get_num_threads()} thread(s)",
        )
        results["plot"] = path.name
        notes.append(f"plot: {path.name}")
    worst = max([e["ratio"] for e in batch_sweep + model_sweep], default=float("nan"))
    return BenchResult(
        name=NAME,
        title=TITLE,
        settings=s,
        results=results,
        tables=[
            ("Batch-size sweep", [_row(e) for e in batch_sweep]),
            ("Model sweep", [_row(e) for e in model_sweep]),
        ],
        targets=[Target("worst ours / bare over the sweeps", worst, s["target"], "<=")],
        notes=notes,
    )
