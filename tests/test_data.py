"""Tests of the data pipeline: loading + validation, augmentation, loaders, auxiliary data."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from advtrain.data import (
    DATASETS,
    AuxDataset,
    TrainLoader,
    get_info,
    iterate_batches,
    load_arrays,
    make_datasets,
    random_crop_flip,
    to_float,
    train_val_split,
)
from advtrain.errors import CheckpointError, ConfigError, DataError

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _rand_images(n: int, h: int = 32, c: int | None = 3, seed: int = 0) -> np.ndarray:
    shape = (n, h, h, c) if c else (n, h, h)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path: Path, *, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


def _cifar_npz(root: Path, n: int = 20, split: str = "test", **override: np.ndarray) -> Path:
    arrays = {
        "image": _rand_images(n),
        "label": np.arange(n, dtype=np.int64) % 10,
    }
    arrays.update(override)
    return _save(root / f"cifar10_{split}.npz", **arrays)


def _labels_of_epoch(loader: TrainLoader) -> torch.Tensor:
    return torch.cat([y for _, y in loader])


# --------------------------------------------------------------------------------------------------
# dataset descriptions
# --------------------------------------------------------------------------------------------------


def test_dataset_infos_are_consistent() -> None:
    assert set(DATASETS) == {"cifar10", "cifar100", "fashion_mnist"}
    for info in DATASETS.values():
        assert len(info.class_names) == info.num_classes
        assert len(set(info.class_names)) == info.num_classes
        assert len(info.mean) == len(info.std) == info.channels
    # torchvision / the CIFAR-100 meta file list the fine labels alphabetically
    names = DATASETS["cifar100"].class_names
    assert list(names) == sorted(names) and names[0] == "apple" and names[-1] == "worm"
    assert DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert DATASETS["cifar100"].std == (0.2673, 0.2564, 0.2762)
    assert DATASETS["fashion_mnist"].shape == (1, 28, 28)


def test_unknown_dataset_name_lists_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cifar10, cifar100, fashion_mnist"):
        get_info("imagenet")
    with pytest.raises(ConfigError, match="cifar100"):
        load_arrays("mnist", tmp_path, "train")
    with pytest.raises(ConfigError, match="train, test"):
        load_arrays("cifar10", tmp_path, "validation")


# --------------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------------


def test_cifar10_test_real(data_dir: Path) -> None:
    x, y = load_arrays("cifar10", data_dir, "test")
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10
    # NHWC -> NCHW is a transpose, not a reshape: compare with the raw archive
    raw = np.load(data_dir / "cifar10_test.npz")["image"][:3]
    assert torch.equal(x[:3], torch.from_numpy(raw).permute(0, 3, 1, 2))


def test_fashion_mnist_test_real(data_dir: Path) -> None:
    if not (data_dir / "fashion_mnist_test.npz").exists():
        pytest.skip("fashion_mnist_test.npz not present")
    x, y = load_arrays("fashion_mnist", data_dir, "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert y[:4].tolist() == [9, 2, 1, 1]
    assert torch.bincount(y, minlength=10).tolist() == [1000] * 10


@pytest.mark.slow
def test_cifar10_train_channel_stats_match_published(data_dir: Path) -> None:
    x, y = load_arrays("cifar10", data_dir, "train")
    assert x.shape == (50000, 3, 32, 32) and y[0].item() == 6
    sub = to_float(x[::5])  # 10,000-image subset
    mean = sub.mean(dim=(0, 2, 3))
    std = sub.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1)
    info = DATASETS["cifar10"]
    assert torch.allclose(mean, torch.tensor(info.mean), atol=3e-3), mean
    assert torch.allclose(std, torch.tensor(info.std), atol=3e-3), std


@pytest.mark.slow
def test_make_datasets_real_fashion_mnist(data_dir: Path) -> None:
    if not (data_dir / "fashion_mnist_train.npz").exists():
        pytest.skip("fashion_mnist_train.npz not present")
    ds = make_datasets("fashion_mnist", data_dir, val_size=1024, train_subset=500)
    full_x, full_y = load_arrays("fashion_mnist", data_dir, "train")
    assert full_y[:4].tolist() == [9, 0, 0, 3]
    assert ds.info is DATASETS["fashion_mnist"]
    assert torch.equal(ds.val_images, full_x[-1024:]) and torch.equal(ds.val_labels, full_y[-1024:])
    assert torch.equal(ds.train_images, full_x[:500]) and torch.equal(ds.train_labels, full_y[:500])
    assert ds.test_images.shape == (10000, 1, 28, 28)
    mean = to_float(full_x[::6]).mean().item()
    std = to_float(full_x[::6]).std().item()
    assert abs(mean - 0.2860) < 3e-3 and abs(std - 0.3530) < 3e-3


# --------------------------------------------------------------------------------------------------
# npz reading and validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_roundtrip_stored_and_compressed(tmp_path: Path, compressed: bool) -> None:
    img = _rand_images(7)
    lab = np.array([0, 9, 3, 3, 1, 2, 5], dtype=np.int64)
    _save(tmp_path / "cifar10_train.npz", compressed=compressed, image=img, label=lab)
    x, y = load_arrays("cifar10", tmp_path, "train")
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and x.shape == (7, 3, 32, 32)
    # x[n, c, h, w] == img[n, h, w, c]
    assert x[4, 2, 5, 7].item() == img[4, 5, 7, 2] and x[6, 0, 31, 0].item() == img[6, 31, 0, 0]
    assert torch.equal(x, torch.from_numpy(img).permute(0, 3, 1, 2))
    assert y.tolist() == lab.tolist()
    assert x.numpy().flags.writeable  # owned memory, not a read-only view of the file


def test_grayscale_nhw_and_nhwc_with_one_channel(tmp_path: Path) -> None:
    img = _rand_images(5, h=28, c=None)
    lab = np.arange(5, dtype=np.uint8)  # any integer dtype is fine, it becomes int64
    _save(tmp_path / "fashion_mnist_train.npz", image=img, label=lab)
    _save(tmp_path / "fashion_mnist_test.npz", image=img[..., None], label=lab)
    a, ya = load_arrays("fashion_mnist", tmp_path, "train")
    b, yb = load_arrays("fashion_mnist", tmp_path, "test")
    assert a.shape == b.shape == (5, 1, 28, 28)
    assert torch.equal(a[:, 0], torch.from_numpy(img)) and torch.equal(a, b)
    assert ya.dtype == torch.int64 and ya.tolist() == [0, 1, 2, 3, 4]


def test_missing_dataset_says_where_and_how(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_arrays("cifar10", tmp_path, "test")
    msg = str(err.value)
    assert "\n" not in msg
    assert str(tmp_path / "cifar10_test.npz") in msg  # the npz it looked for
    assert str(tmp_path / "cifar-10-batches-py") in msg  # and the torchvision folder
    assert "data.download=true" in msg and "ADVTRAIN_DATA_DIR" in msg


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_torchvision_fallback_reads_its_files(tmp_path: Path) -> None:
    """Without an npz, torchvision's FashionMNIST class reads its raw IDX files under root."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    imgs = {"train": _rand_images(6, h=28, c=None, seed=1), "t10k": _rand_images(4, h=28, c=None)}
    labs = {"train": np.array([9, 0, 0, 3, 1, 2]), "t10k": np.array([9, 2, 1, 1])}
    for prefix in ("train", "t10k"):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs[prefix])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labs[prefix])
    x, y = load_arrays("fashion_mnist", tmp_path, "test")
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(imgs["t10k"])) and y.tolist() == [9, 2, 1, 1]
    # and it is validated like the npz path
    _write_idx(raw / "t10k-labels-idx1-ubyte", np.array([9, 2, 1, 10]))
    with pytest.raises(DataError, match=r"\[1, 10\] but must be \[0, 9\]"):
        load_arrays("fashion_mnist", tmp_path, "test")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "cifar10_test.npz").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        load_arrays("cifar10", tmp_path, "test")


