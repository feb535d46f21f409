"""A re-implementation of how the official GKL script trains: the test oracle of our trainer.

Written from the description of the official recipe in docs/gkl.md §8
(no official code is copied). It lives under tests/ because it is scaffolding, not product: the
tests compare our loss, attack and training step with it, and the `official_loop` benchmark
(benchmarks/official_loop.py) times our trainer against it.

* data: a torchvision-style `Dataset` over uint8 HWC arrays whose `__getitem__` makes a PIL image
  and applies RandomCrop(32, padding 4) + RandomHorizontalFlip + ToTensor per sample, batched by
  a `DataLoader`;
* model: NCHW float32, eager;
* attack (`official_perturb`): eval mode, start x + 0.001 N(0, 1), then per step the loss
  `dkl_loss(model(x_adv), model(x_nat), prior)` with the natural logits *recomputed* (with
  autograd recording) every step, sign step, projection, clamp;
* loss: the pairwise (B, C, C) `dkl_loss` + CE(nat), prior `one_hot(y) @ W`, class-matrix
  accumulator `A += one_hot(y)^T softmax(nat / T)`; SGD step.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "OfficialLoop",
    "PILCifarDataset",
    "check_same_math",
    "official_dkl_loss",
    "official_perturb",
    "official_train_transform",
]


class PILCifarDataset(torch.utils.data.Dataset):
    """torchvision-CIFAR-style dataset: uint8 HWC arrays -> PIL -> per-sample transform."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images = images_hwc
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        from PIL import Image

        img = Image.fromarray(self.images[index])
        return self.transform(img), int(self.labels[index])


def official_train_transform() -> Any:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor, as the official scripts."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
        ]
    )


def official_dkl_loss(
    logits_student: Tensor,
    logits_teacher: Tensor,
    class_prior: Tensor,
    *,
    alpha: float,
    beta: float,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """The pairwise GKL term (docs/gkl.md §3): (B, C, C) differences and pair weights.

    wMSE = ¼ Σ_b Σ_jk P_b,jk ((t_j - t_k) - (s_j - s_k))² / Σ P, P = v ⊗ v, v = prior**gamma;
    softCE = mean_b -Σ_j sg(softmax(t/τ))_j log softmax(s/τ)_j; returns beta·wMSE + alpha·softCE.
    """
    with torch.no_grad():
        v = class_prior.pow(gamma)
        pair_w = v[:, :, None] * v[:, None, :]
    ds = logits_student[:, :, None] - logits_student[:, None, :]
    dt = logits_teacher[:, :, None] - logits_teacher[:, None, :]
    wmse = (pair_w * (dt - ds).pow(2)).sum() / 4.0 / pair_w.sum()
    target = F.softmax(logits_teacher.detach() / temperature, dim=1)
    sce = -(target * F.log_softmax(logits_student / temperature, dim=1)).sum(1).mean()
    return beta * wmse + alpha * sce


def official_perturb(
    model: nn.Module,
    x_nat: Tensor,
    prior: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    noise: Tensor,
    alpha: float = 1.0,
    beta: float = 0.0,
    gamma: float = 1.0,
) -> Tensor:
    """The official attack loop: natural logits recomputed (and recorded) at every step.

    `noise` is the N(0, 1) draw of the start x + 0.001 noise (passed in so a check can give both
    implementations the same start). The model is put in eval mode and left there, as officially.
    """
    model.eval()
    x_adv = x_nat.detach() + 0.001 * noise
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss = official_dkl_loss(
                model(x_adv), model(x_nat), prior, alpha=alpha, beta=beta, gamma=gamma
            )
        (grad,) = torch.autograd.grad(loss, [x_adv])
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_nat - eps), x_nat + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


