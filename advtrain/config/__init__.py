"""Configs as typed schemas: what each config group may hold, and the one place each value is checked.

* :mod:`advtrain.config.schema`: one dataclass per config group (registered in Hydra's ConfigStore), and the
  per-option schemas of `model` and `loss`, derived from the constructor the option names.
* :mod:`advtrain.config.validate`: a resolved config (a plain dict) -> checked, normalised dict or typed object,
  plus the rules that span groups (DDP batch divisibility, auxiliary data, class counts).

Each value rule itself (eps, step sizes, fractions, counts, probabilities) lives in :mod:`advtrain.values`,
below this package, because the attacks, loaders and models apply the same rules to their own arguments.
The names below are loaded on first use, so importing the package does not pull in OmegaConf or the registries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from advtrain.config.schema import (
        BenchConfig,
        EvalConfig,
        ExportConfig,
        TrainConfig,
        check_group,
        register_schemas,
    )
    from advtrain.config.validate import (
        parse_train_config,
        register_resolvers,
        validate_bench,
        validate_config,
        validate_eval,
        validate_export,
    )

__all__ = [
    "BenchConfig",
    "EvalConfig",
    "ExportConfig",
    "TrainConfig",
    "check_group",
    "parse_train_config",
    "register_resolvers",
    "register_schemas",
    "validate_bench",
    "validate_config",
    "validate_eval",
    "validate_export",
]

_HOMES = {
    "BenchConfig": "schema",
    "EvalConfig": "schema",
    "ExportConfig": "schema",
    "TrainConfig": "schema",
    "check_group": "schema",
    "register_schemas": "schema",
    "parse_train_config": "validate",
    "register_resolvers": "validate",
    "validate_bench": "validate",
    "validate_config": "validate",
    "validate_eval": "validate",
    "validate_export": "validate",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'advtrain.config' has no attribute {name!r}")
    return getattr(importlib.import_module(f"advtrain.config.{home}"), name)
