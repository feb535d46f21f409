"""Compatibility shims that make third-party packages work together; installed by `import advtrain`.

`autoattack`: robustbench 1.1.1 does `from autoattack import AutoAttack` (the GitHub fra31/auto-attack
package, which is not on PyPI); PyPI's `pyautoattack` ships the same attacks under another name.
`advtrain.compat.autoattack` translates, and :func:`install_autoattack_fallback` makes it importable
as `autoattack` *only when no real `autoattack` is installed*: its finder is appended last to
`sys.meta_path`, so every regular finder (site-packages, the current directory, PYTHONPATH) is asked
first and a real installation always wins. Nothing is imported until something imports `autoattack`.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

__all__ = ["AutoAttackFallbackFinder", "install_autoattack_fallback"]

_ADAPTER_DIR = Path(__file__).resolve().parent / "autoattack"


class AutoAttackFallbackFinder(importlib.abc.MetaPathFinder):
    """Finds `autoattack` (the top-level package only) in advtrain's adapter, as a last resort.

    Submodules (`autoattack.state`, ...) need no help: once the package is loaded from the
    adapter's folder, its `__path__` points there and the regular machinery finds them.
    """

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None = None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "autoattack":
            return None
        return importlib.util.spec_from_file_location(
            "autoattack",
            _ADAPTER_DIR / "__init__.py",
            submodule_search_locations=[str(_ADAPTER_DIR)],
        )


def install_autoattack_fallback() -> None:
    """Append the fallback finder to `sys.meta_path` (once; a no-op when already there)."""
    if not any(isinstance(f, AutoAttackFallbackFinder) for f in sys.meta_path):
        sys.meta_path.append(AutoAttackFallbackFinder())
