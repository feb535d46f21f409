"""In-memory batch loaders: reproducible, resumable, mixing real and auxiliary data.

CIFAR-sized datasets fit in memory as uint8 (150 MB for CIFAR-10 train), so a batch is one index
gather plus one vectorised augmentation: no worker processes, no per-sample Python, and therefore
nothing that makes results depend on the number of workers. Every random draw is a pure function of
``(seed, epoch)`` (the permutation and the aux indices) or ``(seed, epoch, batch_index, rank)`` (the
augmentation), which is what makes a run resumed from ``state_dict()`` bit-identical to one that
never stopped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from advtrain.data.autoaugment import autoaugment_cifar10
from advtrain.data.autoaugment import cutout as apply_cutout
from advtrain.data.datasets import DatasetInfo, get_info, load_arrays
from advtrain.data.synthetic import AuxDataset
from advtrain.data.transforms import (
    PAD_MODES,
    apply_crop_flip,
    draw_crop_flip,
    random_crop_flip,
    to_float,
)
from advtrain.errors import CheckpointError, ConfigError, DataError
from advtrain.utils.images import likely_cause
from advtrain.values import int_at_least, probability

__all__ = [
    "AUGMENT_ON",
    "Datasets",
    "TrainLoader",
    "iterate_batches",
    "make_datasets",
    "resolve_augment_on",
    "train_val_split",
]

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
# Keep epoch-level, batch-level and second-view seeds in separate streams: adding the AutoAugment
# view must not change a single draw of the basic view.
_EPOCH_STREAM, _BATCH_STREAM, _VIEW2_STREAM = 0, 1, 2
_AUTOAUG_FILL = 128  # grey for pixels uncovered by rotate/shear/translate, as in the GKL recipe


#: Where `TrainLoader` augments (`data.augment_on`): auto = on the device when it is a GPU.
AUGMENT_ON = ("auto", "cpu", "device")


def resolve_augment_on(augment_on: str, device: torch.device) -> str:
    """``"cpu"`` or ``"device"`` for ``data.augment_on`` and the device batches go to."""
    if augment_on not in AUGMENT_ON:
        raise ConfigError(f"data.augment_on={augment_on!r}: use one of {', '.join(AUGMENT_ON)}")
    if augment_on == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return augment_on


def _send(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; a CPU tensor bound for a GPU goes through pinned memory without blocking
    (a pageable copy would make PyTorch wait for the whole stream: a host sync per batch)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (``SeedSequence`` hashing).

    Plain arithmetic like ``seed + epoch`` would make (seed=0, epoch=1) and (seed=1, epoch=0) share
    a stream; hashing the tuple keeps every (seed, epoch, batch, rank) independent.
    """
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _generator(seed: int) -> torch.Generator:
    gen = torch.Generator()  # always CPU: identical draws whatever device the images live on
    gen.manual_seed(seed)
    return gen


def _check_int(value: Any, name: str, minimum: int) -> int:
    result = int_at_least(name, value, minimum)  # the one integer check (advtrain/config/values.py)
    assert result is not None
    return result


