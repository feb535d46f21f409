"""Build a study's README.md, summary.json and PNG plots from its runs directory.

    python scripts/experiments/report.py RUNS_DIR OUT_DIR

Inputs: `RUNS_DIR/plan.json` (written by the driver: the study and every command) and, per run,
`train/metrics.jsonl`, `train/final.json`, `eval_<key>/results.json` and `driver.json` (wall times).
Nothing is rerun. Missing pieces (a run still training, a failed evaluation) show as "—" and the
reading says how much is missing.

The "Reading" section is generated from the numbers alone: rankings by mean, whether the seed ranges
overlap, the binomial standard error of an accuracy measured on n images, the largest per-class
differences. It never states more than those numbers show.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PLAN_FILE, driver_seconds  # noqa: E402

DASH = "—"
TIE_POINTS = (
    0.05  # accuracy differences below this (in points) are ties: results have 0.1-point resolution
)


# ------------------------------------------------------------------------------------------------
# collecting
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the report knows about one (method, seed) pipeline."""

    key: str
    method: str
    slug: str
    seed: int
    commands: dict[str, str]  # "train" / eval key -> command
    finished: bool = False
    epochs: list[dict[str, Any]] = field(default_factory=list)  # last record per validated epoch
    train_seconds: float | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # eval key -> results.json
    eval_seconds: dict[str, float | None] = field(default_factory=dict)
    eval_dirs: dict[str, Path] = field(default_factory=dict)  # eval key -> its run directory


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _epoch_records(train_dir: Path) -> list[dict[str, Any]]:
    """One record per validated epoch (the last one written wins: a resumed epoch is logged again)."""
    path = train_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "val_pgd_acc" in rec and not rec.get("final"):
            by_epoch[int(rec["epoch"])] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def collect(runs_dir: Path) -> tuple[dict[str, Any], list[Run]]:
    """Read plan.json and every run directory it names."""
    plan = _read_json(runs_dir / PLAN_FILE)
    if plan is None:
        raise SystemExit(f"{runs_dir / PLAN_FILE} not found: run the study driver first")
    runs = []
    for p in plan["pipelines"]:
        root = Path(p["root"])
        train_dir = Path(p["train"]["dir"])
        run = Run(
            key=p["key"],
            method=p["method"],
            slug=p["slug"],
            seed=int(p["seed"]),
            commands={"train": p["train"]["command"]}
            | {k: v["command"] for k, v in p["evals"].items()},
            finished=(train_dir / "final.json").is_file(),
            epochs=_epoch_records(train_dir),
            train_seconds=driver_seconds(root, "train"),
        )
        if run.train_seconds is None and run.epochs:  # run without the driver: training time only
            run.train_seconds = sum(float(r.get("train_seconds", 0.0)) for r in run.epochs)
        for key, ev in p["evals"].items():
            res = _read_json(Path(ev["dir"]) / "results.json")
            if res is not None:
                run.evals[key] = res
                run.eval_dirs[key] = Path(ev["dir"])
                run.eval_seconds[key] = driver_seconds(root, f"eval_{key}") or res.get(
                    "wall_time_s"
                )
        runs.append(run)
    return plan, runs


