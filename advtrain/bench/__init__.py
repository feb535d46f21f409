"""Performance benchmarks: `python -m advtrain bench [bench=NAME]` (configs/bench.yaml, configs/bench/).

Each benchmark is one module with `NAME`, `DEFAULTS` (its settings), `TINY` (overrides for a
seconds-long dry run) and `run(settings, ctx) -> BenchResult`; `advtrain.bench.cli.run_bench`
runs the selected ones and writes `<out_dir>/<name>.json` and `<name>.md` (command, machine,
date, figures, targets). Results and the measurements behind the fast-path defaults:
results/bench/README.md.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from advtrain.errors import ConfigError

__all__ = ["BENCHMARKS", "get_benchmark"]

#: Benchmark name (the key under `bench:` in the config) -> module.
BENCHMARKS: dict[str, str] = {
    "fastpath": "advtrain.bench.fast_paths",
    "overhead": "advtrain.bench.overhead",
    "gkl_vs_trades": "advtrain.bench.gkl_vs_trades",
    "official_loop": "advtrain.bench.official_loop",
    "data": "advtrain.bench.data_loading",
    "gkl_loss": "advtrain.bench.gkl_loss",
    "eval": "advtrain.bench.eval_autoattack",
    "scaling": "advtrain.bench.scaling",
    "attack_precision": "advtrain.bench.attack_precision",
}


def get_benchmark(name: str) -> ModuleType:
    """The module of benchmark `name` (imported on demand: some pull in matplotlib or PIL)."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)} or all")
    return importlib.import_module(BENCHMARKS[name])
