"""CIFAR-10 AutoAugment and Cutout on uint8 batches, with every random draw from a given generator.

The GKL two-view recipe (docs/gkl.md §8) feeds each image twice: a basic crop+flip view and
an AutoAugment view. torchvision's ``AutoAugment`` transform would do the second, but it draws from
the *global* RNG one image at a time, which would make loader batches depend on whatever else
touched that RNG and break the exact resume of ``TrainLoader``. So the policy is re-expressed here:

* the sub-policy table and the magnitude bins are those of torchvision's
  ``AutoAugmentPolicy.CIFAR10`` (25 sub-policies of two ``(op, probability, magnitude bin)``
  steps, 10 bins), and every op is the same ``torchvision.transforms.v2.functional`` call with the
  same arguments that torchvision makes, so a sample that draws sub-policy ``k`` gets exactly what
  torchvision would give it;
* the draws (sub-policy, whether each step fires, the sign of signed magnitudes) are made for the
  whole batch at once from an explicit ``torch.Generator``;
* samples that received the same ``(op, signed magnitude)`` at a step are transformed together by
  one functional call: there are at most a few dozen such groups per step whatever the batch size,
  instead of one call per sample. The functional ops treat a batch as independent images (per-image
  histograms, means and min/max), so grouping does not change any result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "CIFAR10_POLICY",
    "NUM_MAGNITUDE_BINS",
    "OPS",
    "SIGNED_OPS",
    "AutoAugmentDraw",
    "PolicyStep",
    "apply_autoaugment",
    "apply_op",
    "autoaugment_cifar10",
    "cutout",
    "draw_autoaugment",
    "op_magnitude",
]

NUM_MAGNITUDE_BINS = 10
"""AutoAugment discretises every magnitude range into 10 bins (index 0..9)."""


@dataclass(frozen=True)
class PolicyStep:
    """One step of a sub-policy: apply ``op`` with probability ``prob`` at magnitude bin ``magnitude_bin``.

    ``magnitude_bin`` is ``None`` for the ops without a magnitude (AutoContrast, Equalize, Invert).
    """

    op: str
    prob: float
    magnitude_bin: int | None


def _sub(
    a: tuple[str, float, int | None], b: tuple[str, float, int | None]
) -> tuple[PolicyStep, ...]:
    return (PolicyStep(*a), PolicyStep(*b))


CIFAR10_POLICY: tuple[tuple[PolicyStep, ...], ...] = (
    _sub(("Invert", 0.1, None), ("Contrast", 0.2, 6)),
    _sub(("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    _sub(("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    _sub(("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    _sub(("AutoContrast", 0.5, None), ("Equalize", 0.9, None)),
    _sub(("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    _sub(("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    _sub(("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    _sub(("Equalize", 0.6, None), ("Equalize", 0.5, None)),
    _sub(("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    _sub(("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    _sub(("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    _sub(("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    _sub(("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    _sub(("Solarize", 0.5, 2), ("Invert", 0.0, None)),
    _sub(("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    _sub(("Equalize", 0.2, None), ("Equalize", 0.6, None)),
    _sub(("Color", 0.9, 9), ("Equalize", 0.6, None)),
    _sub(("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)),
    _sub(("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    _sub(("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)),
    _sub(("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    _sub(("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)),
    _sub(("Equalize", 0.8, None), ("Invert", 0.1, None)),
    _sub(("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
)
"""torchvision's ``AutoAugmentPolicy.CIFAR10`` table (Cubuk et al. 2019, appendix)."""

SIGNED_OPS = frozenset(
    {
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
        "Brightness",
        "Color",
        "Contrast",
        "Sharpness",
    }
)
"""Ops whose magnitude gets a random sign (a fair coin per application)."""

_MAGNITUDE_FREE = frozenset({"AutoContrast", "Equalize", "Invert"})
_RANGES = {  # op -> (value at bin 0, value at the last bin); translate is a fraction of the size
    "ShearX": (0.0, 0.3),
    "ShearY": (0.0, 0.3),
    "TranslateX": (0.0, 150.0 / 331.0),
    "TranslateY": (0.0, 150.0 / 331.0),
    "Rotate": (0.0, 30.0),
    "Brightness": (0.0, 0.9),
    "Color": (0.0, 0.9),
    "Contrast": (0.0, 0.9),
    "Sharpness": (0.0, 0.9),
    "Solarize": (1.0, 0.0),
}
OPS = frozenset(_RANGES) | _MAGNITUDE_FREE | {"Posterize"}
"""Every op name :func:`apply_op` knows (the CIFAR-10 table uses all but ShearX)."""


