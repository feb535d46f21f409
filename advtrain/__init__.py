"""advtrain: adversarial training (PGD-AT, TRADES, MART, GKL) and AutoAttack / RobustBench evaluation.

The library in three calls, usable from a notebook without Hydra (each takes plain values or a
config dict and returns a typed result):

    import advtrain
    result = advtrain.train(cfg)                                        # -> advtrain.TrainResult
    loaded = advtrain.load_model(advtrain.ModelSource(ckpt=result.last_checkpoint))
    data = advtrain.EvalData.test_split(loaded.dataset, "data", n_examples=1000)
    scores = advtrain.evaluate(loaded, data, advtrain.EvalSpec(kind="pgd"))  # -> advtrain.EvalResult
    files = advtrain.export_model(...)                                  # -> advtrain.ExportResult

(`export_model`, not `export`: `advtrain.export` is the subpackage, and importing it would rebind a
function of that name.) The names are resolved lazily, so `import advtrain` stays cheap: it does not
import torch, and `python -m advtrain --help` answers at once.

`import advtrain` also makes the `autoattack` import name available to robustbench when no real
`autoattack` package is installed (see advtrain/compat/__init__.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from advtrain.compat import install_autoattack_fallback

__version__ = "0.1.0"

#: Public name -> (module, attribute), imported on first access.
_LAZY: dict[str, tuple[str, str]] = {
    "train": ("advtrain.engine.api", "train"),
    "TrainResult": ("advtrain.engine.api", "TrainResult"),
    "evaluate": ("advtrain.eval.api", "evaluate"),
    "EvalData": ("advtrain.eval.api", "EvalData"),
    "EvalSpec": ("advtrain.eval.api", "EvalSpec"),
    "EvalResult": ("advtrain.eval.api", "EvalResult"),
    "export_model": ("advtrain.export.api", "export"),
    "ExportSpec": ("advtrain.export.api", "ExportSpec"),
    "ExportResult": ("advtrain.export.api", "ExportResult"),
    "ModelSource": ("advtrain.models.loading", "ModelSource"),
    "load_model": ("advtrain.models.loading", "load_model"),
}

__all__ = [
    "EvalData",
    "EvalResult",
    "EvalSpec",
    "ExportResult",
    "ExportSpec",
    "ModelSource",
    "TrainResult",
    "__version__",
    "evaluate",
    "export_model",
    "load_model",
    "train",
]

install_autoattack_fallback()

if TYPE_CHECKING:
    from advtrain.engine.api import TrainResult, train
    from advtrain.eval.api import EvalData, EvalResult, EvalSpec, evaluate
    from advtrain.export.api import ExportResult, ExportSpec
    from advtrain.export.api import export as export_model
    from advtrain.models.loading import ModelSource, load_model


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'advtrain' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
