"""scripts/official_equivalence.py against a stand-in "official" checkout built from advtrain itself.

CI has no copy of github.com/jiequancui/DKL, so these tests write a small fake of it into tmp_path: a
`DKLv2/Adv-training-dkl/` folder whose `train_dkl_cifar10.py`, `utils_awp.py`, `utils/`, `models/` and `swa.py` have
the names, signatures and module-level objects the harness hooks into (`args`, `main`, `train`, `perturb_input`,
`adjust_learning_rate_cosine`, `Bar`, `AverageMeter`, `models.WideResNet`, the per-epoch checkpoints, the
`.cuda()` and `.float()` calls, the CIFAR10 dataset object at import), but compute with advtrain's own functions
(`pgd`, `gkl_loss`, `LRSchedule`, `WideResNet`). The harness must then report no difference, and a clear one
where a deliberate perturbation is injected, at the step where it first acts.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_TRAIN = '''
"""Stand-in for the official train_dkl_cifar10.py, computed with advtrain's functions."""
import argparse
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torchvision import datasets

import models
from utils import AverageMeter, Bar
from utils_awp import TradesAWP

from advtrain.attacks import pgd
from advtrain.engine.optim import LRSchedule
from advtrain.losses.gkl import gkl_loss, soft_cross_entropy

parser = argparse.ArgumentParser()
for name, kind, default in [
    ("--arch", str, "WideResNet"), ("--data", str, "CIFAR10"), ("--train_budget", str, "high"),
    ("--mark", str, "x"), ("--epsilon", float, 8.0), ("--lr", float, 0.1), ("--beta", float, 20.0),
    ("--alpha", float, 4.0), ("--T", float, 4.0), ("--gamma", float, 1.0), ("--seed", int, 0),
    ("--epochs", int, 200), ("--batch-size", int, 128), ("--awp-warmup", int, 10),
    ("--awp-gamma", float, 0.005), ("--model-dir", str, "./workdir"), ("--weight-decay", float, 5e-4),
    ("--momentum", float, 0.9),
]:
    parser.add_argument(name, type=kind, default=default)
parser.add_argument("--no-cuda", action="store_true")
args = parser.parse_args()
epsilon = args.epsilon / 255
NUM_CLASSES = 10
device = torch.device("cpu")
model_dir = os.path.join(args.model_dir, args.mark)
os.makedirs(model_dir, exist_ok=True)
torch.manual_seed(args.seed)
trainset = getattr(datasets, args.data)(root=".", train=True, download=True, transform=None)
train_loader = torch.utils.data.DataLoader(trainset, batch_size=args.batch_size, shuffle=True)
test_loader = torch.utils.data.DataLoader(trainset, batch_size=args.batch_size)


def perturb_input(model, x_natural, step_size=0.003, epsilon=0.031, perturb_steps=10, CLASS_PRIOR=None):
    model.eval()
    with torch.no_grad():
        nat = model(x_natural)
    labels = torch.zeros(len(x_natural), dtype=torch.long)
    return pgd(model, x_natural, labels, norm="Linf", eps=epsilon, step_size=step_size, steps=perturb_steps,
               objective=lambda logits, y, _: 1.0 * soft_cross_entropy(logits, nat), random_start="normal")


def train(model, train_loader, optimizer, epoch, awp_adversary, start_wa, tau_list, exp_avgs, weight=None):
    batch_time, losses, top1 = AverageMeter(), AverageMeter(), AverageMeter()
    bar = Bar("Processing", max=len(train_loader))
    WEIGHT = torch.zeros(NUM_CLASSES, NUM_CLASSES).cuda()
    weight = weight if weight is not None else torch.ones(NUM_CLASSES, NUM_CLASSES).cuda() / NUM_CLASSES
    for data, target in train_loader:
        eps_t = epsilon * epoch / args.epochs
        onehot = F.one_hot(target, NUM_CLASSES).float()
        prior = onehot @ weight
        x_adv = perturb_input(model, data, step_size=0.5 * eps_t, epsilon=eps_t, perturb_steps=5,
                              CLASS_PRIOR=prior)
        model.train()
        if epoch >= args.awp_warmup:
            awp = awp_adversary.calc_awp(x_adv, data, target, prior, args.alpha, args.beta, args.gamma)
            awp_adversary.perturb(awp)
        logits_adv, logits_nat = model(x_adv), model(data)
        with torch.no_grad():  # summed in float64 like advtrain's tracker
            probs = F.softmax(logits_nat.detach().double() / args.T, dim=1)
            WEIGHT = WEIGHT + (onehot.t().double() @ probs).to(WEIGHT.dtype)
        loss = F.cross_entropy(logits_nat, target) + gkl_loss(
            logits_adv, logits_nat, prior, alpha=args.alpha, beta=args.beta, gamma=args.gamma)
        losses.update(loss.item(), len(target))
        top1.update(100.0 * (logits_adv.argmax(1) == target).float().mean().item(), len(target))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if epoch >= args.awp_warmup:
            awp_adversary.restore(awp)
        for start_ep, tau, avg in zip(start_wa, tau_list, exp_avgs):  # an EMA that copies, no aliasing
            for key, value in model.state_dict().items():
                if epoch <= start_ep or not value.is_floating_point():
                    avg[key] = value.detach().clone()
                else:
                    avg[key] = avg[key].lerp(value, 1 - tau)
        bar.next()
    bar.finish()
    return losses.avg, top1.avg, WEIGHT / WEIGHT.sum(dim=1, keepdim=True)


