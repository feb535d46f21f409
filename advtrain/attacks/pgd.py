"""Projected gradient descent (ascent) on the input: the one attack loop every threat model uses.

Design choices, and why:

* Gradients come from ``torch.autograd.grad`` with respect to the input only. Parameter ``.grad``
  buffers are never touched, so an attack inside a training step cannot leak into the optimiser,
  and autograd skips the weight-gradient kernels entirely.
* The natural logits an objective needs (TRADES KL, GKL) are computed once per attack, under
  ``no_grad`` and in the attack's model mode, then reused at every step. The official TRADES/GKL
  code recomputes them every step; in eval mode that gives the same numbers for ``steps`` wasted
  forward passes.
* Each step starts from a fresh leaf (``requires_grad_`` on the projected point), so no graph
  survives from one step to the next.
* With several restarts each example keeps, independently, a misclassified restart if any, else
  the restart with the highest objective; restart 1 consumes the generator exactly as a
  single-restart run does, so more restarts are never worse than one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from advtrain.attacks.objectives import Objective, get_objective, needs_natural
from advtrain.attacks.threat import (
    START_MODES,
    ThreatModel,
    as_count,
    make_threat,
    memory_format_of,
    normalize_norm,
    per_sample_shape,
)
from advtrain.errors import ConfigError
from advtrain.utils.images import check_unit_range
from advtrain.values import check_step_size

if TYPE_CHECKING:
    from advtrain.attacks.schedule import AttackBudget

__all__ = ["PGDAttack", "check_budget", "fgsm", "model_mode", "pgd", "start_mode"]


@contextmanager
def model_mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Run a block with ``model.train(training)``; restore every submodule's own flag afterwards.

    Flags are restored per module (not with one ``model.train(previous)``) so that a deliberately
    mixed model, e.g. frozen BatchNorm layers in eval inside a training network, comes back exactly
    as it was, including when the block raises.
    """
    saved = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, flag in saved:
            module.training = flag


def check_budget(
    threat: ThreatModel,
    step_size: object,
    steps: object,
    restarts: object = 1,
    random_start: bool | str | None = False,
) -> tuple[float, int, int]:
    """Validated ``(step_size, steps, restarts)`` for ``threat``; :class:`ConfigError` otherwise.

    The step-length rule (at most ``eps``, or ``2 * eps`` after a uniform start) lives with the other
    value checks in :func:`advtrain.values.check_step_size`.
    """
    uniform = start_mode(random_start) == "uniform"
    step = check_step_size(step_size, threat.eps, uniform_start=uniform)
    return step, as_count("steps", steps), as_count("restarts", restarts)


def start_mode(random_start: bool | str | None) -> str:
    """``"uniform"`` / ``"normal"`` / ``"none"`` from ``True``, ``False`` or a mode name."""
    if random_start is True:
        return "uniform"
    if random_start is False or random_start is None:
        return "none"
    if isinstance(random_start, str) and random_start.lower() in START_MODES:
        return random_start.lower()
    raise ConfigError(
        f"random_start={random_start!r} is not valid; use True, False, 'uniform', 'normal' or 'none'"
    )


def _check_batch(x: Tensor, y: Tensor) -> None:
    """Shape and dtype checks that cost no device synchronisation."""
    if not x.is_floating_point():
        raise ConfigError(f"attack input must be a float tensor in [0, 1], got {x.dtype}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ConfigError(
            f"labels must have shape ({x.shape[0]},) to match the inputs, got {tuple(y.shape)}"
        )


