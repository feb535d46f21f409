"""Tests of advtrain.eval.autoattack (the pyautoattack adapter) and advtrain.eval.checks.

The reference is pyautoattack itself: with the same seed and batch size the adapter must return
bit-identical adversarial images and flags. Sharding, resuming after a hard kill and running on two
processes must all give the identical result. Every pre-flight check is tripped by a model or a
config built to break exactly its rule.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.errors import ConfigError, DataError
from advtrain.eval import checks
from advtrain.eval.autoattack import build_autoattack, run_autoattack
from advtrain.eval.checks import PreflightError
from advtrain.utils.hashing import model_hash

REPO = Path(__file__).resolve().parents[1]
EPS = 2 / 255  # small enough that a quickly trained model keeps some points robust
# Two attacks, so AutoAttack regroups the surviving points between them (what makes shards matter);
# APGD-DLR is one 100-step run where APGD-T would be nine.
CASCADE = ["apgd-ce", "apgd-dlr"]
N_SHARDED = 16
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2471, 0.2435, 0.2616)


class Tiny(nn.Module):
    """Normalise -> 4x4/4 conv -> ReLU -> linear: fast enough for AutoAttack on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv((x - self.mean) / self.std)).flatten(1))


@pytest.fixture(scope="module")
def cifar(data_dir: Path) -> dict[str, torch.Tensor]:
    import numpy as np

    from advtrain.data.datasets import nhwc_to_tensor, read_npz

    out = {}
    for split, n in (("train", 4096), ("test", 32)):  # memory-mapped: only the first n are decoded
        arrays, _ = read_npz(data_dir / f"cifar10_{split}.npz")
        out[split] = (
            nhwc_to_tensor(arrays["image"][:n]),
            torch.from_numpy(np.asarray(arrays["label"][:n], dtype=np.int64)),
        )
    (xtr, ytr), (xte, yte) = out["train"], out["test"]
    return {"xtr": xtr, "ytr": ytr, "x": xte.float() / 255, "y": yte}


