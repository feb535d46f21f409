"""gpu_step: training-step throughput on a GPU without host syncs (#15), and what syncs and data cost.

CPU-sized defaults (configs/bench/gpu_step.yaml); the GPU sizes (PreActResNet-18 and WRN-34-10,
batch 128, 10 attack steps) are in configs/bench/gpu.yaml and run by scripts/bench_gpu.sh.
For every model x loss x precision it times `TrainLoader` (data.augment_on, `device` on a GPU) +
`Trainer.train_step`, the loop of `Trainer.train_epoch`, two ways:

* **sync-free**: the default step, which reads nothing back; the device-side sums are read once
  at the end (`Trainer.settle`, as at a logging point);
* **read every step**: the same step followed by `Trainer.settle()`, i.e. one device-to-host read
  per step, the least a loop that checks or logs every step pays (the step before #15 made 3 or
  more such reads: the loss check, the gradient-norm check, one per metric).

Precision: `fp32` (no autocast; TF32 as PyTorch's defaults set it) and `default` (the run's
default policy: `trainer.autocast=auto`, bf16 natural pass on CUDA, fp32 attack; channels_last
auto). A few steps of each run under `torch.profiler`: the host time spent in synchronising calls
(CUDA `*Synchronize` and blocking `cudaMemcpy`, or `aten::_local_scalar_dense` on a CPU) and in
the `data` range (batch gather, transfer, augmentation), each per step and as a share of the
timed step. Peak GPU memory per configuration (`torch.cuda.max_memory_allocated`). Side by side,
per model: the re-implementation of the official GKL loop (tests/reference/official_loop.py:
per-sample PIL transforms in a `DataLoader`, NCHW fp32 eager, natural logits recomputed every
attack step) over the same number of steps.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from advtrain.data import TrainLoader
from benchmarks import reference
from benchmarks.common import BenchContext, BenchResult, Target, check_settings, synchronize
from benchmarks.harness import (
    bench_data,
    build_trainer,
    cycle,
    official_dataloader,
    train_config,
)

log = logging.getLogger(__name__)

NAME = "gpu_step"
TITLE = "Training steps on the device: sync-free vs one read per step, data and sync shares, memory"
DEFAULTS: dict[str, Any] = {
    "models": [{"name": "preact_resnet18", "kwargs": {"width": 16}, "batch_size": 32}],
    "losses": ["pgdat", "trades", "gkl"],
    "precisions": ["fp32", "default"],
    "attack_steps": 2,
    "warmup": 1,
    "steps": 3,
    "profile_steps": 1,
    "num_images": 512,
    "augment_on": "auto",
    "official": True,
    "official_workers": 0,
}
#: Dry-run sizes (seconds): exercises the code on a CPU, measures nothing meaningful.
TINY: dict[str, Any] = {
    "models": [{"name": "small_cnn", "kwargs": {"width": 4}, "batch_size": 8}],
    "attack_steps": 1,
    "warmup": 1,
    "steps": 2,
    "profile_steps": 1,
    "num_images": 64,
    "official_workers": 0,
}

#: Host calls that wait for the device (CUDA runtime) or read a value back (CPU).
_SYNC_CUDA = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
)
_SYNC_CPU = ("aten::_local_scalar_dense",)


def _precision(name: str) -> dict[str, Any]:
    if name == "fp32":
        return {"autocast": False, "channels_last": False}
    if name == "default":
        return {"autocast": "auto", "channels_last": "auto"}
    raise ValueError(f"gpu_step: precision {name!r}: use fp32 or default")


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def _profiled(one: Callable[[], None], steps: int, device: torch.device) -> dict[str, float]:
    """Host microseconds per step in synchronising calls and in the `data` range, and sync calls."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    names = _SYNC_CUDA if device.type == "cuda" else _SYNC_CPU
    synchronize(device)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            one()
    synchronize(device)
    sync_us = data_us = 0.0
    sync_calls = 0
    for e in prof.key_averages():
        if e.key in names:
            sync_us += e.self_cpu_time_total
            sync_calls += e.count
        elif e.key == "data":
            data_us += e.cpu_time_total
    return {
        "sync_us": sync_us / steps,
        "sync_calls": sync_calls / steps,
        "data_us": data_us / steps,
    }


