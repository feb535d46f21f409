"""Tests of advtrain.attacks: threat models, objectives, the PGD loop and budget schedules.

The strongest checks are the certificate tests on linear models, where the worst case inside
ball ∩ box has a closed form: PGD must find exactly the certified robust set (no more, no less).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import (
    GKL_INTENDED_PHASES,
    OBJECTIVES,
    AttackBudget,
    ConstantBudget,
    L2Ball,
    LinearEpsRamp,
    LinfBall,
    PGDAttack,
    PhasedBudget,
    ce,
    cw,
    dlr,
    fgsm,
    get_objective,
    kl,
    make_threat,
    model_mode,
    needs_natural,
    pgd,
)
from advtrain.errors import ConfigError

EPS = {"Linf": 8 / 255, "L2": 0.5}


def _cnn(seed: int = 0, num_classes: int = 5, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A tiny conv net with BatchNorm (so train/eval mode changes its output)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, num_classes),
    ).to(dtype)
    # Non-trivial running statistics so eval mode is not the identity normalisation.
    with torch.no_grad():
        model.train()
        model(torch.rand(64, 3, 8, 8, dtype=dtype))
    return model.eval()


def _mlp(seed: int = 0, dim: int = 12, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, num_classes)
    ).eval()


def _batch(n: int = 16, seed: int = 1, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g, dtype=dtype)
    x[0] = 0.0  # the box is active for these two: every step pushes into a face of [0, 1]^d
    x[1] = 1.0
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y


def _dist(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    delta = (x_adv - x).flatten(1)
    return delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)


# --------------------------------------------------------------------------------------------
# Threat models


_BALL_CASES = [(o, True) for o in ("ce", "kl", "cw", "dlr")] + [("ce", "normal"), ("kl", False)]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize(("objective", "start"), _BALL_CASES)
def test_pgd_stays_in_ball_and_box(norm, objective, start):
    model = _cnn()
    x, y = _batch()
    eps = EPS[norm]
    x_adv = pgd(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        step_size=eps / 3,
        steps=7,
        objective=objective,
        random_start=start,
        generator=torch.Generator().manual_seed(0),
    )
    assert not x_adv.requires_grad
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (_dist(x_adv, x, norm) <= eps + 1e-6).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    # The attack moved something: step sizes are a third of eps, 7 steps.
    assert _dist(x_adv, x, norm).max() > eps / 2


def test_linf_uniform_start_is_uniform_in_the_cube():
    eps = 0.1
    x0 = torch.full((4000, 8), 0.5)
    x = LinfBall(eps).init(x0, "uniform", torch.Generator().manual_seed(0))
    delta = x - x0
    assert delta.abs().max() <= eps
    assert abs(delta.mean().item()) < 2e-3
    assert delta.var().item() == pytest.approx(eps**2 / 3, rel=0.03)


def test_l2_uniform_start_is_uniform_in_the_ball():
    # Uniform in a d-ball <=> direction isotropic and (r / eps)^d ~ U(0, 1).
    eps, d = 0.3, 3
    x0 = torch.full((20000, d), 0.5)  # 0.5 +- 0.3 stays inside the box: no clamping
    x = L2Ball(eps).init(x0, "uniform", torch.Generator().manual_seed(0))
    delta = x - x0
    r = delta.norm(dim=1)
    assert r.max() <= eps + 1e-6
    u = (r / eps) ** d
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    assert (u < 0.25).float().mean().item() == pytest.approx(0.25, abs=0.01)
    direction = delta / r[:, None]
    assert direction.mean(0).abs().max() < 0.02


def test_normal_start_is_tiny_gaussian_and_not_clipped():
    x0 = torch.zeros(2000, 10)
    x = LinfBall(8 / 255).init(x0, "normal", torch.Generator().manual_seed(0))
    assert (x < 0).any(), "TRADES/GKL leave the initial noise unclamped"
    assert x.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.equal(LinfBall(0.1).init(x0, "none"), x0)


def test_linf_step_is_sign_ascent():
    x = torch.full((2, 3), 0.5)
    grad = torch.tensor([[2.0, -0.1, 0.0], [-5.0, 1e-30, 3.0]])
    out = LinfBall(0.1).step(x, grad, 0.01)
    assert torch.equal(out, x + 0.01 * grad.sign())


def test_l2_step_is_unit_length_per_sample_and_safe():
    x = torch.full((3, 4, 5), 0.5)
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(3, 4, 5, generator=g)
    grad[1] = 0.0  # zero gradient: no step, no nan
    grad[2] *= 1e-30  # the squared norm underflows in float32; the step must still be full length
    out = L2Ball(0.5).step(x, grad, 0.1)
    lengths = (out - x).flatten(1).norm(dim=1)
    assert torch.isfinite(out).all()
    assert lengths[0].item() == pytest.approx(0.1, rel=1e-5)
    assert lengths[1].item() == 0.0
    assert lengths[2].item() == pytest.approx(0.1, rel=1e-5)
    cos = F.cosine_similarity((out - x).flatten(1)[0], grad.flatten(1)[0], dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)


def test_projections():
    x0 = torch.full((2, 6), 0.5)
    far = x0 + torch.tensor([[0.3, -0.3, 0.0, 0.1, 0.0, 0.0], [0.01, 0.0, 0.0, 0.0, 0.0, 0.0]])
    linf = LinfBall(0.1).project(far, x0)
    assert torch.allclose(linf[0], torch.tensor([0.6, 0.4, 0.5, 0.6, 0.5, 0.5]))
    assert torch.equal(linf[1], far[1])
    l2 = L2Ball(0.2).project(far, x0)
    assert (l2[0] - x0[0]).norm().item() == pytest.approx(0.2, rel=1e-6)
    # Radial projection keeps the direction.
    cos = F.cosine_similarity(l2[0] - x0[0], far[0] - x0[0], dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(l2[1], far[1])
    # Box clamp after the ball: a corner point.
    corner = torch.zeros(1, 6)
    assert torch.equal(LinfBall(0.1).project(corner - 0.05, corner), corner)


# --------------------------------------------------------------------------------------------
# Objectives


def test_objective_values():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 5.0, 1.0]])
    y = torch.tensor([0, 2, 2])
    assert torch.allclose(ce(z, y, None), F.cross_entropy(z, y, reduction="none"))
    assert torch.allclose(cw(z, y, None), torch.tensor([2.0 - 3.0, 3.0 - 2.0, 1.0 - 5.0]))
    # DLR = -(z_y - max_{j!=y} z_j) / (z_(1) - z_(3)).
    expected = torch.tensor([-(3 - 2) / (3 - 1), -(2 - 3) / (3 - 1), -(5 - 1) / (5 - 0)])
    assert torch.allclose(dlr(z, y, None), expected)
    # DLR is invariant to shifting and scaling the logits.
    assert torch.allclose(dlr(7.0 * z - 3.0, y, None), expected)


def test_kl_objective_matches_definition_and_detaches_natural():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(6, 5, generator=g, requires_grad=True)
    nat = torch.randn(6, 5, generator=g, requires_grad=True)
    value = kl(adv, torch.zeros(6, dtype=torch.long), nat)
    p, q = nat.softmax(1), adv.softmax(1)
    assert torch.allclose(value, (p * (p.log() - q.log())).sum(1), atol=1e-6)
    assert (value >= 0).all()
    assert torch.allclose(kl(nat, torch.zeros(6, dtype=torch.long), nat), torch.zeros(6), atol=1e-6)
    value.sum().backward()
    assert nat.grad is None and adv.grad is not None
    with pytest.raises(ConfigError, match="logits_nat"):
        kl(adv, torch.zeros(6, dtype=torch.long), None)


def test_objective_registry():
    assert set(OBJECTIVES) == {"ce", "kl", "cw", "dlr"}
    assert get_objective("CE") is ce
    custom = lambda z, y, n: z.sum(1)  # noqa: E731
    assert get_objective(custom) is custom
    with pytest.raises(ConfigError, match="unknown attack objective 'hinge'.*ce, kl, cw, dlr"):
        get_objective("hinge")
    with pytest.raises(ConfigError, match=">= 3 classes"):
        dlr(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long), None)
    assert [needs_natural(OBJECTIVES[k]) for k in ("ce", "kl", "cw", "dlr")] == [
        False,
        True,
        False,
        False,
    ]
    assert needs_natural(custom), "unknown callables must get the natural logits"


# --------------------------------------------------------------------------------------------
# The PGD loop


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("objective", ["ce", "kl", "cw", "dlr"])
def test_pgd_increases_the_objective(norm, objective):
    model = _mlp()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(32, 12, generator=g) * 0.8 + 0.1
    y = torch.randint(0, 5, (32,), generator=g)
    eps = EPS[norm]
    fn = get_objective(objective)
    nat = model(x).detach()
    # x itself is a stationary point of the KL (its minimum, gradient 0): TRADES needs its tiny
    # normal start to move at all. The other objectives start exactly at x.
    start = "normal" if objective == "kl" else False
    x_adv = pgd(
        model, x, y, norm=norm, eps=eps, step_size=eps / 8, steps=10, objective=objective,
        random_start=start, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    with torch.no_grad():
        before, after = fn(model(x), y, nat), fn(model(x_adv), y, nat)
    assert (after >= before - 1e-6).all()
    assert after.sum() > before.sum()


def test_parameter_grads_untouched():
    model = _cnn()
    x, y = _batch()
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 0.25)
    saved = params[0].grad.clone()
    for objective in ("ce", "kl"):
        pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, objective=objective)
    assert torch.equal(params[0].grad, saved)
    assert all(p.grad is None for p in params[1:])
    assert all(p.requires_grad for p in params)


def test_pgd_works_under_no_grad():
    model = _cnn()
    x, y = _batch()
    with torch.no_grad():
        x_adv = pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3, random_start=False)
    assert (x_adv != x).any()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        pgd(model, x, y, eps=8 / 255, step_size=2 / 255, steps=3)


class _ModeSpy(nn.Module):
    """Records the training flag of each forward; can raise on the n-th call."""

    def __init__(self, inner: nn.Module, fail_on: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.fail_on = fail_on
        self.modes: list[bool] = []

    def forward(self, x):
        self.modes.append(self.training)
        if self.fail_on is not None and len(self.modes) == self.fail_on:
            raise RuntimeError("boom")
        return self.inner(x)


def test_attack_runs_in_eval_mode_and_restores_modes():
    spy = _ModeSpy(_cnn())
    spy.train()
    spy.inner[1].eval()  # a deliberately frozen BatchNorm inside a training model
    attack = PGDAttack("Linf", 8 / 255, 2 / 255, 3)
    x, y = _batch()
    attack(spy, x, y)
    assert spy.modes == [False] * 3
    assert spy.training and spy.inner[0].training and not spy.inner[1].training

    spy.modes.clear()
    PGDAttack("Linf", 8 / 255, 2 / 255, 3, eval_mode=False)(spy, x, y)
    assert spy.modes == [True] * 3 and spy.training


def test_modes_restored_after_exception():
    spy = _ModeSpy(_cnn(), fail_on=2)
    spy.train()
    with pytest.raises(RuntimeError, match="boom"):
        PGDAttack("L2", 0.5, 0.1, 5)(spy, *_batch())
    assert spy.modes == [False, False]
    assert all(m.training for m in spy.modules())
    with pytest.raises(KeyError):
        with model_mode(spy, training=False):
            assert not any(m.training for m in spy.modules())
            raise KeyError("inside")
    assert all(m.training for m in spy.modules())


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("start", ["uniform", "normal"])
def test_same_generator_same_result(norm, start):
    model = _cnn()
    x, y = _batch()
    kwargs = dict(norm=norm, eps=EPS[norm], step_size=EPS[norm] / 4, steps=3, random_start=start)
    a = pgd(model, x, y, generator=torch.Generator().manual_seed(5), **kwargs)
    b = pgd(model, x, y, generator=torch.Generator().manual_seed(5), **kwargs)
    c = pgd(model, x, y, generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


class _CountingModel(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _recomputing_kl_pgd(model, x, y, eps, step_size, steps, x_start):
    """The TRADES/GKL official loop shape: natural logits recomputed at every step."""
    ball = LinfBall(eps)
    x_adv = x_start.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = kl(model(x_adv), y, model(x)).sum()
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = ball.project(ball.step(x_adv.detach(), grad, step_size), x)
    return x_adv


def test_natural_logits_computed_once_and_equal_to_recomputing():
    model = _CountingModel(_cnn())
    x, y = _batch()
    eps, steps = 8 / 255, 5
    out = pgd(model, x, y, eps=eps, step_size=eps / 2, steps=steps, objective="kl",
              random_start="normal", generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert model.calls == steps + 1  # one natural pass, then one forward per step

    model.calls = 0
    with torch.no_grad():
        nat = model(x)
    given = pgd(model, x, y, eps=eps, step_size=eps / 2, steps=steps, objective="kl",
                random_start="normal", generator=torch.Generator().manual_seed(0),
                logits_nat=nat)  # fmt: skip
    assert model.calls == steps + 1  # the caller's pass plus one per step: none recomputed
    assert torch.equal(out, given)

    start = LinfBall(eps).init(x, "normal", torch.Generator().manual_seed(0))
    reference = _recomputing_kl_pgd(model, x, y, eps, eps / 2, steps, start)
    assert torch.equal(out, reference)

    model.calls = 0
    pgd(model, x, y, eps=eps, step_size=eps / 2, steps=steps, objective="ce")
    assert model.calls == steps  # ce declares needs_natural = False: no natural pass


def test_every_step_differentiates_a_fresh_leaf_and_checks_objective_shape():
    seen = []

    class LeafSpy(nn.Module):
        def forward(self, x):
            seen.append((x.is_leaf, x.requires_grad, x.grad_fn))
            return x.flatten(1)[:, :5] * 3.0

    x, y = torch.rand(4, 12), torch.zeros(4, dtype=torch.long)
    pgd(LeafSpy(), x, y, eps=0.1, step_size=0.05, steps=4, random_start="normal")
    assert seen == [(True, True, None)] * 4
    batch_mean = lambda z, y, n: F.cross_entropy(z, y)  # noqa: E731
    with pytest.raises(ValueError, match=r"per-sample values of shape \(4,\)"):
        pgd(LeafSpy(), x, y, eps=0.1, step_size=0.05, steps=1, objective=batch_mean)


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_restarts_never_worse_than_one(norm):
    model = _mlp(seed=4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 12, generator=g)
    y = model(x).argmax(1).detach()  # clean-correct points: robustness is the question
    eps = 0.15 if norm == "Linf" else 0.6
    kwargs = dict(norm=norm, eps=eps, step_size=eps / 4, steps=5)
    one = pgd(model, x, y, restarts=1, generator=torch.Generator().manual_seed(9), **kwargs)
    many = pgd(model, x, y, restarts=4, generator=torch.Generator().manual_seed(9), **kwargs)
    assert (_dist(many, x, norm) <= eps + 1e-6).all()
    with torch.no_grad():
        z1, z4 = model(one), model(many)
    wrong1, wrong4 = z1.argmax(1) != y, z4.argmax(1) != y
    assert (wrong4 | ~wrong1).all(), "a point broken by 1 restart must stay broken with 4"
    still = ~wrong4
    assert (ce(z4, y, None)[still] >= ce(z1, y, None)[still] - 1e-6).all()
    assert wrong4.sum() > wrong1.sum(), "the setting must let extra restarts matter"


def test_fgsm_is_one_signed_step_of_eps():
    model = _cnn()
    x, y = _batch()
    eps = 8 / 255
    out = fgsm(model, x, y, eps=eps)
    assert torch.equal(out, pgd(model, x, y, eps=eps, step_size=eps, steps=1, random_start=False))
    x_req = x.clone().requires_grad_(True)
    F.cross_entropy(model(x_req), y, reduction="sum").backward()
    expected = (x + eps * x_req.grad.sign()).clamp(0.0, 1.0)
    assert torch.allclose(out, expected, atol=1e-7)


def test_channels_last_input():
    model = _cnn(dtype=torch.float64).to(memory_format=torch.channels_last)
    x, y = _batch(dtype=torch.float64)
    kwargs = dict(norm="L2", eps=0.5, step_size=0.1, steps=5, generator=None, random_start=False)
    dense = pgd(model, x, y, **kwargs)
    x_cl = x.to(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    out = pgd(model, x_cl, y, **kwargs)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, dense, atol=1e-10)
    rand = pgd(model, x_cl, y, norm="Linf", eps=8 / 255, step_size=2 / 255, steps=2,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert rand.is_contiguous(memory_format=torch.channels_last)
    assert ((rand - x).abs().amax() <= 8 / 255 + 1e-12).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_cuda_inputs_with_cpu_generator(norm):
    """A CPU generator seeds a GPU attack: same start as on the CPU, result on the input's device."""
    eps = EPS[norm]
    x, y = _batch()
    ball = make_threat(norm, eps)
    start_cpu = ball.init(x, "uniform", torch.Generator().manual_seed(0))
    start_gpu = ball.init(x.cuda(), "uniform", torch.Generator().manual_seed(0))
    assert start_gpu.is_cuda
    assert torch.allclose(start_gpu.cpu(), start_cpu, atol=1e-6)
    model = _cnn().cuda()
    x_adv = PGDAttack(norm, eps, eps / 4, 5, restarts=2)(
        model, x.cuda(), y.cuda(), generator=torch.Generator().manual_seed(0)
    )
    assert x_adv.is_cuda
    assert (_dist(x_adv.cpu(), x, norm) <= eps + 1e-6).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


