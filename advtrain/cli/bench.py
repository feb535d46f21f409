"""`python -m advtrain bench`: runs the benchmarks of the source checkout.

The benchmarks (top-level `benchmarks/`) measure this code against hand-written loops and the
official recipe; they are scaffolding, so the wheel leaves them out. This module finds them next
to the `advtrain` package (an editable install or a checkout on the path) and otherwise says so
in one line instead of failing with an ImportError.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import advtrain
from advtrain.errors import AdvtrainError

__all__ = ["load_benchmarks", "run_bench"]


def load_benchmarks() -> ModuleType:
    """The `benchmarks` package of the checkout `advtrain` was imported from.

    Loaded from its file next to `advtrain/` rather than by name from `sys.path`, so an unrelated
    `benchmarks` package of the user's (or the current directory) is never picked up by mistake.
    """
    loaded = sys.modules.get("benchmarks")
    if loaded is not None:
        return loaded
    init = Path(advtrain.__file__).resolve().parent.parent / "benchmarks" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "benchmarks", init, submodule_search_locations=[str(init.parent)]
    )
    if not init.is_file() or spec is None or spec.loader is None:
        raise AdvtrainError(
            "benchmarks are part of the source checkout, not of the installed package: "
            "clone the advtrain repository and run `python -m advtrain bench` from it"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchmarks"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["benchmarks"]
        raise
    return module


def run_bench(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run the benchmarks selected in the composed `bench` config (see benchmarks.cli.run_bench)."""
    load_benchmarks()
    return importlib.import_module("benchmarks.cli").run_bench(cfg)
