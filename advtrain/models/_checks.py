"""Argument checks shared by the architectures, so bad config values fail with a ConfigError."""

from __future__ import annotations

from advtrain.errors import ConfigError
from advtrain.values import int_at_least


def positive_int(value: object, what: str) -> int:
    """Return `value` if it is a positive int (bools rejected), else raise a ConfigError naming `model.<what>`."""
    result = int_at_least(
        f"model.{what}", value, 1
    )  # the one integer check (advtrain/config/values.py)
    assert result is not None
    return result


def wrn_blocks_per_group(depth: object) -> int:
    """Blocks per group of a WideResNet of total `depth` (= 6 n + 4 layers), or a ConfigError."""
    depth = positive_int(depth, "depth")
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ConfigError(
            f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 34, 40...), got {depth}"
        )
    return (depth - 4) // 6
