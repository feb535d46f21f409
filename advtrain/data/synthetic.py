"""Auxiliary (e.g. diffusion-generated) training images from an ``.npz`` archive.

Synthetic sets used for adversarial training run from 1M to 20M+ images (3 GB to 60 GB as uint8),
far more than fits in RAM next to a training job. When the archive's members are *stored*
(``np.savez``, not ``np.savez_compressed``), the ``.npy`` payloads sit at fixed offsets in the file
and are memory-mapped: only the rows of each batch are ever read. A compressed archive cannot be
mapped; it is decompressed once, with a warning that says how to avoid it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from advtrain.data.datasets import DatasetInfo, read_npz, validate_arrays
from advtrain.errors import DataError

__all__ = ["AuxDataset"]

log = logging.getLogger(__name__)


class AuxDataset:
    """Random access to an auxiliary ``.npz`` with keys ``image`` (uint8 NHWC/NHW) and ``label``.

    ``info`` (optional) pins the expected channels, image size and number of classes; without it
    the image geometry is taken from the file and labels only need to be non-negative.
    Attributes: ``images`` (numpy array or memmap, NHWC/NHW), ``labels`` (int64 tensor, in RAM: 8
    bytes a row is cheap and makes label gathers free), ``shape`` (C, H, W), ``memory_mapped``.
    """

    def __init__(self, path: str | os.PathLike[str], *, info: DatasetInfo | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise DataError(
                f"auxiliary data {self.path} not found; point the data config's aux path at an "
                f"existing .npz (keys image, label) or turn aux mixing off (aux fraction 0)"
            )
        arrays, loaded = read_npz(self.path)
        images, labels = arrays["image"], arrays["label"]
        if "image" in loaded:
            log.warning(
                "%s is compressed, so its %d images were loaded into memory (%.1f GB); "
                "re-save it with np.savez (not savez_compressed) to memory-map it instead",
                self.path,
                images.shape[0],
                images.nbytes / 1e9,
            )
        if info is not None:
            channels = info.channels
        else:
            channels = images.shape[-1] if images.ndim == 4 else 1
        validate_arrays(
            images,
            labels,
            channels=channels,
            size=info.size if info is not None else None,
            num_classes=info.num_classes if info is not None else None,
            source=str(self.path),
        )
        if images.shape[1] != images.shape[2]:
            raise DataError(
                f"{self.path}: images are {images.shape[1]}x{images.shape[2]}, expected square"
            )
        self.images = images
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64, copy=True))
        self.memory_mapped = isinstance(images, np.memmap)
        self.shape = (channels, int(images.shape[1]), int(images.shape[2]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def get(self, indices: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``indices`` as ``(uint8 (k, C, H, W), int64 (k,))``, in the order given.

        Reads are issued in ascending file order (then put back in the requested order) so a
        memory-mapped file is read front to back, which the OS page cache and readahead favour.
        """
        idx = indices.numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(
                f"aux indices must be in [0, {len(self)}), got {idx.min()}..{idx.max()}"
            )
        order = np.argsort(idx, kind="stable")
        rows = self.images[idx[order]]  # fancy indexing on a memmap reads only these rows
        out = torch.empty((idx.size, *self.shape), dtype=torch.uint8)
        chw = rows[:, None] if rows.ndim == 3 else rows.transpose(0, 3, 1, 2)
        out.numpy()[order] = chw
        return out, self.labels[torch.from_numpy(idx)]

    def __repr__(self) -> str:
        mode = "memory-mapped" if self.memory_mapped else "in memory"
        return f"AuxDataset({str(self.path)!r}, n={len(self)}, shape={self.shape}, {mode})"
