"""The one place that checks a config value: numbers, fractions, counts, probabilities and attack budgets.

Why one module: the same value (an eps, a step count) reaches the code from a YAML file, a command-line override,
a notebook call or a checkpoint's stored config. Checked in several places it was checked several ways (three
different eps thresholds, four integer checks); here each rule and its message exist once, and the schemas
(:mod:`advtrain.config.schema`), the attacks and the evaluation all call these functions.

This module is a leaf (it imports only :mod:`advtrain.errors`), so the library's lowest layers can use it.

Images live in ``[0, 1]``, so budgets are fractions of the full range: ``8/255``, not ``8``. A config may write
them as ``${frac:8/255}`` or as the plain string ``8/255``; the library functions take numbers.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

from advtrain.errors import ConfigError

__all__ = [
    "L2_EPS_MIN",
    "L2_PIXEL_THRESHOLD",
    "LINF_EPS_MAX",
    "NORMS",
    "check_eps",
    "check_step_size",
    "choice",
    "count",
    "int_at_least",
    "non_negative",
    "number",
    "parse_fraction",
    "positive",
    "probability",
]

#: Canonical norm names, keyed by the lower-case spellings we accept.
NORMS: dict[str, str] = {
    "linf": "Linf",
    "inf": "Linf",
    "l2": "L2",
    "2": "L2",
    "l1": "L1",
    "1": "L1",
}

#: A config's Linf budget above this is almost surely written for the L2 norm: Linf budgets run from 8/255
#: (CIFAR) to 0.3 (MNIST, the largest standard value).
LINF_EPS_MAX = 0.3
#: A config's L2 budget below this is almost surely an Linf value: L2 budgets run from 0.5 (CIFAR) to 3
#: (ImageNet), and an L2 radius below 0.05 moves a 32x32x3 image by less than 1/255 per pixel on average.
L2_EPS_MIN = 0.05
#: An L2 budget at or above this reads as pixel units (0..255). Real L2 budgets on [0, 1] images are a few
#: units at most (CIFAR 0.5, MNIST 2.0, ImageNet 3.0), pixel-unit ones 255x larger (0.5 -> 127.5); a rule
#: "integer and > 1" would reject the standard MNIST and ImageNet budgets 2.0 and 3.0.
L2_PIXEL_THRESHOLD = 16.0


def parse_fraction(value: object) -> float:
    """``"8/255"`` -> 0.0313...: the ``${frac:...}`` resolver, and how a plain fraction string is read."""
    try:
        return float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"cannot read {value!r} as a fraction (write e.g. 8/255)") from None


def _scalar(value: object) -> object:
    """A one-element tensor or numpy scalar as a Python number (duck-typed: no torch import here)."""
    item = getattr(value, "item", None)
    numel = getattr(value, "numel", None)
    if callable(item) and (not callable(numel) or numel() == 1):
        if "bool" not in str(getattr(value, "dtype", "")):
            try:
                return item()
            except (TypeError, ValueError, RuntimeError):
                return value
    return value


def number(name: str, value: object, *, fractions: bool = False) -> float:
    """``float(value)`` for a real, finite number; a one-line :class:`ConfigError` otherwise.

    Booleans and (unless ``fractions``) strings fail loudly instead of being coerced into a nonsense budget.
    With ``fractions`` a string such as ``"8/255"`` or ``"0.5"`` is read exactly: that is how config files
    write budgets.
    """
    value = _scalar(value)
    if fractions and isinstance(value, str):
        try:
            value = float(Fraction(value.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"{name}={value!r} is not a number; write e.g. 8/255 or 0.5"
            ) from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(
            f"{name}={value!r} must be a number, not {type(value).__name__} "
            "(e.g. 0.0313725 for 8/255)"
        )
    result = float(value)
    if not math.isfinite(result):
        raise ConfigError(f"{name}={result} must be a finite number")
    return result


def positive(name: str, value: object, *, fractions: bool = False, hint: str = "") -> float:
    """A finite number > 0 (learning rates, temperatures, timeouts)."""
    result = number(name, value, fractions=fractions)
    if result <= 0:
        raise ConfigError(f"{name}={result:g} must be a number > 0{hint}")
    return result


def non_negative(name: str, value: object) -> float:
    """A finite number >= 0 (weight decay, momentum, tolerances)."""
    result = number(name, value)
    if result < 0:
        raise ConfigError(f"{name}={result:g} must be >= 0")
    return result


def _integral(value: object) -> int | None:
    """``value`` as an int when it is one (integral floats included); None when it is not an integer."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    return int(value) if math.isfinite(float(value)) and float(value).is_integer() else None


def count(name: str, value: object) -> int:
    """An attack's loop count (steps, restarts): an integer >= 1; integral floats (10.0) are accepted."""
    result = _integral(value)
    if result is None:
        raise ConfigError(f"{name}={value!r} must be an integer >= 1")
    if result < 1:
        raise ConfigError(f"{name}={result} must be >= 1 (to run no attack, do not call one)")
    return result