def adjust_learning_rate_cosine(optimizer, epoch):
    lr = LRSchedule(args.lr, args.epochs, 1, "cosine_official", per_iteration=False)(epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def main():
    model = nn.DataParallel(getattr(models, args.arch)(num_classes=NUM_CLASSES)).to(device)
    optimizer = optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    proxy = nn.DataParallel(getattr(models, args.arch)(num_classes=NUM_CLASSES)).to(device)
    awp = TradesAWP(model, proxy, optim.SGD(proxy.parameters(), lr=args.lr), args.awp_gamma)
    start_wa, tau_list, exp_avgs = [(150 * args.epochs) // 200], [0.9996], [{}]
    weight = None
    for epoch in range(1, args.epochs + 1):
        adjust_learning_rate_cosine(optimizer, epoch)
        _, _, weight = train(model, train_loader, optimizer, epoch, awp, start_wa, tau_list, exp_avgs, weight=weight)
        torch.save(model.state_dict(), os.path.join(model_dir, "ours-model-epoch{}.pt".format(epoch)))


if __name__ == "__main__":
    main()
'''

FAKE_AWP = """
import torch
import torch.nn.functional as F

from advtrain.losses.gkl import gkl_loss


class TradesAWP:
    def __init__(self, model, proxy, proxy_optim, gamma):
        self.model, self.proxy, self.proxy_optim, self.gamma = model, proxy, proxy_optim, gamma

    def calc_awp(self, inputs_adv, inputs_clean, targets, prior, alpha, beta, gamma):
        self.proxy.load_state_dict(self.model.state_dict())
        self.proxy.train()
        logits_adv, logits_nat = self.proxy(inputs_adv), self.proxy(inputs_clean)
        loss = F.cross_entropy(logits_nat, targets) + gkl_loss(logits_adv, logits_nat, prior, alpha=alpha,
                                                               beta=beta, gamma=gamma)
        self.proxy_optim.zero_grad(set_to_none=True)
        (-loss).backward()
        self.proxy_optim.step()
        proxy = dict(self.proxy.named_parameters())
        diff = {}
        for name, p in self.model.named_parameters():
            if p.dim() > 1 and "weight" in name:
                delta = proxy[name].detach() - p.detach()
                diff[name] = p.detach().norm() / (delta.norm() + 1e-20) * delta
        return diff

    def perturb(self, diff):
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name in diff:
                    p.add_(diff[name], alpha=self.gamma)

    def restore(self, diff):
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name in diff:
                    p.sub_(diff[name], alpha=self.gamma)
"""

FAKE_UTILS = """
from progress.bar import Bar


class AverageMeter:
    def __init__(self):
        self.val = self.avg = self.sum = self.count = 0

    def update(self, val, n=1):
        self.val = val
        self.sum += val * n
        self.count += n
        self.avg = self.sum / self.count
"""

FAKE_MODELS = """
from advtrain.models.wide_resnet import WideResNet as _WideResNet


def WideResNet(depth=34, num_classes=10, widen_factor=10):
    return _WideResNet(num_classes, depth=depth, widen_factor=widen_factor)
"""

FAKE_SWA = """
import os
import sys

import torch

checkpoint = sys.argv[1] + "/ours-model-epoch{}.pt"
tau, start, end = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
avg = {}
for i in range(start, end + 1):
    state = torch.load(checkpoint.format(i))
    for key, value in state.items():
        avg[key] = value.clone() if i == start or not value.is_floating_point() else avg[key].lerp(value, 1 - tau)
torch.save(avg, os.path.join(sys.argv[1], "ours-model-epoch-SWA{}{}{}.pt".format(tau, start, end)))
"""


def _write_fake_checkout(root: Path) -> Path:
    folder = root / "DKLv2" / "Adv-training-dkl"
    files = {
        "train_dkl_cifar10.py": FAKE_TRAIN,
        "utils_awp.py": FAKE_AWP,
        "utils/__init__.py": FAKE_UTILS,
        "models/__init__.py": FAKE_MODELS,
        "swa.py": FAKE_SWA,
    }
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (root / "COMMIT").write_text("stand-in-for-tests\n")
    return root


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "official_equivalence", REPO / "scripts" / "official_equivalence.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_fake_checkout(tmp_path_factory.mktemp("fake_dkl"))


# Epoch 1 without AWP on uniform class weights, epoch 2 with AWP, the collected weights and a larger eps. float64
# with our logits kept in float64 (the harness's target setting): rounding stays near 1e-15 whatever the order of
# operations, so "no difference" does not depend on the stand-in mirroring our trainer operation by operation.
TINY = [
    "--variant", "gkl", "--epochs", "2", "--steps-per-epoch", "2", "--batch", "8", "--depth", "10",
    "--width", "1", "--awp-warmup", "2", "--data", "random", "--threads", "1",
]  # fmt: skip
FLOAT64 = ["--ours-mode", "float64-logits"]


def _run(harness: ModuleType, fake_dir: Path, out: Path, *extra: str) -> dict[str, Any]:
    return harness.main([str(fake_dir), *TINY, "--out", str(out), *extra])


def test_harness_reports_no_difference_against_an_identical_loop(
    harness: ModuleType, fake_dir: Path, tmp_path: Path
) -> None:
    report = _run(harness, fake_dir, tmp_path / "out", *FLOAT64, "--compare-ema")
    (run,) = report["runs"]
    cmp = run["comparison"]
    assert len(cmp["steps"]) == 4 and len(cmp["epochs"]) == 2
    m = cmp["max"]
    for key in (
        "weights_rel_diff",
        "x_adv_rel_diff",
        "class_weights_rel_diff",
        "loss_rel_diff",
        "average_rel_diff",
        "lr_rel_diff",
        "budget_rel_diff",
    ):
        assert m[key] < 1e-12, (key, m[key])
    assert m["adv_acc_mismatches"] == 0 and m["nonfinite_loss_steps"] == 0
    # --compare-ema: the stand-in's in-loop EMA (start_wa = 1 of 2 epochs) against our trainer.ema_decay.
    assert m["ema_rel_diff"] is not None and m["ema_rel_diff"] < 1e-12
    assert sum("ema_rel_diff" in r for r in cmp["steps"]) == 4
    assert cmp["within_target"] and cmp["first_step_above_target"] is None
    # The class matrix collected in epoch 1 is far from uniform, so epoch 2 really uses class weights.
    assert cmp["epochs"][0]["class_weights_new_from_uniform"] > 1e-3
    assert report["official_commit"] == "stand-in-for-tests"
    # The results folder: a table, the JSON, the plot, the command.
    out = tmp_path / "out"
    saved = json.loads((out / "equivalence.json").read_text())
    assert saved["command"].startswith("python scripts/official_equivalence.py ")
    assert (out / "rel_weight_diff.png").stat().st_size > 1000
    assert "| step | epoch |" in (out / "table.md").read_text()


def test_a_different_awp_gamma_shows_from_the_first_awp_step(
    harness: ModuleType, fake_dir: Path, tmp_path: Path
) -> None:
    report = _run(
        harness,
        fake_dir,
        tmp_path / "out",
        *FLOAT64,
        "--official-arg=--awp-gamma=0.01",
        "--no-write",
    )
    steps = report["runs"][0]["comparison"]["steps"]
    # Epoch 1 has no AWP: identical. Epoch 2 (steps 3, 4) perturbs with a different gamma: the weights differ.
    assert max(r["weights_rel_diff"] for r in steps[:2]) < 1e-12
    assert steps[2]["weights_rel_diff"] > 1e-6
    assert report["runs"][0]["comparison"]["first_step_above_target"] in (3, 4)
    assert not report["runs"][0]["comparison"]["within_target"]


def test_a_wrong_learning_rate_shows_at_the_first_step(
    harness: ModuleType, fake_dir: Path, tmp_path: Path
) -> None:
    report = _run(
        harness, fake_dir, tmp_path / "out", *FLOAT64, "--ours-override=optim.lr=0.19", "--no-write"
    )
    cmp = report["runs"][0]["comparison"]
    assert cmp["steps"][0]["lr_rel_diff"] > 0.01
    assert cmp["steps"][0]["x_adv_rel_diff"] < 1e-12  # the attack of step 1 precedes any update
    assert cmp["steps"][0]["weights_rel_diff"] > 1e-4
    assert cmp["first_step_above_target"] == 1


def test_float32_runs_without_the_float64_shims(
    harness: ModuleType, fake_dir: Path, tmp_path: Path
) -> None:
    report = _run(harness, fake_dir, tmp_path / "out", "--dtype", "float32", "--no-write")
    (run,) = report["runs"]  # in float32 our side runs once: .float() is a no-op there
    first = run["comparison"]["steps"][0]
    # Step 1 only: later float32 steps may drift apart through rounding (docs/official_equivalence.md).
    assert first["x_adv_rel_diff"] == 0.0 and first["class_weights_rel_diff"] == 0.0
    assert first["weights_rel_diff"] < 1e-5 and first["loss_rel_diff"] < 1e-5
    assert report["setting"]["dtype"] == "float32"


def test_relative_difference_flags_one_sided_nan(harness: ModuleType) -> None:
    import torch

    a = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    b = torch.tensor([[0.5, 0.5], [float("nan"), float("nan")]])
    assert harness.rel_diff(a, b) == float("inf")
    assert harness.rel_diff(b, b) == 0.0
    assert harness.rel_diff(a * (1 + 1e-3), a) == pytest.approx(1e-3, rel=1e-3)
