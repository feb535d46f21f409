"""No host sync inside a training step (#15).

Every way Python can read a tensor's value back (``item``, ``bool``, ``float``, ``int``, ``index``,
``tolist``, NumPy conversion, ``torch.equal``, ``nonzero``), and every read made inside C++ that the
profiler records (``aten::_local_scalar_dense``, ``aten::item``, ...), is counted while
`Trainer.train_step` runs; after one warm-up step (which checks the input range once) a step must make none, for
PGD-AT, TRADES and GKL with AWP and the EMA on, with gradient clipping, and also for a step whose
loss is NaN (the non-finite guard decides on the device). On a CUDA machine the same steps also
run under ``torch.cuda.set_sync_debug_mode("error")``, which catches the syncs made inside C++.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.harness import build_trainer, train_config

CPP_READS = ("aten::_local_scalar_dense", "aten::item", "aten::equal", "aten::nonzero")
READERS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "__array__")


@contextlib.contextmanager
def count_reads() -> Iterator[list[str]]:
    """Record every Python-level read of a tensor's value (the host syncs on a GPU)."""
    calls: list[str] = []
    saved: dict[tuple[Any, str], Any] = {}

    def wrap(owner: Any, name: str) -> None:
        original = getattr(owner, name)
        saved[(owner, name)] = original

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return original(*args, **kwargs)

        setattr(owner, name, counted)

    for name in READERS:
        wrap(torch.Tensor, name)
    wrap(torch.Tensor, "nonzero")
    wrap(torch, "equal")
    wrap(torch, "nonzero")
    try:
        # The profiler also sees reads made inside C++ (an op reading a value back to check it).
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            yield calls
    finally:
        for (owner, name), original in saved.items():
            setattr(owner, name, original)
    calls.extend(e.key for e in prof.key_averages() for _ in range(e.count) if e.key in CPP_READS)


def _trainer(loss: str, device: torch.device, **trainer: Any) -> Any:
    cfg = train_config(
        model="small_cnn",
        loss=loss,
        model_kwargs={"width": 4},
        batch_size=8,
        attack_kwargs={"steps": 2},
        trainer_kwargs={
            "channels_last": False,
            "autocast": False,
            "awp_gamma": 0.005,
            "awp_warmup_epochs": 1,
            "ema_decay": 0.99,
            "grad_clip": 10.0,
            **trainer,
        },
    )
    cfg["device"] = device.type
    torch.manual_seed(0)
    return build_trainer(cfg, device)


def _batch(device: torch.device, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 32, 32, generator=g)
    return x.to(device), (torch.arange(n) % 10).to(device)


LOSSES = ["pgdat", "trades", "gkl"]


def test_the_counter_sees_reads() -> None:
    """The instrument itself: each kind of read it promises to see is seen."""
    t = torch.ones(3)
    with count_reads() as calls:
        t.sum().item()
        bool(t[0])
        float(t[0])
        int(t[0])
        t.tolist()
        np.asarray(t)
        torch.equal(t, t)
        torch.nn.functional.one_hot(torch.arange(3))  # reads max(y) back inside C++
    assert calls[:5] == ["item", "__bool__", "__float__", "__int__", "tolist"]
    assert {"__array__", "numpy"} & set(calls) and "equal" in calls
    assert "aten::_local_scalar_dense" in calls


@pytest.mark.parametrize("loss", LOSSES)
def test_a_training_step_reads_nothing_back(loss: str) -> None:
    cpu = torch.device("cpu")
    trainer = _trainer(loss, cpu)
    assert {type(cb).__name__ for cb in trainer.callbacks} >= {"AWP", "ModelEMA"}
    x, y = _batch(cpu)
    trainer.train_step(x, y, 0)  # warm-up: the one input-range check, optimiser state created
    before = [p.detach().clone() for p in trainer.unwrapped_model.parameters()]
    with count_reads() as calls:
        for i in range(1, 3):
            trainer.train_step(x, y, i)
    assert calls == [], calls
    interval = trainer.settle()
    assert interval is not None and interval.taken == 3 and trainer.step == 3
    assert all(np.isfinite(v) for v in interval.sums.values())
    changed = any(
        not torch.equal(p, q) for p, q in zip(trainer.unwrapped_model.parameters(), before)
    )
    assert changed  # the steps did train


