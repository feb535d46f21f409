"""robustbench and pyautoattack import in our venv, and the `autoattack` adapter behaves like the GitHub API.

The adapter (advtrain/compat/autoattack) is importable as `autoattack` only when no real `autoattack` is
installed: both cases are tested here.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.version import Version
from torch import nn

import advtrain  # noqa: F401 - installs the `autoattack` fallback, as any use of advtrain does
from advtrain.compat import AutoAttackFallbackFinder

ADAPTER_DIR = Path(advtrain.__file__).resolve().parent / "compat" / "autoattack"


def test_robustbench_and_pyautoattack_import() -> None:
    importlib.import_module("robustbench")
    pa = importlib.import_module("pyautoattack")
    from robustbench.eval import benchmark  # imports `autoattack` and `autoattack.state`
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    assert callable(benchmark) and BenchmarkDataset("cifar10").value == "cifar10"
    assert ThreatModel("Linf").value == "Linf"
    # the versions pyproject.toml pins: the adapter is written against these APIs
    assert importlib.metadata.version("robustbench") == "1.1.1"
    assert Version(importlib.metadata.version("pyautoattack")) >= Version("0.2.0")
    assert Version(pa.__version__) >= Version("0.2.0")


def test_autoattack_fallback_is_the_adapter_and_the_last_finder() -> None:
    """No real `autoattack` here: the name resolves to advtrain's adapter through the finder that
    `import advtrain` appended after every regular one."""
    import autoattack

    assert Path(autoattack.__file__).resolve().parent == ADAPTER_DIR
    assert (
        Path(importlib.import_module("autoattack.state").__file__).resolve().parent == ADAPTER_DIR
    )
    finders = [f for f in sys.meta_path if isinstance(f, AutoAttackFallbackFinder)]
    assert len(finders) == 1 and sys.meta_path[-1] is finders[0]
    advtrain.compat.install_autoattack_fallback()  # idempotent
    assert sum(isinstance(f, AutoAttackFallbackFinder) for f in sys.meta_path) == 1


@pytest.mark.slow  # a fresh interpreter importing torch and robustbench
def test_fresh_interpreter_imports_robustbench_after_advtrain(tmp_path: Path) -> None:
    """From an unrelated directory: `import advtrain` then `import robustbench` works, with the adapter."""
    code = (
        "import advtrain, robustbench, autoattack; "
        "from robustbench.eval import benchmark; print(autoattack.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip().splitlines()[-1]).resolve().parent == ADAPTER_DIR


def test_a_real_autoattack_installation_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a real `autoattack` on the path (here a stand-in package), the adapter never shadows it."""
    real = tmp_path / "autoattack"
    real.mkdir()
    (real / "__init__.py").write_text("REAL = True\n")
    (real / "state.py").write_text("WHERE = 'real'\n")
    saved = {
        k: v for k, v in sys.modules.items() if k == "autoattack" or k.startswith("autoattack.")
    }
    for name in saved:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("autoattack")
        assert getattr(module, "REAL", False) is True
        assert Path(module.__file__).resolve().parent == real.resolve()
        assert importlib.import_module("autoattack.state").WHERE == "real"
    finally:
        for name in [k for k in sys.modules if k == "autoattack" or k.startswith("autoattack.")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_pkg_resources_is_available_for_robustbench() -> None:
    import setuptools

    importlib.import_module("pkg_resources")
    assert int(setuptools.__version__.split(".")[0]) < 81


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()


def test_adapter_matches_direct_pyautoattack(tmp_path: Path) -> None:
    """GitHub call shape (log_path, attacks_to_run, bs, plain x_adv) over pyautoattack: identical x_adv."""
    from autoattack import AutoAttack as GitHubStyle
    from pyautoattack import AutoAttack as PyPI

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
    from autoattack.state import EvaluationState
    from pyautoattack.state import EvaluationState as Original

    assert EvaluationState is Original


@pytest.mark.slow
def test_wandb_logger_offline(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import compose_plain

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
    advtrain.train(cfg)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (tmp_path / "metrics.jsonl").exists()
