"""Tests of the generator-driven CIFAR-10 AutoAugment, Cutout and the two-view TrainLoader.

The reference for every op is torchvision itself: the policy table and magnitude bins are compared
with ``torchvision.transforms.v2.AutoAugment`` and the op outputs with
``torchvision.transforms.v2.functional`` called directly with the parameters the draw implies.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms.v2 import AutoAugment, AutoAugmentPolicy

from advtrain.data import AuxDataset, TrainLoader, random_crop_flip
from advtrain.data.autoaugment import (
    CIFAR10_POLICY,
    NUM_MAGNITUDE_BINS,
    SIGNED_OPS,
    AutoAugmentDraw,
    apply_autoaugment,
    apply_op,
    autoaugment_cifar10,
    cutout,
    draw_autoaugment,
    op_magnitude,
)
from advtrain.data.loaders import _VIEW2_STREAM, _generator, derive_seed
from advtrain.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int, h: int = 32, c: int = 3, seed: int = 0, low: int = 0) -> torch.Tensor:
    """Random uint8 (N, C, H, W) images with values in [low, 255]."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(low, 256, (n, c, h, h), dtype=np.uint8))


def _smooth_images(n: int, seed: int = 0) -> torch.Tensor:
    """Natural-looking 32x32 images (smooth gradients + noise): histograms and edges matter."""
    g = _gen(seed)
    ramp = torch.linspace(0, 1, 32)
    base = ramp[None, None, :, None] * torch.rand(n, 3, 1, 1, generator=g) * 200
    base = base + ramp[None, None, None, :] * torch.rand(n, 3, 1, 1, generator=g) * 50
    noise = torch.rand(n, 3, 32, 32, generator=g) * 10
    return (base + noise).round().clamp(0, 255).to(torch.uint8)


def _seed_for(
    sub_policy: int, fires: tuple[bool, bool] = (True, True)
) -> tuple[int, AutoAugmentDraw]:
    """A seed whose single-sample draw picks ``sub_policy`` with these steps firing."""
    want = torch.tensor(fires)
    for seed in range(20000):
        draw = draw_autoaugment(1, generator=_gen(seed))
        if int(draw.policy[0]) == sub_policy and torch.equal(draw.apply[0], want):
            return seed, draw
    raise AssertionError(f"no seed below 20000 draws sub-policy {sub_policy} with {fires}")


_TV_AA = AutoAugment(AutoAugmentPolicy.CIFAR10, fill=128)

# --------------------------------------------------------------------------------------------------
# the policy table and magnitudes
# --------------------------------------------------------------------------------------------------


def test_policy_table_is_torchvisions_cifar10() -> None:
    reference = _TV_AA._get_policies(AutoAugmentPolicy.CIFAR10)
    assert len(CIFAR10_POLICY) == len(reference) == 25
    for ours, theirs in zip(CIFAR10_POLICY, reference):
        assert [(s.op, s.prob, s.magnitude_bin) for s in ours] == [tuple(t) for t in theirs]


@pytest.mark.parametrize("size", [(32, 32), (28, 28), (24, 40)])
def test_magnitudes_and_signs_are_torchvisions(size: tuple[int, int]) -> None:
    h, w = size
    space = AutoAugment._AUGMENTATION_SPACE
    for sub in CIFAR10_POLICY:
        for step in sub:
            fn, signed = space[step.op]
            assert (step.op in SIGNED_OPS) == signed, step.op
            bins = fn(NUM_MAGNITUDE_BINS, h, w)
            expected = 0.0 if bins is None else float(bins[step.magnitude_bin])
            assert op_magnitude(step.op, step.magnitude_bin, h, w) == expected, step
    # Closed forms at 32x32: 10 bins spanning the published ranges.
    assert op_magnitude("Rotate", 2, 32, 32) == pytest.approx(30 * 2 / 9)
    assert op_magnitude("TranslateX", 9, 32, 32) == pytest.approx(150 / 331 * 32, rel=1e-6)
    assert op_magnitude("ShearY", 8, 32, 32) == pytest.approx(0.3 * 8 / 9)
    assert op_magnitude("Brightness", 7, 32, 32) == pytest.approx(0.7)
    assert op_magnitude("Solarize", 2, 32, 32) == pytest.approx(7 / 9)
    assert [op_magnitude("Posterize", b, 32, 32) for b in range(10)] == [
        8,
        8,
        7,
        7,
        6,
        6,
        5,
        5,
        4,
        4,
    ]
    with pytest.raises(ValueError, match="magnitude bin"):
        op_magnitude("Rotate", 10, 32, 32)
    with pytest.raises(ValueError, match="unknown AutoAugment op"):
        op_magnitude("Cutout", 1, 32, 32)