# --------------------------------------------------------------------------------------------
# Exact certificates on linear models


def _targeted(k: int, num_classes: int):
    """Objective: logit of class (y + k) mod C minus the label's logit (a targeted margin)."""

    def objective(z, y, _nat):
        target = (y + k) % num_classes
        return z.gather(1, target[:, None]).squeeze(1) - z.gather(1, y[:, None]).squeeze(1)

    objective.needs_natural = False
    return objective


def test_linf_pgd_matches_exact_certificate_of_linear_model():
    n, d, num_classes, eps = 200, 20, 4, 0.04
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(d, num_classes).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(num_classes, d, generator=g, dtype=torch.float64))
        # Centred so that the decision boundaries cut through the data cube.
        model.bias.copy_(0.1 * torch.randn(num_classes, generator=g, dtype=torch.float64))
        model.bias.sub_(0.5 * model.weight.sum(1))
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    w, b = model.weight.detach(), model.bias.detach()

    # Worst case over box ∩ ball for the pair (y, j) minimises (w_y - w_j)·x' coordinate-wise:
    # x'_i = clip(x_i - eps * sign(w_y,i - w_j,i), 0, 1).
    worst = torch.full((n,), math.inf, dtype=torch.float64)
    for j in range(num_classes):
        diff = w[y] - w[j]  # (n, d)
        x_worst = (x - eps * diff.sign()).clamp(0.0, 1.0)
        margin = (diff * x_worst).sum(1) + b[y] - b[j]
        worst = torch.where(y == j, worst, torch.minimum(worst, margin))
    assert worst.abs().min() > 1e-6, "no ties at the decision boundary in this draw"
    certified = worst > 0
    assert 0.2 < certified.float().mean() < 0.8, "the draw must contain both kinds of points"

    broken = torch.zeros(n, dtype=torch.bool)
    for k in range(1, num_classes):
        x_adv = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=50,
                    objective=_targeted(k, num_classes), random_start=False)  # fmt: skip
        with torch.no_grad():
            broken |= model(x_adv).argmax(1) != y
    assert torch.equal(~broken, certified)  # same points, hence the same robust accuracy

    # Untargeted CW can only be weaker than the exact attack, never stronger than the certificate.
    x_cw = pgd(model, x, y, eps=eps, step_size=eps / 4, steps=50, objective="cw",
               random_start=False)  # fmt: skip
    with torch.no_grad():
        robust_cw = model(x_cw).argmax(1) == y
    assert not (certified & ~robust_cw).any()


