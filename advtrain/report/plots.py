"""The report's figures, drawn with matplotlib's headless Agg backend.

Why one module for the command and the study drivers: a plot that two code paths draw differently
sooner or later shows two different things under one title. Every function takes plain data (labels,
colours, fractions in [0, 1]) and writes one PNG, so a caller decides what is compared and this module
only decides how it looks. matplotlib is imported on first use: reading runs needs no plotting stack.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Bars",
    "Line",
    "Panel",
    "Point",
    "Stages",
    "palette",
    "plot_attack_stages",
    "plot_curves",
    "plot_per_class",
    "plot_scatter",
]

DPI = 110
LINESTYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def palette(i: int) -> str:
    """The i-th colour of matplotlib's tab10 cycle (by name, so no import is needed to pick one)."""
    names = ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray", "olive", "cyan")
    return f"tab:{names[i % len(names)]}"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers, in CI or in the tests
    import matplotlib.pyplot as plt

    return plt


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _save(fig: Any, path: Path, *, tight: bool = False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    else:
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    _plt().close(fig)
    return path


# ------------------------------------------------------------------------------------------------
# per-epoch curves
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One subplot: one metrics.jsonl key, or several (loss terms: one line style per key)."""

    keys: tuple[str, ...]
    title: str
    ylabel: str
    percent: bool = False  # fractions drawn as %
    log: bool = False  # log y axis (loss terms of very different sizes)


@dataclass(frozen=True)
class Line:
    """One run on the curves: its epoch records (dicts with "epoch" and metric keys)."""

    label: str
    records: Sequence[Mapping[str, Any]]
    color: str | None = None
    style: str = "-"


def _series(records: Sequence[Mapping[str, Any]], key: str, scale: float) -> tuple[list, list]:
    xs, ys = [], []
    for r in records:
        x, y = _num(r.get("epoch")), _num(r.get(key))
        if x is not None and y is not None:
            xs.append(int(x))
            ys.append(scale * y)
    return xs, ys


def plot_curves(
    lines: Sequence[Line],
    panels: Sequence[Panel],
    path: Path,
    *,
    ncols: int | None = None,
    legend: str | int = "figure",
    figsize: tuple[float, float] | None = None,
    sharex: bool = False,
    legend_fontsize: float = 7,
    drop_empty: bool = True,
    title_fontsize: float | None = 9,
) -> Path:
    """Per-epoch curves, one subplot per panel, one colour per line (run).

    `legend` is "figure" (one legend right of the grid: many runs stay readable) or the index of the
    panel that holds it. Panels no line has data for are left out unless `drop_empty` is False.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    if drop_empty:
        panels = [
            p for p in panels if any(_series(ln.records, k, 1)[0] for ln in lines for k in p.keys)
        ] or list(panels[:1])
    ncols = ncols or min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=figsize or (4.0 * ncols, 3.2 * nrows),
        sharex=sharex,
        squeeze=False,
    )
    flat = list(axes.flat)
    for ax, panel in zip(flat, panels):
        scale = 100.0 if panel.percent else 1.0
        multi = len(panel.keys) > 1
        for ln in lines:
            for j, key in enumerate(panel.keys):
                xs, ys = _series(ln.records, key, scale)
                if not xs:
                    continue
                style = LINESTYLES[j % len(LINESTYLES)] if multi else ln.style
                ax.plot(
                    xs,
                    ys,
                    linestyle=style,
                    marker="." if len(xs) < 30 else None,  # a one-epoch run is a visible point
                    color=ln.color,
                    label=ln.label if not multi else None,
                )
        if multi:  # which style is which term (black proxies; colours are the runs)
            ax.legend(
                handles=[
                    Line2D([], [], color="black", linestyle=LINESTYLES[j % len(LINESTYLES)])
                    for j in range(len(panel.keys))
                ],
                labels=[k.removeprefix("train_") for k in panel.keys],
                fontsize=6,
            )
        if panel.log and all(y > 0 for ln in _values(lines, panel.keys) for y in ln):
            ax.set_yscale("log")
        ax.set_title(panel.title, fontsize=title_fontsize)
        ax.set_xlabel("epoch")
        ax.set_ylabel(panel.ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], color=ln.color, linestyle=ln.style) for ln in lines if _has_data(ln, panels)
    ]
    labels = [ln.label for ln in lines if _has_data(ln, panels)]
    if legend == "figure":
        if handles:
            fig.tight_layout()
            fig.legend(
                handles,
                labels,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
                fontsize=legend_fontsize,
                frameon=False,
            )
        return _save(fig, path, tight=True)
    if handles:
        flat[int(legend) % len(panels)].legend(handles, labels, fontsize=legend_fontsize)
    return _save(fig, path)


