"""eval: our AutoAttack evaluation vs calling pyautoattack directly, same model and examples.

`advtrain.eval.autoattack.run_autoattack` runs every attack inside pyautoattack and adds
bookkeeping around it (its own clean pass for per-example flags, the preflight checks, a model
and data hash, log capture, the RNG save/restore). With one shard and the same seed and batch
size its result must equal a direct `AutoAttack(...).run_standard_evaluation` run exactly; the
benchmark checks that and times both, interleaved. Target: ours <= 1.02x direct.

The examples are chosen among those the model classifies correctly, so AutoAttack attacks all of
them (it skips misclassified points, which would make both sides measure nothing).
"""

from __future__ import annotations

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
    summarize,
)
from benchmarks.harness import bench_data

log = logging.getLogger(__name__)

NAME = "eval"
TITLE = "AutoAttack: run_autoattack vs direct pyautoattack"
DEFAULTS: dict[str, Any] = {
    "model": "small_cnn",
    "model_kwargs": {"width": 8},
    "n_examples": 64,
    "batch_size": 64,
    "version": "standard",
    "attacks": None,
    "norm": "Linf",
    "eps": 8 / 255,
    "repeats": 5,
    "warmup": 1,
    "train_steps": 30,
    "target": 1.02,
}
#: Dry-run sizes (seconds): exercises the code, measures nothing meaningful.
TINY: dict[str, Any] = {
    "model_kwargs": {"width": 4},
    "n_examples": 8,
    "batch_size": 8,
    "version": "custom",
    "attacks": ["apgd-ce"],
    "repeats": 1,
    "warmup": 0,
    "train_steps": 5,
}


def _quick_model(
    s: dict[str, Any], x: torch.Tensor, y: torch.Tensor, ctx: BenchContext
) -> torch.nn.Module:
    """A model with non-trivial accuracy (a few clean SGD steps on training images), so a useful
    share of the test points is correctly classified and AutoAttack has work on each of them."""
    from advtrain.data import get_info
    from advtrain.models import build_model

    info = get_info("cifar10")
    torch.manual_seed(ctx.seed)
    model = build_model(
        s["model"], info.num_classes, mean=info.mean, std=info.std, **s["model_kwargs"]
    ).to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i in range(int(s["train_steps"])):
        idx = torch.arange(i * 128, (i + 1) * 128) % x.shape[0]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _fixed_costs(
    model: torch.nn.Module, x: torch.Tensor, s: dict[str, Any], ctx: BenchContext
) -> dict[str, float]:
    """Seconds of the work run_autoattack adds around pyautoattack, timed one by one (median of
    5): a load-independent estimate of its overhead, to read next to the noisy end-to-end ratio."""
    from advtrain.eval import checks
    from advtrain.eval.autoattack import resolve_attacks
    from advtrain.utils.hashing import model_hash, tensors_sha256

    xb = x[: int(s["batch_size"])].to(ctx.device)
    attacks = resolve_attacks(s["version"], s["attacks"])
    bs = int(s["batch_size"])

    def clean() -> None:
        with torch.no_grad():
            for i in range(0, x.shape[0], bs):
                model(x[i : i + bs].to(ctx.device))

    parts = {
        # the model and data hashes of run_autoattack's state metadata
        "model_and_data_hash": lambda: (model_hash(model), tensors_sha256([x])),
        "preflight_checks": lambda: checks.preflight(
            model, xb, norm=s["norm"], eps=float(s["eps"]), version=s["version"], attacks=attacks
        ),
        "clean_pass": clean,
    }
    out = {}
    for name, fn in parts.items():
        times = interleave({name: fn}, repeats=5, warmup=1, device=ctx.device)
        out[name] = summarize(times.wall[name])["median"]
    return out