def _check_pair(images: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if isinstance(images, torch.Tensor) and images.is_floating_point() and images.numel():
        lo, hi = (float(v) for v in torch.aminmax(images.detach()))
        if 0.0 <= lo and hi <= 1.0:
            hint = "multiply [0, 1] images by 255 and round them to uint8"
        else:
            hint = f"these are not even in [0, 1]: {likely_cause(lo, hi)}"
        raise DataError(
            f"{what}: images must be uint8 pixels 0..255 (the loader converts each batch to [0, 1]), "
            f"got {images.dtype} values in [{lo:.4g}, {hi:.4g}]; {hint}"
        )
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(f"{what}: images must be a uint8 (N, C, H, W) tensor (see load_arrays)")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype != torch.int64:
        raise DataError(f"{what}: labels must be an int64 (N,) tensor")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{what}: {images.shape[0]} images but {labels.shape[0]} labels")


class TrainLoader:
    """Shuffled, augmented training batches ``(x float32 (B, C, H, W) in [0, 1], y int64 (B,))``.

    * Order: ``torch.randperm`` from a generator seeded by ``(seed, epoch)``; independent of the
      global RNG, identical on every rank.
    * Aux mixing: with ``aux`` and ``aux_fraction > 0`` each batch holds
      ``round(batch_size * aux_fraction)`` aux rows after the real rows. The epoch is sized by the
      real data (``ceil(real / real_per_batch)`` batches); aux indices for the whole epoch are drawn
      from the same epoch generator (without replacement when the aux set is large enough).
    * Distributed: ``batch_size`` is per rank; rank ``r`` takes ``perm[r::world_size]``. When the
      dataset does not divide by ``world_size`` the permutation is padded by wrapping around (as
      ``DistributedSampler`` does; ``drop_last`` truncates instead), so every rank has the same
      number of equally sized batches and no rank waits in a collective.
    * Augmentation (``augment``): pad ``padding`` (``pad_mode``: zeros, or reflect as Rice et al.)
      + random crop + horizontal flip (``flip``),
      seeded per batch from ``(seed, epoch, batch_index, rank)``.
    * Two views (``two_view``, the GKL AutoAugment recipe): each batch is
      ``([basic views; AutoAugment views], [y; y])`` with ``2 * batch_size`` rows. The basic half
      is bit-identical to the batch of the same loader without ``two_view``. The second half
      re-augments the same uint8 images (aux rows included): crop + flip (if ``augment``), the
      CIFAR-10 AutoAugment policy (fill 128), then Cutout of ``cutout`` pixels (if > 0), all drawn
      from a second per-batch generator seeded by ``(seed, epoch, batch_index, rank)`` in its own
      stream. ``len()`` still counts batches, not rows.
    * Position: ``state_dict()`` holds the epoch and the number of batches already handed out;
      ``load_state_dict()`` resumes at exactly the next batch. Finishing an epoch moves to the next.
      ``set_epoch(e)`` with ``e`` equal to the current epoch keeps the position, so a trainer may call
      ``set_epoch(epoch)`` at the top of every epoch even right after resuming mid-epoch.

    Batches are delivered on ``device`` (default: where ``images_u8`` lives). ``augment_on``
    (``data.augment_on``) says where they are made:

    * ``"cpu"``: gathered, augmented and converted to float on the CPU, then sent to ``device``;
    * ``"device"``: the uint8 batch and its crop/flip draws (made on the CPU from the same
      generators) are sent through pinned memory without blocking, and crop + flip + the float
      conversion run there as batch tensor ops: 4x fewer bytes to copy and no per-batch CPU work
      but the gather. The AutoAugment view of ``two_view`` stays on the CPU (its torchvision ops
      take Python parameters per group of images, and every such small tensor sent to a GPU would
      block; on the CPU it overlaps with the GPU's work) and is sent as uint8 with the basic view;
    * ``"auto"`` (default): ``"device"`` when ``device`` is a GPU, else ``"cpu"``.

    Both give the same batches bit for bit (integer gathers from the same draws).
    """

    def __init__(
        self,
        images_u8: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        augment: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        aux: AuxDataset | None = None,
        aux_fraction: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
        padding: int = 4,
        flip: bool = True,
        pad_mode: str = "zeros",
        device: torch.device | str | None = None,
        two_view: bool = False,
        cutout: int = 0,
        augment_on: str = "auto",
    ) -> None:
        _check_pair(images_u8, labels, "TrainLoader")
        self.two_view = bool(two_view)
        self.cutout = _check_int(cutout, "cutout", 0)
        if self.cutout and not self.two_view:
            raise ConfigError(
                f"cutout={cutout} applies to the AutoAugment view only; set two_view=true or cutout=0"
            )
        if self.two_view and images_u8.shape[1] not in (1, 3):
            raise DataError(
                f"two_view AutoAugment needs 1- or 3-channel images, got {images_u8.shape[1]}; "
                f"set two_view=false"
            )
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.seed = _check_int(seed, "seed", 0)
        self.world_size = _check_int(world_size, "world_size", 1)
        self.rank = _check_int(rank, "rank", 0)
        if self.rank >= self.world_size:
            raise ConfigError(f"rank must be < world_size ({world_size}), got {rank}")
        self.padding = _check_int(padding, "padding", 0)
        if pad_mode not in PAD_MODES:
            raise ConfigError(f"data.pad_mode={pad_mode!r}: use one of {', '.join(PAD_MODES)}")
        self.pad_mode = pad_mode
        aux_fraction = probability("aux_fraction", aux_fraction, below_one=True)
        if aux_fraction > 0 and aux is None:
            raise ConfigError(
                f"aux_fraction={aux_fraction} needs an auxiliary dataset; give its .npz path or "
                f"set aux_fraction=0"
            )
        if aux is not None and aux.shape != tuple(images_u8.shape[1:]):
            raise DataError(
                f"auxiliary images {aux.path} are {aux.shape} but the real ones are "
                f"{tuple(images_u8.shape[1:])}; use an aux set made for this dataset"
            )
        self.images = images_u8
        self.labels = labels
        self.augment = bool(augment)
        self.flip = bool(flip)
        self.drop_last = bool(drop_last)
        self.device = torch.device(device) if device is not None else images_u8.device
        self.augment_on = resolve_augment_on(augment_on, self.device)
        self.aux = aux if aux_fraction > 0 else None
        self.aux_fraction = float(aux_fraction)
        self.num_aux = round(self.batch_size * self.aux_fraction) if self.aux is not None else 0
        self.num_real = self.batch_size - self.num_aux
        if self.num_real < 1:
            raise ConfigError(
                f"batch_size={batch_size} with aux_fraction={aux_fraction} leaves no real images "
                f"per batch; lower aux_fraction or raise batch_size"
            )
        n = int(images_u8.shape[0])
        if n == 0:
            raise DataError("TrainLoader: the training set is empty")
        ws = self.world_size
        self.per_rank = n // ws if drop_last else -(-n // ws)
        if drop_last:
            self.num_batches = self.per_rank // self.num_real
        else:
            self.num_batches = -(-self.per_rank // self.num_real)
        if self.num_batches == 0:
            raise ConfigError(
                f"{n} training images over {ws} rank(s) give no full batch of {self.num_real} real "
                f"images with drop_last=true; lower batch_size or set drop_last=false"
            )
        self._epoch = 0
        self._batch_index = 0

    # ---------------------------------------------------------------- position
    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self._epoch

    @property
    def batch_index(self) -> int:
        """How many batches of the current epoch have been handed out."""
        return self._batch_index

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return self.num_batches

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch, or keep the position if it is the current one."""
        epoch = _check_int(epoch, "epoch", 0)
        if epoch != self._epoch:
            self._epoch = epoch
            self._batch_index = 0

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batch_index", "seed"}``: all that is needed to rebuild the next batch."""
        return {"epoch": self._epoch, "batch_index": self._batch_index, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at ``state``'s position; its seed wins, so the resumed batches are the same."""
        missing = [k for k in ("epoch", "batch_index", "seed") if k not in state]
        if missing:
            raise CheckpointError(
                f"loader state lacks {', '.join(missing)}; the checkpoint is not from TrainLoader"
            )
        try:
            epoch = _check_int(state["epoch"], "epoch", 0)
            batch_index = _check_int(state["batch_index"], "batch_index", 0)
            seed = _check_int(state["seed"], "seed", 0)
        except ConfigError as exc:
            raise CheckpointError(f"invalid loader state: {exc}") from None
        if batch_index > self.num_batches:
            raise CheckpointError(
                f"loader state is at batch {batch_index} but an epoch now has {self.num_batches} "
                f"batches; resume with the same data, batch_size and world_size"
            )
        if seed != self.seed:
            log.warning(
                "resuming the loader with the checkpoint's seed %d (config: %d)", seed, self.seed
            )
        self.seed, self._epoch, self._batch_index = seed, epoch, batch_index

    # ---------------------------------------------------------------- sampling plan
    def _epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's real indices for ``epoch`` and its aux indices (num_batches, num_aux)."""
        gen = _generator(derive_seed(_EPOCH_STREAM, self.seed, epoch))
        n, ws = int(self.images.shape[0]), self.world_size
        perm = torch.randperm(n, generator=gen)
        total = self.per_rank * ws
        if total > n:  # pad by wrapping around so every rank gets per_rank indices
            perm = perm.repeat(-(-total // n))
        share = perm[:total][self.rank :: ws]
        if self.drop_last:
            share = share[: self.num_batches * self.num_real]
        aux_idx = None
        if self.aux is not None and self.num_aux > 0:
            needed = self.num_batches * ws * self.num_aux
            if needed <= len(self.aux):
                drawn = torch.randperm(len(self.aux), generator=gen)[:needed]
            else:
                drawn = torch.randint(len(self.aux), (needed,), generator=gen)
            aux_idx = drawn.view(self.num_batches, ws, self.num_aux)[:, self.rank]
        return share.to(self.images.device), aux_idx

    def _make_batch(
        self, epoch: int, index: int, share: torch.Tensor, aux_idx: torch.Tensor | None
    ) -> Batch:
        real = share[index * self.num_real : (index + 1) * self.num_real]
        x = self.images.index_select(0, real)
        y = self.labels.index_select(0, real.to(self.labels.device))
        if aux_idx is not None:
            ax, ay = self.aux.get(aux_idx[index])  # type: ignore[union-attr]
            x = torch.cat([x, ax.to(x.device)])
            y = torch.cat([y, ay.to(y.device)])
        if self.augment_on == "device":
            return self._on_device(x, y, epoch, index)
        raw = x
        if self.augment:
            gen = _generator(derive_seed(_BATCH_STREAM, self.seed, epoch, index, self.rank))
            x = random_crop_flip(
                x, padding=self.padding, flip=self.flip, generator=gen, pad_mode=self.pad_mode
            )
        if self.two_view:
            x = torch.cat([x, self._second_view(raw, epoch, index)])
            y = torch.cat([y, y])
        return _send(to_float(x), self.device), _send(y, self.device)

    def _on_device(self, x: torch.Tensor, y: torch.Tensor, epoch: int, index: int) -> Batch:
        """The device path: uint8 batch and draws sent without blocking, crop/flip/float there."""
        view2 = self._second_view(x, epoch, index) if self.two_view else None
        dev = self.device
        x, y = _send(x, dev), _send(y, dev)
        if self.augment:
            gen = _generator(derive_seed(_BATCH_STREAM, self.seed, epoch, index, self.rank))
            draw = draw_crop_flip(
                int(x.shape[0]), padding=self.padding, flip=self.flip, generator=gen
            )
            sent = type(draw)(
                _send(draw.off_y, dev),
                _send(draw.off_x, dev),
                None if draw.flips is None else _send(draw.flips, dev),
            )
            x = apply_crop_flip(x, sent, padding=self.padding, pad_mode=self.pad_mode)
        if view2 is not None:
            x = torch.cat([x, _send(view2, dev)])
            y = torch.cat([y, y])
        return to_float(x), y

    def _second_view(self, x: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        """The AutoAugment view of the uint8 batch ``x``: crop+flip, AutoAugment, Cutout.

        Its own generator (not a continuation of the basic view's) keeps the basic half identical
        to a one-view loader's and makes this view a pure function of (seed, epoch, index, rank).
        """
        gen = _generator(derive_seed(_VIEW2_STREAM, self.seed, epoch, index, self.rank))
        if self.augment:
            x = random_crop_flip(
                x, padding=self.padding, flip=self.flip, generator=gen, pad_mode=self.pad_mode
            )
        x = autoaugment_cifar10(x, generator=gen, fill=_AUTOAUG_FILL)
        if self.cutout:
            x = apply_cutout(x, self.cutout, generator=gen)
        return x

    def batch(self, epoch: int, index: int) -> Batch:
        """Batch ``index`` of ``epoch`` without touching the position (for checks and debugging)."""
        if not 0 <= index < self.num_batches:
            raise IndexError(f"batch index {index} out of range [0, {self.num_batches})")
        share, aux_idx = self._epoch_plan(epoch)
        return self._make_batch(epoch, index, share, aux_idx)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self._epoch, self._batch_index
        share, aux_idx = self._epoch_plan(epoch)
        return self._iterate(epoch, start, share, aux_idx)

    def _iterate(
        self, epoch: int, start: int, share: torch.Tensor, aux_idx: torch.Tensor | None
    ) -> Iterator[Batch]:
        for index in range(start, self.num_batches):
            batch = self._make_batch(epoch, index, share, aux_idx)
            # Count the batch as consumed before handing it out: a checkpoint written while the
            # caller processes it must resume at the *next* batch.
            self._batch_index = index + 1
            yield batch
        if self._epoch == epoch:
            self._epoch, self._batch_index = epoch + 1, 0


def iterate_batches(
    images_u8: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    device: torch.device | str | None = None,
) -> Iterator[Batch]:
    """Evaluation batches in dataset order, ``(float32 in [0, 1], int64)``, last one possibly short.

    With ``device`` the uint8 slice is moved first and converted there (4x less transfer).
    """
    _check_pair(images_u8, labels, "iterate_batches")
    batch_size = _check_int(batch_size, "batch_size", 1)
    dev = torch.device(device) if device is not None else images_u8.device
    for start in range(0, int(images_u8.shape[0]), batch_size):
        x = images_u8[start : start + batch_size].to(dev)
        yield to_float(x), labels[start : start + batch_size].to(dev)


def train_val_split(
    images: torch.Tensor, labels: torch.Tensor, val_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out the *last* ``val_size`` training images (deterministic, no RNG involved).

    Returns ``(train_images, train_labels, val_images, val_labels)`` as views of the inputs.
    """
    n = int(images.shape[0])
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    val_size = _check_int(val_size, "val_size", 0)
    if val_size >= n:
        raise ConfigError(f"val_size={val_size} leaves no training images out of {n}; lower it")
    cut = n - val_size
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


@dataclass
class Datasets:
    """The three splits of one dataset as uint8 (N, C, H, W) images and int64 labels."""

    info: DatasetInfo
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def make_datasets(
    name: str,
    root: str | os.PathLike[str] | None,
    *,
    download: bool = False,
    val_size: int = 1024,
    train_subset: int | None = None,
) -> Datasets:
    """Load train and test, hold out the last ``val_size`` train images, optionally subsample.

    ``train_subset`` keeps the first N of the remaining training images (quick experiments); the
    validation images are chosen first so they do not change with it.
    """
    info = get_info(name)
    val_size = _check_int(val_size, "val_size", 0)
    if train_subset is not None:
        train_subset = _check_int(train_subset, "train_subset", 1)
    train_x, train_y = load_arrays(name, root, "train", download=download)
    test_x, test_y = load_arrays(name, root, "test", download=download)
    tr_x, tr_y, va_x, va_y = train_val_split(train_x, train_y, val_size)
    if train_subset is not None:
        if train_subset > tr_x.shape[0]:
            raise ConfigError(
                f"train_subset={train_subset} exceeds the {tr_x.shape[0]} training images left "
                f"after the validation split; lower it or set it to null"
            )
        tr_x, tr_y = tr_x[:train_subset], tr_y[:train_subset]
    return Datasets(info, tr_x, tr_y, va_x, va_y, test_x, test_y)
