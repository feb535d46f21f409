"""DDP on the CPU (gloo, 2 processes through torchrun): same training as one process, one run directory, exact resume.

Equivalence claim and its tolerance. With the same global batch, two ranks compute the same mean loss and gradient
as one process *except* for floating-point summation order (DDP averages two half-batch gradients; one process
sums 64 rows at once) and anything that depends on the per-rank batch: BatchNorm batch statistics, the attack's
random start and the augmentation draws. The equivalence test removes the latter on purpose (BatchNorm layers
replaced by identities, no augmentation, a deterministic attack without random start), so the remaining
difference is rounding only: we measured about 1e-7 relative on the epoch losses (required: 1e-5) and about 1e-6 on
the weight updates (required: 1e-4). The GKL tracker is summed over ranks in float64, so its matrix must agree to
1e-6 with the single process and *exactly* between ranks.
With BatchNorm the two set-ups differ by design (statistics over 32 instead of 64 rows; docs/scaling.md): the CLI
test runs the real small_cnn with BatchNorm and checks structure (one run directory, rank-0-only files, replicas
in sync), not numbers.

This file is also the torchrun worker (`python -m torch.distributed.run ... tests/test_ddp.py OUT DATA`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# BN-free, augmentation-free, deterministic-attack GKL run with AWP and an EMA (see the module docstring).
EQUIV = [
    "+exp=smoke",
    "loss=gkl",
    "attack=pgd_linf",
    "attack.random_start=false",
    "attack.objective=ce",
    "attack.steps=2",
    "attack.step_size=${frac:4/255}",
    "data.augment=false",
    "trainer.deterministic=true",
    "trainer.test_examples=0",
    "trainer.val_examples=32",
    "trainer.val_pgd_steps=2",
    "trainer.awp_gamma=0.005",
    "trainer.awp_warmup_epochs=1",
    "trainer.ema_decay=0.9",
]


def _bn_free(build: Any) -> Any:
    def build_model(cfg: dict[str, Any]) -> nn.Module:
        model = build(cfg)
        for module in list(model.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    setattr(module, child_name, nn.Identity())
        return model

    return build_model


def _patch_run_module(out: Path, tag: str) -> None:
    """BN-free models, and a Trainer that dumps each rank's replicated state when it finishes."""
    import advtrain.engine.api as api
    import advtrain.engine.build as build
    from advtrain.engine.trainer import Trainer as base
    from advtrain.models.loading import model_from_config

    api.model_from_config = _bn_free(model_from_config)

    class DumpingTrainer(base):  # type: ignore[misc,valid-type]
        def fit(self) -> dict[str, Any]:
            start = [p.detach().cpu().clone() for p in self.unwrapped_model.parameters()]
            result = super().fit()
            torch.save(
                {
                    "W": self.loss.tracker.weights.cpu(),
                    "start": start,
                    "params": [p.detach().cpu() for p in self.unwrapped_model.parameters()],
                },
                out / f"{tag}_rank{self.dist.rank}.pt",
            )
            return result

    build.Trainer = DumpingTrainer  # the class engine/build.assemble_trainer instantiates


def _worker(out: Path, data_dir: Path) -> None:
    """Under torchrun: run A (with mid-epoch checkpoints), then B resumed from A's step-3 checkpoint."""
    sys.path.insert(0, str(TESTS))
    from helpers import compose_plain

    import advtrain

    torch.set_num_threads(1)
    base = [
        *EQUIV,
        f"data.root={data_dir}",
        "trainer.checkpoint_every_steps=3",
        "trainer.keep_last=10",
    ]
    _patch_run_module(out, "A")
    advtrain.train(compose_plain(base, run_dir=out / "A"))
    _patch_run_module(out, "B")
    mid = out / "A" / "checkpoints" / "step_000000003.pt"
    advtrain.train(compose_plain([*base, f"resume={mid}"], run_dir=out / "B"))


