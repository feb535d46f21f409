"""GKL / IKL: math identities, an official-style pairwise reference, the worked example of docs/gkl.md §7,
and the class-weight tracker (float64, CPU).

The pairwise reference below is our own transcription of the formulas in docs/gkl.md §3-§5: it
builds the (B, C, C) tensors the official code builds, which the library must never do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from advtrain.errors import ConfigError
from advtrain.losses import (
    ClassWeightTracker,
    GKLLoss,
    IKLLoss,
    gkl_components,
    gkl_kd_loss,
    gkl_loss,
    ikl_loss,
    soft_cross_entropy,
    trades_kl,
)

DT = torch.float64


def _logits(b: int, c: int, seed: int, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(b, c, generator=g, dtype=DT)).requires_grad_(True)


def _prior(b: int, c: int, seed: int, normalised: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(b, c, generator=g, dtype=DT) + 0.05
    return u / u.sum(1, keepdim=True) if normalised else 3.0 * u


def _labels(b: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (b,), generator=g)


def _grads(value: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(value, inputs, allow_unused=True, retain_graph=True)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ------------------------------------------------------------------------------------------------
# Official-style pairwise references (ours; O(B C^2) on purpose)
# ------------------------------------------------------------------------------------------------


def _pairwise_sq(adv: torch.Tensor, nat: torch.Tensor) -> torch.Tensor:
    """((t_j - t_k) - (s_j - s_k))^2 as a (B, C, C) tensor."""
    dt = nat[:, :, None] - nat[:, None, :]
    ds = adv[:, :, None] - adv[:, None, :]
    return (dt - ds) ** 2


def ref_terms_v2(adv, nat, prior, gamma=1.0, soft_ce_temperature=1.0):
    """DKLv2 dkl_loss split into (wMSE, softCE): pair weights normalised by their batch sum."""
    with torch.no_grad():
        v = prior**gamma
        pw = v[:, :, None] * v[:, None, :]
    wmse = 0.25 * (_pairwise_sq(adv, nat) * pw).sum() / pw.sum()
    target = F.softmax(nat / soft_ce_temperature, 1).detach()
    sce = -(target * F.log_softmax(adv / soft_ce_temperature, 1)).sum(1).mean()
    return wmse, sce


def ref_gkl(adv, nat, prior, *, alpha, beta, gamma=1.0, soft_ce_temperature=1.0):
    wmse, sce = ref_terms_v2(adv, nat, prior, gamma, soft_ce_temperature)
    return beta * wmse + alpha * sce


def ref_ikl(adv, nat, prior, *, alpha, beta):
    """DKLv1 dkl_loss(nat, adv, weight=u⊗u): wMSE divided by B."""
    with torch.no_grad():
        pw = prior[:, :, None] * prior[:, None, :]
    wmse = 0.25 * (_pairwise_sq(adv, nat) * pw).sum() / adv.shape[0]
    sce = -(F.softmax(nat, 1).detach() * F.log_softmax(adv, 1)).sum(1).mean()
    return beta * wmse + alpha * sce


# ------------------------------------------------------------------------------------------------
# docs/gkl.md §2: KL = wMSE + softCE in gradient
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("b", [1, 7, 64])
@pytest.mark.parametrize("c", [10, 100])
def test_kl_equals_decoupled_kl_in_gradient(b: int, c: int) -> None:
    s, t = _logits(b, c, 100 + b + c), _logits(b, c, 200 + b + c)
    kl = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
    g_kl_s, g_kl_t = _grads(kl, s, t)

    # Written out with the stop-gradients of docs/gkl.md §2 (pairwise reference).
    p_t = F.softmax(t, 1).detach()
    w = p_t[:, :, None] * p_t[:, None, :]
    dt = t[:, :, None] - t[:, None, :]
    ds = (s[:, :, None] - s[:, None, :]).detach()
    dkl = (0.25 * (w * (dt - ds) ** 2).sum() - (p_t * F.log_softmax(s, 1)).sum()) / b
    g_s, g_t = _grads(dkl, s, t)
    _close(g_s, g_kl_s, 1e-12)
    _close(g_t, g_kl_t, 1e-12)

    # The same identity through the library: weights softmax(t) (rows sum to 1, so ΣP = B).
    lib = gkl_loss(s.detach(), t, p_t, alpha=0.0, beta=1.0) + gkl_loss(
        s, t, p_t, alpha=1.0, beta=0.0
    )
    g_s, g_t = _grads(lib, s, t)
    _close(g_s, g_kl_s, 1e-12)
    _close(g_t, g_kl_t, 1e-12)


def test_broken_asymmetry_adversarial_logits_get_wmse_gradient() -> None:
    """docs/gkl.md §3 check: u = softmax(t), α = β = γ = 1: ∂/∂t equals KL's; ∂/∂s = KL's − ∂wMSE/∂t."""
    s, t = _logits(7, 10, 1), _logits(7, 10, 2)
    u = F.softmax(t, 1).detach()
    kl = trades_kl(s, t)
    g_kl_s, g_kl_t = _grads(kl, s, t)
    g_s, g_t = _grads(gkl_loss(s, t, u, alpha=1.0, beta=1.0, gamma=1.0), s, t)
    _close(g_t, g_kl_t, 1e-12)
    wmse, _ = gkl_components(s, t, u)
    g_wmse_t = _grads(wmse, t)[0]
    _close(g_s, g_kl_s - g_wmse_t, 1e-12)
    assert g_wmse_t.abs().max() > 1e-2  # the extra term is real: s is trained by the wMSE too
    assert (g_s - g_kl_s).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------------
# Closed form vs pairwise reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 0.4, 0.0])
@pytest.mark.parametrize("normalised", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_gkl_closed_form_matches_pairwise_reference(
    gamma: float, normalised: bool, temperature: float
) -> None:
    adv, nat = _logits(13, 10, 3, scale=3.0), _logits(13, 10, 4, scale=3.0)
    prior = _prior(13, 10, 5, normalised)
    kw = {"alpha": 4.0, "beta": 20.0, "gamma": gamma, "soft_ce_temperature": temperature}
    ours = gkl_loss(adv, nat, prior, **kw)
    ref = ref_gkl(adv, nat, prior, **kw)
    _close(ours, ref)
    for g_o, g_r in zip(_grads(ours, adv, nat), _grads(ref, adv, nat)):
        _close(g_o, g_r)
    w, c = gkl_components(adv, nat, prior, gamma=gamma, soft_ce_temperature=temperature)
    w_ref, c_ref = ref_terms_v2(adv, nat, prior, gamma, temperature)
    _close(w, w_ref)
    _close(c, c_ref)


def test_per_sample_components_average_to_the_batch_values() -> None:
    adv, nat, prior = _logits(9, 10, 6), _logits(9, 10, 7), _prior(9, 10, 8, normalised=False)
    w_b, c_b = gkl_components(adv, nat, prior, gamma=0.4, reduction="none")
    w, c = gkl_components(adv, nat, prior, gamma=0.4)
    assert w_b.shape == c_b.shape == (9,)
    _close(w_b.mean(), w)
    _close(c_b.mean(), c)
    _close(c_b, soft_cross_entropy(adv, nat))


@pytest.mark.parametrize("normalised", [True, False])
def test_ikl_closed_form_matches_pairwise_reference(normalised: bool) -> None:
    adv, nat, prior = _logits(11, 100, 9), _logits(11, 100, 10), _prior(11, 100, 11, normalised)
    ours = ikl_loss(adv, nat, prior, alpha=4.0, beta=20.0)
    ref = ref_ikl(adv, nat, prior, alpha=4.0, beta=20.0)
    _close(ours, ref)
    for g_o, g_r in zip(_grads(ours, adv, nat), _grads(ref, adv, nat)):
        _close(g_o, g_r)


def test_ikl_equals_gkl_with_gamma_one_and_row_normalised_weights() -> None:
    adv, nat, prior = _logits(10, 10, 12), _logits(10, 10, 13), _prior(10, 10, 14)
    ikl = ikl_loss(adv, nat, prior, alpha=4.0, beta=20.0)
    gkl = gkl_loss(adv, nat, prior, alpha=4.0, beta=20.0, gamma=1.0)
    _close(ikl, gkl, 1e-13)
    for g_i, g_g in zip(_grads(ikl, adv, nat), _grads(gkl, adv, nat)):
        _close(g_i, g_g, 1e-13)
    # ... and the normalisers really differ once the rows are not normalised.
    raw = _prior(10, 10, 14, normalised=False)
    diff = ikl_loss(adv, nat, raw, alpha=0.0, beta=1.0) - gkl_loss(
        adv, nat, raw, alpha=0.0, beta=1.0
    )
    assert diff.abs() > 1e-3


def test_closed_form_is_stable_under_a_huge_common_logit_offset() -> None:
    """Adding 1e8 to every natural logit changes neither softmax nor pairwise differences.

    The expanded form ½(Σv)(Σvd²) − ½(Σvd)² would cancel ~1e16-sized terms and lose every digit.
    """
    adv, nat, prior = _logits(8, 10, 15), _logits(8, 10, 16), _prior(8, 10, 17)
    base = gkl_loss(adv, nat, prior, alpha=4.0, beta=20.0, gamma=0.4)
    shifted = gkl_loss(adv, nat + 1e8, prior, alpha=4.0, beta=20.0, gamma=0.4)
    torch.testing.assert_close(shifted, base, rtol=1e-6, atol=0.0)


def test_gradcheck_gkl_and_ikl() -> None:
    adv, nat = _logits(3, 5, 18), _logits(3, 5, 19)
    prior = _prior(3, 5, 20, normalised=False)
    # Pure wMSE: every dependence is differentiated, so both logits can be checked numerically.
    assert torch.autograd.gradcheck(
        lambda a, n: gkl_loss(a, n, prior, alpha=0.0, beta=1.0, gamma=0.4), (adv, nat)
    )
    assert torch.autograd.gradcheck(
        lambda a, n: ikl_loss(a, n, prior, alpha=0.0, beta=1.0), (adv, nat)
    )
    # Full loss w.r.t. the student side (the soft-CE target is a stop-gradient of the natural side).
    n0 = nat.detach()
    assert torch.autograd.gradcheck(
        lambda a: gkl_loss(a, n0, prior, alpha=4.0, beta=20.0, gamma=0.4, soft_ce_temperature=2.0),
        (adv,),
    )
    assert torch.autograd.gradcheck(lambda a: ikl_loss(a, n0, prior, alpha=4.0, beta=20.0), (adv,))
    assert torch.autograd.gradcheck(
        lambda a: gkl_kd_loss(
            a, n0, alpha=1.0, beta=8.0, gamma=0.2, soft_ce_temperature=4.0, weight_temperature=4.0
        ),
        (adv,),
    )


def test_zero_weight_rows_contribute_nothing_and_stay_finite() -> None:
    adv, nat = _logits(4, 6, 21), _logits(4, 6, 22)
    prior = _prior(4, 6, 23)
    zeroed = prior.clone()
    zeroed[1] = 0.0
    ours = gkl_loss(adv, nat, zeroed, alpha=0.0, beta=1.0)
    ref = ref_gkl(adv, nat, zeroed, alpha=0.0, beta=1.0)
    _close(ours, ref)
    assert torch.isfinite(_grads(ours, adv)[0]).all()
    assert gkl_loss(adv, nat, torch.zeros(4, 6, dtype=DT), alpha=0.0, beta=1.0) == 0.0


# ------------------------------------------------------------------------------------------------
# The worked example of docs/gkl.md §7
# ------------------------------------------------------------------------------------------------


def _worked_tracker() -> ClassWeightTracker:
    tracker = ClassWeightTracker(3, temperature=4.0).double()
    tracker.update(
        torch.tensor([[2.0, 0, -1], [0, 3, 1], [1, 1, 0]], dtype=DT), torch.tensor([0, 1, 0])
    )
    tracker.update(torch.tensor([[0.0, -1, 2], [1, 2, 0]], dtype=DT), torch.tensor([2, 1]))
    return tracker


def test_worked_example_tracker_matrix() -> None:
    tracker = _worked_tracker()
    assert tracker.counts.tolist() == [2, 2, 1]
    expected_a = torch.tensor(
        [[0.8409, 0.6516, 0.5075], [0.5537, 0.9003, 0.5460], [0.2918, 0.2272, 0.4810]], dtype=DT
    )
    torch.testing.assert_close(tracker.accumulator, expected_a, rtol=0, atol=1e-4)
    w = tracker.end_epoch()
    expected_w = torch.tensor(
        [[0.4204, 0.3258, 0.2537], [0.2769, 0.4501, 0.2730], [0.2918, 0.2272, 0.4810]], dtype=DT
    )
    torch.testing.assert_close(w, expected_w, rtol=0, atol=1e-4)
    _close(w.sum(1), torch.ones(3, dtype=DT), 1e-12)
    assert tracker.accumulator.abs().sum() == 0 and tracker.counts.sum() == 0


@pytest.mark.parametrize(
    ("gamma", "wmse", "total"), [(1.0, 0.48734, 12.24902), (0.4, 0.46496, 11.80130)]
)
def test_worked_example_table(gamma: float, wmse: float, total: float) -> None:
    tracker = _worked_tracker()
    tracker.end_epoch()
    nat = torch.tensor([[3.0, 0.5, -1.0]], dtype=DT)
    adv = torch.tensor([[1.5, 1.0, -0.5]], dtype=DT)
    u = tracker.prior(torch.tensor([0]))
    w, c = gkl_components(adv, nat, u, gamma=gamma)
    assert abs(w.item() - wmse) < 1e-5
    assert abs(c.item() - 0.62554) < 1e-5
    assert abs(gkl_loss(adv, nat, u, alpha=4.0, beta=20.0, gamma=gamma).item() - total) < 1e-5
    if gamma == 0.4:  # the worked example's intermediate numbers: u^γ sums to 1.9234, ΣP = 3.6995
        v = u**gamma
        assert abs(v.sum().item() - 1.9234) < 1e-4 and abs(v.sum().item() ** 2 - 3.6995) < 1e-4


def test_worked_example_uniform_first_epoch_and_kl_reference() -> None:
    nat = torch.tensor([[3.0, 0.5, -1.0]], dtype=DT)
    adv = torch.tensor([[1.5, 1.0, -0.5]], dtype=DT)
    uniform = ClassWeightTracker(3).double().prior(torch.tensor([0]))
    for gamma in (1.0, 0.4):  # the normaliser cancels the constant
        w, _ = gkl_components(adv, nat, uniform, gamma=gamma)
        assert abs(w.item() - 0.44444) < 1e-5
    _close(gkl_components(adv, nat, uniform)[0], (_pairwise_sq(adv, nat).sum() / 36).reshape(()))
    assert abs(trades_kl(adv, nat).item() - 0.27680) < 1e-5


# ------------------------------------------------------------------------------------------------
# Knowledge distillation form
# ------------------------------------------------------------------------------------------------


def test_gkl_kd_loss_without_prior_uses_tempered_teacher_weights() -> None:
    s, t = _logits(12, 10, 24), _logits(12, 10, 25)
    kw = {"alpha": 3.0, "beta": 12.0, "gamma": 0.3, "soft_ce_temperature": 4.0}
    ours = gkl_kd_loss(s, t, weight_temperature=4.0, **kw)
    weights = F.softmax(t.detach() / 4.0, 1)
    ref = ref_gkl(s, t, weights, **kw)  # soft-CE at T = 4, no T^2 factor (official GKL_KD.py)
    _close(ours, ref)
    for g_o, g_r in zip(_grads(ours, s, t), _grads(ref, s, t)):
        _close(g_o, g_r)  # the teacher's weights are constants (official: teacher under no_grad)


def test_gkl_kd_loss_with_class_prior_equals_gkl_loss() -> None:
    s, t, prior = _logits(12, 10, 26), _logits(12, 10, 27), _prior(12, 10, 28)
    kw = {"alpha": 1.0, "beta": 16.0, "gamma": 0.05, "soft_ce_temperature": 4.0}
    # weight_temperature (the official T2) is unused with a prior
    ours = gkl_kd_loss(s, t, class_prior=prior, weight_temperature=100.0, **kw)
    _close(ours, gkl_loss(s, t, prior, **kw), 1e-13)
    _close(ours, ref_gkl(s, t, prior, **kw))


# ------------------------------------------------------------------------------------------------
# ClassWeightTracker
# ------------------------------------------------------------------------------------------------


def test_tracker_starts_uniform_and_unseen_class_keeps_its_row() -> None:
    tracker = ClassWeightTracker(4, temperature=2.0).double()
    _close(tracker.weights, torch.full((4, 4), 0.25, dtype=DT), 0.0)
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 4, generator=g, dtype=DT), torch.tensor([0, 1, 1, 2, 0, 2])
    tracker.update(logits, y)
    w = tracker.end_epoch().clone()
    probs = F.softmax(logits / 2.0, 1)
    for c in range(3):
        _close(w[c], probs[y == c].mean(0), 1e-12)
    _close(w[3], torch.full((4,), 0.25, dtype=DT), 0.0)  # class 3 unseen: previous row, no NaN
    # Next epoch only class 3 is seen: rows 0-2 stay, row 3 becomes its mean prediction.
    tracker.update(logits[:2], torch.tensor([3, 3]))
    w2 = tracker.end_epoch()
    _close(w2[:3], w[:3], 0.0)
    _close(w2[3], probs[:2].mean(0), 1e-12)


def test_tracker_update_is_detached_and_checks_classes() -> None:
    tracker = ClassWeightTracker(5)
    logits = torch.randn(4, 5, requires_grad=True)
    tracker.update(logits, torch.tensor([0, 1, 2, 3]))
    assert not tracker.accumulator.requires_grad
    with pytest.raises(ConfigError, match="num_classes"):
        tracker.update(torch.randn(4, 6), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ConfigError, match="num_classes"):
        ClassWeightTracker(1)
    with pytest.raises(ConfigError, match="temperature"):
        ClassWeightTracker(10, temperature=0.0)


def test_tracker_drops_non_finite_rows() -> None:
    tracker = ClassWeightTracker(3).double()
    logits = torch.tensor([[1.0, 2.0, 0.0], [float("nan"), 0.0, 0.0], [0.0, float("inf"), 1.0]])
    tracker.update(logits.double(), torch.tensor([0, 0, 1]))
    assert tracker.counts.tolist() == [1, 0, 0]
    assert torch.isfinite(tracker.accumulator).all()
    w = tracker.end_epoch()
    _close(w[0], F.softmax(logits[0].double() / 4.0, 0), 1e-12)
    _close(w[1:], torch.full((2, 3), 1 / 3, dtype=DT), 1e-7)  # uniform, set in float32


def test_tracker_state_dict_round_trip_restores_w(tmp_path: Path) -> None:
    loss = GKLLoss(num_classes=3)
    loss.tracker.update(torch.tensor([[2.0, 0, -1], [0, 3, 1], [1, 1, 0]]), torch.tensor([0, 1, 2]))
    loss.on_epoch_end(0)
    loss.tracker.update(torch.tensor([[0.0, -1, 2]]), torch.tensor([2]))  # a partial epoch
    state = loss.state_dict()
    assert {"tracker.weights", "tracker.accumulator", "tracker.counts"} <= set(state)
    torch.save(state, tmp_path / "loss.pt")
    fresh = GKLLoss(num_classes=3)
    assert not torch.equal(fresh.tracker.weights, loss.tracker.weights)
    fresh.load_state_dict(torch.load(tmp_path / "loss.pt", weights_only=True))
    for name in ("weights", "accumulator", "counts"):
        assert torch.equal(getattr(fresh.tracker, name), getattr(loss.tracker, name))
    y = torch.tensor([2, 0, 1])
    assert torch.equal(fresh.tracker.prior(y), loss.tracker.prior(y))


def _all_reduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(rank)
        tracker = ClassWeightTracker(4).double()
        # Rank 0 never sees class 3; rank 1 only sees class 3 (a sharding a NaN would come from).
        y = torch.tensor([0, 1, 2, 0]) if rank == 0 else torch.tensor([3, 3])
        tracker.update(torch.randn(len(y), 4, generator=g, dtype=DT), y)
        tracker.all_reduce_()
        tracker.end_epoch()
        torch.save(tracker.weights, os.path.join(out_dir, f"w{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters: ~4 s
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_tracker_all_reduce_across_two_ranks_equals_single_process(tmp_path: Path) -> None:
    world = 2
    init_file = tempfile.mktemp(dir=tmp_path)
    mp.start_processes(
        _all_reduce_worker,
        args=(world, init_file, str(tmp_path)),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    single = ClassWeightTracker(4).double()
    for rank, y in ((0, torch.tensor([0, 1, 2, 0])), (1, torch.tensor([3, 3]))):
        g = torch.Generator().manual_seed(rank)
        single.update(torch.randn(len(y), 4, generator=g, dtype=DT), y)
    expected = single.end_epoch()
    for rank in range(world):
        _close(torch.load(tmp_path / f"w{rank}.pt", weights_only=True), expected, 1e-12)


def test_tracker_all_reduce_is_noop_without_distributed() -> None:
    tracker = _worked_tracker()
    before = tracker.accumulator.clone()
    tracker.all_reduce_()
    assert torch.equal(tracker.accumulator, before)


# ------------------------------------------------------------------------------------------------
# GKLLoss / IKLLoss modules
# ------------------------------------------------------------------------------------------------


def _trained_loss(cls=GKLLoss, c: int = 10, **kw) -> GKLLoss:
    """A loss whose W is no longer uniform (one epoch of random predictions)."""
    loss = cls(num_classes=c, **kw).double()
    g = torch.Generator().manual_seed(99)
    loss.tracker.update(3 * torch.randn(4 * c, c, generator=g, dtype=DT), torch.arange(4 * c) % c)
    loss.on_epoch_end(0)
    return loss


def test_gkl_loss_module_forward_and_tracker_update() -> None:
    loss = _trained_loss(gamma=0.4)
    adv, nat, y = _logits(16, 10, 30), _logits(16, 10, 31), _labels(16, 10, 32)
    prior = loss.tracker.weights[y].clone()
    out = loss(adv, nat, y)
    ref = F.cross_entropy(nat, y) + ref_gkl(adv, nat, prior, alpha=4.0, beta=20.0, gamma=0.4)
    _close(out.loss, ref)
    for g_o, g_r in zip(_grads(out.loss, adv, nat), _grads(ref, adv, nat)):
        _close(g_o, g_r)
    m = out.metrics
    assert set(m) == {"ce", "wmse", "soft_ce", "robust"}
    _close(m["robust"], 20.0 * m["wmse"] + 4.0 * m["soft_ce"])
    _close(m["ce"] + m["robust"], out.loss.detach())
    assert all(not t.requires_grad and t.dim() == 0 for t in m.values())
    # The natural logits fed the tracker (at its temperature 4).
    expected_a = F.one_hot(y, 10).to(DT).T @ F.softmax(nat.detach() / 4.0, 1)
    _close(loss.tracker.accumulator, expected_a, 1e-12)
    # on_epoch_end publishes the new W.
    loss.on_epoch_end(1)
    seen = torch.unique(y)
    _close(loss.tracker.weights[seen], (expected_a / expected_a.sum(1, keepdim=True))[seen], 1e-12)


def test_update_state_false_leaves_tracker_untouched() -> None:
    loss = _trained_loss()
    loss.tracker.update(torch.randn(3, 10, dtype=DT), torch.tensor([1, 2, 3]))
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    adv, nat, y = _logits(8, 10, 33), _logits(8, 10, 34), _labels(8, 10, 35)
    out_frozen = loss(adv, nat, y, update_state=False)
    for k, v in loss.state_dict().items():
        assert torch.equal(v, before[k]), k
    out = loss(adv, nat, y)
    _close(out.loss, out_frozen.loss, 0.0)  # same W either way
    assert not torch.equal(loss.tracker.accumulator, before["tracker.accumulator"])


def test_two_view_mode_splits_views_and_tracks_basic_view_only() -> None:
    loss = _trained_loss(gamma=0.4, aug_weight=0.5)
    half = 6
    y_half = _labels(half, 10, 36)
    y = torch.cat([y_half, y_half])
    adv, nat = _logits(2 * half, 10, 37), _logits(2 * half, 10, 38)
    prior = loss.tracker.weights[y].clone()
    out = loss(adv, nat, y)
    a, b = slice(0, half), slice(half, None)
    kw = {"alpha": 4.0, "beta": 20.0, "gamma": 0.4}
    ref = (
        F.cross_entropy(nat, y)
        + ref_gkl(adv[a], nat[a], prior[a], **kw)
        + 0.5 * ref_gkl(adv[b], nat[b], prior[b], **kw)
    )
    _close(out.loss, ref)
    for g_o, g_r in zip(_grads(out.loss, adv, nat), _grads(ref, adv, nat)):
        _close(g_o, g_r)
    _close(out.metrics["robust"], 20.0 * out.metrics["wmse"] + 4.0 * out.metrics["soft_ce"])
    expected_a = F.one_hot(y_half, 10).to(DT).T @ F.softmax(nat.detach()[a] / 4.0, 1)
    _close(loss.tracker.accumulator, expected_a, 1e-12)
    assert loss.tracker.counts.sum() == half
    # A single-view batch with aug_weight set is a configuration mistake. The labels are compared
    # (a host sync) on the first batch of each epoch only, so the steps after it stay sync-free.
    loss.on_epoch_start(2)
    with pytest.raises(ConfigError, match="aug_weight"):
        loss(adv, nat, _labels(2 * half, 10, 39))
    with pytest.raises(ConfigError, match="aug_weight"):
        loss(adv[:5], nat[:5], y[:5])


@pytest.mark.parametrize(
    ("attack_beta", "attack_gamma", "normalised"),
    [(0.0, 1.0, True), (1.0, 1.0, True), (1.0, 0.4, False)],
)
def test_attack_objective_reproduces_official_attack_loss(
    attack_beta: float, attack_gamma: float, normalised: bool
) -> None:
    loss = GKLLoss(num_classes=10, attack_beta=attack_beta, attack_gamma=attack_gamma).double()
    loss.tracker.weights.copy_(_prior(10, 10, 40, normalised))
    assert loss.attack_needs_natural
    adv, nat, y = _logits(9, 10, 41), _logits(9, 10, 42), _labels(9, 10, 43)
    vals = loss.attack_objective()(adv, y, nat)
    assert vals.shape == (9,)
    official = ref_gkl(
        adv, nat.detach(), loss.tracker.weights[y], alpha=1.0, beta=attack_beta, gamma=attack_gamma
    )
    _close(vals.mean(), official)
    g_adv, g_nat = _grads(vals.sum(), adv, nat)
    assert g_nat is None  # natural side constant in the attack
    _close(g_adv, 9 * _grads(official, adv)[0])  # same direction, so the same sign steps
    if attack_beta == 0.0:  # pure soft-CE = per-sample KL + entropy of p_nat (constant)
        p = F.softmax(nat, 1)
        _close(vals, trades_kl(adv, nat, "none") - (p * p.log()).sum(1))


def test_ikl_module_matches_ikl_loss_and_its_attack() -> None:
    loss = _trained_loss(IKLLoss, attack_beta=1.0)
    adv, nat, y = _logits(8, 10, 44), _logits(8, 10, 45), _labels(8, 10, 46)
    prior = loss.tracker.weights[y].clone() * 2.0  # un-normalised rows: /B and /ΣP now differ
    loss.tracker.weights.mul_(2.0)
    out = loss(adv, nat, y, update_state=False)
    _close(out.loss, F.cross_entropy(nat, y) + ref_ikl(adv, nat, prior, alpha=4.0, beta=20.0))
    vals = loss.attack_objective()(adv, y, nat)
    _close(vals.mean(), ref_ikl(adv, nat, prior, alpha=1.0, beta=1.0))
    assert loss.gamma == 1.0 and loss.attack_gamma == 1.0


def test_gkl_module_config_errors() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        GKLLoss(num_classes=10, alpha=-1.0)
    with pytest.raises(ConfigError, match="attack_alpha"):
        GKLLoss(num_classes=10, attack_alpha=0.0, attack_beta=0.0)
    with pytest.raises(ConfigError, match="loss=gkl"):
        IKLLoss(num_classes=10, gamma=0.4)
    assert IKLLoss(num_classes=10, gamma=1.0, attack_gamma=1.0).gamma == 1.0
    with pytest.raises(ConfigError, match="num_classes"):
        GKLLoss(num_classes=10)(
            torch.zeros(2, 100), torch.zeros(2, 100), torch.zeros(2, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="class_prior"):
        gkl_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 3), alpha=1.0, beta=1.0)


def test_bfloat16_logits_give_float32_gkl() -> None:
    loss = _trained_loss(gamma=0.4).float()
    adv, nat, y = _logits(8, 10, 47), _logits(8, 10, 48), _labels(8, 10, 49)
    ref = loss(adv.float(), nat.float(), y, update_state=False).loss
    out = loss(adv.detach().bfloat16(), nat.detach().bfloat16(), y, update_state=False).loss
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.detach(), rtol=3e-2, atol=3e-2)


def test_weight_temperature_is_the_trackers_and_temperature_is_its_deprecated_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loss = GKLLoss(10, weight_temperature=2.0)
    assert loss.weight_temperature == 2.0 == loss.tracker.temperature
    with caplog.at_level("WARNING"):
        old = IKLLoss(10, temperature=3.0)
    assert old.weight_temperature == 3.0
    assert any("loss.weight_temperature" in r.getMessage() for r in caplog.records)
    with pytest.raises(ConfigError, match="weight_temperature"):
        GKLLoss(10, weight_temperature=2.0, temperature=3.0)