# --------------------------------------------------------------------------------------------------
# single ops
# --------------------------------------------------------------------------------------------------

_ALL_STEPS = sorted(
    {(s.op, s.magnitude_bin) for sub in CIFAR10_POLICY for s in sub},
    key=lambda t: (t[0], t[1] or 0),
)


@pytest.mark.parametrize(("op", "mbin"), _ALL_STEPS)
def test_each_op_matches_torchvision_and_keeps_dtype_shape(op: str, mbin: int | None) -> None:
    x = torch.cat([_smooth_images(6, seed=1), _images(6, seed=2)])
    signs = (1, -1) if op in SIGNED_OPS else (1,)
    for sign in signs:
        mag = sign * op_magnitude(op, mbin, 32, 32)
        out = apply_op(x, op, mag)
        assert out.dtype == torch.uint8 and out.shape == x.shape
        assert int(out.min()) >= 0 and int(out.max()) <= 255
        # torchvision's own per-image op dispatch (what AutoAugment.forward calls), image by image
        ref = torch.stack(
            [
                _TV_AA._apply_image_or_video_transform(
                    img, op, mag, interpolation=_TV_AA.interpolation, fill=_TV_AA._fill
                )
                for img in x
            ]
        )
        assert torch.equal(out, ref), (op, mbin, sign)
        if op == "Color" and mbin == 0:  # saturation factor 1 + 0: the identity
            assert torch.equal(out, x)
        else:  # every other op of the table visibly changes these images
            assert not torch.equal(out, x), (op, mbin, sign)


def test_translate_shifts_and_fills_with_grey() -> None:
    x = _images(4, seed=3)
    px = int(op_magnitude("TranslateX", 9, 32, 32))
    assert px == 14  # int(14.50)
    out = apply_op(x, "TranslateX", op_magnitude("TranslateX", 9, 32, 32))
    assert torch.equal(out[..., px:], x[..., :-px]) and bool((out[..., :px] == 128).all())
    out = apply_op(x, "TranslateY", -op_magnitude("TranslateY", 9, 32, 32), fill=7)
    assert torch.equal(out[..., :-px, :], x[..., px:, :]) and bool((out[..., -px:, :] == 7).all())


def test_ops_on_grayscale_images() -> None:
    x = _images(5, h=28, c=1, seed=4)
    for sub in CIFAR10_POLICY:
        for step in sub:
            out = apply_op(x, step.op, op_magnitude(step.op, step.magnitude_bin, 28, 28))
            assert out.shape == x.shape and out.dtype == torch.uint8
    out = autoaugment_cifar10(x, generator=_gen(0))
    assert out.shape == x.shape and out.dtype == torch.uint8


# --------------------------------------------------------------------------------------------------
# the policy on batches
# --------------------------------------------------------------------------------------------------


