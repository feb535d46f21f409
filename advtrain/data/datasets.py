"""Dataset descriptions and loading of whole splits as uint8 tensors.

A split is read from ``<root>/<name>_<split>.npz`` when that file exists (the offline format shared
with the synthetic-data papers: ``image`` uint8 NHWC or NHW, ``label`` integer), otherwise through
torchvision's own dataset class under ``root`` (which can download it). Both paths end in the same
validation, so a bad file fails here with one clear line instead of deep inside a training step.

Splits are kept as uint8 (N, C, H, W): four times smaller than float32, and the augmentation works on
integer pixels anyway; conversion to float happens per batch.
"""

from __future__ import annotations

import logging
import os
import struct
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from advtrain.errors import ConfigError, DataError
from advtrain.utils.images import likely_cause

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "get_info",
    "load_arrays",
    "read_npz",
    "resolve_root",
    "validate_arrays",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
DATA_DIR_ENV = "ADVTRAIN_DATA_DIR"


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the code needs to know about a dataset without loading it.

    ``mean``/``std`` are the published per-channel statistics of the training split in [0, 1] units;
    models use them for their built-in normalisation, so images themselves stay in [0, 1].
    """

    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Per-image shape (C, H, W) as stored in the tensors returned by :func:`load_arrays`."""
        return (self.channels, self.size, self.size)


_CIFAR100_CLASSES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
    "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup "
    "dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower "
    "leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid "
    "otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray "
    "road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar "
    "sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle "
    "wardrobe whale willow_tree wolf woman worm"
).split()

DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        channels=3,
        size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2471, 0.2435, 0.2616),
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        num_classes=100,
        channels=3,
        size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        class_names=tuple(_CIFAR100_CLASSES),
    ),
    "fashion_mnist": DatasetInfo(
        name="fashion_mnist",
        num_classes=10,
        channels=1,
        size=28,
        mean=(0.2860,),
        std=(0.3530,),
        class_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
}

# torchvision class name and the folder it keeps its files in, for the fallback path and messages.
_TORCHVISION = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw"),
}


