"""Shared test fixtures: where the real datasets live and whether their absence is a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("ADVTRAIN_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder with `<name>_{train,test}.npz`; skip (or fail with ADVTRAIN_REQUIRE_DATA=1) if absent."""
    path = _data_dir()
    if not (path / "cifar10_test.npz").exists():
        msg = f"real data not found in {path} (set ADVTRAIN_DATA_DIR to the folder with cifar10_test.npz)"
        if os.environ.get("ADVTRAIN_REQUIRE_DATA") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True)
def _torch_threads():
    """Keep every test on the same thread count so results do not depend on the runner."""
    import torch

    torch.set_num_threads(2)
    yield