def _binary_linear(d: int, seed: int) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, d, generator=g, dtype=torch.float64))
        model.bias.copy_(0.1 * torch.randn(2, generator=g, dtype=torch.float64))
        model.bias.sub_(0.5 * model.weight.sum(1))  # the boundary cuts through the cube
    return model


def _l2_box_worst_margin(x, direction, offset, eps, iters=200):
    """min over ||x'-x||_2 <= eps, x' in [0,1]^d of direction·x' + offset, per sample (exact).

    KKT: the minimiser is x'(t) = clip(x - t * direction, 0, 1) for the t >= 0 at which the
    constraint ||x'(t) - x|| = eps binds (or t = inf if the whole box segment fits): bisection.
    """
    lo = torch.zeros(x.shape[0], 1, dtype=x.dtype)
    hi = torch.full_like(lo, 1e6)
    for _ in range(iters):
        mid = (lo + hi) / 2
        inside = ((x - mid * direction).clamp(0, 1) - x).norm(dim=1, keepdim=True) <= eps
        lo = torch.where(inside, mid, lo)
        hi = torch.where(inside, hi, mid)
    return ((x - lo * direction).clamp(0, 1) * direction).sum(1) + offset


def test_l2_pgd_matches_closed_form_when_box_inactive():
    n, d, eps = 200, 20, 0.08
    model = _binary_linear(d, seed=1)
    g = torch.Generator().manual_seed(2)
    x = 0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=torch.float64)  # x ± eps stays in box
    with torch.no_grad():
        y = model(x).argmax(1)
    w, b = model.weight.detach(), model.bias.detach()
    diff = w[y] - w[1 - y]
    margin = (diff * x).sum(1) + b[y] - b[1 - y]
    distance = margin / diff.norm(dim=1)  # closed-form L2 distance to the decision boundary
    assert (distance - eps).abs().min() > 1e-6
    certified = distance > eps
    assert 0.2 < certified.float().mean() < 0.8
    x_adv = pgd(model, x, y, norm="L2", eps=eps, step_size=eps / 4, steps=50, objective="cw",
                random_start=False)  # fmt: skip
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    assert torch.equal(robust, certified)
    # Broken points sit at the optimum: on the sphere, along -diff.
    moved = x_adv[~robust] - x[~robust]
    assert torch.allclose(moved.norm(dim=1), torch.full_like(moved[:, 0], eps), rtol=1e-9)