def test_autoaugment_is_deterministic_given_the_generator() -> None:
    x = _smooth_images(64, seed=5)
    keep = x.clone()
    a = autoaugment_cifar10(x, generator=_gen(11))
    b = autoaugment_cifar10(x, generator=_gen(11))
    c = autoaugment_cifar10(x, generator=_gen(12))
    assert torch.equal(x, keep)  # the input is not modified
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    with torch.random.fork_rng():  # the global RNG plays no part
        torch.manual_seed(0)
        d = autoaugment_cifar10(x, generator=_gen(11))
    assert torch.equal(a, d)
    # the whole thing is draw + apply, nothing else is random
    assert torch.equal(a, apply_autoaugment(x, draw_autoaugment(64, generator=_gen(11))))


def test_draws_follow_the_policy_probabilities() -> None:
    n = 100_000
    draw = draw_autoaugment(n, generator=_gen(3))
    counts = torch.bincount(draw.policy, minlength=25).double()
    assert counts.numel() == 25
    assert float((counts / n - 1 / 25).abs().max()) < 4 * math.sqrt(1 / 25 * 24 / 25 / n)
    for k, sub in enumerate(CIFAR10_POLICY):
        rows = draw.policy == k
        for s, step in enumerate(sub):
            rate = draw.apply[rows, s].double().mean().item()
            sd = math.sqrt(max(step.prob * (1 - step.prob), 1e-12) / int(rows.sum()))
            assert abs(rate - step.prob) <= 4 * sd + 1e-12, (k, s, rate, step.prob)
    assert abs(draw.negate.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / (2 * n))


def test_batch_result_equals_sample_by_sample() -> None:
    """Grouping samples by op must not change any sample: compare with one call per sample."""
    x = _smooth_images(96, seed=6)
    draw = draw_autoaugment(96, generator=_gen(21))
    batch = apply_autoaugment(x, draw)
    for i in range(96):
        one = AutoAugmentDraw(draw.policy[i : i + 1], draw.apply[i : i + 1], draw.negate[i : i + 1])
        assert torch.equal(batch[i : i + 1], apply_autoaugment(x[i : i + 1], one)), i
    fired = draw.apply.any(1)
    changed = (batch != x).flatten(1).any(1)
    assert not bool((changed & ~fired).any())  # no step fired -> untouched
    assert int(changed.sum()) > 48


def _sign(draw: AutoAugmentDraw, step: int) -> int:
    return -1 if bool(draw.negate[0, step]) else 1


def test_forced_sub_policy_rotate_then_translate_x() -> None:
    seed, draw = _seed_for(1)  # (Rotate 0.7 bin 2, TranslateX 0.3 bin 9)
    x = _smooth_images(1, seed=7)
    got = autoaugment_cifar10(x, generator=_gen(seed))
    angle = _sign(draw, 0) * float(torch.linspace(0.0, 30.0, 10)[2])
    ref = TF.rotate(x, angle=angle, fill=128)
    ref = TF.affine(
        ref, angle=0.0, translate=[_sign(draw, 1) * 14, 0], scale=1.0, shear=[0.0, 0.0], fill=128
    )
    assert torch.equal(got, ref)


def test_forced_sub_policy_shear_y_then_translate_y() -> None:
    seed, draw = _seed_for(3)  # (ShearY 0.5 bin 8, TranslateY 0.7 bin 9)
    x = _smooth_images(1, seed=8)
    got = autoaugment_cifar10(x, generator=_gen(seed))
    shear = math.degrees(math.atan(_sign(draw, 0) * float(torch.linspace(0.0, 0.3, 10)[8])))
    ref = TF.affine(
        x, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, shear], fill=128, center=[0, 0]
    )
    ref = TF.affine(
        ref, angle=0.0, translate=[0, _sign(draw, 1) * 14], scale=1.0, shear=[0.0, 0.0], fill=128
    )
    assert torch.equal(got, ref)


