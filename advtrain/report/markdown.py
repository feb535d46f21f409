"""Formatting for report tables: percentages, seed summaries, durations, pipe tables.

Why here: the `report` command and the study READMEs print the same kinds of numbers, and a reader
comparing the two should see them written the same way ("—" for not measured, ranges with an en dash).
"""

from __future__ import annotations

from collections.abc import Sequence

from advtrain.report.stats import Summary

__all__ = ["DASH", "code", "fmt_seconds", "fmt_summary", "md_table", "pct"]

DASH = "—"


def pct(v: float | None, digits: int = 1) -> str:
    """A fraction as a percentage without the % sign ("—" when not measured)."""
    return DASH if v is None else f"{100 * v:.{digits}f}"


def fmt_summary(s: Summary | None, digits: int = 1) -> str:
    """ "mean (min–max)" over seeds, or "mean (1 seed)" when there is no spread to show."""
    if s is None:
        return DASH
    if s.n == 1:
        return f"{pct(s.mean, digits)} (1 seed)"
    return f"{pct(s.mean, digits)} ({pct(s.lo, digits)}–{pct(s.hi, digits)})"


def fmt_seconds(s: float | None) -> str:
    """Durations as 1h02m, 3m07s or 12s: a run's cost at a glance, not to the millisecond."""
    if s is None:
        return DASH
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def cell(text: object) -> str:
    """A table cell: pipes escaped (they would end the cell) and newlines folded into <br>."""
    return str(text).replace("|", "\\|").replace("\n", "<br>")


def code(text: str) -> str:
    """Inline code that survives inside a table cell (a command may contain `|`)."""
    return "`" + text.replace("|", "\\|") + "`"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub pipe table; cells are taken as they are (escape with `cell` where needed)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines
