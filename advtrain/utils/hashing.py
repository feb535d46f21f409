"""SHA-256 of files, tensors and models: the one place that decides which bytes a hash covers.

Why one module: a hash is only useful when everyone who compares it computed it the same way. The
evaluation records the checkpoint's file hash and the model's weight hash in results.json, the export
refuses weights whose hashes differ from those, AutoAttack's resumable state refuses shards of another
model or data set, and the trainer compares weights across ranks. Two encodings of "the bytes of a
tensor" would make equal tensors hash differently in two rooms, so there is exactly one:
`update_with_tensor` (dtype and shape, then the raw bytes of a contiguous CPU copy).

The strings these functions return are stored in results.json and AutoAttack state files; changing
an encoding here makes every recorded hash stale, so the encodings are part of those file formats.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["file_sha256", "files_sha256", "model_hash", "tensors_sha256", "update_with_tensor"]

_CHUNK = 1 << 20


def update_with_tensor(h: Any, tensor: Tensor, header: str = "") -> None:
    """Feed `{header}{dtype}:{shape}` and then the tensor's raw bytes into the hash object `h`.

    Dtype and shape tell apart tensors whose bytes coincide (a float32 zero and an int32 zero, a
    (2, 3) and a (3, 2) matrix); `header` lets a caller bind the tensor to its place in a larger
    structure (checkpoints prefix the key path). The bytes are those of a contiguous CPU copy, so
    the hash does not depend on the device or the memory layout.
    """
    t = tensor.detach().cpu().contiguous()
    h.update(f"{header}{t.dtype}:{tuple(t.shape)}".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors_sha256(tensors: Iterable[Tensor]) -> str:
    """SHA-256 over `tensors` in order: equal strings <=> same dtypes, shapes and bits."""
    h = hashlib.sha256()
    for t in tensors:
        update_with_tensor(h, t)
    return h.hexdigest()


def model_hash(model: nn.Module) -> str:
    """SHA-256 over the class name, parameter and buffer names and values (normalisation included).

    Names are hashed with the values so that a permutation of equally shaped layers changes the
    hash; buffers are included because a model with other normalisation constants is another model.
    """
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(name.encode())
        h.update(tensors_sha256([t]).encode())
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, streamed in 1 MiB chunks (checkpoints can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def files_sha256(paths: Iterable[str | os.PathLike[str]]) -> str:
    """One hash for a model stored in several files (a RobustBench ensemble): a single file's own
    SHA-256, else the SHA-256 of the concatenated per-file hex digests, in the given order."""
    digests = [file_sha256(p) for p in paths]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("".join(digests).encode()).hexdigest()
