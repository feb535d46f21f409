"""gkl_loss: our closed-form O(B·C) GKL vs the official pairwise O(B·C²) form, time and memory.

Both compute the same value (checked here, to float32 precision): the wMSE
``¼ Σ_jk v_j v_k ((t_j - t_k) - (s_j - s_k))² / Σ P`` plus the soft-CE, forward and backward into
both logits. The pairwise form materialises several (B, C, C) tensors; for B = 512, C = 1000 one
of them is 2 GB in float32, so sizes whose *predicted* peak exceeds `max_pairwise_bytes` are
reported analytically only (not run), instead of swapping or killing a shared machine.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from advtrain.losses import gkl_components
from benchmarks import reference
from benchmarks.common import (
    BenchContext,
    BenchResult,
    check_settings,
    interleave,
    paired_ratio,
    peak_memory,
    summarize,
)

log = logging.getLogger(__name__)

NAME = "gkl_loss"
TITLE = "GKL loss: closed form vs pairwise (B, C, C)"
DEFAULTS: dict[str, Any] = {
    "classes": [10, 100, 1000],
    "batches": [128, 512],
    "repeats": 5,
    "warmup": 1,
    "gamma": 1.0,
    "max_pairwise_bytes": 4.0e9,
}
#: Dry-run sizes (seconds): exercises the code, measures nothing meaningful.
TINY: dict[str, Any] = {"classes": [10, 100], "batches": [8], "repeats": 2, "warmup": 0}
#: (B, C, C) float32 tensors alive at the peak of the pairwise forward+backward (calibrated
#: against the measured peaks of the runnable sizes; see the result file's `pairwise_factor`).
PAIRWISE_LIVE_TENSORS = 6


def _inputs(b: int, c: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, c, generator=gen) * 3).to(device).requires_grad_(True)
    t = (torch.randn(b, c, generator=gen) * 3).to(device).requires_grad_(True)
    prior = torch.softmax(torch.randn(b, c, generator=gen), dim=1).to(device)
    return s, t, prior


def _closed(s: torch.Tensor, t: torch.Tensor, prior: torch.Tensor, gamma: float) -> torch.Tensor:
    wmse, sce = gkl_components(s, t, prior, gamma=gamma)
    return 20.0 * wmse + 4.0 * sce


def _pairwise(s: torch.Tensor, t: torch.Tensor, prior: torch.Tensor, gamma: float) -> torch.Tensor:
    oracle = reference("official_loop")
    return oracle.official_dkl_loss(s, t, prior, alpha=4.0, beta=20.0, gamma=gamma)


def run(settings: dict[str, Any], ctx: BenchContext) -> BenchResult:
    s = check_settings(NAME, settings, DEFAULTS)
    rows, results = [], {"sizes": {}}
    gamma = float(s["gamma"])
    factors = []
    for b in s["batches"]:
        for c in s["classes"]:
            s_, t_, prior = _inputs(int(b), int(c), ctx.device, ctx.seed)
            bcc = int(b) * int(c) ** 2 * 4
            predicted = PAIRWISE_LIVE_TENSORS * bcc
            runnable = predicted <= float(s["max_pairwise_bytes"])

            def fwd_bwd(
                fn: Any, s_: torch.Tensor = s_, t_: torch.Tensor = t_, prior: torch.Tensor = prior
            ) -> Any:
                def call() -> None:
                    loss = fn(s_, t_, prior, gamma)
                    torch.autograd.grad(loss, (s_, t_))

                return call

            entry: dict[str, Any] = {
                "B": b,
                "C": c,
                "bcc_tensor_bytes": bcc,
                "pairwise_predicted_peak_bytes": predicted,
                "pairwise_run": runnable,
            }
            sides = {"closed": fwd_bwd(_closed)}
            if runnable:
                sides["pairwise"] = fwd_bwd(_pairwise)
                with torch.no_grad():
                    a = float(_closed(s_, t_, prior, gamma))
                    p = float(_pairwise(s_, t_, prior, gamma))
                entry["value_closed"], entry["value_pairwise"] = a, p
                entry["value_rel_diff"] = abs(a - p) / max(abs(p), 1e-12)
            times = interleave(sides, repeats=s["repeats"], warmup=s["warmup"], device=ctx.device)
            entry["closed_s"] = summarize(times.wall["closed"])
            entry["closed_peak"] = peak_memory(sides["closed"], ctx.device)
            if runnable:
                entry["pairwise_s"] = summarize(times.wall["pairwise"])
                entry["speedup"] = paired_ratio(times.wall["pairwise"], times.wall["closed"])
                entry["pairwise_peak"] = peak_memory(sides["pairwise"], ctx.device)
                measured = entry["pairwise_peak"]["bytes"]
                if measured:
                    factors.append(measured / bcc)
            results["sizes"][f"B{b}_C{c}"] = entry
            rows.append(
                {
                    "B": b,
                    "C": c,
                    "closed ms": 1e3 * entry["closed_s"]["median"],
                    "pairwise ms": 1e3 * entry["pairwise_s"]["median"] if runnable else None,
                    "speed-up": entry.get("speedup"),
                    "closed peak MB": _mb(entry["closed_peak"]["bytes"]),
                    "pairwise peak MB": _mb(entry["pairwise_peak"]["bytes"]) if runnable else None,
                    "(B,C) fp32 MB": int(b) * int(c) * 4 / 1e6,
                    "(B,C,C) fp32 MB": bcc / 1e6,
                    "pairwise predicted peak MB": predicted / 1e6,
                    "value rel diff": entry.get("value_rel_diff"),
                    "note": ""
                    if runnable
                    else "pairwise not run: predicted peak over "
                    f"max_pairwise_bytes={s['max_pairwise_bytes']:.3g}",
                }
            )
    results["pairwise_factor"] = factors
    method = peak_memory(lambda: None, ctx.device)["method"]
    return BenchResult(
        name=NAME,
        title=TITLE,
        settings=s,
        results=results,
        tables=[("forward + backward into both logits", rows)],
        notes=[
            f"peak memory: {method}; analytic: one (B, C, C) float32 tensor = 4·B·C² bytes, "
            f"predicted pairwise peak = {PAIRWISE_LIVE_TENSORS} such tensors; measured "
            f"factors (peak / one tensor): {[round(f, 2) for f in factors]}.",
            "closed form: O(B·C) memory, a handful of (B, C) tensors (at most a few MB here, at or "
            "below the RSS measurement's resolution: freed small blocks are reused from malloc "
            "arenas, so '0' means 'no new pages', not 'no memory').",
        ],
    )


def _mb(nbytes: int | None) -> float | None:
    return None if nbytes is None else nbytes / 1e6