def _time_ours(
    trainer: Any, loader: TrainLoader, s: dict[str, Any], device: torch.device, read_every: bool
) -> dict[str, Any]:
    batches = cycle(loader)
    counter = iter(range(10**9))

    def one() -> None:
        with record_function("data"):
            xb, yb = next(batches)
            xb, yb = trainer._to_device(xb, yb)  # a no-op for batches made on the device
        trainer.train_step(xb, yb, next(counter) % 1000)
        if read_every:
            trainer.settle()

    for _ in range(int(s["warmup"])):
        one()
    trainer.settle()
    synchronize(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(int(s["steps"])):
        one()
    trainer.settle()
    synchronize(device)
    seconds = (time.perf_counter() - t0) / int(s["steps"])
    peak = _peak_mib(device)
    prof = _profiled(one, int(s["profile_steps"]), device)
    trainer.settle()
    return {
        "s_per_step": seconds,
        "peak_mib": peak,
        "sync_calls_per_step": prof["sync_calls"],
        "sync_share": prof["sync_us"] * 1e-6 / seconds,
        "data_share": prof["data_us"] * 1e-6 / seconds,
    }


def _time_official(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    bs: int,
    s: dict[str, Any],
    device: torch.device,
    seed: int,
) -> dict[str, Any]:
    oracle = reference("official_loop")
    cfg = train_config(model="small_cnn", loss="gkl", attack="gkl")  # the loss settings only
    official = oracle.OfficialLoop(
        model,
        num_classes=10,
        eps=8 / 255,
        step_size=(8 / 255) / 4,
        steps=int(s["attack_steps"]),
        lr=0.1,
        loss_cfg=cfg["loss"],
        seed=seed,
    )
    dl = official_dataloader(
        images,
        labels,
        batch_size=bs,
        seed=seed,
        workers=int(s["official_workers"]),
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    batches = cycle(dl)

    def one() -> None:
        xb, yb = next(batches)
        official.step(xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))

    for _ in range(int(s["warmup"])):
        one()
    synchronize(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    for _ in range(int(s["steps"])):
        one()
    synchronize(device)
    return {
        "s_per_step": (time.perf_counter() - t0) / int(s["steps"]),
        "peak_mib": _peak_mib(device),
    }


def run(settings: dict[str, Any], ctx: BenchContext) -> BenchResult:
    s = check_settings(NAME, settings, DEFAULTS)
    device = ctx.device
    images, labels, source = bench_data(ctx.data_root, int(s["num_images"]), seed=ctx.seed)
    rows: list[dict[str, Any]] = []
    official_rows: list[dict[str, Any]] = []
    attack_kwargs = {"steps": int(s["attack_steps"]), "step_size": (8 / 255) / 4}
    for m in s["models"]:
        bs = int(m["batch_size"])
        if images.shape[0] < bs:
            raise ValueError(f"gpu_step: num_images={images.shape[0]} < batch size {bs}")
        for loss in s["losses"]:
            for precision in s["precisions"]:
                cfg = train_config(
                    model=m["name"],
                    loss=loss,
                    model_kwargs=m.get("kwargs") or {},
                    batch_size=bs,
                    attack_kwargs=attack_kwargs,
                    trainer_kwargs={**_precision(precision), "compile": False},
                )
                cfg["device"] = device.type
                row: dict[str, Any] = {
                    "model": m["name"],
                    "batch": bs,
                    "loss": loss,
                    "precision": precision,
                }
                for read_every in (False, True):
                    torch.manual_seed(ctx.seed)
                    trainer = build_trainer(cfg, device)
                    loader = TrainLoader(
                        images,
                        labels,
                        batch_size=bs,
                        seed=ctx.seed,
                        device=device,
                        augment_on=str(s["augment_on"]),
                        drop_last=True,
                    )
                    r = _time_ours(trainer, loader, s, device, read_every)
                    key = "read_every_step" if read_every else "sync_free"
                    row[f"{key}_images_per_s"] = bs / r["s_per_step"]
                    row[f"{key}_sync_calls_per_step"] = r["sync_calls_per_step"]
                    row[f"{key}_sync_share"] = r["sync_share"]
                    if not read_every:
                        row["data_share"] = r["data_share"]
                        row["peak_mib"] = r["peak_mib"]
                        row["augment_on"] = loader.augment_on
                    del trainer, loader
                row["speedup_vs_read_every_step"] = (
                    row["sync_free_images_per_s"] / row["read_every_step_images_per_s"]
                )
                log.info("gpu_step %s", row)
                rows.append(row)
        if s["official"]:
            from advtrain.models.loading import model_from_config

            torch.manual_seed(ctx.seed)
            cfg = train_config(model=m["name"], loss="gkl", model_kwargs=m.get("kwargs") or {})
            net = model_from_config(cfg).to(device)
            r = _time_official(copy.deepcopy(net), images, labels, bs, s, device, ctx.seed)
            del net
            ours = [x for x in rows if x["model"] == m["name"] and x["loss"] == "gkl"]
            official_rows.append(
                {
                    "model": m["name"],
                    "batch": bs,
                    "official images/s (fp32 NCHW eager, PIL DataLoader)": bs / r["s_per_step"],
                    "official peak_mib": r["peak_mib"],
                    **{
                        f"ours gkl {x['precision']} images/s": x["sync_free_images_per_s"]
                        for x in ours
                    },
                    **{
                        f"ours gkl {x['precision']} / official": x["sync_free_images_per_s"]
                        * r["s_per_step"]
                        / bs
                        for x in ours
                    },
                }
            )
    worst = max(r["sync_free_sync_calls_per_step"] for r in rows)
    notes = [
        f"data: {source}; device: {device}; {s['attack_steps']} attack steps per training step; "
        f"{s['warmup']} warm-up and {s['steps']} timed steps per configuration, then "
        f"{s['profile_steps']} profiled ones.",
        "sync share / data share: host time in synchronising calls / in the `data` range (batch "
        "gather, transfer, augmentation) per profiled step, over the timed (unprofiled) step time. "
        "On a GPU host time in `data` overlaps the device's work when the step does not sync.",
        "read every step = the same step + Trainer.settle() after it (one device-to-host read).",
    ]
    if device.type != "cuda":
        notes.append(
            "Not a GPU: a dry run of the code on the CPU; the figures say nothing about a GPU."
        )
    tables = [("Per configuration", rows)]
    if official_rows:
        tables.append(
            ("Side by side: the official GKL loop re-implemented (fp32 NCHW eager)", official_rows)
        )
    return BenchResult(
        name=NAME,
        title=TITLE,
        settings=s,
        results={"data": source, "rows": rows, "official": official_rows},
        tables=tables,
        targets=[
            Target(
                "host syncs per sync-free step (worst configuration)",
                float(worst),
                0.0,
                "<=",
                note="profiler count of synchronising calls per step",
            )
        ],
        notes=notes,
    )