# ------------------------------------------------------------------------------------------------
# numbers
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Mean and range over seeds of one metric (fractions in [0, 1])."""

    n: int
    mean: float
    lo: float
    hi: float

    @property
    def spread(self) -> float:
        return self.hi - self.lo


def summarize(values: Sequence[float | None]) -> Summary | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return Summary(len(vals), statistics.fmean(vals), min(vals), max(vals))


def metric(run: Run, name: str, study: dict[str, Any]) -> float | None:
    """clean | pgd | aa accuracy of a run (fraction), from its results.json files."""
    aa = run.evals.get(study["robust_key"])
    pgd = run.evals.get(study["pgd_key"])
    if name == "clean":
        for res in (aa, pgd):
            if res and res.get("clean_acc") is not None:
                return float(res["clean_acc"])
        return None
    if name == "pgd":
        if pgd and pgd.get("robust_acc") is not None:
            return float(pgd["robust_acc"])
        if aa and aa.get("pgd"):
            return float(aa["pgd"]["acc"])
        return None
    if name == "aa":
        return None if not aa or aa.get("robust_acc") is None else float(aa["robust_acc"])
    raise ValueError(name)


def per_class(run: Run, study: dict[str, Any]) -> tuple[list[str], list[float | None]] | None:
    """Class names and per-class robust accuracy of the robust evaluation (AutoAttack)."""
    res = run.evals.get(study["robust_key"]) or run.evals.get(study["pgd_key"])
    if not res or not res.get("per_class") or res["per_class"].get("robust_acc") is None:
        return None
    return list(res["per_class"]["names"]), list(res["per_class"]["robust_acc"])


def metric_n(runs: list[Run], name: str, study: dict[str, Any]) -> int | None:
    """How many test images `metric(run, name)` was measured on, if the same for every run."""
    ns = set()
    for r in runs:
        aa, pgd = r.evals.get(study["robust_key"]), r.evals.get(study["pgd_key"])
        if name == "clean":
            src = aa if aa and aa.get("clean_acc") is not None else pgd
        elif name == "pgd":
            src = pgd if pgd and pgd.get("robust_acc") is not None else aa
        else:
            src = aa
        if src is not None and metric(r, name, study) is not None:
            ns.add(int(src["n_examples"]))
    return ns.pop() if len(ns) == 1 else None


def pct(v: float | None, digits: int = 1) -> str:
    return DASH if v is None else f"{100 * v:.{digits}f}"


def fmt_summary(s: Summary | None) -> str:
    if s is None:
        return DASH
    if s.n == 1:
        return f"{pct(s.mean)} (1 seed)"
    return f"{pct(s.mean)} ({pct(s.lo)}–{pct(s.hi)})"


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return DASH
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def reading(
    summaries: dict[str, dict[str, Summary | None]],
    labels: dict[str, str],
    *,
    n_test: dict[str, int | None] | int | None,
    class_diff: tuple[str, str, list[str], list[float | None], list[float | None]] | None = None,
) -> list[str]:
    """Bullet points stating only what the numbers show.

    `summaries[metric][method]` for metric in clean/pgd/aa; `labels` maps metric -> display name;
    `class_diff` = (method A, method B, class names, A's per-class means, B's per-class means).
    """
    lines: list[str] = []
    for m, label in labels.items():
        ranked = sorted(
            ((meth, s) for meth, s in summaries.get(m, {}).items() if s is not None),
            key=lambda t: -t[1].mean,
        )
        if not ranked:
            lines.append(f"{label}: no finished evaluation yet.")
            continue
        order = ", ".join(f"{meth} {pct(s.mean)}%" for meth, s in ranked)
        text = f"{label} (mean over seeds): {order}."
        if len(ranked) > 1:
            (b, sb), (c, sc) = ranked[0], ranked[1]
            gap = 100 * (sb.mean - sc.mean)
            if gap < TIE_POINTS:
                text += f" {b} and {c} are tied on the mean."
            elif sb.n > 1 and sc.n > 1:
                if sb.lo > sc.hi:
                    text += (
                        f" {b} leads {c} by {gap:.1f} points and every {b} seed is above every "
                        f"{c} seed."
                    )
                else:
                    text += (
                        f" {b} leads {c} by {gap:.1f} points, but their seed ranges overlap: "
                        f"the order of these two is not established by {min(sb.n, sc.n)} seeds."
                    )
            else:
                text += f" {b} leads {c} by {gap:.1f} points; with one seed there is no spread to compare."
        n = n_test.get(m) if isinstance(n_test, dict) else n_test
        if n:
            se = 100 * binomial_se(ranked[0][1].mean, n)
            text += (
                f" An accuracy near {pct(ranked[0][1].mean)}% measured on {n} test images has a "
                f"sampling error of ±{se:.1f} points (1 s.e.)."
            )
        lines.append(text)
    spreads = [
        (s.spread, meth, labels[m])
        for m in labels
        for meth, s in summaries.get(m, {}).items()
        if s is not None and s.n > 1
    ]
    if spreads:
        w, meth, lab = max(spreads)
        lines.append(
            f"Seed spread: the largest range between seeds is {100 * w:.1f} points "
            f"({meth}, {lab}); differences between methods smaller than this are within seed noise."
        )
    if "pgd" in summaries and "aa" in summaries:
        gaps = []
        for meth, s_aa in summaries["aa"].items():
            s_pgd = summaries["pgd"].get(meth)
            if s_aa is not None and s_pgd is not None:
                gaps.append(f"{meth} {100 * (s_pgd.mean - s_aa.mean):.1f}")
        if gaps:
            lines.append(
                "PGD-20 minus AutoAttack (points, mean): "
                + ", ".join(gaps)
                + ". A large gap means PGD-20 overestimates robustness for that method."
            )
    if class_diff is not None:
        a, b, names, va, vb = class_diff
        diffs = [
            (100 * (x - y), n) for n, x, y in zip(names, va, vb) if x is not None and y is not None
        ]
        if diffs:
            up = [d for d in diffs if d[0] >= TIE_POINTS]
            down = [d for d in diffs if d[0] <= -TIE_POINTS]
            text = (
                f"Per class ({a} minus {b}, robust accuracy): {len(up)} of {len(diffs)} classes "
                f"favour {a}, {len(down)} favour {b}, {len(diffs) - len(up) - len(down)} tied"
            )
            if up:
                d, n = max(up)
                text += f"; largest gain {d:+.1f} points ({n})"
            if down:
                d, n = min(down)
                text += f"; largest loss {d:+.1f} points ({n})"
            lines.append(text + ".")
            for meth, vals in ((a, va), (b, vb)):
                pairs = [(v, n) for n, v in zip(names, vals) if v is not None]
                if pairs:
                    v, n = min(pairs)
                    lines.append(f"Weakest class for {meth}: {n} ({pct(v)}% robust).")
    return lines


# ------------------------------------------------------------------------------------------------
# paired comparisons: method A minus method B on the same test images
# ------------------------------------------------------------------------------------------------


def robust_flags(run: Run, key: str) -> list[bool] | None:
    """Per test image, whether it stayed correct under evaluation `key` (its per_example.pt)."""
    d = run.eval_dirs.get(key)
    if d is None or not (d / "per_example.pt").is_file():
        return None
    import torch

    try:
        data = torch.load(d / "per_example.pt", map_location="cpu", weights_only=True)
        return [bool(v) for v in data["robust_correct"].tolist()]
    except (OSError, RuntimeError, KeyError, ValueError):
        return None


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar test: p-value of the discordant split under "A and B are equal"."""
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedSeed:
    seed: int
    diff: float  # robust accuracy of A minus B (fraction)
    a_only: int | None  # images robust under A but not B (None: no per-image results)
    b_only: int | None
    n: int | None

    @property
    def p(self) -> float | None:
        return None if self.a_only is None else mcnemar_p(self.a_only, self.b_only or 0)


