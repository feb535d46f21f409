"""Performance benchmarks: `python -m advtrain bench [bench=NAME]` (configs/bench.yaml, configs/bench/).

Part of the source checkout, not of the installed package: the wheel ships the library, and
`advtrain/cli/bench.py` imports this package only when the checkout is there. Each benchmark is
one module with `NAME`, `DEFAULTS` (its settings), `TINY` (overrides for a seconds-long dry run)
and `run(settings, ctx) -> BenchResult`; `benchmarks.cli.run_bench` runs the selected ones and
writes `<out_dir>/<name>.json` and `<name>.md` (command, machine, date, figures, targets).
Results and the measurements behind the fast-path defaults: results/bench/README.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from advtrain.errors import ConfigError

__all__ = ["BENCHMARKS", "get_benchmark", "reference"]

#: Benchmark name (the key under `bench:` in the config) -> module.
BENCHMARKS: dict[str, str] = {
    "fastpath": "benchmarks.fast_paths",
    "overhead": "benchmarks.overhead",
    "gkl_vs_trades": "benchmarks.gkl_vs_trades",
    "official_loop": "benchmarks.official_loop",
    "data": "benchmarks.data_loading",
    "gkl_loss": "benchmarks.gkl_loss",
    "eval": "benchmarks.eval_autoattack",
    "scaling": "benchmarks.scaling",
    "attack_precision": "benchmarks.attack_precision",
    "gpu_step": "benchmarks.gpu_step",
}

#: The test oracles some benchmarks time us against (the official loop re-implemented).
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "tests" / "reference"


def get_benchmark(name: str) -> ModuleType:
    """The module of benchmark `name` (imported on demand: some pull in matplotlib or PIL)."""
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)} or all")
    return importlib.import_module(BENCHMARKS[name])


def reference(name: str) -> ModuleType:
    """The oracle `tests/reference/<name>.py`, loaded from its file.

    By file and not by `import tests.reference...`: robustbench installs a top-level `tests`
    package of its own that would shadow ours. The module is registered as `reference.<name>`,
    the name the tests import it under (tests/ is on their path), so both share one module.
    """
    module_name = f"reference.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = REFERENCE_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ConfigError(
            f"benchmark oracle {path} is missing (benchmarks need the source checkout)"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module