def test_corrupt_bytes(tmp_path: Path) -> None:
    (tmp_path / "cifar10_test.npz").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DataError, match="corrupt"):
        load_arrays("cifar10", tmp_path, "test")


def test_truncated_archive(tmp_path: Path) -> None:
    path = _cifar_npz(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="corrupt"):
        load_arrays("cifar10", tmp_path, "test")


def test_corrupt_compressed_payload(tmp_path: Path) -> None:
    path = _save(
        tmp_path / "cifar10_test.npz",
        compressed=True,
        image=_rand_images(20),
        label=np.zeros(20, np.int64),
    )
    data = bytearray(path.read_bytes())
    for i in range(200, 400):  # inside the deflate stream of the first member
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt"):
        load_arrays("cifar10", tmp_path, "test")


def test_wrong_keys(tmp_path: Path) -> None:
    _save(tmp_path / "cifar10_test.npz", x=_rand_images(3), y=np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"no 'image'/'label' array \(found: x, y\)"):
        load_arrays("cifar10", tmp_path, "test")


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"image": _rand_images(20).astype(np.float32) / 255}, "dtype float32, expected uint8"),
        ({"label": np.zeros(20, np.float32)}, "label has dtype float32"),
        ({"image": _rand_images(20, h=28)}, r"shape \(20, 28, 28, 3\)"),
        ({"image": _rand_images(20).transpose(0, 3, 1, 2).copy()}, r"shape \(20, 3, 32, 32\)"),
        ({"image": _rand_images(20, c=None)}, r"shape \(20, 32, 32\)"),
        ({"label": np.full(20, 10, np.int64)}, r"\[10, 10\] but must be \[0, 9\]"),
        ({"label": np.full(20, -1, np.int64)}, r"\[-1, -1\]"),
        ({"label": np.zeros(19, np.int64)}, "20 images but 19 labels"),
        ({"label": np.zeros((20, 1), np.int64)}, r"expected \(N,\)"),
    ],
)
def test_invalid_contents(tmp_path: Path, override: dict, pattern: str) -> None:
    path = _cifar_npz(tmp_path, **override)
    with pytest.raises(DataError, match=pattern) as err:
        load_arrays("cifar10", tmp_path, "test")
    assert str(path) in str(err.value)


