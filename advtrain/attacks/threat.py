"""Threat models as small step objects: one PGD loop serves every norm ball.

A threat model knows three things about its ball and nothing about the network: where a random
start lands (:meth:`ThreatModel.init`), how one ascent step moves (:meth:`ThreatModel.step`) and how
to get back inside the ball and the image box (:meth:`ThreatModel.project`). Keeping these apart
from the attack loop means a new norm is one class, and the loop stays testable on its own.

Images live in ``[0, 1]``, so budgets are fractions of the full range: ``8/255``, not ``8``. The
constructors reject values that only make sense in pixel units, because a silent ``eps=8`` attack
covers the whole cube and reports 0 % robust accuracy without any hint why.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal

import torch
from torch import Tensor

from advtrain.errors import ConfigError
from advtrain.values import check_eps as _check_eps
from advtrain.values import count as as_count
from advtrain.values import number as as_number

__all__ = [
    "NORMS",
    "START_MODES",
    "L2Ball",
    "LinfBall",
    "StartMode",
    "ThreatModel",
    "as_count",
    "as_number",
    "make_threat",
    "normalize_norm",
]

StartMode = Literal["uniform", "normal", "none"]
START_MODES: tuple[str, ...] = ("uniform", "normal", "none")

#: Canonical norm names, keyed by the lower-case spellings we accept.
NORMS: dict[str, str] = {"linf": "Linf", "inf": "Linf", "l2": "L2", "2": "L2"}

#: Standard deviation of the TRADES / GKL "normal" start (x + 0.001 N(0, 1)).
_NORMAL_START_STD = 0.001


def normalize_norm(norm: str) -> str:
    """Canonical spelling (``"Linf"`` or ``"L2"``) of a user-given norm name."""
    key = str(norm).strip().lower()
    if key not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; use 'Linf' or 'L2'")
    return NORMS[key]


def per_sample_shape(x: Tensor) -> tuple[int, ...]:
    """``(B, 1, 1, ...)``: broadcasts a per-sample scalar over all the other dims of ``x``."""
    return (x.shape[0],) + (1,) * (x.dim() - 1)


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    """All dims except the batch dim; reductions over them keep the memory format (channels_last)."""
    return tuple(range(1, x.dim()))


def _sample(
    kind: Literal["rand", "randn"], like: Tensor, generator: torch.Generator | None
) -> Tensor:
    """Random tensor shaped like ``like``, drawn from ``generator`` (on the generator's device).

    Drawing on the generator's device and moving the result makes a CPU generator usable for a GPU
    attack, so a seed gives the same start wherever the model runs.
    """
    fn = torch.rand if kind == "rand" else torch.randn
    device = generator.device if generator is not None else like.device
    noise = fn(like.shape, generator=generator, device=device, dtype=like.dtype)
    return noise.to(device=like.device, memory_format=memory_format_of(like))


def memory_format_of(x: Tensor) -> torch.memory_format:
    """``channels_last`` for a 4-D channels-last tensor, else ``contiguous_format``."""
    if (
        x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


class ThreatModel(ABC):
    """A norm ball of radius ``eps`` around each clean image, intersected with the box ``[0, 1]``."""

    norm: str = ""

    def __init__(self, eps: float) -> None:
        #: The radius, in [0, 1] image units.
        self.eps = self.check_eps(eps)

    @classmethod
    @abstractmethod
    def check_eps(cls, eps: object) -> float:
        """Validated ``eps`` as a float; :class:`ConfigError` with the fix otherwise."""

    def validate_input(self, x: Tensor) -> None:
        """Checks that need the input's shape (e.g. an L2 ball larger than the cube). Default: none."""
        return None

    def init(
        self, x0: Tensor, mode: str = "uniform", generator: torch.Generator | None = None
    ) -> Tensor:
        """Starting point of the attack.

        ``"uniform"``: uniform in the ball, then clamped to ``[0, 1]``. ``"normal"``:
        ``x0 + 0.001 N(0, 1)`` and deliberately *not* clamped, as the TRADES and GKL official code do
        (their first forward sees the unclamped point; the first step's projection fixes it).
        ``"none"``: a copy of ``x0``.
        """
        if mode == "none":
            return x0.clone(memory_format=memory_format_of(x0))
        if mode == "normal":
            return x0 + _NORMAL_START_STD * _sample("randn", x0, generator)
        if mode == "uniform":
            return (x0 + self._uniform_delta(x0, generator)).clamp_(0.0, 1.0)
        raise ConfigError(f"unknown random start {mode!r}; use one of {', '.join(START_MODES)}")

    @abstractmethod
    def _uniform_delta(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        """A perturbation drawn uniformly from the ball (before the box clamp)."""

    @abstractmethod
    def step(self, x: Tensor, grad: Tensor, step_size: float) -> Tensor:
        """One steepest-ascent step of length ``step_size`` in this norm (out of place)."""

    @abstractmethod
    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        """``x`` moved into the ball around ``x0`` and then clamped to ``[0, 1]``.

        Clamping to the box after the ball projection never leaves the ball: ``x0`` is in the box,
        so the clamp only moves coordinates towards ``x0``.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g})"


class LinfBall(ThreatModel):
    """``||x - x0||_inf <= eps``; steps follow the gradient's sign (steepest ascent in L-inf)."""

    norm = "Linf"

    @classmethod
    def check_eps(cls, eps: object) -> float:
        return _check_eps("Linf", eps)

    def _uniform_delta(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        return _sample("rand", x0, generator).mul_(2.0 * self.eps).sub_(self.eps)

    def step(self, x: Tensor, grad: Tensor, step_size: float) -> Tensor:
        return x.add(grad.sign(), alpha=step_size)

    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        delta = (x - x0).clamp_(-self.eps, self.eps)
        return delta.add_(x0).clamp_(0.0, 1.0)


class L2Ball(ThreatModel):
    """``||x - x0||_2 <= eps`` per sample; steps follow the per-sample normalised gradient."""

    norm = "L2"

    @classmethod
    def check_eps(cls, eps: object) -> float:
        return _check_eps("L2", eps)

    def validate_input(self, x: Tensor) -> None:
        """An L2 radius reaching ``sqrt(d)`` (the cube's diagonal) covers every image: a unit mistake."""
        if x.dim() > 1 and x.shape[0] > 0:
            _check_eps("L2", self.eps, tuple(x.shape[1:]))

    def _uniform_delta(self, x0: Tensor, generator: torch.Generator | None) -> Tensor:
        # Uniform in the d-ball: isotropic direction, radius eps * U^(1/d) (volume grows as r^d).
        direction = _unit(_sample("randn", x0, generator))
        dim = max(x0[0].numel(), 1) if x0.shape[0] > 0 else 1
        device = generator.device if generator is not None else x0.device
        u = torch.rand(x0.shape[0], generator=generator, device=device, dtype=x0.dtype)
        radius = u.to(x0.device).pow_(1.0 / dim).mul_(self.eps)
        return direction.mul_(radius.view(per_sample_shape(x0)))

    def step(self, x: Tensor, grad: Tensor, step_size: float) -> Tensor:
        return x.add(_unit(grad), alpha=step_size)

    def project(self, x: Tensor, x0: Tensor) -> Tensor:
        delta = x - x0
        norms = torch.linalg.vector_norm(delta, dim=_reduce_dims(delta), keepdim=True)
        # min(1, eps / ||delta||); a zero delta gets factor 1 instead of inf * 0 = nan.
        factor = (self.eps / norms.clamp_min(torch.finfo(norms.dtype).tiny)).clamp_(max=1.0)
        return delta.mul_(factor).add_(x0).clamp_(0.0, 1.0)


def _unit(g: Tensor) -> Tensor:
    """``g / ||g||_2`` per sample; zero where ``g`` is zero.

    Dividing by the per-sample max-abs first keeps the squared norm from underflowing: saturated
    softmax gradients of 1e-25 in float32 would otherwise give ``||g|| = 0`` and a stalled attack.
    """
    dims = _reduce_dims(g)
    scale = g.abs().amax(dim=dims, keepdim=True)
    scaled = g / torch.where(scale > 0, scale, torch.ones_like(scale))
    norms = torch.linalg.vector_norm(scaled, dim=dims, keepdim=True)
    return scaled.div_(torch.where(norms > 0, norms, torch.ones_like(norms)))


def make_threat(norm: str, eps: float) -> ThreatModel:
    """The threat model for ``norm`` (``"Linf"`` or ``"L2"``, case-insensitive) and budget ``eps``."""
    canonical = normalize_norm(norm)
    return LinfBall(eps) if canonical == "Linf" else L2Ball(eps)
