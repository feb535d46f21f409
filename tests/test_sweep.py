"""Hydra sweeps through hydra-submitit-launcher: a two-job local sweep gives two separate, complete runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_submitit_local_sweep_runs_each_seed_in_its_own_directory(
    tmp_path: Path, data_dir: Path
) -> None:
    env = {**os.environ, "ADVTRAIN_RUNS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "advtrain",
        "train",
        "-m",
        "hydra/launcher=local_cpu",
        "+exp=smoke",
        "seed=0,1",
        f"data.root={data_dir}",
        "data.train_subset=64",
        "trainer.epochs=1",
        "trainer.test_examples=0",
        "trainer.val_examples=32",
        "trainer.val_pgd_steps=2",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    sweeps = list((tmp_path / "multirun" / "smoke").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    seeds, losses = [], []
    for job in jobs:
        config = json.loads((job / "config.json").read_text())
        # each job writes into its own directory; 64 images with batch 64 = one step
        assert Path(config["run_dir"]).resolve() == job.resolve()
        records = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in records] == [1] and records[0]["step"] == 1
        seeds.append(config["seed"])
        losses.append(records[0]["train_loss"])
        assert (job / "last.pt").is_file()
    assert seeds == [0, 1]
    assert losses[0] != losses[1]  # different seeds, different runs


def test_slurm_launcher_config_runs_one_process_per_gpu() -> None:
    """The Slurm preset composes into submitit's Slurm launcher with tasks_per_node tied to gpus_per_node."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from advtrain.cli import CONFIG_DIR, register_resolvers

    register_resolvers()

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        full = compose(
            "train",
            overrides=["hydra/launcher=slurm_ddp", "hydra.launcher.gpus_per_node=8"],
            return_hydra_config=True,
        )
    launcher = OmegaConf.to_container(full.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["tasks_per_node"] == "${.gpus_per_node}"
    assert full.hydra.launcher.tasks_per_node == 8 and full.hydra.launcher.max_num_timeout > 0
