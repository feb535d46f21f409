"""The `autoattack` import name (GitHub fra31/auto-attack API) over PyPI `pyautoattack`.

Why this exists: robustbench 1.1.1 does `from autoattack import AutoAttack` and
`from autoattack.state import EvaluationState`, and calls the GitHub API (`log_path=`, `bs=`, a plain
`x_adv` return). PyPI has no `autoattack` distribution; its `pyautoattack` 0.2.0 ships the same attack code
under another name with a keyword-only API that logs through `logging` instead of a log file. Without this
module `import robustbench` fails, so advtrain ships this thin translation layer (no attack code of its own:
every attack runs in pyautoattack).

It is importable as `autoattack` only through `advtrain.compat.install_autoattack_fallback` (run by
`import advtrain`), and only when no real `autoattack` is installed: the GitHub package, if present, provides
the same API and is used instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pyautoattack import AutoAttack as _PyAutoAttack

__all__ = ["AutoAttack"]
__version__ = "0.2.0+advtrain.compat"

_LOGGER_NAME = "auto-attack"


@contextmanager
def _aa_log_handlers(log_path: str | None, verbose: bool) -> Iterator[None]:
    """Route pyautoattack's `logging` output like the GitHub Logger: stdout and/or an appended log file."""
    logger = logging.getLogger(_LOGGER_NAME)
    handlers: list[logging.Handler] = []
    if verbose:
        handlers.append(logging.StreamHandler(sys.stdout))
    if log_path is not None:
        handlers.append(logging.FileHandler(log_path, mode="a"))
    old_level = logger.level
    for h in handlers:
        h.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(h)
    if handlers:
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()
        logger.setLevel(old_level)


class AutoAttack(_PyAutoAttack):
    """`autoattack.AutoAttack` with the GitHub signature, running pyautoattack underneath.

    Differences from GitHub that we keep on purpose: `device` defaults to CUDA only when it is available
    (the GitHub default 'cuda' fails on CPU-only machines), `log_path` receives the log even with
    `verbose=False`, and `is_tf_model=True` is refused (pyautoattack has no TensorFlow path).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        norm: str = "Linf",
        eps: float = 0.3,
        seed: int | None = None,
        verbose: bool = True,
        attacks_to_run: list[str] | None = None,
        version: str = "standard",
        is_tf_model: bool = False,
        device: str | torch.device | None = None,
        log_path: str | None = None,
    ) -> None:
        if is_tf_model:
            raise NotImplementedError("pyautoattack has no TensorFlow support (is_tf_model=True)")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        attacks = list(attacks_to_run) if attacks_to_run else None
        with _aa_log_handlers(log_path, verbose):
            super().__init__(
                model,
                attacks=attacks,
                device=device,
                eps=eps,
                norm=norm,
                seed=seed,
                version=version,
            )
        # pyautoattack gates its log lines on `self.verbose`; keep them on whenever they have somewhere to go,
        # so `log_path` receives the log even with verbose=False (GitHub would write nothing then).
        self.verbose = verbose or log_path is not None
        self._print = verbose
        self.log_path = log_path

    def run_standard_evaluation(  # type: ignore[override]
        self,
        x_orig: torch.Tensor,
        y_orig: torch.Tensor,
        bs: int = 250,
        return_labels: bool = False,
        state_path: Path | None = None,
    ) -> Any:
        """GitHub call shape: returns `x_adv`, or `(x_adv, y_adv)` when `return_labels`."""
        with _aa_log_handlers(self.log_path, self._print):
            x_adv, y_adv = super().run_standard_evaluation(
                x_orig, y_orig, batch_size=bs, state_path=state_path
            )
        return (x_adv, y_adv) if return_labels else x_adv

    def clean_accuracy(self, x_orig: torch.Tensor, y_orig: torch.Tensor, bs: int = 250) -> float:
        with _aa_log_handlers(self.log_path, self._print):
            return super().clean_accuracy(x_orig, y_orig, bs=bs)

    def run_standard_evaluation_individual(  # type: ignore[override]
        self, x_orig: torch.Tensor, y_orig: torch.Tensor, bs: int = 250, return_labels: bool = False
    ) -> Any:
        with _aa_log_handlers(self.log_path, self._print):
            adv = super().run_standard_evaluation_individual(x_orig, y_orig, batch_size=bs)
        if return_labels:
            return adv
        return {k: (v[0] if isinstance(v, tuple) else v) for k, v in adv.items()}