def op_magnitude(op: str, magnitude_bin: int | None, height: int, width: int) -> float:
    """The unsigned magnitude of ``op`` at ``magnitude_bin`` for an ``height x width`` image.

    Computed as torchvision does (a float32 ``linspace`` over 10 bins, read back as a Python float)
    so that thresholds and factors agree with it to the last bit: e.g. Solarize bin 2 is a
    threshold of ``255 * float32(7/9)``, not of ``255 * 7/9``. Posterize bins map to bits
    ``round(8 - bin * 4/9)`` (8 down to 4). Magnitude-free ops return 0.
    """
    if op not in OPS:
        raise ValueError(f"unknown AutoAugment op {op!r}; expected one of {sorted(OPS)}")
    if op in _MAGNITUDE_FREE:
        return 0.0
    if magnitude_bin is None or not 0 <= magnitude_bin < NUM_MAGNITUDE_BINS:
        raise ValueError(
            f"{op} needs a magnitude bin in [0, {NUM_MAGNITUDE_BINS}), got {magnitude_bin!r}"
        )
    if op == "Posterize":
        bits = 8 - torch.arange(NUM_MAGNITUDE_BINS) / ((NUM_MAGNITUDE_BINS - 1) / 4)
        return float(bits.round().int()[magnitude_bin])
    lo, hi = _RANGES[op]
    if op == "TranslateX":
        hi *= width
    elif op == "TranslateY":
        hi *= height
    return float(torch.linspace(lo, hi, NUM_MAGNITUDE_BINS)[magnitude_bin])


def _check_uint8_batch(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else x
        raise ValueError(f"{what} expects a uint8 (B, C, H, W) tensor, got {desc}")


def _check_fill(fill: float) -> float:
    if isinstance(fill, bool) or not isinstance(fill, (int, float)) or not 0 <= fill <= 255:
        raise ValueError(f"fill must be a pixel value in [0, 255], got {fill!r}")
    return float(fill)


def apply_op(x: torch.Tensor, op: str, magnitude: float, *, fill: float = 128) -> torch.Tensor:
    """Apply one AutoAugment op with a (signed) ``magnitude`` to every image of ``x``.

    The argument mapping is torchvision's: shears are ``atan(magnitude)`` degrees about the
    top-left corner (the original AutoAugment's ``(1, m, 0, 0, 1, 0)`` affine), translations are
    ``int(magnitude)`` pixels, Brightness/Color/Contrast/Sharpness use factor ``1 + magnitude``,
    Posterize keeps ``int(magnitude)`` bits, Solarize inverts pixels ``>= 255 * magnitude``.
    Geometric ops use nearest interpolation and paint uncovered pixels with ``fill``.
    """
    # Imported here, not at module level: `import torchvision` pulls in torch._dynamo (about 2.5 s), which every
    # command would pay at start-up although only the AutoAugment recipes use these ops.
    import torchvision.transforms.v2.functional as TF  # noqa: N812

    _check_uint8_batch(x, "apply_op")
    fill_ = _check_fill(fill)
    if op == "ShearX" or op == "ShearY":
        deg = math.degrees(math.atan(magnitude))
        shear = [deg, 0.0] if op == "ShearX" else [0.0, deg]
        return TF.affine(
            x, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, fill=fill_, center=[0, 0]
        )
    if op == "TranslateX" or op == "TranslateY":
        shift = [int(magnitude), 0] if op == "TranslateX" else [0, int(magnitude)]
        return TF.affine(x, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], fill=fill_)
    if op == "Rotate":
        return TF.rotate(x, angle=magnitude, fill=fill_)
    if op == "Brightness":
        return TF.adjust_brightness(x, brightness_factor=1.0 + magnitude)
    if op == "Color":
        return TF.adjust_saturation(x, saturation_factor=1.0 + magnitude)
    if op == "Contrast":
        return TF.adjust_contrast(x, contrast_factor=1.0 + magnitude)
    if op == "Sharpness":
        return TF.adjust_sharpness(x, sharpness_factor=1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize(x, bits=int(magnitude))
    if op == "Solarize":
        return TF.solarize(x, threshold=255.0 * magnitude)
    if op == "AutoContrast":
        return TF.autocontrast(x)
    if op == "Equalize":
        return TF.equalize(x)
    if op == "Invert":
        return TF.invert(x)
    raise ValueError(f"unknown AutoAugment op {op!r}; expected one of {sorted(OPS)}")


@dataclass(frozen=True)
class AutoAugmentDraw:
    """The random decisions for one batch, all on the CPU.

    ``policy`` (B,) int64: the sub-policy of each sample. ``apply`` (B, S) bool: whether step ``s``
    fires (it does with the step's probability). ``negate`` (B, S) bool: whether a signed
    magnitude is negated at step ``s`` (a fair coin; ignored for unsigned ops).
    """

    policy: torch.Tensor
    apply: torch.Tensor
    negate: torch.Tensor


def draw_autoaugment(
    batch_size: int,
    *,
    generator: torch.Generator,
    policy: Sequence[Sequence[PolicyStep]] = CIFAR10_POLICY,
) -> AutoAugmentDraw:
    """Draw the sub-policies and coins of a batch from ``generator``.

    Draws, in this order, on the generator's device: sub-policy indices ``randint(len(policy),
    (B,))``, step uniforms ``rand(B, S)``, sign uniforms ``rand(B, S)``. A step fires when its
    uniform is ``< prob`` (so probability 0 never fires and 1 always does) and a sign is negative
    when its uniform is ``< 0.5``. All uniforms are drawn even for steps that do not fire, so the
    number of draws (and hence whatever is drawn next from the same generator) does not depend on
    the outcome.
    """
    steps = len(policy[0])
    gdev = generator.device
    idx = torch.randint(len(policy), (batch_size,), generator=generator, device=gdev).cpu()
    u_apply = torch.rand(batch_size, steps, generator=generator, device=gdev).cpu()
    u_sign = torch.rand(batch_size, steps, generator=generator, device=gdev).cpu()
    probs = torch.tensor([[step.prob for step in sub] for sub in policy], dtype=u_apply.dtype)
    return AutoAugmentDraw(policy=idx, apply=u_apply < probs[idx], negate=u_sign < 0.5)


def apply_autoaugment(
    x: torch.Tensor,
    draw: AutoAugmentDraw,
    *,
    fill: float = 128,
    policy: Sequence[Sequence[PolicyStep]] = CIFAR10_POLICY,
) -> torch.Tensor:
    """Apply the decisions in ``draw`` to ``x`` (uint8 (B, C, H, W), C in {1, 3}); ``x`` is kept.

    Step by step, samples are grouped by ``(op, signed magnitude)`` and each group goes through one
    :func:`apply_op` call, so the cost grows with the number of distinct groups (at most ~50 per
    step for CIFAR-10's table), not with the batch size.
    """
    _check_uint8_batch(x, "apply_autoaugment")
    b, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"AutoAugment needs 1- or 3-channel images, got {c} channels")
    if draw.policy.shape != (b,):
        raise ValueError(f"the draw is for {draw.policy.shape[0]} samples but x has {b}")
    fill_ = _check_fill(fill)
    out = x.clone()
    chosen = draw.policy.tolist()
    for s in range(draw.apply.shape[1]):
        fires, negs = draw.apply[:, s].tolist(), draw.negate[:, s].tolist()
        groups: dict[tuple[str, float], list[int]] = {}
        for i in range(b):
            if not fires[i]:
                continue
            step = policy[chosen[i]][s]
            mag = op_magnitude(step.op, step.magnitude_bin, h, w)
            if step.op in SIGNED_OPS and negs[i]:
                mag = -mag
            groups.setdefault((step.op, mag), []).append(i)
        for (op, mag), members in groups.items():
            rows = torch.tensor(members, device=x.device)
            out[rows] = apply_op(out.index_select(0, rows), op, mag, fill=fill_)
    return out


