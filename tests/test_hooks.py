"""The trainer's contract: callbacks and losses are reached through declared hooks only.

A callback the trainer has never heard of gets every hook at the right moment, its weight average is
what the trainer evaluates, and the loss's running state is reset through `RobustLoss`'s hook; the
modules of the hook contract do not import the trainer (no callbacks <-> trainer import circle).
"""

from __future__ import annotations

import ast
import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advtrain.engine.hooks import Batch, Callback, LoopState
from advtrain.losses import GKLLoss
from benchmarks.harness import build_trainer, train_config

ENGINE = Path(__file__).resolve().parents[1] / "advtrain" / "engine"


class Recorder(Callback):
    """Records the hooks it receives; keeps a frozen copy of the model as its 'average'."""

    name = "recorder"

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[Any] = []
        self.average = copy.deepcopy(model).eval()

    def on_epoch_start(self, loop: LoopState, epoch: int) -> None:
        self.calls.append(("epoch_start", epoch))

    def on_epoch_resume(self, loop: LoopState, epoch: int) -> None:
        self.calls.append(("epoch_resume", epoch))

    def before_update(self, loop: LoopState, batch: Batch) -> None:
        assert batch.x_adv is not None and batch.x_adv.shape == batch.x.shape
        self.calls.append("before")

    def after_update(self, loop: LoopState, batch: Batch) -> None:
        assert batch.applied is not None and batch.applied.dtype == torch.bool
        self.calls.append(("after", bool(batch.applied)))  # a sync, fine in a test

    def averaged_model(self) -> nn.Module | None:
        return self.average


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_an_unknown_callback_gets_every_hook_and_its_average_is_evaluated(tmp_path: Path) -> None:
    cfg = train_config(
        model="small_cnn",
        loss="pgdat",
        model_kwargs={"width": 4},
        batch_size=8,
        attack_kwargs={"steps": 1, "step_size": 2 / 255},
        trainer_kwargs={"nonfinite": "skip", "channels_last": False},
    )
    trainer = build_trainer(cfg, torch.device("cpu"), run_dir=tmp_path)
    recorder = Recorder(trainer.unwrapped_model)
    trainer.callbacks.append(recorder)
    trainer.begin_epoch()
    x, y = _batch()
    trainer.train_step(x, y, 0)

    inner = trainer.loss.forward

    def nan_forward(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    trainer.loss.forward = nan_forward  # type: ignore[method-assign]
    trainer.train_step(x, y, 1)  # dropped (trainer.nonfinite=skip), known on the device only
    assert recorder.calls == [
        ("epoch_start", 1),
        "before",
        ("after", True),
        "before",
        ("after", False),
    ]
    interval = trainer.settle()  # reads the device-side guard: one skipped batch, one update
    assert interval is not None and len(interval.skipped) == 1
    assert trainer.step == 1
    # the last callback holding an average is what the trainer validates and exports
    assert trainer.eval_model is recorder.average


def test_awp_removes_its_perturbation_when_the_batch_is_dropped(tmp_path: Path) -> None:
    cfg = train_config(
        model="small_cnn",
        loss="trades",
        model_kwargs={"width": 4},
        batch_size=8,
        attack_kwargs={"steps": 1, "step_size": 2 / 255},
        trainer_kwargs={
            "nonfinite": "skip",
            "channels_last": False,
            "awp_gamma": 0.01,
            "awp_warmup_epochs": 1,
        },
    )
    trainer = build_trainer(cfg, torch.device("cpu"), run_dir=tmp_path)
    trainer.begin_epoch()
    before = {k: v.detach().clone() for k, v in trainer.unwrapped_model.named_parameters()}
    inner = trainer.loss.forward
    calls = [0]
    seen: dict[str, torch.Tensor] = {}

    def nan_training_forward(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:  # the 1st call is AWP's proxy step, the 2nd the training loss
            seen.update(
                (k, v.detach().clone()) for k, v in trainer.unwrapped_model.named_parameters()
            )
            out.loss = out.loss * float("nan")
        return out

    trainer.loss.forward = nan_training_forward  # type: ignore[method-assign]
    x, y = _batch()
    trainer.train_step(x, y, 0)
    interval = trainer.settle()
    assert interval is not None and interval.taken == 0 and len(interval.skipped) == 1
    assert any(not torch.equal(seen[k], before[k]) for k in before)  # AWP did perturb the weights
    # (BatchNorm statistics moved with the forward passes; the weights must be back where they were)
    for key, value in trainer.unwrapped_model.named_parameters():
        assert torch.allclose(value, before[key], rtol=0, atol=1e-6), key


def test_gkl_resets_only_its_running_sums_through_the_loss_hook() -> None:
    loss = GKLLoss(10)
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(16, 10, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    loss.update_state(logits, logits, y)
    loss.on_epoch_end(1)
    published = loss.tracker.weights.clone()
    loss.update_state(logits, logits, y)
    assert loss.tracker.accumulator.abs().sum() > 0 and loss.tracker.counts.sum() == 16
    loss.reset_running_state()
    assert loss.tracker.accumulator.abs().sum() == 0 and loss.tracker.counts.sum() == 0
    assert torch.equal(loss.tracker.weights, published)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_hook_contract_does_not_import_the_trainer() -> None:
    """hooks.py and callbacks.py name no trainer module, not even for type checking."""
    for name in ("hooks.py", "callbacks.py"):
        assert "advtrain.engine.trainer" not in _imports(ENGINE / name), name


def test_the_trainer_asks_no_callback_or_loss_what_it_is() -> None:
    """No branching on callback names, no attribute probing, no reaching into a loss's internals."""
    source = (ENGINE / "trainer.py").read_text()
    for pattern in (".name ==", "getattr(", "hasattr(", "isinstance(cb", "tracker"):
        assert pattern not in source, pattern