@pytest.fixture(scope="module")
def tiny(cifar: dict[str, torch.Tensor]) -> Tiny:
    """Trained for a few hundred steps: ~35-40% clean accuracy, some points robust at eps 2/255."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(200):
        idx = torch.randint(0, len(cifar["ytr"]), (128,), generator=g)
        loss = F.cross_entropy(model(cifar["xtr"][idx].float() / 255), cifar["ytr"][idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _direct(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list[str] | None,
    bs: int,
    eps: float = EPS,
):
    """pyautoattack called directly, exactly as its README shows (restarts set as the adapter does)."""
    from pyautoattack import AutoAttack

    version = "custom" if attacks else "standard"
    aa = AutoAttack(
        model, attacks=attacks, device="cpu", eps=eps, norm="Linf", seed=0, version=version
    )
    if attacks:
        aa.apgd.n_restarts = 1
        aa.apgd_targeted.n_restarts = 1
        aa.fab.n_restarts = 1
    return aa.run_standard_evaluation(x, y, batch_size=bs)


# --------------------------------------------------------------------------------------------
# adapter == pyautoattack
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_standard_equals_direct_pyautoattack(tiny: Tiny, cifar: dict[str, torch.Tensor]) -> None:
    x, y = cifar["x"][:16], cifar["y"][:16]  # ~5 s per standard run: 2 points survive to Square
    res = run_autoattack(
        tiny, x, y, eps=EPS, version="standard", seed=0, batch_size=16, progress=False
    )
    x_adv, y_adv = _direct(tiny, x, y, None, 16)
    assert torch.equal(res.x_adv, x_adv)
    assert torch.equal(res.robust_correct, y_adv == y)
    with torch.no_grad():
        assert torch.equal(res.clean_correct, tiny(x).argmax(1) == y)
    # the test is only meaningful if the cascade went past APGD-CE on some points
    assert (
        0 < res.per_attack_robust["apgd-ce"] and res.robust_correct.sum() <= res.clean_correct.sum()
    )
    assert res.per_attack_robust["square"] == int(res.robust_correct.sum())
    # the captured log is pyautoattack's own, with its numbers
    assert f"initial accuracy: {res.clean_acc:.2%}" in res.log
    assert f"robust accuracy: {res.robust_acc:.2%}" in res.log
    assert any(line.startswith("apgd-t - 1/1 - ") for line in res.log)


def test_custom_equals_direct_and_sets_restarts(tiny: Tiny, cifar: dict[str, torch.Tensor]) -> None:
    from pyautoattack import AutoAttack

    x, y = cifar["x"], cifar["y"]
    res = run_autoattack(
        tiny, x, y, eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=8, progress=False
    )
    x_adv, y_adv = _direct(tiny, x, y, ["apgd-ce"], 8)
    assert torch.equal(res.x_adv, x_adv) and torch.equal(res.robust_correct, y_adv == y)
    # pyautoattack's own custom default is 5 APGD restarts (docs/robustbench_format.md §8); ours is 1
    assert AutoAttack(tiny, attacks=["apgd-ce"], version="custom").apgd.n_restarts == 5
    aa = build_autoattack(
        tiny, norm="Linf", eps=EPS, version="custom", attacks=["apgd-ce"], seed=0, device="cpu"
    )
    assert aa.apgd.n_restarts == aa.fab.n_restarts == aa.apgd_targeted.n_restarts == 1
    # x_adv stays in the eps ball and the box; robust <= clean per point
    assert float((res.x_adv - x).abs().max()) <= EPS + 1e-6
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    assert not (res.robust_correct & ~res.clean_correct).any()


def test_rng_and_mode_restored(tiny: Tiny, cifar: dict[str, torch.Tensor]) -> None:
    x, y = cifar["x"][:8], cifar["y"][:8]
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    tiny.train()
    try:
        run_autoattack(
            tiny, x, y, eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=8, progress=False
        )
        assert tiny.training  # caller's mode back
    finally:
        tiny.eval()
    assert torch.equal(torch.rand(4), expected)  # caller's RNG stream untouched


def test_noncontiguous_l2_input(tiny: Tiny, cifar: dict[str, torch.Tensor]) -> None:
    """A permuted (NHWC-backed) batch breaks pyautoattack's L2 APGD (docs/robustbench_format.md §8); the adapter fixes the layout."""
    x, y = cifar["x"][:8], cifar["y"][:8]
    view = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    assert not view.is_contiguous()
    kw = {
        "norm": "L2",
        "eps": 0.1,
        "version": "custom",
        "attacks": ["apgd-ce"],
        "batch_size": 8,
        "progress": False,
    }
    a = run_autoattack(tiny, view, y, **kw)
    b = run_autoattack(tiny, x, y, **kw)
    assert torch.equal(a.x_adv, b.x_adv)
    assert float((a.x_adv - x).flatten(1).norm(dim=1).max()) <= 0.1 + 1e-5


# --------------------------------------------------------------------------------------------
# shards, resume, processes
# --------------------------------------------------------------------------------------------