class OfficialLoop:
    """The official per-batch training step on its own model copy and SGD optimiser."""

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        eps: float,
        step_size: float,
        steps: int,
        lr: float,
        loss_cfg: dict[str, Any],
        seed: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
        dev = next(model.parameters()).device
        self.num_classes = num_classes
        self.weights = torch.full((num_classes, num_classes), 1.0 / num_classes, device=dev)
        self.accumulator = torch.zeros(num_classes, num_classes, device=dev)
        self.eps, self.step_size, self.steps = eps, step_size, steps
        self.c = loss_cfg
        self.gen = torch.Generator(device=dev).manual_seed(seed + 1)

    def prior(self, y: Tensor) -> Tensor:
        return F.one_hot(y, self.num_classes).to(self.weights.dtype) @ self.weights

    def loss(self, logits_adv: Tensor, logits_nat: Tensor, y: Tensor, prior: Tensor) -> Tensor:
        c = self.c
        return F.cross_entropy(logits_nat, y) + official_dkl_loss(
            logits_adv, logits_nat, prior, alpha=c["alpha"], beta=c["beta"], gamma=c["gamma"]
        )

    def step(self, x: Tensor, y: Tensor) -> Tensor:
        c = self.c
        prior = self.prior(y)
        noise = torch.randn(x.shape, generator=self.gen, device=x.device)
        x_adv = official_perturb(
            self.model,
            x,
            prior,
            eps=self.eps,
            step_size=self.step_size,
            steps=self.steps,
            noise=noise,
            alpha=c["attack_alpha"],
            beta=c["attack_beta"],
            gamma=c["attack_gamma"],
        )
        self.model.train()
        logits_adv = self.model(x_adv)
        logits_nat = self.model(x)
        loss = self.loss(logits_adv, logits_nat, y, prior)
        with torch.no_grad():
            onehot = F.one_hot(y, self.num_classes).float()
            self.accumulator += onehot.T @ F.softmax(
                logits_nat.detach() / c["weight_temperature"], dim=1
            )
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


# --------------------------------------------------------------------------------------------
# equivalence checks
# --------------------------------------------------------------------------------------------


def check_same_math(
    trainer: Any, official: OfficialLoop, x: Tensor, y: Tensor, seed: int = 0
) -> dict[str, Any]:
    """Same weights, same batch: do both sides compute the same x_adv and the same loss?

    A non-uniform class matrix W (as after an epoch) is installed on both sides first, so the
    check covers the pair weights. Both attacks start from the same N(0, 1) draw; ours runs in
    NCHW float32 here (like the official one), so in eval mode the adversarial examples must agree
    exactly when the batch size is a power of two (the official batch mean only rescales the
    gradient by 1/B then). The losses are then evaluated on the *same* x_adv in train mode, on
    throw-away copies of each model (BatchNorm statistics of the benchmarked models stay as they
    are), and compared to float32 precision.
    """
    from advtrain.attacks import pgd

    gen = torch.Generator().manual_seed(seed + 123)
    c = official.num_classes
    w = torch.softmax(torch.randn(c, c, generator=gen) * 2, dim=1).to(x.device)
    ours_model = copy.deepcopy(trainer.unwrapped_model).to(memory_format=torch.contiguous_format)
    off_model = copy.deepcopy(official.model)
    loss_mod = copy.deepcopy(trainer.loss)
    loss_mod.tracker.weights.copy_(w)
    x = x.contiguous()
    prior = F.one_hot(y, c).float() @ w

    ours_model.eval()
    att = trainer.attack
    start_gen = torch.Generator(device=x.device).manual_seed(seed + 7)
    start_state = start_gen.get_state()
    x_adv_ours = pgd(
        ours_model,
        x,
        y,
        norm=att.norm,
        eps=att.eps,
        step_size=att.step_size,
        steps=att.steps,
        objective=loss_mod.attack_objective(),
        random_start="normal",
        generator=start_gen,
    )
    start_gen.set_state(start_state)
    noise = torch.randn(x.shape, generator=start_gen, device=x.device)
    lc = official.c
    x_adv_off = official_perturb(
        off_model,
        x,
        prior,
        eps=att.eps,
        step_size=att.step_size,
        steps=att.steps,
        noise=noise,
        alpha=lc["attack_alpha"],
        beta=lc["attack_beta"],
        gamma=lc["attack_gamma"],
    )
    diff = (x_adv_ours - x_adv_off).abs()
    same = (diff == 0).float().mean().item()
    close = (diff <= 1e-6).float().mean().item()
    max_diff_adv = diff.max().item()

    ours_model.train()
    off_model.train()
    out = loss_mod(ours_model(x_adv_ours), ours_model(x), y, update_state=False)
    la, ln = off_model(x_adv_ours), off_model(x)
    off_loss = official.loss(la, ln, y, prior)
    a, b = float(out.loss.detach()), float(off_loss.detach())
    rel = abs(a - b) / max(abs(b), 1e-12)
    return {
        "batch": int(x.shape[0]),
        "x_adv_identical_fraction": same,
        "x_adv_within_1e-6_fraction": close,
        "x_adv_max_abs_diff": max_diff_adv,
        "loss_ours": a,
        "loss_official": b,
        "loss_rel_diff": rel,
        "same_loss": rel < 1e-5,
        # The projections round differently (ours clamps x - x0, theirs min/max against
        # x0 -+ eps), so a 1-ulp difference can flip the sign of a near-zero gradient later.
        "same_x_adv": close >= 0.999,
    }
