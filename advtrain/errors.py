"""Errors that the CLI reports as one clear line instead of a traceback.

Library code raises these for *user* mistakes (bad config values, missing data, wrong checkpoint);
programming errors stay ordinary exceptions so their tracebacks remain visible.
"""

from __future__ import annotations


class AdvtrainError(Exception):
    """A user-facing error: the message alone must say what is wrong and how to fix it."""


class ConfigError(AdvtrainError, ValueError):
    """A configuration value or key is invalid (unknown key, eps in pixels, negative steps...)."""


class DataError(AdvtrainError):
    """A dataset is missing, empty, corrupt or has the wrong keys, dtype, shape or labels."""


class CheckpointError(AdvtrainError):
    """A checkpoint is missing, corrupt, unsafe to load, or belongs to another model."""


class NonFiniteLossError(AdvtrainError):
    """Training produced a NaN/Inf loss or gradient; the last good checkpoint is kept."""