@pytest.mark.parametrize("loss", LOSSES)
def test_a_nonfinite_step_reads_nothing_back_and_changes_nothing(loss: str) -> None:
    cpu = torch.device("cpu")
    trainer = _trainer(loss, cpu, nonfinite="skip")
    x, y = _batch(cpu)
    trainer.train_step(x, y, 0)
    weights = [p.detach().clone() for p in trainer.unwrapped_model.parameters()]
    ema = [t.detach().clone() for t in trainer.eval_model.state_dict().values()]
    momentum = [v.clone() for s in trainer.optimizer.state.values() for v in s.values()]
    loss_state = [t.clone() for t in trainer.loss.state_dict().values()]
    inner = trainer.loss.forward
    calls_made = [0]

    def nan_forward(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        calls_made[0] += 1
        if calls_made[0] == 2:  # the 1st call is AWP's proxy step, the 2nd the training loss
            out.loss = out.loss * float("nan")
        return out

    trainer.loss.forward = nan_forward
    with count_reads() as calls:
        trainer.train_step(x, y, 1)
    assert calls == [], calls
    trainer.loss.forward = inner
    for p, q in zip(trainer.unwrapped_model.parameters(), weights):
        assert torch.allclose(p, q, rtol=0, atol=1e-6)  # AWP's perturbation removed again
    # the EMA is not blended with a dropped step (BatchNorm statistics included)
    assert all(torch.equal(a, b) for a, b in zip(trainer.eval_model.state_dict().values(), ema))
    assert all(
        torch.equal(a, b)
        for a, b in zip([v for s in trainer.optimizer.state.values() for v in s.values()], momentum)
    )
    assert all(torch.equal(a, b) for a, b in zip(trainer.loss.state_dict().values(), loss_state))
    interval = trainer.settle()
    assert interval is not None and interval.taken == 1 and len(interval.skipped) == 1
    assert trainer.step == 1 and trainer._stats.skipped == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("loss", LOSSES)
def test_cuda_step_passes_sync_debug_mode_error(loss: str) -> None:
    cuda = torch.device("cuda")
    trainer = _trainer(loss, cuda)
    x, y = _batch(cuda)
    trainer.train_step(x, y, 0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 3):
            trainer.train_step(x, y, i)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert trainer.settle().taken == 3


@pytest.mark.slow
def test_step_lines_after_a_skipped_batch(
    tmp_path: Any, data_dir: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`trainer.log_every_steps=1` with a batch skipped on the device: one line per applied update,
    numbered 1, 2, 3, ... without a gap or a repeat (the step count is corrected at each settle)."""
    from helpers import compose_plain

    import advtrain
    import advtrain.engine.api as api
    from advtrain.utils.logging import read_metrics

    build, count = api.build_loss, [0]

    def build_loss(cfg: dict[str, Any]) -> Any:
        loss = build(cfg)
        inner = loss.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            count[0] += 1
            if count[0] == 2:
                out.loss = out.loss * float("nan")
            return out

        loss.forward = forward
        return loss

    monkeypatch.setattr(api, "build_loss", build_loss)
    cfg = compose_plain(
        [
            "+exp=smoke",
            f"data.root={data_dir}",
            "data.train_subset=128",
            "data.batch_size=32",
            "trainer.val_examples=32",
            "trainer.val_pgd_steps=2",
            "trainer.test_examples=0",
            "trainer.nonfinite=skip",
            "trainer.log_every_steps=1",
        ],
        run_dir=tmp_path,
    )
    result = advtrain.train(cfg)
    records = read_metrics(tmp_path)
    lines = [r["step"] for r in records if "loss" in r and "train_loss" not in r]
    epochs = [r for r in records if "skipped_batches" in r]
    assert epochs[0]["skipped_batches"] == 1
    assert lines == list(range(1, result.step + 1)), lines
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
