"""robustbench and pyautoattack import in our venv, and the `autoattack` adapter behaves like the GitHub API."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from torch import nn


def test_robustbench_and_pyautoattack_import() -> None:
    rb = importlib.import_module("robustbench")
    pa = importlib.import_module("pyautoattack")
    from robustbench.eval import benchmark  # imports `autoattack` and `autoattack.state`
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    assert callable(benchmark) and BenchmarkDataset("cifar10").value == "cifar10"
    assert ThreatModel("Linf").value == "Linf"
    assert pa.__version__ >= "0.2.0" and rb is not None


def test_pkg_resources_is_available_for_robustbench() -> None:
    import setuptools

    importlib.import_module("pkg_resources")
    assert int(setuptools.__version__.split(".")[0]) < 81


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()


def test_adapter_matches_direct_pyautoattack(tmp_path: Path) -> None:
    """GitHub call shape (log_path, attacks_to_run, bs, plain x_adv) over pyautoattack: identical x_adv."""
    from pyautoattack import AutoAttack as PyPI

    from autoattack import AutoAttack as GitHubStyle

    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 3, 8, 8, generator=g)
    y = model(x).argmax(1)  # all clean-correct, so the attack has work to do
    log = tmp_path / "aa.log"
    ours = GitHubStyle(
        model,
        norm="Linf",
        eps=8 / 255,
        seed=0,
        version="custom",
        attacks_to_run=["apgd-ce"],
        device="cpu",
        log_path=str(log),
        verbose=False,
    )
    ours.apgd.n_restarts = 1
    x_adv = ours.run_standard_evaluation(x, y, bs=6)
    direct = PyPI(
        model, attacks=["apgd-ce"], device="cpu", eps=8 / 255, norm="Linf", seed=0, version="custom"
    )
    direct.apgd.n_restarts = 1
    x_ref, _ = direct.run_standard_evaluation(x, y, batch_size=6)
    assert isinstance(x_adv, torch.Tensor) and torch.equal(x_adv, x_ref)
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    text = log.read_text()
    assert "robust accuracy after APGD-CE" in text and "initial accuracy" in text
    x2, y2 = ours.run_standard_evaluation(x, y, bs=6, return_labels=True)
    assert torch.equal(x2, x_ref) and y2.shape == y.shape


def test_adapter_refuses_tensorflow_models() -> None:
    from autoattack import AutoAttack

    with pytest.raises(NotImplementedError):
        AutoAttack(_tiny_model(), is_tf_model=True, device="cpu")


def test_state_module_reexports_evaluation_state() -> None:
    from pyautoattack.state import EvaluationState as Original

    from autoattack.state import EvaluationState

    assert EvaluationState is Original


@pytest.mark.slow
def test_wandb_logger_offline(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import compose_plain

    from advtrain.engine.run import run_training

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_plain(
        [
            "+exp=smoke",
            "logger=wandb",
            f"data.root={data_dir}",
            "trainer.epochs=1",
            "data.train_subset=64",
            "trainer.test_examples=0",
        ],
        run_dir=tmp_path,
    )
    assert cfg["logger"]["mode"] == "offline"
    run_training(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (tmp_path / "metrics.jsonl").exists()
