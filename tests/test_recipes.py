"""Every shipped experiment follows its official script epoch by epoch (docs/recipes.md).

For each `configs/exp/*.yaml` the per-epoch learning rate, attack eps, attack steps and step size that
the trainer logs in metrics.jsonl must equal a table written here from the official script's code
(file and function cited next to each table), at the experiment's full epoch count. Runs are shrunk
to a tiny model and one batch of 4 images per epoch:

* every experiment goes through `advtrain.train` -> `Trainer.fit` -> `MetricsLogger` with the training
  step and the checkpoint write stubbed out (the schedule objects, callbacks and logging are the real
  ones), so 200-epoch schedules cost well under a second;
* `cifar10_trades` (76 epochs) and `study_cifar10_gkl` also train for real, end to end.

Deliberate differences are listed per experiment with a phrase its header must contain, so a value
that differs from the official one without an explanation fails.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import compose_plain, group_options

import advtrain
from advtrain.cli import CONFIG_DIR
from advtrain.engine.build import build_optimization
from advtrain.engine.trainer import Trainer
from advtrain.utils.logging import read_metrics

EPS8 = 8 / 255

# ------------------------------------------------------------------------------------------------
# The official scripts, transcribed as schedules: (epoch 1-based) -> value
# ------------------------------------------------------------------------------------------------

# yaodongyu/TRADES @ 6e8e11b7c281371c2f027ffadfbaea80361f09de, train_trades_cifar10.py.
# argparse defaults: --epochs 76, --lr 0.1, --epsilon 0.031, --step-size 0.007, --num-steps 10
# (the README runs the script without arguments). main() calls adjust_learning_rate(optimizer,
# epoch) at the top of every epoch 1..76: lr = 0.1, then `if epoch >= 75: 0.1 * 0.1`,
# `if epoch >= 90: 0.1 * 0.01`, `if epoch >= 100: 0.1 * 0.001`.
TRADES_EPOCHS = 76


def trades_lr(epoch: int) -> float:
    lr = 0.1
    if epoch >= 75:
        lr = 0.1 * 0.1
    if epoch >= 90:
        lr = 0.1 * 0.01
    if epoch >= 100:
        lr = 0.1 * 0.001
    return lr


# YisenWang/MART @ 2d83e17b381dd2ee52223695e517bf6d5ff09c2c, train_wideresnet.py.
# argparse defaults: --epochs 90, --lr 0.1, --epsilon 0.031, --step-size 0.007, --num-steps 10.
# adjust_learning_rate(optimizer, epoch): `if epoch >= 100: 0.001x elif >= 90: 0.01x elif >= 75: 0.1x`.
MART_EPOCHS = 90


def mart_lr(epoch: int) -> float:
    if epoch >= 100:
        return 0.1 * 0.001
    if epoch >= 90:
        return 0.1 * 0.01
    if epoch >= 75:
        return 0.1 * 0.1
    return 0.1


# locuslab/robust_overfitting @ c47a25c5e00c8b2bb35488d962c04dd771b7e9af, train_cifar.py main():
# --epochs 200, --lr-schedule piecewise, --lr-max 0.1; per step i of 0-based epoch e the lr is
# lr_schedule(e + (i + 1) / len(train_batches)), piecewise(t) = 0.1 if t / 200 < 0.5, 0.01 if
# < 0.75, else 0.001. len(train_batches) = ceil(50,000 / 128) = 391 (DataLoader, no drop_last).
# Attack: --epsilon 8, --pgd-alpha 2 (both / 255), --attack-iters 10.
RICE_EPOCHS, RICE_STEPS = 200, 391


def rice_piecewise(t: float) -> float:
    if t / RICE_EPOCHS < 0.5:
        return 0.1
    if t / RICE_EPOCHS < 0.75:
        return 0.1 / 10.0
    return 0.1 / 100.0


def rice_step_lr(epoch: int, i: int) -> float:
    """The lr of step i (0-based) of 1-based `epoch`."""
    return rice_piecewise((epoch - 1) + (i + 1) / RICE_STEPS)


# jiequancui/DKL @ c5e8ad2e24ec53f3682a68db99de372fc80f59ca, DKLv2/Adv-training-dkl/
# train_dkl_cifar10.py (train_dkl_cifar100.py and DKLv1's scripts have the same functions);
# sh/train_dkl_*.sh: --lr 0.2 --epsilon 8 --train_budget high --epochs 200, --lr-warmup default 0.
def dkl_lr(epoch: int, epochs: int = 200, lr: float = 0.2, warmup: int = 0) -> float:
    """adjust_learning_rate_cosine(optimizer, epoch), called once per epoch."""
    if epoch < warmup:
        return lr / warmup * epoch
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup + 1)))


def dkl_budget(epoch: int, epochs: int = 200, eps: float = EPS8) -> tuple[float, int, float]:
    """train(): varepsilon = epsilon * (epoch / epochs) and the 'high' budget's four `if` blocks
    (not elif: the last one always wins, so every epoch runs 5 steps of varepsilon / 2)."""
    epoch_scale = epochs / 200.0
    varepsilon = eps * (epoch / epochs)
    step, iters = 0.0, 0
    if epoch <= int(50 * epoch_scale):
        step, iters = varepsilon, 2
    if epoch <= int(100 * epoch_scale):
        step, iters = 2 * varepsilon / 3, 3
    if epoch <= int(150 * epoch_scale):
        step, iters = varepsilon / 2, 4
    if epoch <= int(200 * epoch_scale):
        step, iters = varepsilon / 2, 5
    return varepsilon, iters, step


def constant_budget(
    eps: float, steps: int, step: float
) -> Callable[[int], tuple[float, int, float]]:
    return lambda epoch: (eps, steps, step)


def by_ranges(*ranges: tuple[int, int, float]) -> Callable[[int], float]:
    """A per-epoch table written as (first, last, lr) rows."""

    def lr(epoch: int) -> float:
        for first, last, value in ranges:
            if first <= epoch <= last:
                return value
        raise AssertionError(f"epoch {epoch} not in the table")

    return lr


# ------------------------------------------------------------------------------------------------
# The table per experiment
# ------------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    epochs: int
    lr: Callable[[int], float]
    budget: Callable[[int], tuple[float, int, float]]  # (eps, steps, step size)
    eval_mode: bool
    random_start: str
    #: metric -> (our value, a phrase the exp header must contain to explain the difference)
    differs: dict[str, tuple[float, str]] = field(default_factory=dict)
    official: bool = True  # False: not a paper setting (the table comes from its own header)


TRADES_MART_DIFFERS = {
    "eps": (EPS8, "the script writes 0.031"),
    "attack_step_size": (2 / 255, "0.007"),
}
GKL = Recipe(200, dkl_lr, dkl_budget, True, "normal")

RECIPES: dict[str, Recipe] = {
    "cifar10_trades": Recipe(
        TRADES_EPOCHS,
        trades_lr,
        constant_budget(0.031, 10, 0.007),
        True,
        "normal",
        differs=TRADES_MART_DIFFERS,
    ),
    "cifar10_mart": Recipe(
        MART_EPOCHS,
        mart_lr,
        constant_budget(0.031, 10, 0.007),
        True,
        "normal",
        differs=TRADES_MART_DIFFERS,
    ),
    "cifar10_pgdat": Recipe(
        RICE_EPOCHS,
        lambda e: rice_step_lr(e, 0),  # the logged lr is the epoch's first step's
        constant_budget(EPS8, 10, 2 / 255),
        False,  # train_cifar.py attacks the model in train mode
        "uniform",
    ),
    "cifar10_gkl": GKL,
    "cifar100_gkl": GKL,
    "cifar10_gkl_autoaug": GKL,
    "cifar100_gkl_autoaug": GKL,
    "cifar10_ikl": GKL,  # DKLv1/Adv-training-dkl/train_dkl_cifar10.py: the same two functions
    # No official training script (docs/gkl.md §10, oddity 12): the header's own recipe, per-iteration
    # cosine from 0.2 over 400 epochs (logged: the first step of each epoch), the GKL ramp.
    "cifar10_gkl_synthetic": Recipe(
        400,
        lambda e: 0.2 * 0.5 * (1 + math.cos(math.pi * (e - 1) / 400)),
        lambda e: dkl_budget(e, 400),
        True,
        "normal",
        official=False,
    ),
    # Not paper settings: tables from their headers.
    "smoke": Recipe(
        2,
        by_ranges((1, 1, 0.05), (2, 2, 0.05 * 0.01)),
        constant_budget(EPS8, 2, 4 / 255),
        True,
        "normal",
        official=False,
    ),
    "demo": Recipe(
        4,
        lambda e: 0.05 * 0.5 * (1 + math.cos(math.pi * (e - 1) / 4)),
        lambda e: dkl_budget(e, 4),
        True,
        "normal",
        official=False,
    ),
    "study_cifar10_gkl": Recipe(
        10, lambda e: dkl_lr(e, 10), lambda e: dkl_budget(e, 10), True, "normal", official=False
    ),
    "study_fmnist_gkl": Recipe(
        8,
        lambda e: dkl_lr(e, 8),
        lambda e: dkl_budget(e, 8, eps=0.1),
        True,
        "normal",
        official=False,
    ),
    "study_cifar10_pgdat": Recipe(
        10,
        by_ranges((1, 5, 0.1), (6, 7, 0.01), (8, 10, 0.001)),
        constant_budget(EPS8, 5, 4 / 255),
        False,
        "uniform",
        official=False,
    ),
    "study_fmnist_pgdat": Recipe(
        8,
        by_ranges((1, 4, 0.1), (5, 6, 0.01), (7, 8, 0.001)),
        constant_budget(0.1, 5, 0.05),
        False,
        "uniform",
        official=False,
    ),
    "study_cifar10_trades": Recipe(
        10,
        by_ranges((1, 7, 0.1), (8, 8, 0.01), (9, 10, 0.001)),
        constant_budget(EPS8, 5, 4 / 255),
        True,
        "normal",
        official=False,
    ),
    "study_fmnist_trades": Recipe(
        8,
        by_ranges((1, 5, 0.1), (6, 7, 0.01), (8, 8, 0.001)),
        constant_budget(0.1, 5, 0.05),
        True,
        "normal",
        official=False,
    ),
    # The ablation arms: the GKL loss under exactly the TRADES arms' schedule and attack budget.
    "study_cifar10_gkl_loss": Recipe(
        10,
        by_ranges((1, 7, 0.1), (8, 8, 0.01), (9, 10, 0.001)),
        constant_budget(EPS8, 5, 4 / 255),
        True,
        "normal",
        official=False,
    ),
    "study_fmnist_gkl_loss": Recipe(
        8,
        by_ranges((1, 5, 0.1), (6, 7, 0.01), (8, 8, 0.001)),
        constant_budget(0.1, 5, 0.05),
        True,
        "normal",
        official=False,
    ),
}

SHRINK = [
    "model=small_cnn",
    "model.width=2",
    "data.train_subset=4",
    "data.batch_size=4",
    "data.val_size=0",
    "trainer.test_examples=0",
    "trainer.progress=false",
    "trainer.keep_last=1",
]


def header(exp: str) -> str:
    """The exp file's leading comment as one line of text."""
    lines = []
    for line in (CONFIG_DIR / "exp" / f"{exp}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return re.sub(r"\s+", " ", " ".join(lines))


def expected_rows(recipe: Recipe) -> list[dict[str, float]]:
    rows = []
    for epoch in range(1, recipe.epochs + 1):
        eps, steps, step = recipe.budget(epoch)
        row = {"lr": recipe.lr(epoch), "eps": eps, "attack_steps": steps, "attack_step_size": step}
        for key, (ours, _) in recipe.differs.items():
            row[key] = ours
        rows.append(row)
    return rows


def assert_schedule(records: list[dict[str, Any]], recipe: Recipe) -> None:
    records = [r for r in records if not r.get("final") and "lr" in r]
    assert [r["epoch"] for r in records] == list(range(1, recipe.epochs + 1))
    for r, want in zip(records, expected_rows(recipe)):
        got = {k: r[k] for k in want}
        assert got["attack_steps"] == want["attack_steps"], (r["epoch"], got, want)
        for k in ("lr", "eps", "attack_step_size"):
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-15), (
                r["epoch"],
                k,
                got,
                want,
            )