def _torchrun(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> str:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        *args,
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run(
        cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _epoch_records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if not r.get("final")]


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_resume_exactly(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _torchrun([str(Path(__file__).resolve()), str(tmp_path), str(data_dir)])
    # One process, same global batch 64, in this process (same patch).
    from helpers import compose_plain

    import advtrain
    import advtrain.engine.api as api
    import advtrain.engine.build as build

    monkeypatch.setattr(api, "model_from_config", api.model_from_config)  # undone after the test
    monkeypatch.setattr(build, "Trainer", build.Trainer)
    _patch_run_module(tmp_path, "single")
    advtrain.train(compose_plain([*EQUIV, f"data.root={data_dir}"], run_dir=tmp_path / "single"))

    ddp, single = _epoch_records(tmp_path / "A"), _epoch_records(tmp_path / "single")
    assert [r["epoch"] for r in ddp] == [1, 2] and [r["step"] for r in ddp] == [4, 8]
    for a, b in zip(ddp, single):
        for key in ("train_loss", "train_ce", "train_soft_ce", "train_wmse", "train_adv_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), (a["epoch"], key)
        assert a["replicas_in_sync"] is True
    r0, r1 = (torch.load(tmp_path / f"A_rank{r}.pt") for r in (0, 1))
    one = torch.load(tmp_path / "single_rank0.pt")
    assert torch.equal(r0["W"], r1["W"])  # tracker summed over ranks: bit-identical everywhere
    uniform = torch.full_like(r0["W"], 0.1)
    assert (r0["W"] - uniform).abs().max() > 1e-3  # collected, not the epoch-1 uniform matrix
    assert torch.allclose(r0["W"], one["W"], rtol=0, atol=1e-6)
    assert all(torch.equal(p0, p1) for p0, p1 in zip(r0["params"], r1["params"]))
    # What training did (final - initial weights): the same to 1e-4 relative (measured ~1e-6).
    upd_ddp = torch.cat([(p - s).flatten() for p, s in zip(r0["params"], r0["start"])])
    upd_one = torch.cat([(p - s).flatten() for p, s in zip(one["params"], one["start"])])
    start_ddp = torch.cat([s.flatten() for s in r0["start"]])
    assert torch.equal(start_ddp, torch.cat([s.flatten() for s in one["start"]]))  # same init
    assert upd_one.norm() > 1e-2
    assert (upd_ddp - upd_one).norm() / upd_one.norm() < 1e-4

    # Resumed from the mid-epoch checkpoint (per-rank RNG / loss / buffer states): bit-identical to run A.
    for r in (0, 1):
        a, b = torch.load(tmp_path / f"A_rank{r}.pt"), torch.load(tmp_path / f"B_rank{r}.pt")
        assert torch.equal(a["W"], b["W"])
        assert all(torch.equal(x, y) for x, y in zip(a["params"], b["params"]))
    from advtrain.utils.checkpoint import load_checkpoint

    ca, cb = (
        load_checkpoint(tmp_path / "A" / "last.pt"),
        load_checkpoint(tmp_path / "B" / "last.pt"),
    )
    assert ca["world_size"] == 2 and len(ca["per_rank"]) == 2
    for key in ca["ema"]:
        assert torch.equal(ca["ema"][key], cb["ema"][key]), key


@pytest.mark.slow
def test_torchrun_cli_one_run_dir_rank0_writes_and_auto_resume(
    tmp_path: Path, data_dir: Path
) -> None:
    """`torchrun -m advtrain train`: one run directory (rank 0's), files written once, resume=auto continues."""
    runs = tmp_path / "runs"
    env = {"ADVTRAIN_RUNS_DIR": str(runs), "ADVTRAIN_DATA_DIR": str(data_dir)}
    common = [
        "-m",
        "advtrain",
        "train",
        "+exp=smoke",
        "loss=gkl",
        "attack=gkl",
        "data.train_subset=128",
        "trainer.test_examples=32",
        "trainer.val_examples=32",
        "trainer.val_pgd_steps=2",
    ]
    out = _torchrun(common, env)
    dirs = [p for p in (runs / "smoke").iterdir()]
    assert len(dirs) == 1, dirs  # no per-rank timestamp directories
    run_dir = dirs[0]
    assert "global batch 64 = 32 per rank" in out
    names = sorted(p.name for p in run_dir.iterdir())
    assert names == sorted(
        [
            ".hydra",
            "best.pt",
            "checkpoints",
            "cli.log",
            "config.json",
            "final.json",
            "last.pt",
            "metrics.jsonl",
        ]
    ), names
    assert (run_dir / "cli.log").read_text().count("epoch 2:") == 1  # rank 0's log only
    records = _epoch_records(run_dir)
    assert [r["epoch"] for r in records] == [1, 2]  # rank 0 alone logs: no duplicated lines
    assert all(r["replicas_in_sync"] for r in records)
    final = json.loads((run_dir / "final.json").read_text())
    assert (final["world_size"], final["global_batch_size"], final["per_rank_batch_size"]) == (
        2,
        64,
        32,
    )

    from advtrain.utils.checkpoint import load_checkpoint

    ck = load_checkpoint(run_dir / "last.pt")
    assert ck["step"] == 4 and ck["world_size"] == 2  # 128 images / global batch 64 * 2 epochs
    rng0, rng1 = (ck["per_rank"][r]["rng"]["attack"] for r in (0, 1))
    assert not torch.equal(rng0, rng1)  # each rank draws its own attack noise
    w = ck["loss"]["tracker.weights"]
    assert torch.equal(w, ck["per_rank"][1]["loss"]["tracker.weights"])

    _torchrun([*common, f"hydra.run.dir={run_dir}", "resume=auto", "trainer.epochs=3"], env)
    assert len(list((runs / "smoke").iterdir())) == 1
    records = _epoch_records(run_dir)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["step"] == 6
    finals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # the first attempt's final line was set aside
    assert sum(1 for r in finals if r.get("final")) == 1


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
