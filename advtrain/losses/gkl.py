"""GKL / IKL: the decoupled KL losses of Cui et al. (DKL, arXiv 2305.13948; GKL, arXiv 2503.08038).

Background (docs/gkl.md §2). KL(p_t || p_s) has the same gradients as

    ¼ Σ_jk sg(p_t,j p_t,k) (Δt_jk - sg(Δs_jk))²  -  Σ_j sg(p_t,j) log p_s,j
    (weighted MSE of pairwise logit differences)   (soft-label cross-entropy)

where Δt_jk = t_j - t_k. GKL/IKL change three things: the pair weights come from a *class-wise*
prior (row y of a class matrix W built from the previous epoch's natural predictions) instead of
the sample's own prediction, the student's differences Δs are *not* detached (so the wMSE also
trains the adversarial branch: "breaking the asymmetry"), and GKL raises the weights to a power
γ ("smoother weights") and normalises by the batch sum of pair weights instead of B.

Argument order: everywhere in this module it is ``(adversarial/student, natural/teacher)``, i.e.
the order of the official DKLv2 code. DKLv1 (IKL) took ``(natural, adversarial)``; mixing the two up
silently swaps which side gets the soft-CE target (docs/gkl.md §10, oddity 14).

Implementation: the official code builds (B, C, C) tensors of pairwise differences (5·10⁸ elements
for ImageNet KD). We use the exact O(B·C) identity, with d = t - s and S = Σ_j v_j::

    ¼ Σ_jk v_j v_k (d_j - d_k)² = ½ S Σ_j v_j (d_j - d̄)²,   d̄ = Σ_j v_j d_j / S

in its centred form: the expanded ``½ S Σ v d² - ½ (Σ v d)²`` subtracts two large numbers when the
logit gaps are large and loses digits; the centred form only adds non-negative terms.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.errors import ConfigError
from advtrain.losses.base import (
    LossOutput,
    Objective,
    RobustLoss,
    as_float,
    check_logits,
    check_nonneg,
    check_positive,
    require_natural,
)

logger = logging.getLogger(__name__)

Normalizer = Literal["weights", "batch"]


# --------------------------------------------------------------------------------------------------
# Functional forms
# --------------------------------------------------------------------------------------------------


def soft_cross_entropy(
    logits_student: Tensor, logits_teacher: Tensor, temperature: float = 1.0
) -> Tensor:
    """Per-sample ``-Σ_j sg(softmax(t/τ))_j · log softmax(s/τ)_j``, shape (B,).

    The teacher's distribution is a constant target (detached), exactly as in the official code;
    only the student receives gradient from this term.
    """
    s = as_float(logits_student)
    t = as_float(logits_teacher)
    target = F.softmax(t.detach() / temperature, dim=1)
    return -(target * F.log_softmax(s / temperature, dim=1)).sum(dim=1)


def _pair_sums(logits_adv: Tensor, logits_nat: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample ``¼ Σ_jk v_j v_k (d_j - d_k)²`` and ``(Σ_j v_j)²`` = Σ_jk v_j v_k, d = nat - adv.

    ``weights`` (v) must already be detached. Both logits receive gradient.
    """
    d = as_float(logits_nat) - as_float(logits_adv)
    v = weights.to(dtype=d.dtype)
    total = v.sum(dim=1)
    # An all-zero weight row contributes 0 whatever d is; avoid 0/0 in its mean.
    safe_total = torch.where(total > 0, total, torch.ones_like(total))
    d_mean = (v * d).sum(dim=1, keepdim=True) / safe_total[:, None]
    spread = (v * (d - d_mean).square()).sum(dim=1)
    return 0.5 * total * spread, total.square()


def _check_prior(class_prior: Tensor, logits: Tensor) -> None:
    if class_prior.shape != logits.shape:
        raise ValueError(
            f"class_prior must be (batch, classes) = {tuple(logits.shape)} like the logits, got "
            f"{tuple(class_prior.shape)}; pass tracker.prior(y), not the (C, C) matrix"
        )