@pytest.fixture(scope="module")
def stand_in_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small random sets shaped like CIFAR-10/100 and Fashion-MNIST (1,024 validation images + 8).

    The stubbed runs never look at pixels, and loading the real 140 MB CIFAR-10 file per experiment
    would cost a second each; there is no real CIFAR-100 here at all. Real runs use the real data.
    """
    folder = tmp_path_factory.mktemp("stand_in_data")
    rng = np.random.default_rng(0)
    for name, shape, classes in (
        ("cifar10", (32, 32, 3), 10),
        ("cifar100", (32, 32, 3), 100),
        ("fashion_mnist", (28, 28), 10),
    ):
        for split, n in (("train", 1032), ("test", 8)):
            np.savez(
                folder / f"{name}_{split}.npz",
                image=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                label=np.arange(n) % classes,
            )
    return folder


def shrunk_config(exp: str, run_dir: Path, data_dir: Path, extra: list[str] = ()) -> dict[str, Any]:
    overrides = [f"+exp={exp}", f"data.root={data_dir}", *SHRINK, *extra]
    if exp == "cifar10_gkl_synthetic":
        aux = run_dir.parent / f"{run_dir.name}_aux.npz"
        rng = np.random.default_rng(0)
        np.savez(
            aux,
            image=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8),
            label=np.arange(16) % 10,
        )
        overrides.append(f"data.aux_path={aux}")
    return compose_plain(overrides, run_dir=run_dir)


def test_every_experiment_has_a_table() -> None:
    assert sorted(RECIPES) == sorted(group_options("exp"))


@pytest.mark.parametrize("exp", sorted(RECIPES))
def test_logged_schedule_equals_the_official_table(
    exp: str, tmp_path: Path, stand_in_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedule the trainer logs over the full run, with the step itself stubbed out."""

    def fake_step(self: Trainer, x: Any, y: Any, iteration: int) -> dict[str, float]:
        self.lr_schedule(self.epoch, iteration)
        self.step += 1
        return {"loss": 0.0}

    monkeypatch.setattr(Trainer, "train_step", fake_step)
    monkeypatch.setattr(Trainer, "save", lambda self: None)
    recipe = RECIPES[exp]
    cfg = shrunk_config(exp, tmp_path / "run", stand_in_data)
    assert cfg["trainer"]["epochs"] == recipe.epochs
    advtrain.train(cfg)
    assert_schedule(read_metrics(tmp_path / "run"), recipe)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["attack"]["eval_mode"] is recipe.eval_mode
    assert saved["attack"]["random_start"] == recipe.random_start