def test_l2_pgd_is_sound_when_box_active():
    n, d, eps = 300, 20, 0.3
    model = _binary_linear(d, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(n, d, generator=g, dtype=torch.float64) ** 3  # many coordinates near 0
    with torch.no_grad():
        y = model(x).argmax(1)
    w, b = model.weight.detach(), model.bias.detach()
    diff, offset = w[y] - w[1 - y], b[y] - b[1 - y]
    box_free = ((diff * x).sum(1) + offset) / diff.norm(dim=1) > eps  # lower bound on robustness
    exact = _l2_box_worst_margin(x, diff, offset, eps) > 0  # exact, box-aware
    assert not (box_free & ~exact).any()
    assert exact.sum() > box_free.sum(), "the box must matter in this draw"
    x_adv = pgd(model, x, y, norm="L2", eps=eps, step_size=eps / 4, steps=50, objective="cw",
                random_start=False)  # fmt: skip
    assert ((x_adv - x).norm(dim=1) <= eps + 1e-9).all()
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    assert not (exact & ~robust).any(), "PGD cannot break a certified point"
    assert robust.sum() >= box_free.sum()


# --------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 8}, r"eps=8 looks like a pixel count; write 8/255"),
        ({"eps": 0.0}, r"must be > 0"),
        ({"eps": -0.1}, r"must be > 0"),
        ({"eps": 1.5}, r"\(0, 1\]"),
        ({"eps": "8/255"}, r"must be a number"),
        ({"eps": float("nan")}, r"finite"),
        ({"norm": "L2", "eps": 128, "step_size": 0.1}, r"looks like a pixel count; write 128/255"),
        ({"norm": "L2", "eps": 4.0, "step_size": 0.1}, r"sqrt\(d\)"),  # d = 12: sqrt = 3.46
        ({"norm": "L1"}, r"unknown norm 'L1'"),
        ({"step_size": 0.0}, r"step_size=0 must be > 0"),
        ({"step_size": 0.05, "random_start": False}, r"larger than eps"),
        ({"step_size": 0.05, "random_start": "normal"}, r"at most eps without a uniform start"),
        ({"step_size": 0.07, "random_start": True}, r"at most 2 \* eps with a uniform"),
        ({"step_size": 2}, r"write 2/255"),
        ({"steps": 0}, r"steps=0 must be >= 1"),
        ({"steps": 2.5}, r"integer"),
        ({"steps": True}, r"integer"),
        ({"restarts": 0}, r"restarts=0 must be >= 1"),
        ({"random_start": "gaussian"}, r"random_start='gaussian'"),
        ({"objective": "foo"}, r"unknown attack objective"),
    ],
)
def test_validation_errors(kwargs, match):
    model = _mlp()
    x, y = torch.rand(2, 12), torch.zeros(2, dtype=torch.long)
    args = {"eps": 8 / 255, "step_size": 2 / 255, "steps": 2} | kwargs
    with pytest.raises(ConfigError, match=match):
        pgd(model, x, y, **args)
    if "sqrt" not in match:  # needs the input's size, so only checked at call time
        ctor = {k: v for k, v in args.items()}
        with pytest.raises(ConfigError, match=match):
            PGDAttack(ctor.pop("norm", "Linf"), ctor.pop("eps"), ctor.pop("step_size"),
                      ctor.pop("steps"), **ctor)  # fmt: skip


