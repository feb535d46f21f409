"""PGD-AT, TRADES and MART losses against their direct textbook formulas (float64, CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from advtrain.errors import ConfigError
from advtrain.losses import (
    LOSSES,
    GKLLoss,
    IKLLoss,
    LossOutput,
    MARTLoss,
    PGDATLoss,
    RobustLoss,
    TRADESLoss,
    build_loss,
    ce_objective,
    kl_objective,
    trades_kl,
)

DT = torch.float64


def _logits(b: int, c: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, c, generator=g, dtype=DT)).requires_grad_(True)


def _labels(b: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (b,), generator=g)


def _grads(value: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(value, inputs, allow_unused=True, retain_graph=True)


def _direct_kl(adv: torch.Tensor, nat: torch.Tensor) -> torch.Tensor:
    """Per-sample Σ_j p_nat,j (log p_nat,j - log p_adv,j), straight from the definition."""
    p_nat = nat.softmax(1)
    return (p_nat * (p_nat.log() - adv.softmax(1).log())).sum(1)


# ------------------------------------------------------------------------------------------------
# TRADES
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["batchmean", "sum"])
def test_trades_kl_matches_torch_kl_div(reduction: str) -> None:
    adv, nat = _logits(9, 10, 0), _logits(9, 10, 1)
    ours = trades_kl(adv, nat, reduction=reduction)
    ref = F.kl_div(F.log_softmax(adv, 1), F.softmax(nat, 1), reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for g_ours, g_ref in zip(_grads(ours, adv, nat), _grads(ref, adv, nat)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)


def test_trades_kl_none_is_per_sample() -> None:
    adv, nat = _logits(6, 7, 2), _logits(6, 7, 3)
    per = trades_kl(adv, nat, reduction="none")
    assert per.shape == (6,)
    torch.testing.assert_close(per, _direct_kl(adv, nat), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(per.sum(), trades_kl(adv, nat, reduction="sum"))
    torch.testing.assert_close(per.mean(), trades_kl(adv, nat, reduction="batchmean"))
    with pytest.raises(ValueError, match="reduction"):
        trades_kl(adv, nat, reduction="mean")


def test_trades_kl_gradient_finite_when_natural_probability_underflows() -> None:
    # softmax(nat)[1] = exp(-2000) = 0 in float64: a probability target would give 0 * log 0.
    nat = torch.tensor([[0.0, -2000.0, 1.0]], dtype=DT, requires_grad=True)
    adv = torch.tensor([[0.5, 3.0, -1.0]], dtype=DT, requires_grad=True)
    g_adv, g_nat = _grads(trades_kl(adv, nat), adv, nat)
    assert torch.isfinite(g_adv).all() and torch.isfinite(g_nat).all()
    # d KL / d adv = p_adv - p_nat holds exactly.
    torch.testing.assert_close(g_adv, adv.softmax(1) - nat.softmax(1))


def test_trades_loss_matches_direct_formula_value_and_gradients() -> None:
    adv, nat, y = _logits(8, 10, 4), _logits(8, 10, 5), _labels(8, 10, 6)
    out = TRADESLoss(beta=6.0)(adv, nat, y)
    ref = F.cross_entropy(nat, y) + 6.0 * _direct_kl(adv, nat).mean()
    torch.testing.assert_close(out.loss, ref, rtol=1e-12, atol=1e-12)
    for g_ours, g_ref in zip(_grads(out.loss, adv, nat), _grads(ref, adv, nat)):
        torch.testing.assert_close(g_ours, g_ref, rtol=1e-10, atol=1e-12)
    # The natural logits receive gradient through the KL too (not only through the CE).
    g_nat_ce = _grads(F.cross_entropy(nat, y), nat)[0]
    assert (_grads(out.loss, nat)[0] - g_nat_ce).abs().max() > 1e-3
    m = out.metrics
    assert set(m) == {"ce", "kl", "robust"}
    torch.testing.assert_close(m["ce"] + m["robust"], out.loss.detach())
    torch.testing.assert_close(m["robust"], 6.0 * m["kl"])
    assert all(not t.requires_grad and t.dim() == 0 for t in m.values())


def test_trades_attack_objective_is_per_sample_kl_with_constant_natural_side() -> None:
    adv, nat, y = _logits(5, 10, 7), _logits(5, 10, 8), _labels(5, 10, 9)
    loss = TRADESLoss()
    obj = loss.attack_objective()
    assert obj is kl_objective and loss.attack_needs_natural
    vals = obj(adv, y, nat)
    torch.testing.assert_close(vals, _direct_kl(adv, nat), rtol=1e-12, atol=1e-12)
    g_adv, g_nat = _grads(vals.sum(), adv, nat)
    assert g_nat is None  # natural side detached
    torch.testing.assert_close(g_adv, adv.softmax(1) - nat.softmax(1))
    with pytest.raises(ValueError, match="natural logits"):
        obj(adv, y, None)


# ------------------------------------------------------------------------------------------------
# MART
# ------------------------------------------------------------------------------------------------


def _official_mart(adv, nat, y, beta):
    """MART as the official YisenWang/MART mart.py `mart_loss` (commit 2d83e17) computes it after the
    attack, written out here from that code's operations:
    p = softmax(adv); y' = the top class of p unless it is y, then the second (argsort of p);
    loss_adv = CE(adv, y) + NLL(log(1.0001 - p + 1e-12), y');
    loss_robust = (1 / B) sum_b [sum_k KLDivLoss(reduction=none)(log(p + 1e-12), q)_bk] * (1.0000001 - q_y)
    with q = softmax(nat) not detached; loss = loss_adv + beta * loss_robust.
    """
    p = F.softmax(adv, dim=1)
    top2 = torch.argsort(p, dim=1)[:, -2:]
    y_wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(adv, y) + F.nll_loss(torch.log(1.0001 - p + 1e-12), y_wrong)
    q = F.softmax(nat, dim=1)
    q_y = torch.gather(q, 1, y.unsqueeze(1)).squeeze()
    kl = F.kl_div(torch.log(p + 1e-12), q, reduction="none").sum(dim=1)
    loss_robust = (1.0 / adv.shape[0]) * torch.sum(kl * (1.0000001 - q_y))
    return loss_adv + beta * loss_robust


def _check_mart_equals_official(adv, nat, y, beta=6.0, rtol=1e-10):
    out = MARTLoss(beta=beta)(adv, nat, y)
    ref = _official_mart(adv, nat, y, beta)
    torch.testing.assert_close(out.loss, ref, rtol=rtol, atol=0.0)
    for g_ours, g_ref in zip(_grads(out.loss, adv, nat), _grads(ref, adv, nat)):
        # Saturated natural gradients are differences of O(1) terms that cancel to ~1e-12, so both
        # sides carry float64 rounding of ~1e-16 absolute: compare with that floor.
        atol = max(rtol * float(g_ref.abs().max()), 1e-15)
        torch.testing.assert_close(g_ours, g_ref, rtol=rtol, atol=atol)
    torch.testing.assert_close(out.metrics["bce"] + out.metrics["robust"], out.loss.detach())
    return out, ref


def test_mart_equals_official_formula_value_and_gradients() -> None:
    adv, nat, y = _logits(16, 10, 10), _logits(16, 10, 11), _labels(16, 10, 12)
    _check_mart_equals_official(adv, nat, y)


def test_mart_equals_official_formula_in_the_saturated_regime() -> None:
    """Logit gaps of 30-60: wrong-class probabilities far below 1e-12 and 1 - p_max below 1e-4, so the
    official guards dominate; without them the value and gradient would differ by several times."""
    b, c = 16, 10
    g = torch.Generator().manual_seed(40)
    y = _labels(b, c, 41)
    base = torch.randn(b, c, generator=g, dtype=DT)
    # adv: a confident WRONG class (gap 40) for half the batch, a confident true class for the rest;
    # nat: confident (gap 30-60) on the true class, so q_y is 1 - O(e^-30).
    wrong = (y + 1) % c
    hot = torch.where(torch.arange(b) % 2 == 0, wrong, y)
    adv = (base + 40.0 * F.one_hot(hot, c)).requires_grad_(True)
    gap = 30.0 + 30.0 * torch.rand(b, 1, generator=g, dtype=DT)
    nat = (base + gap * F.one_hot(y, c)).requires_grad_(True)
    p = F.softmax(adv.detach(), 1)
    assert float(p.min()) < 1e-15 and float((1 - p.max(1).values).max()) < 1e-12
    out, ref = _check_mart_equals_official(adv, nat, y)
    # The guards matter here: where y' is the confident wrong class the unguarded boosted term
    # -log(1 - p_y') = logsumexp(adv) - logsumexp(adv without y') is about 40, the guarded one
    # -log(1e-4) = 9.2.
    z = adv.detach()
    y_wrong = z.masked_fill(F.one_hot(y, c).bool(), float("-inf")).argmax(1)
    rest = z.scatter(1, y_wrong[:, None], float("-inf"))
    unguarded = torch.logsumexp(z, 1) - torch.logsumexp(rest, 1)
    assert float(unguarded.max()) > 30.0
    guarded = -torch.log(1.0001 - p.gather(1, y_wrong[:, None]).squeeze(1) + 1e-12)
    assert float(unguarded.mean() - guarded.mean()) > 10.0
    assert float(out.metrics["bce"]) == pytest.approx(
        float(F.cross_entropy(z, y) + guarded.mean()), rel=1e-12
    )


def test_mart_boosted_term_picks_strongest_wrong_class_and_stays_finite() -> None:
    # Label 1; the strongest wrong class is 0 with p_0 = 1 - O(e^-800).
    adv = torch.tensor([[800.0, -5.0, 0.0]], dtype=DT, requires_grad=True)
    nat = torch.zeros(1, 3, dtype=DT)
    y1 = torch.tensor([1])
    out = MARTLoss(beta=0.0)(adv, nat, y1)
    assert torch.isfinite(out.loss)
    # CE = -log p_1 = 805 (exact log-softmax); boosted = -log(1.0001 - 1 + 1e-12) (the official guard).
    expected = 805.0 - torch.log(torch.tensor(1.0001 - 1.0 + 1e-12, dtype=DT))
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-9, atol=1e-9)
    assert torch.isfinite(_grads(out.loss, adv)[0]).all()


def test_mart_attack_objective_is_cross_entropy() -> None:
    adv, y = _logits(6, 10, 13), _labels(6, 10, 14)
    loss = MARTLoss()
    assert loss.attack_objective() is ce_objective and not loss.attack_needs_natural
    torch.testing.assert_close(
        loss.attack_objective()(adv, y, None), F.cross_entropy(adv, y, reduction="none")
    )


# ------------------------------------------------------------------------------------------------
# PGD-AT, base class, registry
# ------------------------------------------------------------------------------------------------


def test_pgdat_is_adversarial_cross_entropy_without_natural_pass() -> None:
    adv, y = _logits(6, 10, 15), _labels(6, 10, 16)
    loss = PGDATLoss()
    assert PGDATLoss.needs_natural is False and not loss.attack_needs_natural
    out = loss(adv, None, y)
    assert isinstance(out, LossOutput)
    expected = -adv.log_softmax(1).gather(1, y[:, None]).mean()
    torch.testing.assert_close(out.loss, expected, rtol=1e-12, atol=1e-12)
    vals = loss.attack_objective()(adv, y, None)
    assert vals.shape == (6,)
    torch.testing.assert_close(vals.mean(), expected)


def test_registry_names_and_needs_natural() -> None:
    assert set(LOSSES) == {"pgdat", "trades", "mart", "gkl", "ikl"}
    assert all(issubclass(cls, RobustLoss) for cls in LOSSES.values())
    assert LOSSES["gkl"] is GKLLoss and LOSSES["ikl"] is IKLLoss
    assert {k: v.needs_natural for k, v in LOSSES.items()} == {
        "pgdat": False,
        "trades": True,
        "mart": True,
        "gkl": True,
        "ikl": True,
    }
    assert isinstance(build_loss("trades", beta=9.0), TRADESLoss)
    assert build_loss("gkl", num_classes=10).tracker.num_classes == 10


def test_config_mistakes_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss("tradez")
    with pytest.raises(ConfigError, match="bad arguments"):
        build_loss("trades", betta=6.0)
    with pytest.raises(ConfigError, match="beta"):
        TRADESLoss(beta=-1.0)
    with pytest.raises(ConfigError, match="beta"):
        MARTLoss(beta=float("nan"))


def test_base_hooks_are_noops_and_forward_is_abstract() -> None:
    base = RobustLoss()
    base.on_epoch_start(0)
    base.on_epoch_end(0)
    assert base.attack_needs_natural is False
    with pytest.raises(NotImplementedError):
        base(torch.zeros(1, 2), None, torch.zeros(1, dtype=torch.long))


def test_shape_mismatch_is_reported() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        TRADESLoss()(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        MARTLoss()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="natural logits"):
        TRADESLoss()(torch.zeros(2, 3), None, torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("name", ["trades", "mart"])
def test_bfloat16_logits_are_computed_in_float32(name: str) -> None:
    adv64, nat64, y = _logits(8, 10, 17), _logits(8, 10, 18), _labels(8, 10, 19)
    loss = build_loss(name)
    ref = loss(adv64, nat64, y).loss
    adv16 = adv64.detach().to(torch.bfloat16).requires_grad_(True)
    out = loss(adv16, nat64.detach().to(torch.bfloat16), y).loss
    assert out.dtype == torch.float32
    # bfloat16 inputs carry ~3 significant digits; the loss must not lose more than that.
    torch.testing.assert_close(out.double(), ref.detach(), rtol=2e-2, atol=2e-2)
    assert _grads(out, adv16)[0].dtype == torch.bfloat16