def _attack_loop(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    threat: ThreatModel,
    step_size: float,
    steps: int,
    mode: str,
    restarts: int,
    objective: Objective,
    logits_nat: Tensor | None,
    generator: torch.Generator | None,
) -> Tensor:
    """The PGD iterations on validated arguments (``x``, ``y``, ``logits_nat`` already detached)."""
    batch = x.shape[0]
    best_x: Tensor | None = None
    best_score = best_wrong = None
    for _ in range(restarts):
        x_adv = threat.init(x, mode, generator)
        for _ in range(steps):
            x_adv.requires_grad_(True)  # a fresh leaf every step: no graph outlives its step
            with torch.enable_grad():  # the attack also runs inside no_grad evaluation code
                values = objective(model(x_adv), y, logits_nat)
                if values.shape != (batch,):
                    raise ValueError(
                        f"attack objectives must return per-sample values of shape ({batch},), "
                        f"got {tuple(values.shape)}"
                    )
                (grad,) = torch.autograd.grad(values.sum(), x_adv)
            with torch.no_grad():
                x_adv = threat.project(threat.step(x_adv.detach(), grad, step_size), x)
        if restarts == 1:
            return x_adv
        with torch.no_grad():
            logits = model(x_adv)
            score = objective(logits, y, logits_nat)
            wrong = logits.argmax(dim=1) != y
            if best_x is None or best_score is None or best_wrong is None:
                best_x, best_score, best_wrong = x_adv, score, wrong
                continue
            better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (score > best_score))
            best_x = torch.where(better.view(per_sample_shape(x)), x_adv, best_x)
            best_score = torch.where(better, score, best_score)
            best_wrong = best_wrong | wrong
    assert best_x is not None  # restarts >= 1 is validated
    return best_x


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "Linf",
    eps: float,
    step_size: float,
    steps: int,
    objective: str | Objective = "ce",
    random_start: bool | str = True,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    logits_nat: Tensor | None = None,
    check_range: bool = True,
) -> Tensor:
    """PGD adversarial examples for ``model`` at ``(x, y)``: detached, in the ball and in [0, 1].

    ``x`` must be float images in [0, 1]; anything else (0-255 pixels, normalised inputs) is a
    :class:`~advtrain.errors.DataError` naming the likely cause, never silently clamped. That check
    reads the range back to the host (one device sync); ``check_range=False`` is for a caller that
    checks its inputs itself (the trainer keeps their range on the device between log points).

    ``objective``: a name from :data:`~advtrain.attacks.objectives.OBJECTIVES` or a callable
    ``(logits_adv, y, logits_nat | None) -> (B,)`` to maximise (its per-sample values are summed
    for the gradient). ``random_start``: ``True``/``"uniform"`` (uniform in the ball),
    ``"normal"`` (``x + 0.001 N(0, 1)``, TRADES/GKL style, not clamped before the first forward) or
    ``False``. ``logits_nat``: natural logits to reuse; when ``None`` and the objective needs them,
    they are computed once here. The model is used in whatever mode it is in (see
    :class:`PGDAttack` for an eval-mode attack). Works for channels-last inputs; the result has the
    memory format of ``x``.
    """
    if torch.is_inference_mode_enabled():
        # enable_grad cannot lift inference mode, and autograd's own error does not say why.
        raise RuntimeError(
            "pgd needs gradients: call it outside torch.inference_mode() (no_grad is fine)"
        )
    threat = make_threat(norm, eps)
    step, num_steps, num_restarts = check_budget(threat, step_size, steps, restarts, random_start)
    mode = start_mode(random_start)
    objective_fn = get_objective(objective)
    _check_batch(x, y)
    if check_range:
        check_unit_range(x, "attack inputs")
    threat.validate_input(x)
    x = x.detach()
    y = y.detach()
    if logits_nat is not None:
        logits_nat = logits_nat.detach()
    elif needs_natural(objective_fn):
        with torch.no_grad():
            logits_nat = model(x)
    x_adv = _attack_loop(
        model,
        x,
        y,
        threat,
        step,
        num_steps,
        mode,
        num_restarts,
        objective_fn,
        logits_nat,
        generator,
    )
    return x_adv.detach().contiguous(memory_format=memory_format_of(x))


def fgsm(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    objective: str | Objective = "ce",
    random_start: bool | str = False,
    generator: torch.Generator | None = None,
    logits_nat: Tensor | None = None,
) -> Tensor:
    """Fast gradient (sign) method: one :func:`pgd` step of size ``eps``, optional random start.

    For FGSM-RS (uniform start, step ``1.25 * eps``) call :func:`pgd` with ``steps=1``.
    """
    return pgd(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        step_size=eps,
        steps=1,
        objective=objective,
        random_start=random_start,
        restarts=1,
        generator=generator,
        logits_nat=logits_nat,
    )


@dataclass
class PGDAttack:
    """A configured PGD attack: ``attack(model, x, y) -> x_adv``.

    ``eps``, ``step_size`` and ``steps`` may be reassigned between calls (an epoch schedule does
    this through :meth:`set_budget`); every call re-validates them, which costs a few Python
    comparisons. With ``eval_mode`` the model runs in eval mode during the attack (BatchNorm uses
    running statistics and is not updated by attack passes) and each submodule's previous mode is
    restored afterwards, also when the attack raises.
    """

    norm: str
    eps: float
    step_size: float
    steps: int
    random_start: bool | str = True
    restarts: int = 1
    eval_mode: bool = True
    _: KW_ONLY
    objective: str | Objective = "ce"

    def __post_init__(self) -> None:
        self.norm = normalize_norm(self.norm)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` if the current settings cannot run; normalise their types."""
        threat = make_threat(self.norm, self.eps)
        self.eps = threat.eps
        start_mode(self.random_start)
        self.step_size, self.steps, self.restarts = check_budget(
            threat, self.step_size, self.steps, self.restarts, self.random_start
        )
        get_objective(self.objective)
        if not isinstance(self.eval_mode, bool):
            raise ConfigError(f"eval_mode={self.eval_mode!r} must be true or false")

    def set_budget(self, budget: AttackBudget) -> None:
        """Adopt an epoch's ``(eps, step_size, steps)`` from a schedule, validated as a whole."""
        previous = (self.eps, self.step_size, self.steps)
        self.eps, self.step_size, self.steps = budget.eps, budget.step_size, budget.steps
        try:
            self.validate()
        except ConfigError:
            self.eps, self.step_size, self.steps = previous
            raise

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        objective: str | Objective | None = None,
        logits_nat: Tensor | None = None,
        generator: torch.Generator | None = None,
        check_range: bool = True,
    ) -> Tensor:
        """Adversarial examples for ``(x, y)``; ``objective`` overrides the configured one
        (``check_range``: see :func:`pgd`)."""
        context: AbstractContextManager[object] = (
            model_mode(model, training=False) if self.eval_mode else nullcontext()
        )
        with context:
            return pgd(
                model,
                x,
                y,
                norm=self.norm,
                eps=self.eps,
                step_size=self.step_size,
                steps=self.steps,
                objective=self.objective if objective is None else objective,
                random_start=self.random_start,
                restarts=self.restarts,
                generator=generator,
                logits_nat=logits_nat,
                check_range=check_range,
            )
