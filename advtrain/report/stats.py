"""Numbers a report may state: seed summaries, sampling error, paired tests and a generated reading.

Why a module of its own: the `report` command and the study drivers (scripts/experiments) compare runs
the same way, and a comparison is only honest if both say the same thing about the same numbers. Every
function here works on plain fractions in [0, 1]; formatting as percentages is `markdown.py`'s job.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "TIE_POINTS",
    "PairedSeed",
    "Summary",
    "binomial_se",
    "mcnemar_p",
    "paired_seed",
    "paired_verdict",
    "reading",
    "summarize",
]

# Accuracy differences below this (in points) are ties: results are shown with 0.1-point resolution.
TIE_POINTS = 0.05


@dataclass(frozen=True)
class Summary:
    """Mean and range over seeds of one metric (fractions in [0, 1])."""

    n: int
    mean: float
    lo: float
    hi: float

    @property
    def spread(self) -> float:
        """max - min over the seeds: the noise a difference between methods has to beat."""
        return self.hi - self.lo


def summarize(values: Sequence[float | None]) -> Summary | None:
    """Summary of the values that exist (None = not measured yet); None if there are none."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return Summary(len(vals), statistics.fmean(vals), min(vals), max(vals))


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent images."""
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n > 0 else float("nan")


def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar test: p-value of the discordant split under "A and B are equal".

    Two models evaluated on the same images are paired data; only the images one keeps and the other
    loses carry information about which is better, so the test looks at those alone.
    """
    n = a_only + b_only
    if n == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedSeed:
    """A minus B for one seed on the same test images."""

    seed: int
    diff: float  # robust accuracy of A minus B (fraction)
    a_only: int | None  # images robust under A but not B (None: no per-image results)
    b_only: int | None
    n: int | None

    @property
    def p(self) -> float | None:
        """McNemar's exact p-value, or None without per-image results."""
        return None if self.a_only is None else mcnemar_p(self.a_only, self.b_only or 0)


def paired_seed(
    seed: int,
    acc_a: float,
    acc_b: float,
    flags_a: Sequence[bool] | None,
    flags_b: Sequence[bool] | None,
) -> PairedSeed:
    """One seed's paired comparison; the per-image flags (if both exist and align) give McNemar's counts."""
    diff = float(acc_a) - float(acc_b)
    if flags_a is not None and flags_b is not None and len(flags_a) == len(flags_b):
        a_only = sum(x and not y for x, y in zip(flags_a, flags_b))
        b_only = sum(y and not x for x, y in zip(flags_a, flags_b))
        return PairedSeed(seed, diff, a_only, b_only, len(flags_a))
    return PairedSeed(seed, diff, None, None, None)


def paired_verdict(seeds: Sequence[PairedSeed]) -> str:
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
        return (
            f"yes: every seed has the same sign and |mean| {100 * abs(mean):.1f} > spread "
            f"{100 * spread:.1f}"
        )
    if same_sign:
        return (
            f"no: same sign on every seed, but |mean| {100 * abs(mean):.1f} <= spread "
            f"{100 * spread:.1f}"
        )
    return f"no: the seeds disagree in sign (spread {100 * spread:.1f})"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def reading(
    summaries: Mapping[str, Mapping[str, Summary | None]],
    labels: Mapping[str, str],
    *,
    n_test: Mapping[str, int | None] | int | None,
    class_diff: tuple[str, str, list[str], list[float | None], list[float | None]] | None = None,
    pgd_aa_gap: Mapping[str, Summary | None] | None = None,
    gap_pgd: str = "PGD-20",
    gap_n: int | None = None,
) -> list[str]:
    """Bullet points stating only what the numbers show.

    `summaries[metric][group]` for each metric key in `labels` (which maps the key to its display
    name); `n_test` is the number of test images per metric (or one number for all); `class_diff` =
    (group A, group B, class names, A's per-class means, B's per-class means). Rankings are by mean;
    an order is called established only if every seed of the leader beats every seed of the next.

    `pgd_aa_gap[group]`: `gap_pgd` minus AutoAttack accuracy over the group's seeds, each measured
    inside one AutoAttack evaluation on its own images (`gap_n` of them, if the same for all). The
    gap is never taken between the `pgd` and `aa` summaries: those may come from evaluations on
    different numbers of images, and a difference between two image sets is not a gap.
    """
    lines: list[str] = []
    for m, label in labels.items():
        ranked = sorted(
            ((g, s) for g, s in summaries.get(m, {}).items() if s is not None),
            key=lambda t: -t[1].mean,
        )
        if not ranked:
            lines.append(f"{label}: no finished evaluation yet.")
            continue
        order = ", ".join(f"{g} {_pct(s.mean)}%" for g, s in ranked)
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
        n = n_test.get(m) if isinstance(n_test, Mapping) else n_test
        if n:
            se = 100 * binomial_se(ranked[0][1].mean, n)
            text += (
                f" An accuracy near {_pct(ranked[0][1].mean)}% measured on {n} test images has a "
                f"sampling error of ±{se:.1f} points (1 s.e.)."
            )
        lines.append(text)
    spreads = [
        (s.spread, g, labels[m])
        for m in labels
        for g, s in summaries.get(m, {}).items()
        if s is not None and s.n > 1
    ]
    if spreads:
        w, g, lab = max(spreads)
        lines.append(
            f"Seed spread: the largest range between seeds is {100 * w:.1f} points "
            f"({g}, {lab}); differences between methods smaller than this are within seed noise."
        )
    gaps = [(g, s) for g, s in (pgd_aa_gap or {}).items() if s is not None]
    if gaps:
        aa = labels.get("aa", "AutoAttack")
        on = f"the same {gap_n} test images" if gap_n else "the same test images"
        lines.append(
            f"{gap_pgd} minus {aa} on {on} (each {aa} evaluation's own {gap_pgd} run; points, mean "
            "over seeds): "
            + ", ".join(f"{g} {100 * s.mean:.1f}" for g, s in gaps)
            + f". A large gap means {gap_pgd} overestimates robustness for that method; whether "
            "a gap is a gradient-masking flag is decided by a test on the image counts (red flags)."
        )
    if class_diff is not None:
        lines += _class_lines(*class_diff)
    return lines


def _class_lines(
    a: str, b: str, names: list[str], va: list[float | None], vb: list[float | None]
) -> list[str]:
    """Per-class A minus B: how many classes favour each, the extremes, each side's weakest class."""
    diffs = [
        (100 * (x - y), n) for n, x, y in zip(names, va, vb) if x is not None and y is not None
    ]
    if not diffs:
        return []
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
    lines = [text + "."]
    for g, vals in ((a, va), (b, vb)):
        pairs = [(v, n) for n, v in zip(names, vals) if v is not None]
        if pairs:
            v, n = min(pairs)
            lines.append(f"Weakest class for {g}: {n} ({_pct(v)}% robust).")
    return lines