def paired(runs: list[Run], a: str, b: str, key: str) -> list[PairedSeed]:
    """A minus B per seed where both have evaluation `key`."""
    out = []
    for ra in runs:
        if ra.slug != a or key not in ra.evals:
            continue
        rb = next((r for r in runs if r.slug == b and r.seed == ra.seed and key in r.evals), None)
        if rb is None or ra.evals[key].get("robust_acc") is None:
            continue
        diff = float(ra.evals[key]["robust_acc"]) - float(rb.evals[key]["robust_acc"])
        fa, fb = robust_flags(ra, key), robust_flags(rb, key)
        if fa is not None and fb is not None and len(fa) == len(fb):
            a_only = sum(x and not y for x, y in zip(fa, fb))
            b_only = sum(y and not x for x, y in zip(fa, fb))
            out.append(PairedSeed(ra.seed, diff, a_only, b_only, len(fa)))
        else:
            out.append(PairedSeed(ra.seed, diff, None, None, None))
    return out


def paired_verdict(seeds: list[PairedSeed]) -> str:
    """Whether the mean difference exceeds the seed-to-seed spread of the difference."""
    if not seeds:
        return "no paired results"
    diffs = [s.diff for s in seeds]
    mean = statistics.fmean(diffs)
    if len(seeds) == 1:
        return "one seed: no spread to compare"
    spread = max(diffs) - min(diffs)
    same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    if same_sign and abs(mean) > spread:
        return f"yes: every seed has the same sign and |mean| {100 * abs(mean):.1f} > spread {100 * spread:.1f}"
    if same_sign:
        return f"no: same sign on every seed, but |mean| {100 * abs(mean):.1f} <= spread {100 * spread:.1f}"
    return f"no: the seeds disagree in sign (spread {100 * spread:.1f})"