def get_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` for ``name``; an unknown name is a config mistake, not a crash."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(DATASETS))
        raise ConfigError(f"unknown dataset {name!r}; data.name must be one of: {valid}") from None


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """The data folder: ``root`` if given, else ``$ADVTRAIN_DATA_DIR``, else ``./data``.

    Resolved here (not in the config) so library users get the same default as the CLI.
    """
    if root is None or str(root) == "":
        root = os.environ.get(DATA_DIR_ENV) or "data"
    return Path(root).expanduser()


# --------------------------------------------------------------------------------------------------
# .npz reading
# --------------------------------------------------------------------------------------------------

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, struct.error)


def _memmap_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """Map one ZIP_STORED ``.npy`` member of ``path`` straight from disk.

    ``np.load`` ignores ``mmap_mode`` for ``.npz`` and would read everything; a stored member is a
    plain ``.npy`` at a fixed file offset, so we find that offset (local header + .npy header) and
    ``np.memmap`` the payload. This is what lets a multi-GB synthetic set be used without the RAM.
    """
    with zf.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        npy_header_len = member.tell()
    if dtype.hasobject:
        raise ValueError(f"member {info.filename} holds Python objects, not numbers")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if fields[0] != _LOCAL_MAGIC:
        raise zipfile.BadZipFile(f"bad local header for member {info.filename}")
    name_len, extra_len = fields[-2], fields[-1]
    offset = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + npy_header_len
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if npy_header_len + nbytes > info.file_size:
        raise ValueError(f"member {info.filename} is truncated ({info.file_size} bytes)")
    if count == 0:
        return np.empty(shape, dtype=dtype)
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order=order)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """Decompress one member fully (the fallback for ZIP_DEFLATED archives)."""
    with zf.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def read_npz(
    path: str | os.PathLike[str], keys: Sequence[str] = ("image", "label"), *, mmap: bool = True
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Read ``keys`` from an ``.npz``; stored members are memory-mapped when ``mmap`` is true.

    Returns the arrays and the names of those that had to be loaded into memory (compressed members),
    so callers that care about memory (the synthetic set) can warn. Any unreadable file becomes a
    :class:`DataError` naming the file; missing keys list the keys that are there.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty (0 bytes); re-create or re-download it")
        with zipfile.ZipFile(path) as zf:
            members = {
                info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")
            }
            missing = [k for k in keys if k not in members]
            if missing:
                found = ", ".join(sorted(members)) or "none"
                raise DataError(
                    f"{path} has no {'/'.join(repr(k) for k in missing)} array (found: {found}); "
                    f"save it with np.savez(path, image=uint8_images, label=int64_labels)"
                )
            arrays: dict[str, np.ndarray] = {}
            loaded: list[str] = []
            for key in keys:
                info = members[key]
                if mmap and info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
                    arrays[key] = _memmap_member(path, zf, info)
                else:
                    arrays[key] = _read_member(zf, info)
                    loaded.append(key)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except _READ_ERRORS as exc:
        raise DataError(
            f"cannot read {path} ({type(exc).__name__}: {exc}); the file is corrupt or not an "
            f".npz archive, re-create or re-download it"
        ) from None
    return arrays, loaded


# --------------------------------------------------------------------------------------------------
# validation and conversion
# --------------------------------------------------------------------------------------------------


def validate_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    channels: int,
    size: int | None,
    num_classes: int | None,
    source: str,
) -> None:
    """Check an (images, labels) pair; raise :class:`DataError` naming ``source`` on the first fault.

    ``images`` must be uint8 NHWC (or NHW when ``channels == 1``) with H = W = ``size`` (any size when
    None); ``labels`` a 1-D integer array of the same length with values in ``[0, num_classes)``
    (only non-negative when None). The label scan is the only full pass: it is cheap and catches
    the classic off-by-one (1-based labels) that would otherwise surface as a CUDA assert.
    """
    if images.dtype != np.uint8:
        detail = ""
        if images.dtype.kind == "f" and images.size:
            lo, hi = float(np.nanmin(images)), float(np.nanmax(images))
            detail = f"; its values span [{lo:.4g}, {hi:.4g}]" + (
                ", i.e. [0, 1] floats: multiply by 255 and round"
                if 0.0 <= lo and hi <= 1.0
                else f": {likely_cause(lo, hi)}"
            )
        raise DataError(
            f"{source}: image has dtype {images.dtype}, expected uint8 pixels in 0..255 "
            f"(re-save with images stored as uint8){detail}"
        )
    expected = f"(N, {size or 'H'}, {size or 'W'}, {channels})" + (
        f" or (N, {size or 'H'}, {size or 'W'})" if channels == 1 else ""
    )
    ok_rank = images.ndim == 4 or (images.ndim == 3 and channels == 1)
    ok_channels = images.ndim == 3 or images.shape[-1] == channels
    ok_size = size is None or images.shape[1:3] == (size, size)
    if not (ok_rank and ok_channels and ok_size):
        raise DataError(
            f"{source}: image has shape {tuple(images.shape)}, expected {expected} (NHWC uint8)"
        )
    if labels.dtype.kind not in "iu":
        raise DataError(
            f"{source}: label has dtype {labels.dtype}, expected integer class indices (int64)"
        )
    if labels.ndim != 1:
        raise DataError(f"{source}: label has shape {tuple(labels.shape)}, expected (N,)")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{source}: {images.shape[0]} images but {labels.shape[0]} labels; they must match"
        )
    if images.shape[0] == 0:
        raise DataError(f"{source} holds no images; re-create it")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        limit = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
        raise DataError(
            f"{source}: labels range over [{lo}, {hi}] but must be {limit}; "
            f"check the label offset or the dataset name"
        )


def nhwc_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC/NHW numpy (possibly a read-only memmap) -> contiguous, owned uint8 NCHW tensor."""
    chw = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    out = torch.empty(chw.shape, dtype=torch.uint8)
    out.numpy()[...] = chw  # one copy, also detaches from the (read-only) mapped file
    return out


def labels_to_tensor(labels: np.ndarray) -> torch.Tensor:
    """Integer labels -> owned int64 tensor."""
    return torch.from_numpy(np.array(labels, dtype=np.int64, copy=True))


def _missing_message(info: DatasetInfo, root: Path, split: str, npz: Path, detail: str) -> str:
    cls, folder = _TORCHVISION[info.name]
    return (
        f"dataset {info.name!r} ({split}) not found: looked for {npz} and torchvision's {cls} files "
        f"in {root / folder} ({detail}); set data.download=true to download it, put "
        f"{npz.name} in {root}, or set {DATA_DIR_ENV} to the folder that has it"
    )


def _load_torchvision(
    info: DatasetInfo, root: Path, split: str, download: bool, npz: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Read a split through torchvision (kept so users with internet need no conversion step)."""
    import torchvision.datasets as tvd  # lazy: importing torchvision costs ~1 s

    cls_name, _ = _TORCHVISION[info.name]
    try:
        ds = getattr(tvd, cls_name)(root=str(root), train=split == "train", download=download)
    except (RuntimeError, OSError, ValueError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if download:
            detail = f"download failed: {detail}"
        raise DataError(_missing_message(info, root, split, npz, detail)) from None
    data, targets = ds.data, ds.targets
    images = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    labels = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    return images, labels


def load_arrays(
    name: str,
    root: str | os.PathLike[str] | None,
    split: str,
    *,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load one split as ``(images uint8 (N, C, H, W), labels int64 (N,))``.

    Reads ``<root>/<name>_<split>.npz`` when present (stored members memory-mapped, compressed ones
    decompressed), else torchvision's dataset under ``root`` (downloaded when ``download``).
    """
    info = get_info(name)
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    root = resolve_root(root)
    npz = root / f"{name}_{split}.npz"
    if npz.is_file():
        arrays, _ = read_npz(npz)
        images, labels, source = arrays["image"], arrays["label"], str(npz)
    else:
        images, labels = _load_torchvision(info, root, split, download, npz)
        source = f"torchvision {_TORCHVISION[name][0]} ({split}) in {root}"
    validate_arrays(
        images,
        labels,
        channels=info.channels,
        size=info.size,
        num_classes=info.num_classes,
        source=source,
    )
    log.debug("loaded %s %s: %d images from %s", name, split, images.shape[0], source)
    return nhwc_to_tensor(images), labels_to_tensor(labels)
