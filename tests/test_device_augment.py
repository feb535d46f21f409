"""Augmentation on the device (#15): the device path gives the CPU path's batches bit for bit.

The loader's device path sends the uint8 batch and its crop/flip draws to the device and crops,
flips and converts there; here it runs on CPU tensors (`augment_on="device"`, `device="cpu"`) and
must equal the CPU path (`augment_on="cpu"`) for every padding mode, with and without flips, aux
rows and the two-view AutoAugment recipe. On a CUDA machine the same comparison runs on the GPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from advtrain.data import TrainLoader
from advtrain.data.loaders import resolve_augment_on
from advtrain.data.transforms import apply_crop_flip, draw_crop_flip, random_crop_flip
from advtrain.errors import ConfigError


def _images(n: int = 48, c: int = 3, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (n, c, size, size), generator=g, dtype=torch.uint8)
    return x, torch.arange(n) % 10


@pytest.mark.parametrize("pad_mode", ["zeros", "reflect"])
@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("padding", [0, 4])
def test_draw_then_apply_is_random_crop_flip(pad_mode: str, flip: bool, padding: int) -> None:
    x, _ = _images(16)
    ref = random_crop_flip(
        x, padding=padding, flip=flip, generator=torch.Generator().manual_seed(7), pad_mode=pad_mode
    )
    draw = draw_crop_flip(
        16, padding=padding, flip=flip, generator=torch.Generator().manual_seed(7)
    )
    out = apply_crop_flip(x, draw, padding=padding, pad_mode=pad_mode)
    assert torch.equal(out, ref)
    if padding or flip:
        assert not torch.equal(out, x)  # it did augment


LOADERS: list[dict[str, Any]] = [
    {},
    {"pad_mode": "reflect"},
    {"flip": False},
    {"augment": False},
    {"two_view": True, "cutout": 8},
    {"drop_last": True, "batch_size": 20},
]


@pytest.mark.parametrize("kwargs", LOADERS)
def test_device_path_equals_cpu_path_on_cpu_tensors(kwargs: dict[str, Any]) -> None:
    x, y = _images()
    opts = {"batch_size": 16, "seed": 5, **kwargs}
    cpu = TrainLoader(x, y, augment_on="cpu", **opts)
    dev = TrainLoader(x, y, augment_on="device", device="cpu", **opts)
    assert cpu.augment_on == "cpu" and dev.augment_on == "device"
    for epoch in (0, 3):
        cpu.set_epoch(epoch)
        dev.set_epoch(epoch)
        batches = list(zip(cpu, dev, strict=True))
        assert len(batches) == len(cpu)
        for (xa, ya), (xb, yb) in batches:
            assert xa.dtype == xb.dtype == torch.float32
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_auto_picks_the_device_only_for_a_gpu() -> None:
    assert resolve_augment_on("auto", torch.device("cpu")) == "cpu"
    assert resolve_augment_on("auto", torch.device("cuda")) == "device"
    assert resolve_augment_on("cpu", torch.device("cuda")) == "cpu"
    with pytest.raises(ConfigError, match="augment_on='gpu'"):
        resolve_augment_on("gpu", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kwargs", LOADERS)
def test_gpu_batches_equal_cpu_batches(kwargs: dict[str, Any]) -> None:
    x, y = _images()
    opts = {"batch_size": 16, "seed": 5, **kwargs}
    cpu = TrainLoader(x, y, augment_on="cpu", **opts)
    gpu = TrainLoader(x, y, augment_on="device", device="cuda", **opts)
    for (xa, ya), (xb, yb) in zip(cpu, gpu, strict=True):
        assert xb.is_cuda and torch.equal(xa, xb.cpu()) and torch.equal(ya, yb.cpu())