def test_accepted_edge_values():
    model = _mlp()
    x, y = torch.rand(2, 12), torch.zeros(2, dtype=torch.long)
    # step_size == eps (FGSM), eps == 1 (the whole cube), L2 eps 2.0 (the MNIST budget).
    pgd(model, x, y, eps=0.1, step_size=0.1, steps=1)
    pgd(model, x, y, eps=1, step_size=0.5, steps=2)
    pgd(model, x, y, norm="l2", eps=2.0, step_size=0.5, steps=2)
    # FGSM-RS: a step of 1.25 eps after a uniform start (the start can sit on the far side).
    pgd(model, x, y, eps=8 / 255, step_size=10 / 255, steps=1, random_start="uniform")
    assert make_threat("linf", 0.1).norm == "Linf" and make_threat("L2", 2.0).norm == "L2"
    attack = PGDAttack("linf", 8 / 255, 2 / 255, 10.0)
    assert attack.norm == "Linf" and attack.steps == 10 and isinstance(attack.steps, int)


def test_set_budget_validates_and_rolls_back():
    attack = PGDAttack("Linf", 8 / 255, 2 / 255, 10)
    attack.set_budget(AttackBudget(4 / 255, 1 / 255, 3))
    assert (attack.eps, attack.step_size, attack.steps) == (4 / 255, 1 / 255, 3)
    with pytest.raises(ConfigError, match="larger than eps"):
        attack.set_budget(AttackBudget(1 / 255, 3 / 255, 3))
    assert (attack.eps, attack.step_size, attack.steps) == (4 / 255, 1 / 255, 3)