def test_forced_sub_policy_color_then_brightness() -> None:
    seed, draw = _seed_for(6)  # (Color 0.4 bin 3, Brightness 0.6 bin 7)
    x = _smooth_images(1, seed=9)
    got = autoaugment_cifar10(x, generator=_gen(seed))
    c = float(torch.linspace(0.0, 0.9, 10)[3])
    b = float(torch.linspace(0.0, 0.9, 10)[7])
    ref = TF.adjust_saturation(x, saturation_factor=1.0 + _sign(draw, 0) * c)
    ref = TF.adjust_brightness(ref, brightness_factor=1.0 + _sign(draw, 1) * b)
    assert torch.equal(got, ref)


def test_forced_sub_policy_autocontrast_then_solarize_and_single_steps() -> None:
    x = _smooth_images(1, seed=10)
    seed, _ = _seed_for(22)  # (AutoContrast 0.9, Solarize 0.8 bin 3)
    got = autoaugment_cifar10(x, generator=_gen(seed))
    thr = 255.0 * float(torch.linspace(1.0, 0.0, 10)[3])
    assert torch.equal(got, TF.solarize(TF.autocontrast(x), threshold=thr))
    seed, _ = _seed_for(5, (False, True))  # ShearY skipped, Posterize 0.3 bin 7 -> 5 bits
    assert torch.equal(autoaugment_cifar10(x, generator=_gen(seed)), TF.posterize(x, bits=5))
    seed, _ = _seed_for(4, (False, False))  # nothing fires: the image is returned unchanged
    assert torch.equal(autoaugment_cifar10(x, generator=_gen(seed)), x)


def test_autoaugment_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        autoaugment_cifar10(torch.zeros(2, 3, 8, 8), generator=_gen(0))
    with pytest.raises(ValueError, match="1- or 3-channel"):
        autoaugment_cifar10(_images(2, h=8, c=4), generator=_gen(0))
    with pytest.raises(ValueError, match="fill"):
        autoaugment_cifar10(_images(2, h=8), generator=_gen(0), fill=300)


# --------------------------------------------------------------------------------------------------
# cutout
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "h"), [(16, 32), (5, 32), (8, 10), (80, 32)])
def test_cutout_zeros_exactly_the_clipped_square(size: int, h: int) -> None:
    b = 300
    x = _images(b, h=h, seed=12, low=1)  # no zero pixels before cutout
    keep = x.clone()
    out = cutout(x, size, generator=_gen(4))
    assert torch.equal(x, keep) and out.dtype == torch.uint8 and out.shape == x.shape
    # the centres come first from the generator: rows then columns
    g = _gen(4)
    cy = torch.randint(0, h, (b,), generator=g)
    cx = torch.randint(0, h, (b,), generator=g)
    zero = out == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # same square in every channel
    assert torch.equal(out[~zero], x[~zero])  # everything else untouched
    for i in range(b):
        top, left = int(cy[i]) - size // 2, int(cx[i]) - size // 2
        r0, r1 = max(top, 0), min(top + size, h)
        c0, c1 = max(left, 0), min(left + size, h)
        expected = torch.zeros(h, h, dtype=torch.bool)
        expected[r0:r1, c0:c1] = True
        assert torch.equal(zero[i, 0], expected), i
    areas = zero[:, 0].flatten(1).sum(1)
    if size < h:
        assert int(areas.max()) == size * size  # interior squares are whole
        assert int(areas.min()) < size * size  # border squares are clipped
    else:
        assert bool((areas == h * h).all())


def test_cutout_size_zero_and_errors() -> None:
    x = _images(3, h=8)
    assert torch.equal(cutout(x, 0, generator=_gen(0)), x)
    with pytest.raises(ValueError, match="cutout size"):
        cutout(x, -1, generator=_gen(0))


# --------------------------------------------------------------------------------------------------
# the two-view loader
# --------------------------------------------------------------------------------------------------


