"""Seeding, determinism and RNG-state capture, so runs are reproducible and resumable bit for bit."""

from __future__ import annotations

import os
import random
from typing import Any

import torch


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python and torch (CPU and CUDA); optionally switch torch to deterministic kernels.

    numpy's global RNG is not used by advtrain (every random draw goes through torch generators), so it is
    not seeded here; seeding it would hide accidental use.
    """
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict[str, Any]:
    """Every global RNG state as tensors/ints (loadable with weights_only=True)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    py = random.getstate()
    state["python"] = [py[0], list(py[1]), py[2]]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state()` captured (CUDA states only when CUDA is present)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "python" in state:
        v, internal, gauss = state["python"]
        random.setstate((v, tuple(internal), gauss))
