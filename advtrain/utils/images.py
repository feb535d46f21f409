"""The one convention every attack, loader and evaluation relies on: float images live in [0, 1].

Normalisation (mean/std) belongs inside the model and pixel values 0..255 are divided by 255 once,
when a batch is made. An input in another range is not an error PyTorch would notice: PGD clamps it
into [0, 1] (a different image), eps = 8/255 means nothing at 0..255, and AutoAttack reports numbers
for a threat model nobody asked for. So the entry points refuse it, naming the likely cause.
"""

from __future__ import annotations

import numpy as np
import torch

from advtrain.errors import DataError

__all__ = ["check_unit_range", "likely_cause"]


def likely_cause(lo: float, hi: float) -> str:
    """What float images spanning [lo, hi] most likely are, and the fix."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "they contain NaN or Inf"
    if lo < 0.0:
        return (
            "negative values look like normalised inputs ((x - mean) / std): pass images in [0, 1] "
            "and let the model normalise (the zoo models take the dataset's mean/std, model.normalize)"
        )
    if hi > 1.5:
        return (
            "values above 1 up to 255 look like 0-255 pixel values: divide by 255 (or store uint8 "
            "pixels and let the loader convert them)"
        )
    return "values slightly above 1 suggest a rescaling or augmentation that overshoots: clamp to [0, 1]"


def check_unit_range(x: torch.Tensor, what: str) -> None:
    """Raise :class:`DataError` unless the float tensor ``x`` lies in [0, 1] (one device sync)."""
    if x.numel() == 0:
        return
    lo_t, hi_t = torch.aminmax(x.detach())
    lo, hi = float(lo_t), float(hi_t)
    if 0.0 <= lo and hi <= 1.0:  # also False for NaN
        return
    raise DataError(
        f"{what} must be images in [0, 1], got values in [{lo:.4g}, {hi:.4g}]: {likely_cause(lo, hi)}"
    )