def _values(lines: Sequence[Line], keys: Sequence[str]) -> list[list[float]]:
    """Every finite value of `keys` per line (decides whether a log axis is possible)."""
    return [_series(ln.records, k, 1)[1] for ln in lines for k in keys]


def _has_data(ln: Line, panels: Sequence[Panel]) -> bool:
    return any(_series(ln.records, k, 1)[0] for p in panels for k in p.keys)


# ------------------------------------------------------------------------------------------------
# scatter, per-class bars, AutoAttack stages
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One evaluated model: x and y accuracies (fractions); runs of one group share label and colour."""

    x: float
    y: float
    label: str
    color: str | None = None
    marker: str = "o"
    note: str = ""  # written next to the point ("s0": the seed)


def plot_scatter(
    points: Sequence[Point],
    path: Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    figsize: tuple[float, float] = (5.5, 4.5),
) -> Path:
    """x vs y accuracy in %, one point per model; the legend names each group once."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=figsize)
    seen: set[str] = set()
    for p in points:
        ax.scatter(
            100 * p.x,
            100 * p.y,
            color=p.color,
            marker=p.marker,
            label=p.label if p.label not in seen else None,
            s=50,
        )
        if p.note:
            ax.annotate(
                p.note,
                (100 * p.x, 100 * p.y),
                fontsize=7,
                xytext=(4, 3),
                textcoords="offset points",
            )
        seen.add(p.label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if seen:
        ax.legend(fontsize=8)
    return _save(fig, path)


@dataclass(frozen=True)
class Bars:
    """One group's per-class accuracy: means (bars) and the seed range (whiskers); None = no images."""

    label: str
    names: Sequence[str]
    means: Sequence[float | None]
    lo: Sequence[float | None] | None = None
    hi: Sequence[float | None] | None = None
    color: str | None = None


def plot_per_class(
    bars: Sequence[Bars],
    path: Path,
    *,
    title: str,
    ylabel: str = "robust accuracy (%)",
    figsize: tuple[float, float] = (10, 4),
) -> Path:
    """Grouped bars per class, one bar per group; a class without test images gets no bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=figsize)
    names: list[str] = []
    width = 0.8 / max(1, len(bars))
    nan = float("nan")
    for i, b in enumerate(bars):
        names = list(b.names)
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(names))]
        m = [nan if v is None else 100 * v for v in b.means]
        err = None
        if b.lo is not None and b.hi is not None:
            err = [
                [
                    0.0 if v is None or lo is None else 100 * (v - lo)
                    for v, lo in zip(b.means, b.lo)
                ],
                [
                    0.0 if v is None or hi is None else 100 * (hi - v)
                    for v, hi in zip(b.means, b.hi)
                ],
            ]
        ax.bar(xs, m, width, yerr=err, capsize=2, color=b.color, label=b.label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if bars:
        ax.legend(fontsize=8)
    return _save(fig, path)


@dataclass(frozen=True)
class Stages:
    """One AutoAttack evaluation: accuracy before any attack and after each stage, plus PGD."""

    label: str
    stages: Sequence[tuple[str, float]]  # ("clean", 0.48), ("apgd-ce", 0.33), ...
    pgd: tuple[str, float] | None = None  # ("PGD-20", 0.35) on the same images
    color: str | None = None
    style: str = "-"


def plot_attack_stages(
    evals: Sequence[Stages], path: Path, *, title: str, figsize: tuple[float, float] | None = None
) -> Path:
    """Accuracy after each AutoAttack stage (cumulative: an image counts as broken once any stage
    broke it); a dotted line marks the same model's PGD accuracy. A PGD line far above the final
    stage, or a black-box stage (square) still breaking many images, hints at gradient masking."""
    plt = _plt()
    order: list[str] = []
    for ev in evals:
        for name, _ in ev.stages:
            if name not in order:
                order.append(name)
    fig, ax = plt.subplots(figsize=figsize or (max(5.5, 1.3 * len(order) + 2.5), 4.2))
    for ev in evals:
        xs = [order.index(n) for n, _ in ev.stages]
        ys = [100 * v for _, v in ev.stages]
        ax.plot(xs, ys, linestyle=ev.style, marker="o", color=ev.color, label=ev.label)
        if ev.pgd is not None:
            ax.axhline(100 * ev.pgd[1], color=ev.color, linestyle=":", linewidth=1)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(["clean" if n == "clean" else f"after {n}" for n in order], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if evals:
        ax.legend(fontsize=7, title="dotted: PGD on the same images", title_fontsize=7)
    return _save(fig, path)
