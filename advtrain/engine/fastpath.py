"""Which fast paths a run uses: channels_last memory format and bf16 autocast, per device.

`auto` picks what measured fastest for the device (results/bench); explicit true/false always wins.
"""

from __future__ import annotations

from typing import Any

import torch

from advtrain.errors import ConfigError


def fast_path_defaults(t: dict[str, Any], device: torch.device) -> tuple[bool, torch.dtype | None]:
    """channels_last and bf16 autocast: on by default on CUDA, off on CPU (measured: results/bench)."""
    cl = t.get("channels_last", "auto")
    channels_last = device.type == "cuda" if cl == "auto" else bool(cl)
    ac = t.get("autocast", "auto")
    if ac == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else None
    elif ac in (False, None, "false", "off"):
        dtype = None
    elif ac == "bf16":
        dtype = torch.bfloat16
    else:
        raise ConfigError(f"trainer.autocast={ac!r}: use auto, bf16 or false")
    return channels_last, dtype
