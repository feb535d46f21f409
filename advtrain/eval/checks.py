"""Pre-flight checks before an attack and red-flag checks after it.

Why these exist: a robustness number is only meaningful when the model honours the contract every
attack assumes (docs/robustbench_format.md §1): eval mode, a deterministic forward
pass, logits (not probabilities) out, images in [0, 1] in, and an eps in [0, 1] units. Breaking any
of these does not crash AutoAttack; it silently produces a *too high* robust accuracy (softmax
outputs flatten the cross-entropy gradient, dropout randomises the gradient, eps=8 is a
no-op budget...). pyautoattack itself only logs warnings for some of these; here they are errors
with a message that says how to fix the model or the config, raised *before* hours of attack time.

After the attack, gradient masking leaves fingerprints that cost nothing to look for: the
black-box Square attack breaking points that the gradient-based attacks could not, or PGD
reporting far more robustness than AutoAttack. Those become warnings recorded in results.json
(and the `unreliable` flag of a RobustBench entry), not errors: the numbers are still the
numbers, but nobody should trust them without an adaptive attack.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from advtrain.config.values import L2_PIXEL_THRESHOLD, number
from advtrain.config.values import check_eps as _check_eps
from advtrain.errors import AdvtrainError, ConfigError, DataError
from advtrain.utils.images import check_unit_range

__all__ = [
    "L2_PIXEL_THRESHOLD",
    "PGD_GAP_PP",
    "SQUARE_THRESHOLD",
    "PreflightError",
    "check_deterministic",
    "check_eps",
    "check_eval_mode",
    "check_inputs",
    "check_logits",
    "check_num_classes",
    "eps_to_str",
    "masking_warnings",
    "parse_eps",
    "preflight",
]

#: PGD robust accuracy this many percentage points above AutoAttack's is a masking red flag.
PGD_GAP_PP = 10.0
#: Square lowering robust accuracy by more than this fraction after the white-box attacks is a red
#: flag; 0.002 (0.2 pp) is AutoAttack's own threshold in `checks.check_square_sr`.
SQUARE_THRESHOLD = 0.002
#: Tolerance of the determinism check on L2-normalised logits (AutoAttack's randomness check uses
#: the same 1e-4), loose enough for GPU kernel non-associativity, tight enough for any dropout.
_DETERMINISM_TOL = 1e-4
#: Probability rows must sum to 1 within this (AutoAttack's `check_range_output` uses 1e-5).
_PROB_TOL = 1e-5
#: Attacks that use the (targeted) DLR loss need more than 2 (3) classes.
_DLR_ATTACKS = frozenset({"apgd-dlr", "apgd-t"})
_TARGETED = frozenset({"apgd-t", "fab-t"})


class PreflightError(AdvtrainError):
    """The model or the data breaks the attack contract (probabilities out, randomness, range)."""


# --------------------------------------------------------------------------------------------
# eps
# --------------------------------------------------------------------------------------------


def parse_eps(value: object) -> float:
    """A budget from a config value: a number, or a fraction string such as "8/255"."""
    return number("eps", value, fractions=True)


def eps_to_str(eps: float) -> str:
    """ "8/255" when eps is k/255 (the RobustBench spelling), else the shortest decimal ("0.5")."""
    k = eps * 255.0
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return repr(float(eps)) if not float(eps).is_integer() else f"{eps:g}"


def check_eps(norm: str, eps: float, input_shape: Sequence[int] | None = None) -> float:
    """Raise ConfigError for an eps that cannot be meant for images in [0, 1] (see
    :func:`advtrain.config.values.check_eps`, the one place budgets are checked); returns eps."""
    return _check_eps(norm, eps, input_shape)


# --------------------------------------------------------------------------------------------
# model and inputs
# --------------------------------------------------------------------------------------------


def check_inputs(x: Tensor) -> None:
    """Images must be a float (N, C, H, W) batch in [0, 1] (normalisation belongs in the model)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        dtype = getattr(x, "dtype", type(x).__name__)
        raise DataError(f"attack inputs must be a float tensor in [0, 1], got {dtype}")
    if x.dim() != 4:
        raise DataError(f"attack inputs must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise DataError("attack inputs are empty")
    if not torch.isfinite(x).all():
        raise DataError("attack inputs contain NaN or Inf")
    check_unit_range(x, "attack inputs")


def check_eval_mode(model: nn.Module) -> None:
    """After `model.eval()` no submodule may still be training (an overridden `train()`)."""
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        shown = ", ".join(training[:5]) + (
            f" ... ({len(training)} total)" if len(training) > 5 else ""
        )
        raise PreflightError(
            f"module(s) {shown} stay in training mode after model.eval() (overridden train()?); "
            "batch-norm statistics and dropout would change during the attack: fix the model so "
            "eval() puts every submodule in eval mode"
        )


def _normalised(logits: Tensor) -> Tensor:
    flat = logits.detach().float().flatten(1)
    return flat / (flat.norm(dim=1, keepdim=True) + 1e-10)


@torch.no_grad()
def check_deterministic(
    model: nn.Module, x: Tensor, *, randomized_ok: bool = False
) -> tuple[Tensor, list[str]]:
    """Two forward passes on the same batch must agree; returns the first logits and warnings.

    A randomised forward (dropout left on, noise injection) makes gradient attacks see a moving
    target and overstates robustness. With `randomized_ok` (AutoAttack version 'rand', built for
    randomised defences) it is allowed, and a *deterministic* model only earns a warning that the
    EOT iterations are wasted.
    """
    first = model(x)
    second = model(x)
    diff = float((_normalised(first) - _normalised(second)).norm(dim=1).max())
    same_pred = bool(torch.equal(first.argmax(1), second.argmax(1)))
    random = diff > _DETERMINISM_TOL or not same_pred
    if random and not randomized_ok:
        raise PreflightError(
            f"the model gives different outputs for the same input (normalised logit difference "
            f"{diff:.2g}): dropout or noise is active in eval mode. Make the forward deterministic, "
            "or evaluate a randomised defence with eval=aa_rand (AutoAttack version 'rand')"
        )
    warnings = []
    if randomized_ok and not random:
        warnings.append(
            "AutoAttack version 'rand' on a deterministic model: its 20 EOT iterations per step "
            "buy nothing; use eval=aa_standard"
        )
    return first, warnings


def check_logits(logits: Tensor) -> None:
    """Outputs must be logits: rows in [0, 1] that sum to 1 are probabilities (a final softmax)."""
    if logits.dim() != 2:
        raise PreflightError(
            f"the model must return (N, num_classes) logits, got shape {tuple(logits.shape)}"
        )
    if not torch.isfinite(logits).all():
        raise PreflightError("the model returns NaN or Inf logits on clean test images")
    out = logits.detach().float()
    in_unit = float(out.min()) > -_PROB_TOL and float(out.max()) < 1.0 + _PROB_TOL
    sums_to_one = bool(((out.sum(1) - 1.0).abs() < _PROB_TOL).all())
    if in_unit and sums_to_one:
        raise PreflightError(
            "the model outputs look like probabilities (rows in [0, 1] summing to 1): attacks "
            "need logits, because a softmax output flattens the cross-entropy gradient and "
            "inflates robustness; remove the final softmax"
        )


def check_num_classes(num_classes: int, attacks: Sequence[str], n_target_classes: int = 9) -> None:
    """DLR needs >= 3 classes, targeted DLR >= 4, and targeted attacks n_target_classes + 1."""
    used = set(attacks)
    if used & _DLR_ATTACKS and num_classes <= 2:
        raise ConfigError(
            f"{sorted(used & _DLR_ATTACKS)} need more than 2 classes, the model has {num_classes}"
        )
    if "apgd-t" in used and num_classes <= 3:
        raise ConfigError(
            f"apgd-t (targeted DLR) needs at least 4 classes, the model has {num_classes}"
        )
    if used & _TARGETED and n_target_classes + 1 > num_classes:
        raise ConfigError(
            f"targeted attacks {sorted(used & _TARGETED)} use {n_target_classes} target classes but "
            f"the model has only {num_classes} classes"
        )


def preflight(
    model: nn.Module,
    x: Tensor,
    *,
    norm: str,
    eps: float,
    version: str = "standard",
    attacks: Sequence[str] = (),
    n_target_classes: int = 9,
) -> list[str]:
    """All checks before an attack, on one batch `x` already on the model's device.

    The model must already be in eval mode (the caller puts it there). Raises ConfigError,
    DataError or PreflightError on a contract violation; returns non-fatal warnings.
    """
    check_eps(norm, eps, tuple(x.shape[1:]))
    check_inputs(x)
    check_eval_mode(model)
    logits, warnings = check_deterministic(model, x, randomized_ok=version == "rand")
    check_logits(logits)
    check_num_classes(int(logits.shape[1]), attacks, n_target_classes)
    return warnings


# --------------------------------------------------------------------------------------------
# after the attack
# --------------------------------------------------------------------------------------------


def masking_warnings(
    *,
    aa_robust_acc: float | None = None,
    pgd_robust_acc: float | None = None,
    pgd_name: str = "PGD",
    per_attack: Mapping[str, float] | None = None,
    gap_pp: float = PGD_GAP_PP,
    square_threshold: float = SQUARE_THRESHOLD,
) -> list[str]:
    """Gradient-masking red flags from the numbers of one evaluation.

    `per_attack` maps each AutoAttack attack, in the order it ran, to the robust accuracy *after*
    it (the cascade, as AutoAttack logs it). Flags:
    * Square (black-box) lowering robust accuracy by more than `square_threshold` after the
      gradient-based attacks ran: gradients are hiding adversarial examples that exist;
    * PGD robust accuracy more than `gap_pp` percentage points above AutoAttack's: PGD's fixed
      step / cross-entropy is being fooled (e.g. by logit scaling), so PGD numbers are unreliable.
    """
    out: list[str] = []
    if per_attack:
        names = list(per_attack)
        if "square" in names and names.index("square") > 0:
            before = per_attack[names[names.index("square") - 1]]
            drop = before - per_attack["square"]
            if drop > square_threshold:
                out.append(
                    f"gradient masking suspected: the black-box Square attack lowered robust "
                    f"accuracy by {100 * drop:.2f} pp after the white-box attacks "
                    f"({100 * before:.2f}% -> {100 * per_attack['square']:.2f}%); the evaluation "
                    "may be unreliable, try an adaptive attack"
                )
    if aa_robust_acc is not None and pgd_robust_acc is not None:
        gap = 100 * (pgd_robust_acc - aa_robust_acc)
        if gap > gap_pp:
            out.append(
                f"gradient masking suspected: {pgd_name} robust accuracy {100 * pgd_robust_acc:.2f}% "
                f"is {gap:.1f} pp above AutoAttack's {100 * aa_robust_acc:.2f}% (> {gap_pp:g} pp); "
                "do not report PGD numbers for this model"
            )
    return out