@pytest.mark.parametrize("exp", sorted(RECIPES))
def test_differences_are_explained_in_the_header(exp: str) -> None:
    recipe = RECIPES[exp]
    text = header(exp)
    for key, (_, phrase) in recipe.differs.items():
        assert phrase in text, f"{exp}: {key} differs from the official script; say why"
    if recipe.official:  # names the official source: a commit, or the exp file that does
        assert re.search(r"commit [0-9a-f]{7}\b", text) or "exp/cifar10_gkl" in text, exp
    else:  # says it is no paper setting, or which experiment it scales
        assert "Not a paper setting" in text or re.search(r"exp/\w+", text), exp


@pytest.mark.parametrize("exp", ["cifar10_trades", "cifar10_mart", "cifar10_gkl"])
def test_lr_is_set_once_per_epoch_as_the_official_scripts(exp: str) -> None:
    cfg = compose_plain([f"+exp={exp}"])
    _, sched, _ = build_optimization(cfg, _Params(), steps_per_epoch=391)
    for epoch in range(1, cfg["trainer"]["epochs"] + 1):
        assert sched(epoch, 390) == sched(epoch, 0)


def test_rice_per_step_schedule_differs_only_where_the_header_says() -> None:
    """Rice et al. evaluate the piecewise function at the end-of-step position, so the last step of
    epochs 100 and 150 already runs at the next rate; we change at the epoch boundary."""
    cfg = compose_plain(["+exp=cifar10_pgdat"])
    _, sched, _ = build_optimization(cfg, _Params(), steps_per_epoch=RICE_STEPS)
    differ = [
        (epoch, i)
        for epoch in range(1, RICE_EPOCHS + 1)
        for i in range(RICE_STEPS)
        if not math.isclose(sched(epoch, i), rice_step_lr(epoch, i), rel_tol=1e-12)
    ]
    assert differ == [(100, RICE_STEPS - 1), (150, RICE_STEPS - 1)]
    text = header("cifar10_pgdat")
    assert "LAST step of epoch 100" in text and "last step of epoch 150" in text


class _Params:
    """A stand-in model for build_optimization (one parameter)."""

    def parameters(self) -> Any:
        import torch

        return iter([torch.nn.Parameter(torch.zeros(1))])


@pytest.mark.slow
@pytest.mark.parametrize("exp", ["cifar10_trades", "study_cifar10_gkl"])
def test_shrunk_real_run_logs_the_official_schedule(
    exp: str, tmp_path: Path, data_dir: Path
) -> None:
    """Real training steps (tiny CNN, one batch per epoch) at the full epoch count."""
    recipe = RECIPES[exp]
    result = advtrain.train(shrunk_config(exp, tmp_path / "run", data_dir))
    records = read_metrics(tmp_path / "run")
    assert_schedule(records, recipe)
    assert all(math.isfinite(r["train_loss"]) for r in records if "train_loss" in r)
    assert result.step == recipe.epochs  # one real optimiser step per epoch