def test_zero_images(tmp_path: Path) -> None:
    _cifar_npz(tmp_path, image=np.zeros((0, 32, 32, 3), np.uint8), label=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="no images"):
        load_arrays("cifar10", tmp_path, "test")


# --------------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_crop_flip_shape_dtype_and_determinism() -> None:
    x = torch.from_numpy(_rand_images(16)).permute(0, 3, 1, 2).contiguous()
    a = random_crop_flip(x, generator=_gen(1))
    b = random_crop_flip(x, generator=_gen(1))
    c = random_crop_flip(x, generator=_gen(2))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_crop_flip(x, padding=0, flip=False, generator=_gen(3)), x)


def test_flip_only_gives_image_or_its_mirror() -> None:
    x = torch.from_numpy(_rand_images(64)).permute(0, 3, 1, 2)
    out = random_crop_flip(x, padding=0, flip=True, generator=_gen(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == torch.flip(x, dims=[3])).flatten(1).all(1)
    assert torch.all(same ^ mirrored)  # exactly one of the two for every sample
    assert 10 < int(mirrored.sum()) < 54  # both happen (fair coin, 64 draws)


def test_every_output_is_a_crop_of_the_padded_input() -> None:
    """Recover each sample's offset and flip from coded pixels, then rebuild it by slicing."""
    b, h, p = 4000, 8, 2
    code = (torch.arange(h * h, dtype=torch.uint8) + 1).view(1, 1, h, h)  # 1..64, padding is 0
    x = torch.cat([code, 100 + code], dim=1).expand(b, 2, h, h).contiguous()
    out = random_crop_flip(x, padding=p, flip=True, generator=_gen(5))
    centre = out[:, 0, h // 2, h // 2].long() - 1  # always inside the image for p <= h/2
    left = out[:, 0, h // 2, h // 2 - 1].long() - 1
    flipped = left > centre
    dy = centre // h - h // 2 + p
    col = centre % h
    dx = torch.where(flipped, col - (h - 1 - h // 2) + p, col - h // 2 + p)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    rebuilt = torch.stack(
        [
            padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + h].flip(-1)
            if flipped[i]
            else padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + h]
            for i in range(b)
        ]
    )
    assert torch.equal(out, rebuilt)
    # offsets uniform over the (2p+1)^2 grid and flips fair (loose 6-sigma bounds)
    counts = torch.bincount(dy * (2 * p + 1) + dx, minlength=(2 * p + 1) ** 2).float()
    assert counts.numel() == 25 and counts.min() > 160 - 6 * 12.5 and counts.max() < 160 + 6 * 12.5
    assert abs(flipped.float().mean().item() - 0.5) < 6 * 0.0079


def test_to_float() -> None:
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    f = to_float(x)
    assert f.dtype == torch.float32 and f.min() == 0 and f.max() == 1
    assert torch.equal(f, x.float() / 255)
    with pytest.raises(ValueError):
        to_float(f)
    with pytest.raises(ValueError):
        random_crop_flip(f, generator=_gen(0))


# --------------------------------------------------------------------------------------------------
# loaders
# --------------------------------------------------------------------------------------------------


def _toy(n: int, h: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images; labels are the row index so batches reveal which rows they hold."""
    x = torch.from_numpy(_rand_images(n, h=h, seed=seed)).permute(0, 3, 1, 2).contiguous()
    return x, torch.arange(n, dtype=torch.int64)


def test_loader_covers_every_index_once_per_epoch() -> None:
    x, y = _toy(103)
    loader = TrainLoader(x, y, batch_size=16, augment=False, seed=3)
    assert len(loader) == 7
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 7 and [len(b[1]) for b in batches] == [16] * 6 + [7]
        seen = torch.cat([b[1] for b in batches])
        assert torch.equal(seen.sort().values, y)
        for xb, yb in batches:  # images travel with their labels, converted to [0, 1]
            assert xb.dtype == torch.float32 and torch.equal(xb, x[yb].float() / 255)
    drop = TrainLoader(x, y, batch_size=16, augment=False, drop_last=True)
    assert len(drop) == 6 and all(len(b[1]) == 16 for b in drop)


def test_loader_epochs_differ_and_ignore_global_rng() -> None:
    x, y = _toy(64)
    a = TrainLoader(x, y, batch_size=8, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        e0 = [b for b in a]  # finishing an epoch moves to the next
        assert a.epoch == 1 and a.batch_index == 0
        e1 = [b for b in a]
        torch.manual_seed(999)
        b = list(TrainLoader(x, y, batch_size=8, seed=0))
    assert not torch.equal(torch.cat([b[1] for b in e0]), torch.cat([b[1] for b in e1]))
    assert len(b) == len(e0) == 8
    for (xa, ya), (xb, yb) in zip(e0, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    c = TrainLoader(x, y, batch_size=8, seed=1)
    assert not torch.equal(torch.cat([b[1] for b in c]), torch.cat([b[1] for b in e0]))


def test_loader_augments_with_crop_and_flip() -> None:
    x, y = _toy(32)
    plain = dict(batch_size=32, seed=0)
    xa, ya = next(iter(TrainLoader(x, y, augment=True, **plain)))
    xp, yp = next(iter(TrainLoader(x, y, augment=False, **plain)))
    assert torch.equal(ya, yp) and torch.equal(xp, x[yp].float() / 255)
    assert not torch.equal(xa, xp)
    # each augmented image is a crop/flip of its own padded source
    padded = torch.nn.functional.pad(x[ya], (4, 4, 4, 4)).float() / 255
    for i in range(32):
        crops = (
            padded[i].unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 8, 8)
        )
        match = (crops == xa[i]).flatten(1).all(1) | (crops.flip(-1) == xa[i]).flatten(1).all(1)
        assert match.any()


def test_resume_mid_epoch_is_bit_exact(tmp_path: Path) -> None:
    x, y = _toy(90)
    aux_path = _save(
        tmp_path / "aux.npz", image=_rand_images(500, h=8, seed=9), label=np.arange(500) + 1000
    )
    kw = dict(batch_size=10, seed=7, aux=AuxDataset(aux_path), aux_fraction=0.3)
    ref = TrainLoader(x, y, **kw)
    list(ref)  # epoch 0
    it = iter(ref)
    head = [next(it) for _ in range(5)]
    state = ref.state_dict()
    assert state == {"epoch": 1, "batch_index": 5, "seed": 7}
    tail = list(it)
    assert len(head) + len(tail) == len(ref) == 13

    resumed = TrainLoader(x, y, **{**kw, "seed": 0})  # the checkpoint's seed wins
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what a trainer does at the top of the epoch: keeps the position
    got = list(resumed)
    assert len(got) == len(tail)
    for (xa, ya), (xb, yb) in zip(tail, got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert resumed.state_dict() == {"epoch": 2, "batch_index": 0, "seed": 7}
    resumed.set_epoch(5)
    assert resumed.state_dict()["batch_index"] == 0 and resumed.epoch == 5


def test_load_state_dict_rejects_bad_state() -> None:
    loader = TrainLoader(*_toy(20), batch_size=4)
    with pytest.raises(CheckpointError, match="batch_index"):
        loader.load_state_dict({"epoch": 0, "seed": 0})
    with pytest.raises(CheckpointError, match="same data"):
        loader.load_state_dict({"epoch": 0, "batch_index": 6, "seed": 0})


def test_aux_mixing_fraction_and_epoch_length(tmp_path: Path) -> None:
    x, y = _toy(100)
    aux_n = 5000
    aux_path = _save(
        tmp_path / "aux.npz", image=_rand_images(aux_n, h=8, seed=4), label=np.arange(aux_n) + 1000
    )
    aux = AuxDataset(aux_path)
    loader = TrainLoader(x, y, batch_size=16, aux=aux, aux_fraction=0.3, seed=1)
    assert loader.num_aux == 5 and loader.num_real == 11  # round(4.8) = 5
    assert len(loader) == 10  # ceil(100 / 11): set by the real data
    batches = list(loader)
    real, extra = [], []
    for xb, yb in batches:
        assert xb.shape[1:] == (3, 8, 8)
        assert int((yb >= 1000).sum()) == 5  # every batch, the short last one included
        real.append(yb[yb < 1000])
        extra.append(yb[yb >= 1000] - 1000)
        assert torch.equal(yb[-5:], yb[yb >= 1000])  # aux rows follow the real rows
    assert torch.equal(torch.cat(real).sort().values, y)
    aux_ids = torch.cat(extra)
    assert aux_ids.unique().numel() == aux_ids.numel()  # no repeats within an epoch
    # aux images are the rows of the archive, converted like the real ones
    loader_na = TrainLoader(x, y, batch_size=16, aux=aux, aux_fraction=0.3, seed=1, augment=False)
    xb, yb = next(iter(loader_na))
    raw = np.load(aux_path)["image"][yb[-5:].numpy() - 1000]
    assert torch.equal(xb[-5:], torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255)


def test_aux_small_set_is_sampled_with_replacement(tmp_path: Path) -> None:
    aux_path = _save(
        tmp_path / "aux.npz", image=_rand_images(3, h=8), label=np.array([100, 101, 102])
    )
    x, y = _toy(40)
    loader = TrainLoader(x, y, batch_size=8, aux=AuxDataset(aux_path), aux_fraction=0.5)
    ys = _labels_of_epoch(loader)
    assert len(loader) == 10 and len(ys) == 80  # 40 aux rows needed from a set of 3
    assert torch.equal(ys[ys < 40].sort().values, y)
    assert set(ys[ys >= 40].tolist()) == {100, 101, 102}


def test_loader_config_errors(tmp_path: Path) -> None:
    x, y = _toy(20)
    aux = AuxDataset(
        _save(tmp_path / "a.npz", image=_rand_images(5, h=8), label=np.zeros(5, np.int64))
    )
    for frac in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="aux_fraction"):
            TrainLoader(x, y, batch_size=8, aux=aux, aux_fraction=frac)
    with pytest.raises(ConfigError, match="auxiliary dataset"):
        TrainLoader(x, y, batch_size=8, aux_fraction=0.5)
    with pytest.raises(ConfigError, match="batch_size"):
        TrainLoader(x, y, batch_size=0)
    with pytest.raises(ConfigError, match="rank"):
        TrainLoader(x, y, batch_size=4, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="no real images"):
        TrainLoader(x, y, batch_size=1, aux=aux, aux_fraction=0.9)
    with pytest.raises(ConfigError, match="drop_last"):
        TrainLoader(x, y, batch_size=32, drop_last=True)
    other = AuxDataset(
        _save(tmp_path / "b.npz", image=_rand_images(5, h=6), label=np.zeros(5, np.int64))
    )
    with pytest.raises(DataError, match="made for this dataset"):
        TrainLoader(x, y, batch_size=8, aux=other, aux_fraction=0.5)


@pytest.mark.parametrize("n", [96, 103])
def test_distributed_shares_are_disjoint_and_cover(n: int) -> None:
    x, y = _toy(n)
    ws = 4
    loaders = [TrainLoader(x, y, batch_size=8, seed=2, rank=r, world_size=ws) for r in range(ws)]
    assert len({len(ld) for ld in loaders}) == 1
    shares = [_labels_of_epoch(ld) for ld in loaders]
    assert len({len(s) for s in shares}) == 1  # equal work per rank
    everything = torch.cat(shares)
    assert torch.equal(everything.unique(), y)  # covers the data
    # disjoint, except the wrap-around padding (< world_size rows) when n % ws != 0
    assert everything.numel() - everything.unique().numel() == (-n) % ws
    # the permutation is shared: rank r holds positions r, r + ws, ... of the single-rank order
    single = TrainLoader(x, y, batch_size=8 * ws, seed=2)
    order = _labels_of_epoch(single)
    if n % ws == 0:
        for r in range(ws):
            assert torch.equal(shares[r], order[r::ws])
    dropped = [
        _labels_of_epoch(TrainLoader(x, y, batch_size=8, rank=r, world_size=ws, drop_last=True))
        for r in range(ws)
    ]
    flat = torch.cat(dropped)
    assert flat.unique().numel() == flat.numel() and all(len(d) == len(dropped[0]) for d in dropped)


def test_distributed_aux_and_augmentation_differ_per_rank(tmp_path: Path) -> None:
    aux = AuxDataset(
        _save(tmp_path / "a.npz", image=_rand_images(1000, h=8), label=np.arange(1000) + 100)
    )
    x, y = _toy(64)
    ys = [
        _labels_of_epoch(
            TrainLoader(x, y, batch_size=8, aux=aux, aux_fraction=0.5, rank=r, world_size=2)
        )
        for r in range(2)
    ]
    aux0, aux1 = (set(t[t >= 100].tolist()) for t in ys)
    assert aux0 and aux1 and not aux0 & aux1


def test_iterate_batches_in_order() -> None:
    x, y = _toy(23)
    batches = list(iterate_batches(x, y, 10))
    assert [len(b[1]) for b in batches] == [10, 10, 3]
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    assert torch.equal(torch.cat([b[0] for b in batches]), x.float() / 255)
    with pytest.raises(ConfigError):
        list(iterate_batches(x, y, 0))


def test_train_val_split_holds_out_the_tail() -> None:
    x, y = _toy(50)
    tx, ty, vx, vy = train_val_split(x, y, val_size=12)
    assert torch.equal(vy, torch.arange(38, 50)) and torch.equal(ty, torch.arange(38))
    assert torch.equal(vx, x[38:]) and torch.equal(tx, x[:38])
    assert train_val_split(x, y, val_size=0)[2].shape[0] == 0
    with pytest.raises(ConfigError, match="val_size"):
        train_val_split(x, y, val_size=50)


def test_make_datasets_on_small_files(tmp_path: Path) -> None:
    _cifar_npz(tmp_path, n=30, split="train")
    _cifar_npz(tmp_path, n=8, split="test", image=_rand_images(8, seed=3))
    ds = make_datasets("cifar10", tmp_path, val_size=10, train_subset=5)
    full_x, full_y = load_arrays("cifar10", tmp_path, "train")
    assert torch.equal(ds.val_images, full_x[20:]) and torch.equal(ds.train_images, full_x[:5])
    assert torch.equal(ds.train_labels, full_y[:5]) and ds.test_images.shape[0] == 8
    with pytest.raises(ConfigError, match="train_subset"):
        make_datasets("cifar10", tmp_path, val_size=10, train_subset=0)
    with pytest.raises(ConfigError, match="exceeds the 20"):
        make_datasets("cifar10", tmp_path, val_size=10, train_subset=21)


# --------------------------------------------------------------------------------------------------
# auxiliary data
# --------------------------------------------------------------------------------------------------


def test_aux_stored_archive_is_memory_mapped(tmp_path: Path) -> None:
    img = _rand_images(300)
    lab = np.random.default_rng(1).integers(0, 10, 300)
    path = _save(tmp_path / "aux.npz", image=img, label=lab)
    aux = AuxDataset(path, info=DATASETS["cifar10"])
    assert aux.memory_mapped and isinstance(aux.images, np.memmap)
    assert Path(aux.images.filename) == path.resolve() and aux.images.offset > 0
    assert len(aux) == 300 and aux.shape == (3, 32, 32)
    ref = np.load(path)
    assert np.array_equal(np.asarray(aux.images), ref["image"])
    idx = np.array([299, 0, 17, 17, 150])
    xb, yb = aux.get(idx)
    assert xb.dtype == torch.uint8 and yb.dtype == torch.int64 and xb.shape == (5, 3, 32, 32)
    assert torch.equal(xb, torch.from_numpy(ref["image"][idx]).permute(0, 3, 1, 2))
    assert yb.tolist() == ref["label"][idx].tolist()
    assert torch.equal(aux.get(torch.from_numpy(idx))[0], xb)


def test_aux_memmap_handles_fortran_order_and_grayscale(tmp_path: Path) -> None:
    img = np.asfortranarray(_rand_images(12, h=28, c=None))
    path = _save(tmp_path / "aux.npz", image=img, label=np.arange(12) % 10)
    aux = AuxDataset(path, info=DATASETS["fashion_mnist"])
    assert aux.memory_mapped and aux.shape == (1, 28, 28)
    xb, _ = aux.get(np.arange(12))
    assert torch.equal(xb[:, 0], torch.from_numpy(np.ascontiguousarray(img)))


def test_aux_compressed_falls_back_with_warning(tmp_path: Path, caplog) -> None:
    img = _rand_images(20)
    path = _save(tmp_path / "aux.npz", compressed=True, image=img, label=np.zeros(20, np.int64))
    with caplog.at_level(logging.WARNING, logger="advtrain.data.synthetic"):
        aux = AuxDataset(path)
    assert not aux.memory_mapped
    assert any("savez" in r.getMessage() for r in caplog.records)
    assert torch.equal(aux.get(np.arange(20))[0], torch.from_numpy(img).permute(0, 3, 1, 2))


def test_aux_validation(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        AuxDataset(tmp_path / "nope.npz")
    bad = _save(tmp_path / "a.npz", image=_rand_images(4).astype(np.int16), label=np.zeros(4))
    with pytest.raises(DataError, match="uint8"):
        AuxDataset(bad)
    neg = _save(tmp_path / "b.npz", image=_rand_images(4), label=np.array([0, 1, -2, 3]))
    with pytest.raises(DataError, match=">= 0"):
        AuxDataset(neg)
    small = _save(tmp_path / "c.npz", image=_rand_images(4, h=28), label=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="expected"):
        AuxDataset(small, info=DATASETS["cifar10"])
    keys = _save(tmp_path / "d.npz", images=_rand_images(4), labels=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="found: images, labels"):
        AuxDataset(keys)


def test_loaders_refuse_float_images_and_name_the_cause(tmp_path: Path) -> None:
    labels = torch.arange(8) % 10
    pixels = torch.randint(0, 256, (8, 3, 32, 32)).float()
    with pytest.raises(DataError, match=r"uint8 .*0-255 pixel values"):
        TrainLoader(pixels, labels, batch_size=4)
    with pytest.raises(DataError, match=r"normalised inputs"):
        TrainLoader((pixels / 255 - 0.5) / 0.25, labels, batch_size=4)
    with pytest.raises(DataError, match=r"multiply \[0, 1\] images by 255"):
        list(iterate_batches(pixels / 255, labels, 4))
    bad = tmp_path / "floats.npz"
    np.savez(bad, image=np.random.default_rng(0).random((4, 32, 32, 3)) * 255, label=np.arange(4))
    with pytest.raises(DataError, match=r"uint8 .*0-255 pixel values"):
        AuxDataset(bad)


def test_reflection_padding_matches_numpy_reflect() -> None:
    """pad_mode=reflect (Rice et al.'s np.pad mode='reflect') changes only the padded pixels."""
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, padding=4, flip=False, generator=_gen(3), pad_mode="reflect")
    g = _gen(3)
    off_y = torch.randint(0, 9, (6,), generator=g)
    off_x = torch.randint(0, 9, (6,), generator=g)
    padded = np.pad(x.numpy(), [(0, 0), (0, 0), (4, 4), (4, 4)], mode="reflect")
    for i in range(6):
        oy, ox = int(off_y[i]), int(off_x[i])
        assert np.array_equal(out[i].numpy(), padded[i, :, oy : oy + 8, ox : ox + 8])
    zeros = random_crop_flip(x, padding=4, flip=True, generator=_gen(3))
    refl = random_crop_flip(x, padding=4, flip=True, generator=_gen(3), pad_mode="reflect")
    inside = zeros != 0
    assert torch.equal(zeros[inside], refl[inside])  # same crops and flips
    with pytest.raises(ValueError, match="pad_mode"):
        random_crop_flip(x, generator=_gen(3), pad_mode="edge")
