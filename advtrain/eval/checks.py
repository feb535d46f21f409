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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from advtrain.errors import AdvtrainError, ConfigError, DataError
from advtrain.utils.images import check_unit_range
from advtrain.values import L2_PIXEL_THRESHOLD, number
from advtrain.values import check_eps as _check_eps

__all__ = [
    "L2_PIXEL_THRESHOLD",
    "MASKING_ALPHA",
    "MaskingTest",
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
    "masking_test",
    "masking_tests",
    "masking_warnings",
    "parse_eps",
    "preflight",
]

#: PGD robust accuracy this many percentage points above AutoAttack's is a masking red flag.
PGD_GAP_PP = 10.0
#: Square lowering robust accuracy by more than this fraction after the white-box attacks is a red
#: flag; 0.002 (0.2 pp) is AutoAttack's own threshold in `checks.check_square_sr`.
SQUARE_THRESHOLD = 0.002
#: Significance level of the masking tests: a red flag needs p < 0.01, not a raw gap.
MASKING_ALPHA = 0.01
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
    :func:`advtrain.values.check_eps`, the one place budgets are checked); returns eps."""
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


@dataclass(frozen=True)
class MaskingTest:
    """One gradient-masking test: `k` of `n` images broken only by the stronger attack.

    `k` counts the images the weaker attack failed on but the stronger one broke (PGD robust but
    AutoAttack not; robust after the white-box attacks but broken by Square). The flag rests on
    `k` and `n`, not on a difference of two rounded accuracies: see :func:`masking_test`.
    """

    name: str
    k: int
    n: int
    tolerated_rate: float
    p_value: float
    alpha: float = MASKING_ALPHA

    @property
    def rate(self) -> float:
        return self.k / self.n if self.n else 0.0

    @property
    def significant(self) -> bool:
        """Whether the images broken only by the stronger attack exceed the tolerated share at `alpha`."""
        return self.n > 0 and self.p_value < self.alpha

    def describe(self) -> str:
        """ "4 of 32 images (12.50%), tolerated 10%: p = 0.40" """
        return (
            f"{self.k} of {self.n} images ({100 * self.rate:.2f}%), tolerated "
            f"{100 * self.tolerated_rate:g}%: p = {self.p_value:.2g}"
        )

    def to_dict(self) -> dict[str, object]:
        """What results.json records under `masking_tests` (each flag with the images it rests on)."""
        return {
            "name": self.name,
            "k": self.k,
            "n": self.n,
            "tolerated_rate": self.tolerated_rate,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "significant": self.significant,
        }


def _binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exactly up to float rounding (log-space sum of the tail)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(k, n + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def masking_test(
    k: int, n: int, *, tolerated_rate: float, alpha: float = MASKING_ALPHA, name: str = "masking"
) -> MaskingTest:
    """One-sided exact binomial test: do more than `tolerated_rate` of the images break only
    under the stronger attack? `k` of `n` images did.

    Why this test: a red flag claims that the weaker attack misses adversarial examples that
    exist on more than a tolerated share of the images (10% for PGD vs AutoAttack, AutoAttack's
    own 0.2% for Square). Each evaluated image either is such an image or not, so under the null
    hypothesis "the true share is at most `tolerated_rate`" k is at most Binomial(n,
    tolerated_rate), and p = P(X >= k) is exact for any n, also for a 32-image smoke evaluation,
    where a 4-image gap is 12.5 pp yet p = 0.40. The flag needs p < `alpha` (0.01): evidence, not
    a raw gap. It is one-sided because only a stronger attack breaking *more* is a masking sign,
    and it tests the share against the tolerance rather than McNemar's "the attacks are equally
    strong" (AutoAttack is always somewhat stronger than PGD; on 10,000 images McNemar would flag
    every ordinary 2 pp gap). When only accuracies are known, k = round(gap * n) is the smallest
    count consistent with them (the images PGD broke but AutoAttack did not can only hide more),
    so the test then errs towards no flag.
    """
    if isinstance(k, bool) or isinstance(n, bool) or k < 0 or n < 0 or k > n:
        raise ValueError(f"masking_test: need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 <= tolerated_rate < 1.0:
        raise ValueError(f"masking_test: tolerated_rate must be in [0, 1), got {tolerated_rate}")
    p = _binomial_sf(int(k), int(n), float(tolerated_rate)) if n else 1.0
    return MaskingTest(name, int(k), int(n), float(tolerated_rate), p, float(alpha))


def _count(rate: float, n: int) -> int:
    """Images behind an accuracy difference on n images (accuracies are multiples of 1/n)."""
    return max(0, min(n, round(rate * n)))


def masking_tests(
    *,
    n_examples: int,
    aa_robust_acc: float | None = None,
    pgd_robust_acc: float | None = None,
    pgd_only_robust: int | None = None,
    per_attack: Mapping[str, float] | None = None,
    gap_pp: float = PGD_GAP_PP,
    square_threshold: float = SQUARE_THRESHOLD,
    alpha: float = MASKING_ALPHA,
) -> list[MaskingTest]:
    """The tests behind the red flags of one evaluation on `n_examples` images.

    `pgd_only_robust`: images robust under PGD but broken by AutoAttack, when the per-image flags
    are known (else the accuracy gap gives the smallest possible count). `per_attack` is
    AutoAttack's cascade (robust accuracy after each attack, in order).
    """
    out: list[MaskingTest] = []
    if per_attack:
        names = list(per_attack)
        if "square" in names and names.index("square") > 0:
            before = per_attack[names[names.index("square") - 1]]
            k = _count(before - per_attack["square"], n_examples)
            out.append(
                masking_test(
                    k, n_examples, tolerated_rate=square_threshold, alpha=alpha, name="square"
                )
            )
    if aa_robust_acc is not None and pgd_robust_acc is not None:
        k = (
            pgd_only_robust
            if pgd_only_robust is not None
            else _count(pgd_robust_acc - aa_robust_acc, n_examples)
        )
        out.append(
            masking_test(
                k, n_examples, tolerated_rate=gap_pp / 100, alpha=alpha, name="pgd_vs_autoattack"
            )
        )
    return out


def masking_warnings(
    *,
    aa_robust_acc: float | None = None,
    pgd_robust_acc: float | None = None,
    pgd_name: str = "PGD",
    per_attack: Mapping[str, float] | None = None,
    gap_pp: float = PGD_GAP_PP,
    square_threshold: float = SQUARE_THRESHOLD,
    n_examples: int | None = None,
    pgd_only_robust: int | None = None,
    alpha: float = MASKING_ALPHA,
) -> list[str]:
    """Gradient-masking red flags from the numbers of one evaluation.

    `per_attack` maps each AutoAttack attack, in the order it ran, to the robust accuracy *after*
    it (the cascade, as AutoAttack logs it). Flags:
    * Square (black-box) lowering robust accuracy by more than `square_threshold` after the
      gradient-based attacks ran: gradients are hiding adversarial examples that exist;
    * PGD robust accuracy more than `gap_pp` percentage points above AutoAttack's: PGD's fixed
      step / cross-entropy is being fooled (e.g. by logit scaling), so PGD numbers are unreliable.

    With `n_examples` (what `evaluate` passes) a flag is raised only when :func:`masking_test`
    finds the excess significant, and its message says how many images it rests on; without it,
    the raw thresholds above (for callers that only have two accuracies and no image count).
    """
    out: list[str] = []
    tests: dict[str, MaskingTest] = {}
    if n_examples is not None:
        tests = {
            t.name: t
            for t in masking_tests(
                n_examples=n_examples,
                aa_robust_acc=aa_robust_acc,
                pgd_robust_acc=pgd_robust_acc,
                pgd_only_robust=pgd_only_robust,
                per_attack=per_attack,
                gap_pp=gap_pp,
                square_threshold=square_threshold,
                alpha=alpha,
            )
        }
    if per_attack:
        names = list(per_attack)
        if "square" in names and names.index("square") > 0:
            before = per_attack[names[names.index("square") - 1]]
            drop = before - per_attack["square"]
            t = tests.get("square")
            if t.significant if t is not None else drop > square_threshold:
                evidence = f" ({t.describe()})" if t is not None else ""
                out.append(
                    f"gradient masking suspected: the black-box Square attack lowered robust "
                    f"accuracy by {100 * drop:.2f} pp after the white-box attacks "
                    f"({100 * before:.2f}% -> {100 * per_attack['square']:.2f}%){evidence}; the "
                    "evaluation may be unreliable, try an adaptive attack"
                )
    if aa_robust_acc is not None and pgd_robust_acc is not None:
        gap = 100 * (pgd_robust_acc - aa_robust_acc)
        t = tests.get("pgd_vs_autoattack")
        if t.significant if t is not None else gap > gap_pp:
            evidence = (
                f"; {t.k} of {t.n} images robust to {pgd_name} were broken by AutoAttack, "
                f"p = {t.p_value:.2g} against a {gap_pp:g}% tolerance"
                if t is not None
                else ""
            )
            out.append(
                f"gradient masking suspected: {pgd_name} robust accuracy {100 * pgd_robust_acc:.2f}% "
                f"is {gap:.1f} pp above AutoAttack's {100 * aa_robust_acc:.2f}% (> {gap_pp:g} pp)"
                f"{evidence}; do not report PGD numbers for this model"
            )
    return out