# --------------------------------------------------------------------------------------------
# Schedules


def test_linear_eps_ramp():
    eps = 8 / 255
    schedule = LinearEpsRamp(eps, steps=5, step_ratio=0.5)
    first, last = schedule(1, 200), schedule(200, 200)
    assert first.steps == last.steps == 5
    assert first.eps == pytest.approx(eps / 200) and first.step_size == pytest.approx(eps / 400)
    assert last.eps == pytest.approx(eps) and last.step_size == pytest.approx(eps / 2)
    assert schedule(100, 200).eps == pytest.approx(eps / 2)


def test_phased_budget_default_is_intended_gkl_schedule():
    eps = 8 / 255
    schedule = PhasedBudget(eps)
    assert schedule.phases == GKL_INTENDED_PHASES
    expected = {1: (2, 1.0), 50: (2, 1.0), 51: (3, 2 / 3), 100: (3, 2 / 3), 101: (4, 0.5),
                150: (4, 0.5), 151: (5, 0.5), 200: (5, 0.5)}  # fmt: skip
    for epoch, (steps, ratio) in expected.items():
        budget = schedule(epoch, 200)
        assert budget.steps == steps, epoch
        assert budget.eps == pytest.approx(eps * epoch / 200)
        assert budget.step_size == pytest.approx(ratio * budget.eps)
    # Fractions scale to a short run: E = 8 -> phases end at epochs 2, 4, 6, 8.
    assert [schedule(t, 8).steps for t in range(1, 9)] == [2, 2, 3, 3, 4, 4, 5, 5]
    assert PhasedBudget(eps, ramp=False)(1, 8).eps == eps


