"""Input normalisation that lives inside the model.

Every advtrain model takes images in [0, 1] and normalises them itself. Attacks, AutoAttack and
RobustBench all assume that contract: the eps ball is defined in pixel space, so normalisation
must happen *after* the perturbation, i.e. inside the forward pass.

`mean`/`std` are registered as *non-persistent* buffers, exactly like RobustBench's
`DMWideResNet` does: they follow `.to(device)` but stay out of the state dict. That keeps our
checkpoints strictly loadable into RobustBench's architecture classes (which either have no
normalisation at all, `WideResNet`, or have non-persistent buffers of their own, `DMWideResNet`)
and vice versa. The consequence: the normalisation constants are part of the *architecture*
(the model config), not of the weights; rebuild the model with the same mean/std to reproduce it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from advtrain.errors import ConfigError

StatsLike = float | int | Sequence[float] | torch.Tensor | None


def _as_channel_tensor(value: StatsLike, channels: int, what: str) -> torch.Tensor | None:
    """Turn a scalar or per-channel sequence into a float32 (1, C, 1, 1) tensor (None stays None)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        values = [float(v) for v in value.detach().flatten().tolist()]
    elif isinstance(value, int | float):
        values = [float(value)]
    else:
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"model {what} must be a number or a list of {channels} numbers, got {value!r}"
            ) from exc
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ConfigError(
            f"model {what} has {len(values)} values but the input has {channels} channels; "
            f"give one value per channel (or a single value)"
        )
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"model {what} must be finite, got {values}")
    if what == "std" and min(values) <= 0:
        raise ConfigError(f"model std must be > 0 for every channel, got {values}")
    # Checked in Python above, so this also works under `with torch.device("meta")`.
    return torch.tensor(values, dtype=torch.float32).view(1, channels, 1, 1)


class Normalize(nn.Module):
    """`(x - mean) / std` per channel, with constants that never enter the state dict.

    `mean=None` and `std=None` make the module an exact identity (no arithmetic at all), so a
    model built without statistics is bit-identical to an architecture without normalisation,
    e.g. RobustBench's TRADES `WideResNet`. If only one of the two is given the other takes its
    neutral value (mean 0 or std 1).
    """

    mean: torch.Tensor | None
    std: torch.Tensor | None

    def __init__(self, mean: StatsLike = None, std: StatsLike = None, channels: int = 3) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"in_channels must be a positive integer, got {channels!r}")
        mean_t = _as_channel_tensor(mean, channels, "mean")
        std_t = _as_channel_tensor(std, channels, "std")
        if mean_t is None and std_t is not None:
            mean_t = torch.zeros_like(std_t)
        if std_t is None and mean_t is not None:
            std_t = torch.ones_like(mean_t)
        self.channels = channels
        # Non-persistent: see the module docstring (RobustBench state-dict compatibility).
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    @property
    def is_identity(self) -> bool:
        """True when no statistics were given and the forward pass returns its input unchanged."""
        return self.mean is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        # Same expression as DMWideResNet's forward, so logits match it bit for bit.
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        if self.mean is None or self.std is None:
            return f"channels={self.channels}, identity"
        if self.mean.is_meta or self.std.is_meta:
            return f"channels={self.channels}"
        mean = [round(v, 4) for v in self.mean.flatten().tolist()]
        std = [round(v, 4) for v in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}"
