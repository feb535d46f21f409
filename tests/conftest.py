"""Shared test fixtures: where the real datasets live and whether their absence is a failure."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Per-machine caches (the channels_last self-check) go to a fresh folder per test session, so
# the suite checks this machine itself and never reads or writes the user's ~/.cache.
os.environ.setdefault("ADVTRAIN_CACHE_DIR", tempfile.mkdtemp(prefix="advtrain-test-cache-"))


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


@pytest.fixture(scope="session")
def channels_last_safe() -> bool:
    """Whether this CPU passes the channels_last self-check (run once, in a child process)."""
    from advtrain.engine.fastpath import run_probe

    return run_probe().ok


@pytest.fixture
def require_channels_last(channels_last_safe: bool) -> None:
    """Skip a test that runs channels_last kernels in-process where they are known to be broken:
    on such a CPU a native defect would abort the whole test session (docs/cpu_fast_paths.md)."""
    if not channels_last_safe:
        from advtrain.engine.fastpath import run_probe

        pytest.skip(f"channels_last is unsafe on this CPU: {run_probe().detail}")