def gkl_components(
    logits_adv: Tensor,
    logits_nat: Tensor,
    class_prior: Tensor,
    *,
    gamma: float = 1.0,
    soft_ce_temperature: float = 1.0,
    normalizer: Normalizer = "weights",
    reduction: Literal["mean", "none"] = "mean",
) -> tuple[Tensor, Tensor]:
    """The two GKL terms ``(wMSE, softCE)``.

    Args:
        logits_adv: student / adversarial logits ``s``, (B, C).
        logits_nat: teacher / natural logits ``t``, (B, C).
        class_prior: per-sample weight rows ``u_b`` (B, C), before the power; detached here.
        gamma: power on the weights, ``v = u ** gamma`` (GKL's "smoother weights").
        soft_ce_temperature: softmax temperature of the soft-CE only (the wMSE has none; the
            class weights' temperature is the tracker's ``weight_temperature``).
        normalizer: ``"weights"`` divides the batch wMSE by Σ_b (Σ_j v_b,j)² (GKL, DKLv2);
            ``"batch"`` divides by B (IKL, DKLv1).
        reduction: ``"mean"`` gives the batch scalars the official code computes; ``"none"`` gives
            per-sample (B,) values whose mean equals the ``"mean"`` result (the wMSE share of
            sample b is ``pairs_b · B / Σ_b' (Σ v_b')²`` for the ``"weights"`` normaliser, so a
            per-sample objective has exactly the official gradient up to the factor B).
    """
    _check_prior(class_prior, logits_adv)
    with torch.no_grad():
        v = class_prior.detach()
        if gamma != 1.0:
            v = v.pow(gamma)
    pairs, weight_mass = _pair_sums(logits_adv, logits_nat, v)
    sce = soft_cross_entropy(logits_adv, logits_nat, soft_ce_temperature)
    batch = pairs.shape[0]
    if normalizer == "weights":
        # All-zero weights give 0/0 in the official code; here the wMSE is then 0.
        denom = weight_mass.sum().clamp_min(torch.finfo(pairs.dtype).tiny)
    elif normalizer == "batch":
        denom = pairs.new_tensor(float(batch))
    else:
        raise ValueError(f"normalizer must be 'weights' or 'batch', got {normalizer!r}")
    if reduction == "mean":
        return pairs.sum() / denom, sce.mean()
    if reduction == "none":
        return pairs * (batch / denom), sce
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def gkl_loss(
    logits_adv: Tensor,
    logits_nat: Tensor,
    class_prior: Tensor,
    *,
    alpha: float,
    beta: float,
    gamma: float = 1.0,
    soft_ce_temperature: float = 1.0,
) -> Tensor:
    """GKL robust term of DKLv2 ``dkl_loss``: ``beta · wMSE + alpha · softCE`` (scalar).

    wMSE = ¼ Σ_b Σ_jk v_j v_k ((t_j - t_k) - (s_j - s_k))² / Σ_b (Σ_j v_j)² with v = prior**gamma
    (no gradient); softCE = mean_b of the soft-label CE at ``soft_ce_temperature`` (the official
    ``dkl_loss(temperature=)``). Only the weights and the soft target are detached: **both** logits
    get gradient from the wMSE. The official AT scripts never pass that temperature (τ = 1); their
    ``--T`` tempers the class weights: ``GKLLoss(weight_temperature=)`` / :class:`ClassWeightTracker`.
    """
    wmse, sce = gkl_components(
        logits_adv, logits_nat, class_prior, gamma=gamma, soft_ce_temperature=soft_ce_temperature
    )
    return beta * wmse + alpha * sce


def ikl_loss(
    logits_adv: Tensor,
    logits_nat: Tensor,
    class_prior: Tensor,
    *,
    alpha: float,
    beta: float,
) -> Tensor:
    """IKL robust term of DKLv1: like :func:`gkl_loss` with γ = 1, τ = 1 and the wMSE divided by B.

    DKLv1 took ``(nat, adv, weight)`` with a (B, C, C) weight tensor ``u ⊗ u``; here the order is
    ``(adv, nat, u)`` and the outer product is never built. With row-normalised priors (Σ_j u_j = 1)
    this equals :func:`gkl_loss` at γ = 1.
    """
    wmse, sce = gkl_components(logits_adv, logits_nat, class_prior, normalizer="batch")
    return beta * wmse + alpha * sce