def _toy(n: int, h: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return _images(n, h=h, seed=seed), torch.arange(n, dtype=torch.int64)


def _assert_same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_two_view_batches_are_basic_then_autoaugment_views() -> None:
    x, y = _toy(45)
    kw = dict(batch_size=8, seed=5)
    two = TrainLoader(x, y, two_view=True, cutout=6, **kw)
    one = TrainLoader(x, y, **kw)
    assert len(two) == len(one) == 6
    for epoch in (0, 3):
        two.set_epoch(epoch)
        one.set_epoch(epoch)
        for index, ((xt, yt), (xo, yo)) in enumerate(zip(two, one)):
            b = yo.numel()  # 8, and 5 for the short last batch
            assert xt.shape == (2 * b, 3, 16, 16) and xt.dtype == torch.float32
            assert torch.equal(yt[:b], yo) and torch.equal(yt[b:], yt[:b])
            assert torch.equal(xt[:b], xo)  # the basic half is the one-view batch
            # the second half: crop+flip, AutoAugment, Cutout of the same raw images, drawn from the
            # (seed, epoch, index, rank) generator of the second stream
            gen = _generator(derive_seed(_VIEW2_STREAM, 5, epoch, index, 0))
            view = random_crop_flip(x[yo], padding=4, flip=True, generator=gen)
            view = cutout(autoaugment_cifar10(view, generator=gen, fill=128), 6, generator=gen)
            assert torch.equal(xt[b:], view.float() / 255)
            assert not torch.equal(xt[b:], xt[:b])


def test_two_view_without_crop_flip_augments_only_the_second_view() -> None:
    x, y = _toy(16)
    xt, yt = next(iter(TrainLoader(x, y, batch_size=16, augment=False, two_view=True, seed=1)))
    assert torch.equal(xt[:16], x[yt[:16]].float() / 255)
    gen = _generator(derive_seed(_VIEW2_STREAM, 1, 0, 0, 0))
    assert torch.equal(xt[16:], autoaugment_cifar10(x[yt[:16]], generator=gen).float() / 255)


def test_two_view_resume_mid_epoch_is_bit_exact(tmp_path: Path) -> None:
    x, y = _toy(60)
    aux_path = tmp_path / "aux.npz"
    rng = np.random.default_rng(9)
    np.savez(
        aux_path,
        image=rng.integers(0, 256, (300, 16, 16, 3), dtype=np.uint8),
        label=np.arange(300) + 1000,
    )
    kw = dict(batch_size=10, seed=7, aux=AuxDataset(aux_path), aux_fraction=0.3, two_view=True)
    ref = TrainLoader(x, y, **kw)
    ref.set_epoch(2)
    it = iter(ref)
    head = [next(it) for _ in range(4)]
    state = ref.state_dict()
    tail = list(it)
    assert len(head) + len(tail) == len(ref) == 9  # ceil(60 / 7) batches, rows doubled
    for xb, yb in head + tail:
        n = yb.numel() // 2
        assert xb.shape[0] == 2 * n and torch.equal(yb[n:], yb[:n])
        assert int((yb[:n] >= 1000).sum()) == 3  # aux rows get both views too
    resumed = TrainLoader(x, y, **{**kw, "seed": 0})
    resumed.load_state_dict(state)
    resumed.set_epoch(2)
    _assert_same(tail, list(resumed))
    # and the basic half of every batch is still the one-view aux loader's batch
    plain = TrainLoader(x, y, **{**kw, "two_view": False})
    plain.set_epoch(2)
    for (xt, yt), (xo, yo) in zip(head + tail, plain):
        assert torch.equal(xt[: yo.numel()], xo) and torch.equal(yt[: yo.numel()], yo)


def test_two_view_config_errors() -> None:
    x, y = _toy(20)
    with pytest.raises(ConfigError, match="two_view=true or cutout=0"):
        TrainLoader(x, y, batch_size=4, cutout=16)
    with pytest.raises(ConfigError, match="cutout"):
        TrainLoader(x, y, batch_size=4, two_view=True, cutout=-1)
    with pytest.raises(DataError, match="1- or 3-channel"):
        TrainLoader(_images(20, h=8, c=4), y, batch_size=4, two_view=True)
