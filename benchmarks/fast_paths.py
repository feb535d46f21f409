"""fastpath: channels_last vs NCHW, bf16 autocast vs fp32, torch.compile vs eager, per device.

For each model, two passes are timed, interleaved with the NCHW fp32 eager baseline:

* ``train``: a training step (train mode, forward, cross-entropy, backward, SGD step);
* ``attack``: one attack pass (eval mode, forward, gradient w.r.t. the input only).

A variant is *correct* when, from identical weights and inputs, its loss and its input gradient
agree with the baseline within the tolerance of its arithmetic (fp32: relative L2 error 1e-4;
bf16: 5e-2 on the gradient, i.e. what mixed precision is expected to give) and the gradient signs
(what a sign-step L-inf attack uses) mostly agree. The recommendation for
``trainer.channels_last`` / ``autocast`` / ``compile`` = ``auto`` is the fastest correct variant
of the training step summed over the models, and the result file says whether
``advtrain/engine/fastpath.py`` currently picks it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.data import to_float
from advtrain.engine.fastpath import resolve_fast_paths, run_probe
from benchmarks.common import (
    BenchContext,
    BenchResult,
    Target,
    check_settings,
    interleave,
    paired_ratio,
    summarize,
    synchronize,
)
from benchmarks.harness import bench_data

log = logging.getLogger(__name__)

NAME = "fastpath"
TITLE = "Fast paths: channels_last, bf16 autocast and torch.compile vs NCHW fp32 eager"
DEFAULTS: dict[str, Any] = {
    "models": [
        {"name": "small_cnn", "kwargs": {"width": 32}, "batch_size": 64},
        {"name": "preact_resnet18", "kwargs": {"width": 64}, "batch_size": 32},
    ],
    "variants": ["cl_fp32", "nchw_bf16", "cl_bf16", "compile_nchw_fp32", "compile_cl_fp32"],
    "passes": ["train", "attack"],
    "repeats": 7,
    "warmup": 1,
    "cudnn_benchmark": True,
    "gpu_target": 2.0,
    # May `auto` pick bf16 autocast on this device type? On CPUs the default stays exact fp32:
    # CPU runs are tests and reproducibility checks, and bf16 is fast only on CPUs with AMX.
    "mixed_precision_auto": {"cpu": False, "cuda": True},
    # The recommendation scores one training pass + this many attack passes (5: the GKL recipe).
    "attack_steps_weight": 5,
    # Variants within this fraction of the fastest count as tied; the simplest of them wins.
    "tie_margin": 0.03,
}
#: Dry-run sizes (seconds): exercises the code, measures nothing meaningful.
TINY: dict[str, Any] = {
    "models": [
        {"name": "small_cnn", "kwargs": {"width": 4}, "batch_size": 8},
        {"name": "preact_resnet18", "kwargs": {"width": 4}, "batch_size": 4},
    ],
    "variants": ["cl_fp32", "nchw_bf16"],
    "repeats": 2,
    "warmup": 0,
}

BASELINE = "nchw_fp32"


def parse_variant(name: str) -> dict[str, Any]:
    """`[compile_](nchw|cl)_(fp32|bf16)` -> {compile, channels_last, dtype}."""
    parts = name.split("_")
    compiled = parts[0] == "compile"
    if compiled:
        parts = parts[1:]
    if len(parts) != 2 or parts[0] not in ("nchw", "cl") or parts[1] not in ("fp32", "bf16"):
        from advtrain.errors import ConfigError

        raise ConfigError(f"fast-path variant {name!r}: write [compile_](nchw|cl)_(fp32|bf16)")
    return {"compile": compiled, "channels_last": parts[0] == "cl", "dtype": parts[1]}


class _Variant:
    """One model copy set up for a variant, with its own optimiser."""

    def __init__(self, name: str, base: nn.Module, device: torch.device) -> None:
        spec = parse_variant(name)
        self.name = name
        self.fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
        self.dtype = torch.bfloat16 if spec["dtype"] == "bf16" else None
        self.kind = spec["dtype"]
        self.model = copy.deepcopy(base).to(device, memory_format=self.fmt)
        self.run = torch.compile(self.model) if spec["compile"] else self.model
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.device = device

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def prep(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=self.fmt)

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        self.model.train()
        with self.autocast():
            loss = F.cross_entropy(self.run(x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def attack_pass(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self.model.eval()
        xa = x.detach().clone().requires_grad_(True)
        with self.autocast():
            loss = F.cross_entropy(self.run(xa).float(), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xa)
        return loss.detach(), g

    def train_loss_and_grad(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Train-mode loss and the flattened weight gradient (what the optimiser uses), leaving
        the weights and BN statistics as they were."""
        saved = copy.deepcopy(self.model.state_dict())
        self.model.train()
        with self.autocast():
            loss = F.cross_entropy(self.run(x).float(), y)
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        self.model.load_state_dict(saved)
        return loss.detach(), torch.cat([g.reshape(-1) for g in grads])


