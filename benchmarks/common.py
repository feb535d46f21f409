"""What every benchmark shares: interleaved timing, machine description, result files.

Why the timing works this way: the benchmark machine is a shared 2-core CPU whose load changes by
the second. Absolute times measured minutes apart are not comparable, so every benchmark compares
two (or more) *sides* inside one run, interleaving them round by round in ABBA order (A B, B A,
A B, ...) after a warm-up, and reports medians and the median of the per-round ratios. A load spike
then hits both sides of a round about equally and at most a few rounds, and the median discards it.
Nothing here asserts a time: the tests check structure and sanity (positive, finite), never speed.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advtrain.errors import ConfigError
from advtrain.utils.cpu import cpu_info

log = logging.getLogger(__name__)

__all__ = [
    "BenchContext",
    "BenchResult",
    "Target",
    "Timings",
    "check_settings",
    "compare",
    "interleave",
    "machine_info",
    "paired_ratio",
    "peak_memory",
    "summarize",
    "synchronize",
    "write_result",
]


# --------------------------------------------------------------------------------------------
# context and results
# --------------------------------------------------------------------------------------------


@dataclass
class BenchContext:
    """Where and how a benchmark runs (one per `python -m advtrain bench` invocation)."""

    out_dir: Path
    device: torch.device
    threads: int
    seed: int = 0
    command: str = "python -m advtrain bench"
    data_root: str | None = None

    def machine(self) -> dict[str, Any]:
        return machine_info(self.device)


@dataclass
class Target:
    """A performance target: `value` compared with `limit` (`<=` or `>=`); `met` is derived."""

    name: str
    value: float
    limit: float
    op: str = "<="
    note: str = ""

    @property
    def met(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    @property
    def margin(self) -> float:
        """How far inside (+) or outside (-) the target the value is, relative to the limit."""
        if not math.isfinite(self.value) or self.limit == 0:
            return float("nan")
        rel = (self.limit - self.value) / self.limit
        return rel if self.op == "<=" else -rel

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "limit": self.limit,
            "met": self.met,
            "margin": self.margin,
            "note": self.note,
        }


@dataclass
class BenchResult:
    """One benchmark's outcome: raw numbers (`results`), tables for the report, targets, notes."""

    name: str
    title: str
    settings: dict[str, Any]
    results: dict[str, Any]
    tables: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_settings(
    name: str, given: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """`defaults` updated with `given`; an unknown key is a ConfigError naming the valid ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in bench.{name}; valid keys: {sorted(defaults)}"
        )
    return {**defaults, **dict(given)}


# --------------------------------------------------------------------------------------------
# machine
# --------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model and vector extensions, cores, torch version, threads, load average, the GPU."""
    cpu = cpu_info()
    info: dict[str, Any] = {
        "cpu": cpu.model,
        "cpu_extensions": list(cpu.flags),
        "onednn_class": cpu.isa_class,
        "onednn_isa_cap": cpu.isa_cap,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
    }
    try:
        info["load_average_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a wall-clock interval covers the kernels it launched."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    synchronize(device)
    cpu0, start = time.process_time(), time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu0


@dataclass
class Timings:
    """Per-side lists of seconds per call: wall clock and this process's CPU time.

    Wall time is what a user waits for and the headline figure. CPU time (all threads of this
    process) is reported next to it because on a shared, overloaded machine it is far less
    disturbed by other processes: time spent descheduled does not count.
    """

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def interleave(
    sides: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    device: torch.device | None = None,
) -> Timings:
    """Seconds per call of each side, measured in interleaved rounds (ABBA order).

    Each side first runs `warmup` untimed calls (allocator, oneDNN/cuDNN plan caches, lazy init).
    Round r times every side once, in the given order on even rounds and reversed on odd ones, so
    neither side systematically runs right after the other's cache-warming work.
    """
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} must be >= 1")
    device = device if device is not None else torch.device("cpu")
    names = list(sides)
    for name in names:
        for _ in range(max(warmup, 0)):
            sides[name]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            w, c = _timed(sides[name], device)
            wall[name].append(w)
            cpu[name].append(c)
    return Timings(wall, cpu)


def compare(times: Timings, num: str, den: str) -> dict[str, Any]:
    """Summary of `num` vs `den`: medians, paired ratios (wall and CPU) and the raw times."""
    return {
        f"{num}_s": summarize(times.wall[num]),
        f"{den}_s": summarize(times.wall[den]),
        "ratio": paired_ratio(times.wall[num], times.wall[den]),
        "ratio_of_medians": _safe_div(
            statistics.median(times.wall[num]), statistics.median(times.wall[den])
        ),
        "cpu_ratio": paired_ratio(times.cpu[num], times.cpu[den]),
        "times_wall": {num: times.wall[num], den: times.wall[den]},
        "times_cpu": {num: times.cpu[num], den: times.cpu[den]},
    }


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, min, mean and the interquartile range of a list of timings (seconds)."""
    ts = sorted(float(t) for t in times)
    n = len(ts)
    if n == 0:
        return {
            "n": 0,
            "median": float("nan"),
            "min": float("nan"),
            "mean": float("nan"),
            "iqr": float("nan"),
        }
    q1 = ts[(n - 1) // 4]
    q3 = ts[(3 * (n - 1) + 3) // 4]
    return {
        "n": n,
        "median": statistics.median(ts),
        "min": ts[0],
        "mean": statistics.fmean(ts),
        "iqr": q3 - q1,
    }


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> float:
    """Median over rounds of num[r] / den[r]: each ratio compares two calls made seconds apart."""
    ratios = [a / b for a, b in zip(num, den) if b > 0]
    return statistics.median(ratios) if ratios else float("nan")


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------


def _proc_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak memory `fn` adds on top of what was live before it, in bytes.

    CUDA: `torch.cuda.max_memory_allocated` (exact, allocator-level). CPU: the kernel's peak
    resident set (VmHWM) after resetting it, minus the resident set before; tracemalloc does not
    see torch's allocations. Large CPU tensors are mmap'ed and returned to the OS when freed, so
    the RSS peak tracks them well; small ones may stay in malloc arenas, so treat CPU figures as
    +-1 MB estimates and compare them with the analytic sizes.
    """
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return {
            "method": "torch.cuda.max_memory_allocated",
            "bytes": int(torch.cuda.max_memory_allocated(device) - base),
        }
    before = _proc_status_kib("VmRSS")
    if before is None or not _reset_peak_rss():
        fn()
        return {"method": "unavailable (no /proc/self/clear_refs)", "bytes": None}
    fn()
    peak = _proc_status_kib("VmHWM")
    if peak is None:
        return {"method": "unavailable", "bytes": None}
    return {"method": "VmHWM - VmRSS (Linux /proc)", "bytes": max(peak - before, 0) * 1024}


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1000 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of `rows` (columns: union of keys, first-seen order)."""
    if not rows:
        return "(no rows)\n"
    cols: list[str] = []
    for row in rows:
        for k in row:
            if k not in cols:
                cols.append(k)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no NaN/Inf; keep them readable instead of invalid
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def write_result(result: BenchResult, ctx: BenchContext) -> dict[str, Any]:
    """Write `<out_dir>/<name>.json` and `<name>.md`; return the JSON payload."""
    now = _dt.datetime.now(_dt.timezone.utc).astimezone()
    payload = {
        "benchmark": result.name,
        "title": result.title,
        "command": ctx.command,
        "date": now.isoformat(timespec="seconds"),
        "machine": ctx.machine(),
        "settings": result.settings,
        "results": result.results,
        "targets": [t.as_dict() for t in result.targets],
        "notes": result.notes,
    }
    payload = _jsonable(payload)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = ctx.out_dir / f"{result.name}.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, json_path)

    m = payload["machine"]
    lines = [
        f"# {result.title}",
        "",
        f"- command: `{ctx.command}`",
        f"- date: {payload['date']}",
        f"- machine: {m['cpu']} ({', '.join(m.get('cpu_extensions') or []) or 'no AVX'}; "
        f"oneDNN class {m.get('onednn_class')}"
        + (
            f", capped by ONEDNN_MAX_CPU_ISA={m['onednn_isa_cap']}"
            if m.get("onednn_isa_cap")
            else ""
        )
        + f"), {m['cores']} cores, torch {m['torch']}, "
        f"{m['torch_threads']} threads, device {m['device']}"
        + (f" ({m['gpu']})" if "gpu" in m else "")
        + (
            f", 1-min load average at the end {m['load_average_1m']}"
            if "load_average_1m" in m
            else ""
        ),
        "",
    ]
    if result.targets:
        lines += ["## Targets", ""]
        rows = [
            {
                "target": t.name,
                "value": t.value,
                "limit": f"{t.op} {t.limit:g}",
                "met": t.met,
                "margin": f"{100 * t.margin:+.1f}%" if math.isfinite(t.margin) else "-",
                "note": t.note,
            }
            for t in result.targets
        ]
        lines += [markdown_table(rows)]
    for title, rows in result.tables:
        lines += [f"## {title}", "", markdown_table(rows)]
    if result.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in result.notes] + [""]
    (ctx.out_dir / f"{result.name}.md").write_text("\n".join(lines))
    log.info("wrote %s and %s.md", json_path, result.name)
    return payload
