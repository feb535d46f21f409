"""Batch augmentation on uint8 image tensors.

Standard CIFAR augmentation (zero-pad 4, random 32x32 crop, horizontal flip) done for a whole batch
with one gather instead of a Python loop over samples: the per-sample cost of torchvision-style
transforms is what usually makes the data loader the bottleneck of small-model training. All random
draws come from an explicit ``torch.Generator``, so a batch is reproducible from its seed alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "PAD_MODES",
    "CropFlipDraw",
    "apply_crop_flip",
    "draw_crop_flip",
    "random_crop_flip",
    "to_float",
]


def _check_uint8_batch(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else x
        raise ValueError(f"{what} expects a uint8 (B, C, H, W) tensor, got {desc}")


PAD_MODES = ("zeros", "reflect")


def _reflect_index(n: int, padding: int, device: torch.device) -> torch.Tensor:
    """Source index of each of the ``n + 2 * padding`` padded positions under reflection
    (numpy's ``mode='reflect'``: the edge pixel is not repeated, [a b c] -> [c b | a b c | b a])."""
    i = torch.arange(-padding, n + padding, device=device).abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def _pad(x: torch.Tensor, padding: int, mode: str) -> torch.Tensor:
    if mode == "zeros":
        return F.pad(x, (padding, padding, padding, padding))
    h, w = x.shape[-2:]
    if padding > min(h, w) - 1:
        raise ValueError(f"reflection padding {padding} needs images larger than {padding + 1}px")
    rows = _reflect_index(h, padding, x.device)
    cols = _reflect_index(w, padding, x.device)
    return x.index_select(2, rows).index_select(3, cols)


@dataclass(frozen=True)
class CropFlipDraw:
    """The random decisions of :func:`random_crop_flip` for one batch: ``off_y``, ``off_x`` (B,)
    int64 crop offsets in ``[0, 2 * padding]`` and ``flips`` (B,) bool (None without flipping)."""

    off_y: torch.Tensor
    off_x: torch.Tensor
    flips: torch.Tensor | None

    def to(self, device: torch.device, *, non_blocking: bool = False) -> CropFlipDraw:
        """The same draw on `device` (the decisions are data, so they move bit for bit)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device, non_blocking=non_blocking)

        flips = None if self.flips is None else move(self.flips)
        return CropFlipDraw(move(self.off_y), move(self.off_x), flips)


def draw_crop_flip(
    batch_size: int, *, padding: int = 4, flip: bool = True, generator: torch.Generator
) -> CropFlipDraw:
    """Draw a batch's crop offsets and flips from ``generator``, on the generator's device.

    In this order: row offsets (B,), column offsets (B,), then (if ``flip``) flip uniforms (B,),
    a flip where the uniform is ``< 0.5``: the draws :func:`random_crop_flip` makes.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    gdev = generator.device
    span = 2 * padding + 1
    off_y = torch.randint(0, span, (batch_size,), generator=generator, device=gdev)
    off_x = torch.randint(0, span, (batch_size,), generator=generator, device=gdev)
    flips = torch.rand(batch_size, generator=generator, device=gdev) < 0.5 if flip else None
    return CropFlipDraw(off_y, off_x, flips)


def apply_crop_flip(
    x: torch.Tensor, draw: CropFlipDraw, *, padding: int = 4, pad_mode: str = "zeros"
) -> torch.Tensor:
    """Crop and flip the uint8 batch ``x`` as ``draw`` says, with batch tensor ops on ``x``'s device.

    One advanced-indexing gather from the padded batch: a flip is just reversed column indices, so
    cropping and flipping cost the same single pass. Integer gathers, so the result is the same bit
    for bit on every device. ``draw`` must be on ``x``'s device (:meth:`CropFlipDraw.to`).
    """
    _check_uint8_batch(x, "apply_crop_flip")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode={pad_mode!r}: use one of {', '.join(PAD_MODES)}")
    b, c, h, w = x.shape
    if draw.off_y.shape != (b,):
        raise ValueError(f"the draw is for {draw.off_y.shape[0]} images but x has {b}")
    if padding == 0 and draw.flips is None:
        return x.clone()
    padded = _pad(x, padding, pad_mode) if padding else x
    rows = draw.off_y[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = torch.arange(w, device=x.device).expand(b, w)  # (B, W)
    if draw.flips is not None:
        cols = torch.where(draw.flips[:, None], cols.flip(1), cols)
    cols = draw.off_x[:, None] + cols
    # Flat gather over (H+2p)*(W+2p) positions per image: index (B, 1, H, W) broadcast over channels.
    wp = w + 2 * padding
    flat_idx = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    out = padded.reshape(b, c, -1).gather(2, flat_idx)
    return out.view(b, c, h, w)


def random_crop_flip(
    x: torch.Tensor,
    *,
    padding: int = 4,
    flip: bool = True,
    generator: torch.Generator,
    pad_mode: str = "zeros",
) -> torch.Tensor:
    """Pad each image by ``padding``, crop back to (H, W) at a random offset, maybe flip.

    ``pad_mode``: ``"zeros"`` (torchvision's ``RandomCrop(32, padding=4)``, the TRADES/MART/GKL
    scripts) or ``"reflect"`` (numpy ``mode='reflect'``, Rice et al.'s ``train_cifar.py``). The mode
    changes only the padded pixels, never the random draws.

    Every sample gets its own offset in ``[0, 2 * padding]`` along each axis and (if ``flip``) a fair
    coin for a horizontal flip. Random draws, in this order, from ``generator`` (on its own device,
    then moved to ``x``'s): row offsets (B,), column offsets (B,), flips (B,). Same generator state and
    input -> same output. ``padding=0, flip=False`` is the identity. This is
    :func:`draw_crop_flip` followed by :func:`apply_crop_flip`, the two halves the loader's device
    path runs on different devices.
    """
    _check_uint8_batch(x, "random_crop_flip")
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode={pad_mode!r}: use one of {', '.join(PAD_MODES)}")
    draw = draw_crop_flip(int(x.shape[0]), padding=padding, flip=flip, generator=generator)
    return apply_crop_flip(x, draw.to(x.device), padding=padding, pad_mode=pad_mode)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1] (division by 255, as torchvision's ``ToTensor``)."""
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
        got = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"to_float expects a uint8 tensor, got {got}")
    return x.to(torch.float32).div_(255.0)
