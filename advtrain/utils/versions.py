"""Versions of the packages that can change a robustness number, recorded with every evaluation.

Why its own module: results.json (and through it every export) records them, and a library function
must not reach into a command-line module for them.
"""

from __future__ import annotations

from importlib import metadata

__all__ = ["RECORDED_PACKAGES", "package_versions"]

#: Distributions whose version goes into results.json (None when not installed).
RECORDED_PACKAGES = ("advtrain", "torch", "torchvision", "pyautoattack", "robustbench", "numpy")


def package_versions() -> dict[str, str | None]:
    """`{distribution: version or None}` for RECORDED_PACKAGES.

    advtrain run from a source tree that was never installed has no distribution metadata; its
    `__version__` stands in, so the record never says None for the code that produced it.
    """
    out: dict[str, str | None] = {}
    for dist in RECORDED_PACKAGES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    if out["advtrain"] is None:
        import advtrain

        out["advtrain"] = str(advtrain.__version__)
    return out