def gkl_kd_loss(
    logits_student: Tensor,
    logits_teacher: Tensor,
    *,
    alpha: float,
    beta: float,
    gamma: float,
    soft_ce_temperature: float,
    class_prior: Tensor | None = None,
    weight_temperature: float = 1.0,
) -> Tensor:
    """GKL for knowledge distillation (DKLv2 ``KD-dkl/mdistiller/distillers/GKL_KD.py``).

    Weights: ``class_prior ** gamma`` when a (B, C) class prior is given (the official ``GI=True``),
    else ``softmax(teacher / weight_temperature) ** gamma`` per sample (``GI=False``; the official
    cfg's ``T2``), with the teacher detached (the official code runs the teacher under ``no_grad``).
    The wMSE is normalised by the batch sum of pair weights as in :func:`gkl_loss`; the soft-CE uses
    ``soft_ce_temperature`` (the official ``T``).

    Temperature factor: the official GKL_KD (and IKL_KD) ``dkl_loss`` multiplies the soft-CE by
    **no** T² factor (unlike Hinton-style KD in the same mdistiller code base), so neither does this
    function; ``alpha`` absorbs any such scale. The official distiller also multiplies the whole
    term by a warm-up factor ``min(epoch / WARMUP, 1)``, which belongs to the caller.
    """
    if class_prior is None:
        with torch.no_grad():
            class_prior = F.softmax(as_float(logits_teacher).detach() / weight_temperature, dim=1)
    wmse, sce = gkl_components(
        logits_student,
        logits_teacher,
        class_prior,
        gamma=gamma,
        soft_ce_temperature=soft_ce_temperature,
    )
    return beta * wmse + alpha * sce


# --------------------------------------------------------------------------------------------------
# The class-wise weight matrix W
# --------------------------------------------------------------------------------------------------