def test_shards_equal_direct_runs_per_shard(
    tiny: Tiny, cifar: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    x, y = cifar["x"][:N_SHARDED], cifar["y"][:N_SHARDED]
    res = run_autoattack(
        tiny,
        x,
        y,
        eps=EPS,
        version="custom",
        attacks=CASCADE,
        batch_size=4,
        shard_size=8,
        state_dir=tmp_path,
        progress=False,
    )
    parts = [_direct(tiny, x[s : s + 8], y[s : s + 8], CASCADE, 4) for s in (0, 8)]
    assert torch.equal(res.x_adv, torch.cat([p[0] for p in parts]))
    assert torch.equal(res.robust_correct, torch.cat([p[1] for p in parts]) == y)
    assert sorted(p.name for p in tmp_path.glob("shard_*.pt")) == [
        "shard_00000.pt",
        "shard_00001.pt",
    ]
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (
        meta["shard_size"] == 8
        and meta["batch_size"] == 4
        and meta["model_hash"] == model_hash(tiny)
    )
    # summed per-attack counts agree with the flags
    assert res.per_attack_robust["apgd-dlr"] == int(res.robust_correct.sum())
    # a rerun loads every shard and returns the identical result
    again = run_autoattack(
        tiny,
        x,
        y,
        eps=EPS,
        version="custom",
        attacks=CASCADE,
        batch_size=4,
        shard_size=8,
        state_dir=tmp_path,
        progress=False,
    )
    assert (
        again.shards_resumed == 2 and torch.equal(again.x_adv, res.x_adv) and again.log == res.log
    )


def test_state_of_another_evaluation_is_refused(
    tiny: Tiny, cifar: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    x, y = cifar["x"][:8], cifar["y"][:8]
    kw = {
        "version": "custom",
        "attacks": ["apgd-ce"],
        "batch_size": 8,
        "state_dir": tmp_path,
        "progress": False,
    }
    run_autoattack(tiny, x, y, eps=EPS, **kw)
    with pytest.raises(ConfigError, match="different AutoAttack evaluation.*eps"):
        run_autoattack(tiny, x, y, eps=4 / 255, **kw)
    with pytest.raises(ConfigError, match="model_hash"):
        run_autoattack(Tiny().eval(), x, y, eps=EPS, **kw)
    with pytest.raises(ConfigError, match="multiple of batch_size"):
        run_autoattack(
            tiny, x, y, eps=EPS, version="custom", attacks=["apgd-ce"], batch_size=8, shard_size=12
        )


def _save_inputs(tmp_path: Path, tiny: Tiny, cifar: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "inputs.pt"
    torch.save(
        {"model": tiny.state_dict(), "x": cifar["x"][:N_SHARDED], "y": cifar["y"][:N_SHARDED]}, path
    )
    return path


_WORKER = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from test_autoattack import Tiny
from advtrain.eval.autoattack import run_autoattack
torch.set_num_threads(1)
d = torch.load({inputs!r})
m = Tiny(); m.load_state_dict(d["model"]); m.eval()
mode = sys.argv[1]
if mode == "dist":
    import torch.distributed as dist
    dist.init_process_group("gloo")
def stop(i):
    if mode == "kill":
        os._exit(3)  # a hard crash right after the first shard is durable: no cleanup runs
res = run_autoattack(m, d["x"], d["y"], eps={eps!r}, version="custom", attacks={cascade!r},
                     batch_size=8, shard_size=8, state_dir={state!r}, progress=False, on_shard_done=stop)
if mode == "dist":
    torch.save({{"x_adv": res.x_adv, "robust": res.robust_correct, "log": res.log}},
               {state!r} + f"/result_rank{{dist.get_rank()}}.pt")
    dist.destroy_process_group()
"""


def _worker_script(tmp_path: Path, inputs: Path, state: Path) -> Path:
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(_WORKER).format(
            tests=str(REPO / "tests"),
            inputs=str(inputs),
            eps=EPS,
            state=str(state),
            cascade=CASCADE,
        )
    )
    return script


@pytest.mark.slow
def test_resume_after_kill_is_identical(
    tiny: Tiny, cifar: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    script = _worker_script(tmp_path, _save_inputs(tmp_path, tiny, cifar), state)
    proc = subprocess.run(
        [sys.executable, str(script), "kill"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert [p.name for p in state.glob("shard_*.pt")] == [
        "shard_00000.pt"
    ]  # killed after shard 1 of 2
    kw = {
        "eps": EPS,
        "version": "custom",
        "attacks": CASCADE,
        "batch_size": 8,
        "shard_size": 8,
        "progress": False,
    }
    x, y = cifar["x"][:N_SHARDED], cifar["y"][:N_SHARDED]
    resumed = run_autoattack(tiny, x, y, state_dir=state, **kw)
    fresh = run_autoattack(tiny, x, y, **kw)
    assert resumed.shards_resumed == 1 and resumed.n_shards == 2
    assert torch.equal(resumed.x_adv, fresh.x_adv)
    assert torch.equal(resumed.robust_correct, fresh.robust_correct)
    assert torch.equal(resumed.clean_correct, fresh.clean_correct)
    assert resumed.per_attack_robust == fresh.per_attack_robust
    assert _untimed(resumed.log) == _untimed(fresh.log)


def _untimed(log: list[str]) -> list[str]:
    """AutoAttack's log without its wall-clock times (the only part that may differ between runs)."""
    return [re.sub(r"\(total time [0-9.]+ s\)", "", line) for line in log]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one(
    tiny: Tiny, cifar: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    script = _worker_script(tmp_path, _save_inputs(tmp_path, tiny, cifar), state)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), "dist"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    single = run_autoattack(
        tiny,
        cifar["x"][:N_SHARDED],
        cifar["y"][:N_SHARDED],
        eps=EPS,
        version="custom",
        attacks=CASCADE,
        batch_size=8,
        shard_size=8,
        progress=False,
    )
    got = [torch.load(state / f"result_rank{rank}.pt") for rank in range(2)]
    for g in got:
        assert torch.equal(g["x_adv"], single.x_adv)
        assert torch.equal(g["robust"], single.robust_correct)
        assert _untimed(g["log"]) == _untimed(single.log)
    assert got[0]["log"] == got[1]["log"]  # both ranks merged the same shard files
    assert sorted(p.name for p in state.glob("shard_*.pt")) == ["shard_00000.pt", "shard_00001.pt"]


# --------------------------------------------------------------------------------------------
# pre-flight checks: each one tripped by a model or config built for it
# --------------------------------------------------------------------------------------------


class Softmaxed(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x).softmax(1)


class AlwaysDropout(nn.Module):
    """Functional dropout that ignores eval mode (a classic hidden randomness)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(F.dropout(x, 0.3, training=True))


class StuckInTrain(nn.Module):
    """Overrides train() so its dropout stays in training mode after model.eval()."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base
        self.drop = nn.Dropout(0.5)

    def train(self, mode: bool = True) -> StuckInTrain:
        super().train(mode)
        self.drop.training = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.drop(x))


def test_preflight_softmax_outputs(tiny: Tiny, cifar: dict[str, torch.Tensor]) -> None:
    with pytest.raises(PreflightError, match="probabilities"):
        run_autoattack(Softmaxed(tiny), cifar["x"][:8], cifar["y"][:8], eps=EPS, progress=False)
    with torch.no_grad():
        checks.check_logits(tiny(cifar["x"][:8]))  # real logits pass


def test_preflight_randomness_and_train_mode(tiny: Tiny, cifar: dict[str, torch.Tensor]) -> None:
    x, y = cifar["x"][:8], cifar["y"][:8]
    with pytest.raises(PreflightError, match="different outputs.*aa_rand"):
        run_autoattack(AlwaysDropout(tiny), x, y, eps=EPS, progress=False)
    with pytest.raises(PreflightError, match="drop.*training mode"):
        run_autoattack(StuckInTrain(tiny), x, y, eps=EPS, progress=False)
    # version rand accepts a randomised model; on a deterministic one it only warns
    _, warns = checks.check_deterministic(AlwaysDropout(tiny), x, randomized_ok=True)
    assert warns == []
    _, warns = checks.check_deterministic(tiny, x, randomized_ok=True)
    assert len(warns) == 1 and "deterministic" in warns[0]


def test_preflight_eps_units(tiny: Tiny, cifar: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ConfigError, match="8/255"):
        run_autoattack(tiny, cifar["x"][:8], cifar["y"][:8], eps=8, progress=False)
    with pytest.raises(ConfigError, match="pixel units.*0.5"):
        checks.check_eps("L2", 127.5, (3, 32, 32))
    with pytest.raises(ConfigError, match="must be > 0"):
        checks.check_eps("Linf", 0.0)
    checks.check_eps("Linf", 8 / 255, (3, 32, 32))
    checks.check_eps("L2", 0.5, (3, 32, 32))
    checks.check_eps("L2", 3.0, (3, 224, 224))  # the ImageNet L2 budget is not a pixel count
    assert checks.parse_eps("8/255") == pytest.approx(8 / 255)
    assert checks.eps_to_str(8 / 255) == "8/255" and checks.eps_to_str(0.5) == "0.5"


def test_preflight_inputs_out_of_range(tiny: Tiny, cifar: dict[str, torch.Tensor]) -> None:
    x, y = cifar["x"][:8], cifar["y"][:8]
    with pytest.raises(DataError, match=r"\[0, 1\].*0-255 pixel values: divide by 255"):
        run_autoattack(tiny, x * 255, y, eps=EPS, progress=False)
    normalised = (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(
        1, 3, 1, 1
    )
    with pytest.raises(DataError, match=r"normalised inputs .*let the model normalise"):
        run_autoattack(tiny, normalised, y, eps=EPS, progress=False)


def test_preflight_class_count() -> None:
    with pytest.raises(ConfigError, match="at least 4 classes"):
        checks.check_num_classes(3, ["apgd-ce", "apgd-t"])
    with pytest.raises(ConfigError, match="9 target classes"):
        checks.check_num_classes(5, ["fab-t"])
    checks.check_num_classes(10, ["apgd-ce", "apgd-t", "fab-t", "square"])


# --------------------------------------------------------------------------------------------
# red flags after the attack
# --------------------------------------------------------------------------------------------


def test_masking_warnings_thresholds() -> None:
    cascade = {"apgd-ce": 0.50, "apgd-t": 0.48, "fab-t": 0.48, "square": 0.40}
    w = checks.masking_warnings(per_attack=cascade)
    assert len(w) == 1 and "Square" in w[0] and "8.00 pp" in w[0]
    assert checks.masking_warnings(per_attack={**cascade, "square": 0.479}) == []  # 0.1 pp < 0.2 pp
    w = checks.masking_warnings(aa_robust_acc=0.30, pgd_robust_acc=0.45, pgd_name="PGD-20")
    assert len(w) == 1 and "PGD-20" in w[0] and "15.0 pp" in w[0]
    assert checks.masking_warnings(aa_robust_acc=0.40, pgd_robust_acc=0.45) == []


class Quantised(nn.Module):
    """Rounds inputs to 8 bits: zero input gradient everywhere (textbook gradient masking)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * 255) / 255)


@pytest.mark.slow
def test_square_beats_masked_gradients(tiny: Tiny, cifar: dict[str, torch.Tensor]) -> None:
    """On a gradient-masked model the black-box Square breaks what APGD cannot: the log shows it."""
    x, y = cifar["x"][:16], cifar["y"][:16]
    res = run_autoattack(
        Quantised(tiny),
        x,
        y,
        eps=8 / 255,
        version="custom",
        attacks=["apgd-ce", "square"],
        batch_size=16,
        progress=False,
    )
    drop = res.per_attack_robust["apgd-ce"] - res.per_attack_robust["square"]
    assert drop > 0
    w = checks.masking_warnings(per_attack=res.per_attack_robust_acc)
    assert len(w) == 1 and "Square" in w[0]
    # the unmasked model: APGD breaks at least as much as Square adds on top
    plain = run_autoattack(
        tiny,
        x,
        y,
        eps=8 / 255,
        version="custom",
        attacks=["apgd-ce", "square"],
        batch_size=16,
        progress=False,
    )
    assert plain.per_attack_robust["apgd-ce"] < res.per_attack_robust["apgd-ce"]