def autoaugment_cifar10(
    x: torch.Tensor, *, generator: torch.Generator, fill: float = 128
) -> torch.Tensor:
    """CIFAR-10 AutoAugment on a uint8 batch: each sample runs one random sub-policy.

    Equivalent in distribution to torchvision's ``AutoAugment(AutoAugmentPolicy.CIFAR10,
    fill=fill)`` applied per image (before ``ToTensor``), but reproducible from ``generator``
    alone: same generator state and input, same output. Returns a new uint8 tensor.
    """
    _check_uint8_batch(x, "autoaugment_cifar10")
    draw = draw_autoaugment(int(x.shape[0]), generator=generator)
    return apply_autoaugment(x, draw, fill=fill)


def cutout(x: torch.Tensor, size: int, *, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size x size`` square per sample (DeVries & Taylor 2017), clipped at the border.

    The centre ``(cy, cx)`` is uniform over all pixels (drawn in this order, (B,) each, from
    ``generator``), so squares near the border are only partly inside the image, as in the
    original. The square covers rows ``[cy - size // 2, cy - size // 2 + size)`` and likewise for
    columns: for even sizes (16 in the GKL recipe) this is the original's ``[cy - size/2, cy +
    size/2)``; for odd sizes it is a full ``size``-wide square, where the original would lose a row
    and a column. ``size=0`` returns a copy. Returns a new tensor; ``x`` is kept.
    """
    _check_uint8_batch(x, "cutout")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"cutout size must be an integer >= 0, got {size!r}")
    b, _, h, w = x.shape
    gdev = generator.device
    cy = torch.randint(0, h, (b,), generator=generator, device=gdev).to(x.device)
    cx = torch.randint(0, w, (b,), generator=generator, device=gdev).to(x.device)
    if size == 0:
        return x.clone()
    top, left = cy - size // 2, cx - size // 2
    r = torch.arange(h, device=x.device)
    col = torch.arange(w, device=x.device)
    in_rows = (r >= top[:, None]) & (r < top[:, None] + size)  # (B, H)
    in_cols = (col >= left[:, None]) & (col < left[:, None] + size)  # (B, W)
    mask = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
    return x.masked_fill(mask[:, None], 0)