def test_every_scheduled_budget_is_a_valid_attack():
    attack = PGDAttack("Linf", 8 / 255, 2 / 255, 10)
    for schedule in (PhasedBudget(8 / 255), LinearEpsRamp(8 / 255, 5, 0.5)):
        for epoch in range(1, 201):
            attack.set_budget(schedule(epoch, 200))
    assert ConstantBudget(8 / 255, 2 / 255, 10)(7, 10) == AttackBudget(8 / 255, 2 / 255, 10)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: LinearEpsRamp(8 / 255, 5, 0.5)(0, 10), r"epoch=0 is outside 1..10"),
        (lambda: LinearEpsRamp(8 / 255, 5, 0.5)(11, 10), r"epoch=11 is outside 1..10"),
        (lambda: LinearEpsRamp(8 / 255, 5, 2.5), r"step_ratio=2.5 must be in \(0, 2\]"),
        (lambda: LinearEpsRamp(8 / 255, 0, 0.5), r"steps=0 must be >= 1"),
        (lambda: PhasedBudget(8 / 255, [(0.5, 2, 1.0)]), r"end at until_fraction 1.0"),
        (lambda: PhasedBudget(8 / 255, [(0.5, 2, 1.0), (0.4, 3, 0.5)]), r"must increase"),
        (lambda: PhasedBudget(8 / 255, [(1.0, 2)]), r"\[until_fraction, steps, step_ratio\]"),
        (lambda: ConstantBudget(0, 0.1, 3), r"eps=0 must be > 0"),
    ],
)
def test_schedule_validation(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_pgd_refuses_images_outside_the_unit_range() -> None:
    """0-255 pixels and normalised inputs are named, never silently clamped into [0, 1]."""
    from advtrain.errors import DataError

    model = _cnn()
    x, y = _batch()
    with pytest.raises(DataError, match=r"attack inputs .*0-255 pixel values: divide by 255"):
        pgd(model, x * 255, y, eps=8 / 255, step_size=2 / 255, steps=1)
    with pytest.raises(DataError, match=r"normalised inputs"):
        pgd(model, (x - 0.5) / 0.25, y, eps=8 / 255, step_size=2 / 255, steps=1)
    with pytest.raises(DataError, match=r"NaN"):
        pgd(model, torch.full_like(x, float("nan")), y, eps=8 / 255, step_size=2 / 255, steps=1)
    pgd(model, x.clamp(0, 1), y, eps=8 / 255, step_size=2 / 255, steps=1)  # in range: fine