# ------------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------------

COLORS = {"pgdat": "tab:blue", "trades": "tab:orange", "gkl": "tab:green", "gkl_loss": "tab:red"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_val_curves(runs: list[Run], path: Path) -> Path:
    """Held-out clean and PGD-10 accuracy per epoch (from metrics.jsonl), one line per run."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r.seed for r in runs})
    for r in runs:
        if not r.epochs:
            continue
        ep = [int(e["epoch"]) for e in r.epochs]
        style = styles[seeds.index(r.seed) % len(styles)]
        color = COLORS.get(r.slug)
        lbl = f"{r.method} seed {r.seed}"
        axes[0].plot(ep, [100 * e["val_pgd_acc"] for e in r.epochs], style, color=color, label=lbl)
        axes[1].plot(
            ep, [100 * e["val_clean_acc"] for e in r.epochs], style, color=color, label=lbl
        )
    axes[0].set_title("robust validation accuracy (PGD, held-out split)")
    axes[1].set_title("clean validation accuracy (held-out split)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_clean_vs_aa(runs: list[Run], study: dict[str, Any], path: Path) -> Path:
    """Clean vs AutoAttack accuracy on the test images, one point per run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    markers = ["o", "s", "^", "D", "v"]
    seeds = sorted({r.seed for r in runs})
    seen: set[str] = set()
    for r in runs:
        c, a = metric(r, "clean", study), metric(r, "aa", study)
        if c is None or a is None:
            continue
        ax.scatter(
            100 * c,
            100 * a,
            color=COLORS.get(r.slug),
            marker=markers[seeds.index(r.seed) % len(markers)],
            label=r.method if r.method not in seen else None,
            s=50,
        )
        ax.annotate(
            f"s{r.seed}", (100 * c, 100 * a), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
        seen.add(r.method)
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("AutoAttack accuracy (%)")
    ax.set_title("clean vs AutoAttack (test images)")
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def class_means(
    runs: list[Run], slug: str, study: dict[str, Any]
) -> tuple[list[str], list[float | None], list[float | None], list[float | None]] | None:
    """Class names and per-class mean / min / max robust accuracy over a method's seeds."""
    rows = [pc for r in runs if r.slug == slug and (pc := per_class(r, study)) is not None]
    if not rows:
        return None
    names = rows[0][0]
    means, los, his = [], [], []
    for i in range(len(names)):
        s = summarize([v[i] for _, v in rows])
        means.append(None if s is None else s.mean)
        los.append(None if s is None else s.lo)
        his.append(None if s is None else s.hi)
    return names, means, los, his


def plot_per_class(
    runs: list[Run], study: dict[str, Any], labels: dict[str, str], path: Path
) -> Path:
    """Per-class robust accuracy of the two compared methods (bars: mean over seeds; whiskers: range)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    slugs = list(study["compare"])
    width = 0.8 / len(slugs)
    names: list[str] = []
    for i, slug in enumerate(slugs):
        cm = class_means(runs, slug, study)
        if cm is None:
            continue
        names, means, los, his = cm
        xs = [j + (i - (len(slugs) - 1) / 2) * width for j in range(len(names))]
        m = [100 * (v or 0.0) for v in means]
        err = [
            [100 * ((v or 0.0) - (lo or 0.0)) for v, lo in zip(means, los)],
            [100 * ((hi or 0.0) - (v or 0.0)) for v, hi in zip(means, his)],
        ]
        ax.bar(
            xs, m, width, yerr=err, capsize=2, color=COLORS.get(slug), label=labels.get(slug, slug)
        )
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title("per-class robust accuracy (AutoAttack, test images; whiskers: seed range)")
    ax.grid(axis="y", alpha=0.3)
    if names:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# the README
# ------------------------------------------------------------------------------------------------


def _code(cmd: str) -> str:
    return "`" + cmd.replace("|", "\\|") + "`"


def write_report(runs_dir: Path, out_dir: Path) -> Path:
    """Write README.md, summary.json and the PNG plots into out_dir; returns the README path."""
    runs_dir, out_dir = Path(runs_dir).resolve(), Path(out_dir)
    plan, runs = collect(runs_dir)
    study = plan["study"]
    out_dir.mkdir(parents=True, exist_ok=True)
    methods: list[tuple[str, str]] = []  # (slug, label) in the study's order, present in the plan
    for m in study["methods"]:
        if any(r.slug == m["slug"] for r in runs):
            methods.append((m["slug"], m["label"]))
    method_label = dict(methods)
    runs.sort(key=lambda r: ([s for s, _ in methods].index(r.slug), r.seed))
    eval_label = {e["key"]: e["label"] for e in study["evals"]}
    pgd_label = eval_label.get(study["pgd_key"], "PGD-20")
    aa_label = eval_label.get(study["robust_key"], "AutoAttack")
    labels = {"clean": "Clean", "pgd": pgd_label, "aa": aa_label}

    summaries: dict[str, dict[str, Summary | None]] = {
        m: {
            lab: summarize([metric(r, m, study) for r in runs if r.slug == slug])
            for slug, lab in methods
        }
        for m in labels
    }
    n_test = {m: metric_n(runs, m, study) for m in labels}

    plots = {
        "val_curves": plot_val_curves(runs, out_dir / "val_curves.png"),
        "clean_vs_aa": plot_clean_vs_aa(runs, study, out_dir / "clean_vs_aa.png"),
        "per_class": plot_per_class(runs, study, method_label, out_dir / "per_class_robust.png"),
    }

    a, b = study["compare"]
    ca, cb = class_means(runs, a, study), class_means(runs, b, study)
    class_diff = None
    if ca is not None and cb is not None:
        class_diff = (method_label.get(a, a), method_label.get(b, b), ca[0], ca[1], cb[1])

    L: list[str] = [f"# {study['title']}", ""]
    L.append(
        f"Generated by `scripts/experiments/report.py` from `{runs_dir}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}; do not edit by hand (rerun the driver or the report)."
    )
    L.append("")
    L += ["## Setup", "", study.get("scaling", "").strip(), ""]
    extra = study.get("train_overrides") or []
    if extra:
        L.append(
            "**This run adds overrides to every training that the table above does not describe:** "
            + " ".join(f"`{o}`" for o in extra)
            + ". The commands below are what ran."
        )
        L.append("")
    L.append(
        f"Commands ran as subprocesses of the driver with `python` = `{plan['python']}`, "
        f"{plan['jobs']} pipeline(s) at once and {plan['threads_per_job']} torch thread(s) each "
        f"on a {plan['cpu_count']}-CPU machine. Each evaluation uses the training's `last.pt` "
        "(with its weight average when the checkpoint has one)."
    )
    L.append("")

    L += ["## Results per run", ""]
    L.append(
        "Accuracies in % on the first "
        + ", ".join(f"{n if n else 'N'} ({labels[m]})" for m, n in n_test.items())
        + " test images. "
        "Wall times are the driver's, summed over attempts (a resumed run adds up). Evaluations: "
        + "; ".join(
            f"{e['label']} = " + " ".join(f"`{o}`" for o in e["overrides"]) for e in study["evals"]
        )
        + "."
    )
    L.append("")
    L.append(
        f"| method | seed | clean | {pgd_label} | {aa_label} | train wall | eval wall | commands |"
    )
    L.append("|---|---|---|---|---|---|---|---|")
    for r in runs:
        ev_secs = [s for s in r.eval_seconds.values() if s is not None]
        cmds = "<br>".join(f"{k}: {_code(c)}" for k, c in r.commands.items())
        status = "" if r.finished else " (unfinished)"
        L.append(
            f"| {r.method}{status} | {r.seed} | {pct(metric(r, 'clean', study))} | "
            f"{pct(metric(r, 'pgd', study))} | {pct(metric(r, 'aa', study))} | "
            f"{fmt_seconds(r.train_seconds)} | {fmt_seconds(sum(ev_secs) if ev_secs else None)} | "
            f"{cmds} |"
        )
    L.append("")
    L += ["## Mean over seeds", ""]
    L.append("Mean (min–max over seeds), accuracies in %.")
    L.append("")
    L.append(f"| method | seeds | clean | {pgd_label} | {aa_label} | mean train wall |")
    L.append("|---|---|---|---|---|---|")
    for slug, lab in methods:
        mine = [r for r in runs if r.slug == slug]
        tw = summarize([r.train_seconds for r in mine])
        L.append(
            f"| {lab} | {len(mine)} | {fmt_summary(summaries['clean'][lab])} | "
            f"{fmt_summary(summaries['pgd'][lab])} | {fmt_summary(summaries['aa'][lab])} | "
            f"{fmt_seconds(tw.mean if tw else None)} |"
        )
    L.append("")

    cms = {slug: class_means(runs, slug, study) for slug, _ in methods}
    names = next((cm[0] for cm in cms.values() if cm is not None), None)
    if names:
        L += ["## Per-class robust accuracy", ""]
        L.append(f"{aa_label} accuracy per class in %, mean over seeds.")
        L.append("")
        L.append("| class | " + " | ".join(lab for _, lab in methods) + " |")
        L.append("|---|" + "---|" * len(methods))
        for i, name in enumerate(names):
            cells = [pct(cms[s][1][i]) if cms[s] is not None else DASH for s, _ in methods]
            L.append(f"| {name} | " + " | ".join(cells) + " |")
        L.append("")

    pair_rows = []
    for pa, pb in study.get("pairs") or []:
        if pa not in method_label or pb not in method_label:
            continue
        ps = paired(runs, pa, pb, study["robust_key"])
        pair_rows.append((method_label[pa], method_label[pb], ps))
    if pair_rows:
        L += ["## Paired comparison", ""]
        L.append(
            f"{aa_label} accuracy of A minus B in points, seed by seed on the same test images. "
            "Spread: the range of the difference over seeds. McNemar: exact two-sided test on the "
            "images that one model keeps and the other loses (a/b = robust only under A / only "
            "under B); p < 0.05 says the two models of that seed differ beyond test-image sampling."
        )
        L.append("")
        L.append(
            "| A minus B | per seed | mean | spread | McNemar per seed | mean exceeds the spread? |"
        )
        L.append("|---|---|---|---|---|---|")
        for la, lb, ps in pair_rows:
            per_seed = ", ".join(f"s{x.seed} {100 * x.diff:+.1f}" for x in ps) or DASH
            mean = f"{100 * statistics.fmean(x.diff for x in ps):+.1f}" if ps else DASH
            spread = (
                f"{100 * (max(x.diff for x in ps) - min(x.diff for x in ps)):.1f}"
                if len(ps) > 1
                else DASH
            )
            mc = (
                ", ".join(
                    f"s{x.seed} {x.a_only}/{x.b_only} p={x.p:.2g}"
                    if x.p is not None
                    else f"s{x.seed} {DASH}"
                    for x in ps
                )
                or DASH
            )
            L.append(
                f"| {la} − {lb} | {per_seed} | {mean} | {spread} | {mc} | {paired_verdict(ps)} |"
            )
        L.append("")

    L += ["## Plots", ""]
    L.append("Robust (PGD, held-out training images) and clean validation accuracy per epoch:")
    L.append("")
    L.append("![validation curves](val_curves.png)")
    L.append("")
    L.append("![clean vs AutoAttack](clean_vs_aa.png)")
    L.append("")
    L.append(
        f"![per-class robust accuracy, {method_label.get(a, a)} vs {method_label.get(b, b)}]"
        "(per_class_robust.png)"
    )
    L.append("")

    L += ["## Reading", ""]
    L.append("Generated from the numbers above; it states nothing they do not show.")
    L.append("")
    expected = len(runs) * (1 + len(study["evals"]))
    done = sum(r.finished for r in runs) + sum(len(r.evals) for r in runs)
    if done < expected:
        L.append(f"- Incomplete: {done} of {expected} trainings and evaluations have finished.")
    for line in reading(summaries, labels, n_test=n_test, class_diff=class_diff):
        L.append(f"- {line}")
    for la, lb, ps in pair_rows:
        if ps:
            mean = 100 * statistics.fmean(x.diff for x in ps)
            sig = [x for x in ps if x.p is not None and x.p < 0.05]
            L.append(
                f"- {la} minus {lb} ({aa_label}, paired): {mean:+.1f} points on average over "
                f"{len(ps)} seed(s); mean exceeds the seed spread: {paired_verdict(ps)}; "
                f"McNemar p < 0.05 on {len(sig)} of {len(ps)} seed(s)."
            )
    flagged = [
        (r, k, res)
        for r in runs
        for k, res in r.evals.items()
        if res.get("unreliable") or res.get("warnings")
    ]
    for r, k, res in flagged:
        L.append(
            f"- Evaluation warning ({r.method} seed {r.seed}, {eval_label.get(k, k)}): "
            + "; ".join(res.get("warnings") or ["marked unreliable"])
        )
    if "gkl" in method_label:
        L.append(
            "- Caveat on the GKL recipe: its eps ramp eps_t = eps · t/E reaches the full eps only at "
            "the last epoch, so the GKL arm trains at half the final eps on average and at the full "
            "eps for one epoch. At the paper's 200 epochs the same ramp gives many epochs close to the "
            "full eps (the last 20 are above 90% of it); at 10 epochs only the last one is, so the "
            "ramp costs GKL more here than it would at full length."
            + (
                " The GKL-loss-only arm, trained at the full eps from epoch 1, separates the loss "
                "from the ramp."
                if "gkl_loss" in method_label
                else ""
            )
        )
    L.append(
        "- Caveat: small models, a training subset and short schedules are not the papers' setting "
        "(WRN-34-10 on all 50,000 CIFAR-10 images for 100-200 epochs); these numbers compare the methods at "
        "this scale only and say nothing about how they rank at full scale."
    )
    L.append("")
    readme = out_dir / "README.md"
    readme.write_text("\n".join(L))

    summary = {
        "study": study["name"],
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "n_test": n_test,
        "runs": [
            {
                "method": r.method,
                "slug": r.slug,
                "seed": r.seed,
                "finished": r.finished,
                "clean": metric(r, "clean", study),
                "pgd": metric(r, "pgd", study),
                "aa": metric(r, "aa", study),
                "train_seconds": r.train_seconds,
                "eval_seconds": r.eval_seconds,
                "commands": r.commands,
                "per_class": per_class(r, study),
                "eval_flags": {
                    k: {
                        "unreliable": bool(res.get("unreliable")),
                        "warnings": res.get("warnings") or [],
                    }
                    for k, res in r.evals.items()
                },
                "val_curve": [
                    {
                        "epoch": e["epoch"],
                        "val_clean_acc": e["val_clean_acc"],
                        "val_pgd_acc": e["val_pgd_acc"],
                    }
                    for e in r.epochs
                ],
            }
            for r in runs
        ],
        "means": {
            m: {lab: (None if s is None else asdict(s)) for lab, s in d.items()}
            for m, d in summaries.items()
        },
        "plots": {k: p.name for k, p in plots.items()},
        "paired": [
            {
                "a": la,
                "b": lb,
                "seeds": [asdict(x) | {"p": x.p} for x in ps],
                "verdict": paired_verdict(ps),
            }
            for la, lb, ps in pair_rows
        ],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return readme


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Rebuild a study report from its runs directory.")
    ap.add_argument("runs_dir", type=Path, help="the driver's --runs-dir (holds plan.json)")
    ap.add_argument("out_dir", type=Path, help="where README.md, summary.json and the PNGs go")
    args = ap.parse_args(argv)
    print(write_report(args.runs_dir, args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