class ClassWeightTracker(nn.Module):
    """The class matrix W of GKL/IKL: row c = mean of softmax(logits_nat / T) over the class-c
    training samples of the previous epoch (docs/gkl.md §7). Epoch 1 uses the uniform 1/C.

    Buffers (all saved by ``state_dict()``): ``weights`` W (C, C) in use this epoch,
    ``accumulator`` A (C, C) summed softmax rows of the running epoch, ``counts`` (C,) samples per
    class in the running epoch. Saving them means a resumed run continues with the same W and a
    mid-epoch resume keeps the partial A; the official code never saves W and restarts uniform.

    A class with no sample in an epoch keeps its previous row (the official ``A / A.sum(1)`` would
    give a 0/0 NaN row; this cannot happen on full CIFAR epochs but can with tiny or sharded runs).
    """

    weights: Tensor
    accumulator: Tensor
    counts: Tensor

    def __init__(self, num_classes: int, temperature: float = 4.0) -> None:
        super().__init__()
        if int(num_classes) != num_classes or num_classes < 2:
            raise ConfigError(
                f"ClassWeightTracker: num_classes must be an integer >= 2, got {num_classes}; "
                "set loss.num_classes to the dataset's class count"
            )
        self.num_classes = int(num_classes)
        self.temperature = check_positive("temperature", temperature, "ClassWeightTracker")
        c = self.num_classes
        self.register_buffer("weights", torch.full((c, c), 1.0 / c))
        self.register_buffer("accumulator", torch.zeros(c, c))
        self.register_buffer("counts", torch.zeros(c, dtype=torch.long))

    def prior(self, y: Tensor) -> Tensor:
        """Per-sample weight rows ``W[y]``, shape (B, C) (the official ``one_hot(y) @ W``)."""
        return self.weights[y]

    @torch.no_grad()
    def update(self, logits_nat: Tensor, y: Tensor, applied: Tensor | None = None) -> None:
        """Add ``softmax(logits_nat / T)`` (detached) to the rows of A picked by the labels.

        ``applied`` (0-d bool tensor): add nothing where it is false, without a host sync.

        In two-view mode pass only the basic view, as the official code does. The batch sum is
        formed in float64 (not TF32, which a trainer may enable for float32 matmuls), except on
        devices without float64.
        """
        if logits_nat.shape[-1] != self.num_classes:
            raise ConfigError(
                f"logits have {logits_nat.shape[-1]} classes but the GKL class tracker was built "
                f"for {self.num_classes}; set loss.num_classes to the dataset's class count"
            )
        wide = torch.float32 if logits_nat.device.type == "mps" else torch.float64
        probs = F.softmax(logits_nat.detach().to(wide) / self.temperature, dim=1)
        # A non-finite row (a diverging step the trainer will skip) must not poison W for good;
        # it is dropped without a host sync.
        finite = torch.isfinite(probs).all(dim=1, keepdim=True)
        if applied is not None:
            finite = finite & applied
        probs = torch.where(finite, probs, torch.zeros_like(probs))
        # A comparison, not F.one_hot: on the CPU one_hot reads min and max of y back to check them.
        classes = torch.arange(self.num_classes, device=y.device)
        onehot = (y[:, None] == classes).to(torch.int64) * finite
        self.accumulator += (onehot.to(wide).T @ probs).to(self.accumulator.dtype)
        self.counts += onehot.sum(dim=0)

    @torch.no_grad()
    def end_epoch(self) -> Tensor:
        """Set W = A / rowsum(A) for the classes seen this epoch, reset A and the counts; return W."""
        seen = (self.counts > 0)[:, None]
        missing = int((~seen).sum())
        if missing:
            logger.warning(
                "GKL class tracker: %d of %d classes had no sample this epoch; their rows of W "
                "are kept from the previous epoch",
                missing,
                self.num_classes,
            )
        row_sums = self.accumulator.sum(dim=1, keepdim=True)
        fresh = self.accumulator / torch.where(seen, row_sums, torch.ones_like(row_sums))
        self.weights.copy_(torch.where(seen, fresh.to(self.weights.dtype), self.weights))
        self.reset_running()
        return self.weights

    @torch.no_grad()
    def reset_running(self) -> None:
        """Zero the running epoch's sums A and counts; the published W stays."""
        self.accumulator.zero_()
        self.counts.zero_()

    @torch.no_grad()
    def all_reduce_(self, group: dist.ProcessGroup | None = None) -> None:
        """Sum A and the counts over the ranks of ``group`` (no-op unless distributed is running).

        Call once, before :meth:`end_epoch`, so every rank builds the same W from all the data.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        dist.all_reduce(self.accumulator, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(self.counts, op=dist.ReduceOp.SUM, group=group)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, temperature={self.temperature}"


# --------------------------------------------------------------------------------------------------
# The training losses
# --------------------------------------------------------------------------------------------------


_DEFAULT_WEIGHT_TEMPERATURE = 4.0


def _renamed_temperature(owner: str, weight_temperature: float, temperature: float | None) -> float:
    """``weight_temperature``, or the value given under its old name ``temperature`` (with a warning)."""
    if temperature is None:
        return weight_temperature
    if weight_temperature != _DEFAULT_WEIGHT_TEMPERATURE and weight_temperature != temperature:
        raise ConfigError(
            f"{owner}: both loss.weight_temperature={weight_temperature} and its old name "
            f"loss.temperature={temperature} are set; keep only loss.weight_temperature"
        )
    logger.warning(
        "%s: loss.temperature is deprecated, it is the class weights' temperature (the official --T): "
        "write loss.weight_temperature=%g",
        owner,
        temperature,
    )
    return temperature


class GKLLoss(RobustLoss):
    """GKL adversarial training (DKLv2 ``train_dkl_cifar*.py``).

    ``loss = ce_weight · CE(nat, y) + beta · wMSE + alpha · softCE`` with the class prior
    ``W[y]`` of the tracker and soft-CE temperature 1, as the official scripts.
    ``weight_temperature`` is the official ``--T``: the temperature of the softmax rows the tracker
    averages into W, never a loss temperature. ``temperature`` is its deprecated old name.

    Two-view mode (``aug_weight`` set): the batch is ``[basic view; autoaug view]`` with labels
    ``[y; y]``; the CE is a mean over all rows, the robust term is ``GKL(basic) + aug_weight ·
    GKL(autoaug)`` with each GKL a mean over its own half, and only the basic view feeds the tracker.

    The attack objective is GKL with its own ``attack_alpha/beta/gamma`` (official CIFAR-10: α 1,
    β 0, i.e. pure soft-CE; CIFAR-100: β 1), per sample, natural side constant.

    ``update_state=False`` (AWP proxy, validation) leaves the tracker untouched. Note: the official
    AWP step in two-view mode uses one GKL over all 2B rows without ``aug_weight`` (docs/gkl.md §10, oddity 8);
    this forward always splits the views.
    """

    needs_natural = True
    _normalizer: ClassVar[Normalizer] = "weights"

    def __init__(
        self,
        num_classes: int,
        alpha: float = 4.0,
        beta: float = 20.0,
        gamma: float = 1.0,
        weight_temperature: float = 4.0,
        ce_weight: float = 1.0,
        attack_alpha: float = 1.0,
        attack_beta: float = 0.0,
        attack_gamma: float = 1.0,
        aug_weight: float | None = None,
        temperature: float | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        weight_temperature = _renamed_temperature(owner, weight_temperature, temperature)
        self.alpha = check_nonneg("alpha", alpha, owner)
        self.beta = check_nonneg("beta", beta, owner)
        self.gamma = check_nonneg("gamma", gamma, owner)
        self.ce_weight = check_nonneg("ce_weight", ce_weight, owner)
        self.attack_alpha = check_nonneg("attack_alpha", attack_alpha, owner)
        self.attack_beta = check_nonneg("attack_beta", attack_beta, owner)
        self.attack_gamma = check_nonneg("attack_gamma", attack_gamma, owner)
        if self.attack_alpha == 0.0 and self.attack_beta == 0.0:
            raise ConfigError(
                f"{owner}: attack_alpha and attack_beta are both 0, so the attack has nothing to "
                "maximise; set loss.attack_alpha=1 (official value)"
            )
        self.aug_weight = (
            None if aug_weight is None else check_nonneg("aug_weight", aug_weight, owner)
        )
        self.tracker = ClassWeightTracker(num_classes, weight_temperature)
        self._views_checked = False

    @property
    def weight_temperature(self) -> float:
        """The temperature of the class-weight collection (the official ``--T``)."""
        return self.tracker.temperature

    @property
    def num_classes(self) -> int:
        """Number of classes of the tracker's matrix."""
        return self.tracker.num_classes

    def _terms(
        self,
        logits_adv: Tensor,
        logits_nat: Tensor,
        prior: Tensor,
        gamma: float,
        reduction: Literal["mean", "none"],
    ) -> tuple[Tensor, Tensor]:
        return gkl_components(
            logits_adv,
            logits_nat,
            prior,
            gamma=gamma,
            normalizer=self._normalizer,
            reduction=reduction,
        )

    def _check(self, logits_adv: Tensor, logits_nat: Tensor, y: Tensor) -> None:
        check_logits(logits_adv, logits_nat, y)
        if logits_adv.shape[1] != self.num_classes:
            raise ConfigError(
                f"logits have {logits_adv.shape[1]} classes but {type(self).__name__} was built for "
                f"{self.num_classes}; set loss.num_classes to the dataset's class count"
            )

    def forward(
        self,
        logits_adv: Tensor,
        logits_nat: Tensor | None,
        y: Tensor,
        *,
        update_state: bool = True,
    ) -> LossOutput:
        """Return CE + GKL; metrics ``ce``, ``wmse``, ``soft_ce`` and ``robust``.

        In two-view mode ``wmse``/``soft_ce`` are combined like the robust term (view a +
        aug_weight · view b), so ``robust = beta · wmse + alpha · soft_ce`` always holds.
        """
        nat = require_natural(logits_nat, type(self).__name__)
        self._check(logits_adv, nat, y)
        prior = self.tracker.prior(y)
        if self.aug_weight is None:
            wmse, sce = self._terms(logits_adv, nat, prior, self.gamma, "mean")
        else:
            rows = y.shape[0]
            # A host sync buys a clear error for a single-view loader with aug_weight: once per
            # epoch (the first batch), so the steps after it stay free of syncs.
            if rows % 2 or (
                not self._views_checked and not torch.equal(y[: rows // 2], y[rows // 2 :])
            ):
                raise ConfigError(
                    f"{type(self).__name__}: aug_weight is set, so each batch must be "
                    "[basic view; autoaug view] with labels [y; y], but it is not; use a two-view "
                    "dataset or set loss.aug_weight=null"
                )
            self._views_checked = True
            half = rows // 2
            wmse_a, sce_a = self._terms(
                logits_adv[:half], nat[:half], prior[:half], self.gamma, "mean"
            )
            wmse_b, sce_b = self._terms(
                logits_adv[half:], nat[half:], prior[half:], self.gamma, "mean"
            )
            wmse = wmse_a + self.aug_weight * wmse_b
            sce = sce_a + self.aug_weight * sce_b
        robust = self.beta * wmse + self.alpha * sce
        ce = F.cross_entropy(as_float(nat), y)
        loss = self.ce_weight * ce + robust
        if update_state:
            self.update_state(logits_adv, nat, y)
        metrics = {
            "ce": ce.detach(),
            "wmse": wmse.detach(),
            "soft_ce": sce.detach(),
            "robust": robust.detach(),
        }
        return LossOutput(loss=loss, metrics=metrics)

    def update_state(
        self,
        logits_adv: Tensor,
        logits_nat: Tensor | None,
        y: Tensor,
        *,
        applied: Tensor | None = None,
    ) -> None:
        """Feed the natural logits of a training batch to the class-weight tracker (where ``applied``).

        In two-view mode only the basic view (the first half of the rows) counts, as in the
        official code.
        """
        nat = require_natural(logits_nat, type(self).__name__)
        rows = y.shape[0] // 2 if self.aug_weight is not None else y.shape[0]
        self.tracker.update(nat[:rows], y[:rows], applied)

    def attack_objective(self) -> Objective:
        """Per-sample ``attack_beta · wMSE_b + attack_alpha · softCE_b`` with ``attack_gamma``.

        The natural logits are a constant and the prior is read from the tracker at call time.
        The batch mean of these values equals the official attack loss, so sign steps coincide.
        """

        def gkl_objective(
            logits_adv: Tensor, y: Tensor, logits_nat: Tensor | None = None
        ) -> Tensor:
            nat = require_natural(
                logits_nat, f"the {type(self).__name__} attack objective"
            ).detach()
            if self.attack_beta == 0.0:  # official CIFAR-10 attack: pure soft-CE, skip the wMSE
                return self.attack_alpha * soft_cross_entropy(logits_adv, nat)
            prior = self.tracker.prior(y)
            wmse, sce = self._terms(logits_adv, nat, prior, self.attack_gamma, "none")
            return self.attack_beta * wmse + self.attack_alpha * sce

        return gkl_objective

    @property
    def attack_needs_natural(self) -> bool:
        """The GKL objective compares the adversarial logits with the natural ones."""
        return True

    def on_epoch_start(self, epoch: int) -> None:
        """Check the two-view layout of the epoch's first batch again."""
        self._views_checked = False

    def on_epoch_end(self, epoch: int) -> None:
        """Sum the tracker over ranks (if distributed) and publish this epoch's class matrix."""
        self.tracker.all_reduce_()
        self.tracker.end_epoch()

    def reset_running_state(self) -> None:
        """Drop the tracker's partial sums of the running epoch (W, the published matrix, stays)."""
        self.tracker.reset_running()

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, ce_weight={self.ce_weight}, "
            f"weight_temperature={self.weight_temperature}, "
            f"attack=(alpha={self.attack_alpha}, beta={self.attack_beta}, "
            f"gamma={self.attack_gamma}), aug_weight={self.aug_weight}"
        )


class IKLLoss(GKLLoss):
    """IKL adversarial training (DKLv1): GKL without the power γ and with the wMSE divided by B.

    DKLv1's ``--gamma`` was the weight of the autoaug view: it is ``aug_weight`` here. Its
    class-matrix momentum ``--m`` (default 1.0, i.e. none) is not implemented. ``gamma`` and
    ``attack_gamma`` are accepted only as 1.0, so a GKL-shaped config also builds an IKL loss.
    """

    _normalizer: ClassVar[Normalizer] = "batch"

    def __init__(
        self,
        num_classes: int,
        alpha: float = 4.0,
        beta: float = 20.0,
        weight_temperature: float = 4.0,
        ce_weight: float = 1.0,
        attack_alpha: float = 1.0,
        attack_beta: float = 0.0,
        aug_weight: float | None = None,
        gamma: float = 1.0,
        attack_gamma: float = 1.0,
        temperature: float | None = None,
    ) -> None:
        if gamma != 1.0 or attack_gamma != 1.0:
            raise ConfigError(
                f"IKLLoss has no weight power, got gamma={gamma}, attack_gamma={attack_gamma}; "
                "set both to 1.0 or use loss=gkl"
            )
        super().__init__(
            num_classes,
            alpha=alpha,
            beta=beta,
            gamma=1.0,
            weight_temperature=weight_temperature,
            ce_weight=ce_weight,
            attack_alpha=attack_alpha,
            attack_beta=attack_beta,
            attack_gamma=1.0,
            aug_weight=aug_weight,
            temperature=temperature,
        )