def int_at_least(name: str, value: object, minimum: int, *, allow_none: bool = False) -> int | None:
    """A config integer >= ``minimum`` (epochs, example counts); ``None`` only with ``allow_none``.

    Floats are refused even when integral: a config integer written as 2.5 or 1e3 is a typo, not a count.
    NumPy integers are integers (an index read from an array).
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{name} must be an integer >= {minimum}{extra}, got {value!r}")
    return int(value)


def probability(name: str, value: object, *, below_one: bool = False, hint: str = "") -> float:
    """A share in ``[0, 1]`` (or ``[0, 1)`` with ``below_one``): mixing fractions, decay rates."""
    result = _scalar(value)
    upper = ")" if below_one else "]"
    ok = isinstance(result, numbers.Real) and not isinstance(result, bool)
    if ok:
        result = float(result)  # type: ignore[arg-type]
        ok = 0.0 <= result < 1.0 if below_one else 0.0 <= result <= 1.0
    if not ok:
        raise ConfigError(f"{name}={value!r} must be in [0, 1{upper}{': ' + hint if hint else ''}")
    return float(result)  # type: ignore[arg-type]


def choice(name: str, value: object, options: Sequence[object], *, hint: str = "") -> object:
    """``value`` when it is one of ``options``; else a one-line error listing them."""
    if value not in options:
        listed = " or ".join(", ".join(str(o) for o in options).rsplit(", ", 1))
        raise ConfigError(f"{name}={value!r}: use {listed}{hint}")
    return value


def _pixel_hint(name: str, value: float) -> str:
    """The fix for a budget written in pixel units (0..255) instead of [0, 1] units."""
    return f"{name}={value:g} looks like a pixel count; write {value:g}/255 (= {value / 255:.6f})"


def check_eps(
    norm: str,
    eps: object,
    input_shape: Sequence[int] | None = None,
    *,
    name: str = "eps",
    typical: bool = False,
    other_norm: str | None = None,
) -> float:
    """The validated budget ``eps`` of a ``norm`` ball (Linf, L2 or L1) on images in ``[0, 1]``.

    Always refused (library and config alike): a non-number, eps <= 0, a pixel count (Linf above 1, L2 at
    or above :data:`L2_PIXEL_THRESHOLD`), an L2 radius reaching the cube's diameter ``sqrt(d)`` or an L1
    radius reaching ``d`` when ``input_shape`` is known. Such budgets cover every image and report 0 %
    robust accuracy without any hint why.

    ``typical`` (config values) also refuses budgets written for the other norm: Linf above
    :data:`LINF_EPS_MAX` and L2 below :data:`L2_EPS_MIN`; ``other_norm`` is the override that switches norm
    (e.g. ``attack=pgd_l2``). The library keeps those legal (eps = 1 is the whole cube, a valid edge case).
    """
    canonical = NORMS.get(str(norm).strip().lower())
    if canonical is None:
        raise ConfigError(f"norm={norm!r} is unknown; use Linf, L2 or L1")
    value = number(name, eps)
    if value <= 0:
        raise ConfigError(f"{name}={value:g} must be > 0 (e.g. 8/255 for Linf, 0.5 for L2)")
    dim = math.prod(int(s) for s in input_shape) if input_shape else None
    if canonical == "Linf":
        if value > 1:
            if value.is_integer():
                raise ConfigError(_pixel_hint(name, value) + " for images in [0, 1]")
            raise ConfigError(f"Linf {name}={value:g} must be in (0, 1] for images in [0, 1]")
        if typical and value > LINF_EPS_MAX:
            switch = f", or set {other_norm} for an L2 budget" if other_norm else ""
            raise ConfigError(
                f"{name}={value:g} is an L2-sized value for an Linf attack; Linf uses e.g. 8/255 on CIFAR "
                f"(at most {LINF_EPS_MAX:g}, the MNIST value){switch}"
            )
    elif canonical == "L2":
        if value >= L2_PIXEL_THRESHOLD:
            raise ConfigError(
                f"L2 {_pixel_hint(name, value)} for images in [0, 1], not pixel units (0..255); "
                "the CIFAR-10 L2 standard is 0.5"
            )
        if dim and value >= math.sqrt(dim):
            raise ConfigError(
                f"L2 {name}={value:g} exceeds sqrt(d)={math.sqrt(dim):.4g}, the diameter of [0, 1]^d for "
                f"d={dim}; the ball would cover every image (is eps in pixel units?)"
            )
        if typical and value < L2_EPS_MIN:
            switch = f", or set {other_norm}" if other_norm else ""
            raise ConfigError(
                f"{name}={value:g} looks like an Linf value for an L2 attack (8/255 = 0.0314); L2 uses e.g. "
                f"0.5 on CIFAR (at least {L2_EPS_MIN:g}){switch}"
            )
    elif dim is not None and value >= dim:
        raise ConfigError(f"L1 {name}={value:g} exceeds the input dimension {dim}; use e.g. 12")
    return value


def check_step_size(
    step_size: object, eps: float, *, uniform_start: bool, name: str = "step_size"
) -> float:
    """An attack step length for a ball of radius ``eps``.

    A step longer than ``eps`` from the clean point is refused: the projection throws the excess away, so
    such a value is almost always a unit mistake (pixels) or a swapped argument. ``step_size == eps`` (FGSM,
    the 2-step phase of the GKL schedule) is allowed. After a uniform random start a longer step does change
    the result, so up to ``2 * eps`` (the ball's diameter) is allowed there: FGSM-RS (Wong et al. 2020) uses
    ``1.25 * eps``.
    """
    step = number(name, step_size)
    if step <= 0:
        raise ConfigError(f"{name}={step:g} must be > 0 (e.g. eps/4)")
    limit = 2.0 * eps if uniform_start else eps
    if step > limit * (1.0 + 1e-6):
        hint = (
            f"; {name}={step:g} looks like a pixel count, write {step:g}/255"
            if step >= 1 and step.is_integer()
            else ""
        )
        allowed = (
            "2 * eps with a uniform random start"
            if uniform_start
            else "eps without a uniform start"
        )
        raise ConfigError(
            f"{name}={step:g} is larger than eps={eps:g} allows (at most {allowed}; "
            f"eps for FGSM, about eps/4 for multi-step PGD){hint}"
        )
    return step