def run(settings: dict[str, Any], ctx: BenchContext) -> BenchResult:
    s = check_settings(NAME, settings, DEFAULTS)
    from advtrain.eval.autoattack import run_autoattack

    pool = max(4096, 8 * int(s["n_examples"]))
    train_x, train_y, _ = bench_data(ctx.data_root, 128 * int(s["train_steps"]), seed=ctx.seed)
    images, labels, source = bench_data(ctx.data_root, pool, split="test", seed=ctx.seed + 1)
    model = _quick_model(s, to_float(train_x).to(ctx.device), train_y.to(ctx.device), ctx)
    x_all, y_all = to_float(images).to(ctx.device), labels.to(ctx.device)
    n_pool = int(x_all.shape[0])
    with torch.no_grad():
        pred = torch.cat([model(x_all[i : i + 512]).argmax(1) for i in range(0, n_pool, 512)])
    correct = (pred == y_all).nonzero().flatten()
    n = min(int(s["n_examples"]), int(correct.numel()))
    if n == 0:
        raise RuntimeError("the benchmark model classifies no example correctly; raise train_steps")
    idx = correct[:n]
    x, y = x_all[idx].cpu(), y_all[idx].cpu()
    bs = int(s["batch_size"])
    kw = dict(norm=s["norm"], eps=float(s["eps"]), version=s["version"], seed=ctx.seed)
    outs: dict[str, Any] = {}

    def ours() -> None:
        r = run_autoattack(
            model,
            x,
            y,
            attacks=s["attacks"],
            batch_size=bs,
            state_dir=None,
            device=ctx.device,
            progress=False,
            **kw,
        )
        outs["ours"] = r.robust_correct.clone()

    def direct() -> None:
        from pyautoattack import AutoAttack

        aa = AutoAttack(
            model,
            norm=kw["norm"],
            eps=kw["eps"],
            version=kw["version"],
            seed=kw["seed"],
            device=ctx.device,
            attacks=list(s["attacks"]) if s["version"] == "custom" else None,
        )
        if s["version"] == "custom":  # run_autoattack's default: 1 restart per attack
            aa.apgd.n_restarts = aa.apgd_targeted.n_restarts = aa.fab.n_restarts = 1
        _, y_adv = aa.run_standard_evaluation(x, y, batch_size=bs)
        outs["direct"] = (y_adv.cpu() == y).clone()

    times = interleave(
        {"ours": ours, "direct": direct},
        repeats=s["repeats"],
        warmup=s["warmup"],
        device=ctx.device,
    )
    c = compare(times, "ours", "direct")
    fixed = _fixed_costs(model, x, s, ctx)
    fixed_total = sum(fixed.values())
    same = bool(torch.equal(outs["ours"], outs["direct"]))
    robust = {k: float(v.float().mean()) for k, v in outs.items()}
    rows = [
        {
            "side": "run_autoattack (ours)",
            "fixed extra work s": fixed_total,
            "s per evaluation": c["ours_s"]["median"],
            "robust acc": robust["ours"],
        },
        {
            "side": "pyautoattack direct",
            "s per evaluation": c["direct_s"]["median"],
            "robust acc": robust["direct"],
        },
    ]
    return BenchResult(
        name=NAME,
        title=TITLE,
        settings=s,
        results={
            "data": source,
            "n_examples": n,
            "timing": c,
            "robust_acc": robust,
            "same_per_example_result": same,
            "fixed_costs_s": fixed,
            "fixed_cost_fraction": fixed_total / c["direct_s"]["median"],
        },
        tables=[
            (
                f"{s['model']} {s['model_kwargs']}, {n} correctly classified examples, "
                f"AutoAttack {s['version']} {s['norm']} eps {s['eps']:.4g}, batch {bs}, "
                f"{s['repeats']} interleaved rounds",
                rows,
            )
        ],
        targets=[
            Target(
                "run_autoattack / direct",
                c["ratio"],
                s["target"],
                "<=",
                note=f"CPU-time ratio {c['cpu_ratio']:.3f}; fixed extra work "
                f"{100 * fixed_total / c['direct_s']['median']:.2f}% of direct; identical "
                f"per-example results: {same}",
            )
        ],
        notes=[
            f"data: {source}",
            "direct = pyautoattack.AutoAttack(model, norm, eps, version, seed, device)"
            ".run_standard_evaluation on the same tensors and batch size; ours = run_autoattack(..., state_dir=None, progress=False) with its "
            "default preflight checks.",
        ],
    )