def _complexity(variant: str) -> int:
    """How many fast paths a variant switches on (compile, channels_last, bf16)."""
    spec = parse_variant(variant)
    return int(spec["compile"]) + int(spec["channels_last"]) + int(spec["dtype"] == "bf16")


def _side(sv: _Variant, p: str, x: Tensor, y: Tensor) -> Callable[[], Any]:
    """The timed call of variant `sv` for pass `p` (input already in its memory format)."""
    xv = sv.prep(x)
    if p == "train":
        return lambda: sv.train_step(xv, y)
    return lambda: sv.attack_pass(xv, y)


def _reference(base: nn.Module, x: Tensor, y: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """The float64 NCHW eager values every variant is compared with."""
    ref = copy.deepcopy(base).double()
    ref.eval()
    xa = x.double().requires_grad_(True)
    loss = F.cross_entropy(ref(xa), y, reduction="sum")
    (g,) = torch.autograd.grad(loss, xa)
    attack = (loss.detach(), g)
    ref.train()
    loss = F.cross_entropy(ref(x.double()), y)
    params = [p for p in ref.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    return {"attack": attack, "train": (loss.detach(), torch.cat([q.reshape(-1) for q in grads]))}


def _errors(ref: tuple[Tensor, Tensor], got: tuple[Tensor, Tensor]) -> dict[str, float]:
    """Relative errors vs the float64 reference: loss, gradient (L2) and gradient-sign agreement."""
    (l0, g0), (l1, g1) = ref, got
    g0 = g0.double().contiguous().reshape(-1)
    g1 = g1.double().contiguous().reshape(-1)
    rel = float((g1 - g0).norm() / g0.norm().clamp_min(1e-300))
    nz = g0 != 0
    sign = float((g0.sign() == g1.sign())[nz].double().mean()) if bool(nz.any()) else 1.0
    return {
        "loss_rel_err": float((l1.double() - l0).abs() / l0.abs().clamp_min(1e-300)),
        "grad_rel_err": rel,
        "grad_sign_agreement": sign,
    }


#: Tolerances vs the float64 reference. fp32: the same numbers up to summation order, plus the
#: rare ReLU-kink flip (a pre-activation within roundoff of 0 lands on the other side, changing one
#: gradient element; train-mode BatchNorm then spreads ~1e-3 over all of them: measured on
#: PreActResNet-18 with channels_last and 2 threads, one element of 65,536). A layout bug (mixed-up
#: channels) gives errors of order 1. bf16: loss within 1% and the gradient keeps its direction
#: (relative L2 error <= 0.5, cosine similarity >= ~0.87): what mixed precision is expected to give.
TOLERANCES = {
    "fp32": {"loss_rel_err": 1e-5, "grad_rel_err": 1e-2, "grad_sign_agreement": 0.999},
    "bf16": {"loss_rel_err": 1e-2, "grad_rel_err": 0.5, "grad_sign_agreement": 0.8},
}


def _correct(kind: str, err: dict[str, float]) -> bool:
    """Whether errors `err` (see `_errors`) are within the tolerance of arithmetic `kind`."""
    tol = TOLERANCES[kind]
    return (
        err["loss_rel_err"] <= tol["loss_rel_err"]
        and err["grad_rel_err"] <= tol["grad_rel_err"]
        and err["grad_sign_agreement"] >= tol["grad_sign_agreement"]
    )


def run(settings: dict[str, Any], ctx: BenchContext) -> BenchResult:
    s = check_settings(NAME, settings, DEFAULTS)
    from advtrain.data import get_info
    from advtrain.models import build_model

    info = get_info("cifar10")
    variants = [v for v in s["variants"] if v != BASELINE]
    for v in variants:
        parse_variant(v)
    skipped: dict[str, str] = {}
    if ctx.device.type == "cpu" and any(parse_variant(v)["channels_last"] for v in variants):
        # A native channels_last defect aborts the process (AVX2, docs/cpu_fast_paths.md):
        # check in a child process first and leave the layout out where it is broken.
        probe = run_probe(use_cache=False)
        if not probe.ok:
            for v in variants:
                if parse_variant(v)["channels_last"]:
                    skipped[v] = f"not run: channels_last is unsafe on this CPU ({probe.detail})"
            variants = [v for v in variants if v not in skipped]
            log.warning("fastpath: channels_last variants skipped: %s", probe.detail)
    cudnn_prev = torch.backends.cudnn.benchmark
    if ctx.device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(s["cudnn_benchmark"])
    results: dict[str, Any] = {"models": {}}
    rows, check_rows = [], []
    totals: dict[str, dict[str, list[float]]] = {}
    try:
        for m in s["models"]:
            images, labels, source = bench_data(ctx.data_root, int(m["batch_size"]), seed=ctx.seed)
            x = to_float(images).to(ctx.device)
            y = labels.to(ctx.device)
            torch.manual_seed(ctx.seed)
            base = build_model(
                m["name"], info.num_classes, mean=info.mean, std=info.std, **m.get("kwargs", {})
            )
            # Non-trivial BN running statistics, so eval-mode passes are not the identity BN.
            with torch.no_grad():
                base.train()
                base(x)
            setups = {v: _Variant(v, base, ctx.device) for v in [BASELINE, *variants]}
            key = f"{m['name']} {m.get('kwargs', {})} batch {m['batch_size']}"
            mres: dict[str, Any] = {"data": source, "checks": {}, "passes": {}}
            # correctness, from identical weights (before any timed step changes them)
            ref = _reference(base.to(ctx.device), x, y)
            errs: dict[str, dict[str, dict[str, float]]] = {}
            for v in [BASELINE, *variants]:
                sv = setups[v]
                xv = sv.prep(x)
                synchronize(ctx.device)
                start = time.perf_counter()
                got = {"attack": sv.attack_pass(xv, y), "train": sv.train_loss_and_grad(xv, y)}
                synchronize(ctx.device)
                mres.setdefault("first_call_s", {})[v] = time.perf_counter() - start
                errs[v] = {p: _errors(ref[p], got[p]) for p in ("attack", "train")}
            for v in [BASELINE, *variants]:
                for p in ("attack", "train"):
                    ok = _correct(setups[v].kind, errs[v][p])
                    mres["checks"][f"{v}/{p}"] = {**errs[v][p], "correct": ok}
                    check_rows.append(
                        {
                            "model": key,
                            "variant": v,
                            "pass (gradient)": f"{p} ({'input' if p == 'attack' else 'weights'})",
                            **errs[v][p],
                            "correct": ok,
                        }
                    )
            for p in s["passes"]:
                sides = {v: _side(setups[v], p, x, y) for v in [BASELINE, *variants]}
                times = interleave(
                    sides, repeats=s["repeats"], warmup=s["warmup"], device=ctx.device
                )
                pres: dict[str, Any] = {"times_wall": times.wall, "times_cpu": times.cpu}
                for v in [BASELINE, *variants]:
                    med = summarize(times.wall[v])["median"]
                    speed = paired_ratio(times.wall[BASELINE], times.wall[v])
                    cpu_speed = paired_ratio(times.cpu[BASELINE], times.cpu[v])
                    ok = True if v == BASELINE else mres["checks"][f"{v}/{p}"]["correct"]
                    pres[v] = {
                        "median_s": med,
                        "speedup_vs_nchw_fp32": speed,
                        "cpu_speedup": cpu_speed,
                        "correct": ok,
                    }
                    rows.append(
                        {
                            "model": key,
                            "pass": p,
                            "variant": v,
                            "s/call": med,
                            "speed-up vs nchw_fp32": speed,
                            "CPU-time speed-up": cpu_speed,
                            "correct": ok,
                        }
                    )
                    totals.setdefault(p, {}).setdefault(v, []).append(1.0 / speed)
                mres["passes"][p] = pres
            results["models"][key] = mres
    finally:
        torch.backends.cudnn.benchmark = cudnn_prev

    # Recommendation: the fastest correct variant for a whole adversarial step, i.e. one training
    # pass plus `attack_steps_weight` attack passes (the attack dominates adversarial training),
    # geometric mean over the models; among variants within `tie_margin` of the fastest, the
    # simplest (fewest fast paths) wins, so noise cannot switch on compile for nothing.
    def score(p: str, v: str) -> float:
        vals = totals.get(p, {}).get(v, [])
        prod = 1.0
        for r in vals:
            prod *= r
        return prod ** (1 / len(vals)) if vals else float("inf")

    k = float(s["attack_steps_weight"])

    def step_score(v: str) -> float:
        ratios = []
        for mr in results["models"].values():
            ps = mr["passes"]
            if not {"train", "attack"} <= set(ps):
                continue
            tb, ab = ps["train"][BASELINE]["median_s"], ps["attack"][BASELINE]["median_s"]
            tv = tb / ps["train"][v]["speedup_vs_nchw_fp32"]
            av = ab / ps["attack"][v]["speedup_vs_nchw_fp32"]
            ratios.append((tv + k * av) / (tb + k * ab))
        prod = 1.0
        for r in ratios:
            prod *= r
        return prod ** (1 / len(ratios)) if ratios else score(next(iter(totals)), v)

    all_correct = {
        v: all(
            mr["checks"].get(f"{v}/{p}", {}).get("correct", True)
            for mr in results["models"].values()
            for p in ("train", "attack")
        )
        for v in variants
    }
    allow_mixed = bool(s["mixed_precision_auto"].get(ctx.device.type, False))
    candidates = [BASELINE] + [
        v
        for v in variants
        if all_correct[v] and (parse_variant(v)["dtype"] == "fp32" or allow_mixed)
    ]
    scores = {v: step_score(v) for v in [BASELINE, *variants]}
    fastest = min(scores[v] for v in candidates)
    close = [v for v in candidates if scores[v] <= fastest * (1.0 + float(s["tie_margin"]))]
    best = min(close, key=lambda v: (_complexity(v), scores[v]))
    spec = parse_variant(best)
    current = resolve_fast_paths({}, ctx.device)
    recommended = {
        "channels_last": spec["channels_last"],
        "autocast": "bf16" if spec["dtype"] == "bf16" else None,
        "compile": spec["compile"],
    }
    agrees = (
        current.channels_last == recommended["channels_last"]
        and (current.autocast_dtype is not None) == (recommended["autocast"] == "bf16")
        and current.compile == recommended["compile"]
    )
    results["relative_time_geomean"] = {p: {v: score(p, v) for v in totals[p]} for p in totals}
    results["adversarial_step_time_geomean"] = scores
    results["recommended_auto"] = {"device": ctx.device.type, "variant": best, **recommended}
    results["fastpath_py_auto"] = {
        "channels_last": current.channels_last,
        "autocast": str(current.autocast_dtype),
        "compile": current.compile,
    }
    results["auto_agrees"] = agrees
    results["skipped_variants"] = skipped
    summary = [
        {
            "variant": v,
            "correct everywhere": v == BASELINE or all_correct[v],
            **{f"{p} time / nchw_fp32 (geomean)": score(p, v) for p in totals},
            f"train + {k:g} attack passes / nchw_fp32 (geomean)": scores[v],
        }
        for v in [BASELINE, *variants]
    ]
    targets: list[Target] = []
    if ctx.device.type == "cuda":
        prn = [k for k in results["models"] if k.startswith("preact_resnet18")]
        if prn and "cl_bf16" in variants and "train" in results["models"][prn[0]]["passes"]:
            sp = results["models"][prn[0]]["passes"]["train"]["cl_bf16"]["speedup_vs_nchw_fp32"]
            targets.append(
                Target(
                    "PreActResNet-18 training step: bf16 + channels_last vs "
                    "fp32 NCHW eager (speed-up)",
                    sp,
                    s["gpu_target"],
                    ">=",
                )
            )
    notes = [
        f"recommended auto for {ctx.device.type}: {best} (fastest correct adversarial step = 1 "
        f"training + {k:g} attack passes, geometric mean of time / nchw_fp32 over the models; "
        f"ties within {100 * float(s['tie_margin']):g}% go to the simplest; bf16 eligible: "
        f"{allow_mixed}); "
        "fastpath.py auto currently picks "
        f"channels_last={current.channels_last}, autocast={current.autocast_dtype}, "
        f"compile={current.compile}: {'agrees' if agrees else 'DISAGREES'}.",
        "Timings exclude compilation (each variant's untimed warm-up call compiles it); "
        "first_call_s in the JSON is the first training + attack pass of each variant, "
        "compilation included (torch.compile reuses its on-disk cache between runs).",
        "correct: errors vs a float64 NCHW reference (attack pass: input gradient in eval mode; "
        f"train pass: weight gradient in train mode) within {TOLERANCES} (see fast_paths.py "
        "for why the fp32 gradient tolerance is 1e-2 and not 1e-6: ReLU-kink flips).",
    ]
    notes.extend(f"{v}: {why}" for v, why in skipped.items())
    if ctx.device.type == "cuda":
        notes.append(f"cudnn.benchmark={bool(s['cudnn_benchmark'])} during the run.")
    return BenchResult(
        name=NAME,
        title=TITLE,
        settings=s,
        results=results,
        tables=[
            (
                "Summary: time / nchw_fp32, geometric mean over the models of the paired per-round ratios (lower is faster)",
                summary,
            ),
            ("Timings", rows),
            ("Correctness vs nchw_fp32 (same weights and inputs)", check_rows),
        ],
        targets=targets,
        notes=notes,
    )
