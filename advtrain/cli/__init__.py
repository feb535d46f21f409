"""One Hydra entry per command. User mistakes (AdvtrainError) become one line on stderr and exit code 1."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from omegaconf import DictConfig, OmegaConf

from advtrain.errors import AdvtrainError
from advtrain.resources import config_dir

# The installed configs (package data `advtrain.configs`), or $ADVTRAIN_CONFIG_DIR.
CONFIG_DIR = config_dir()
log = logging.getLogger("advtrain")


def _frac(value: Any) -> float:
    """`${frac:8/255}` -> 0.0313...: eps and step sizes are written as fractions, never as pixel counts."""
    try:
        return float(Fraction(str(value).replace(" ", "")))
    except (ValueError, ZeroDivisionError):
        raise AdvtrainError(f"cannot read {value!r} as a fraction (write e.g. 8/255)") from None


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("frac"):
        OmegaConf.register_new_resolver("frac", _frac)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain Python containers (what checkpoints store)."""
    from hydra.core.hydra_config import HydraConfig

    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    if HydraConfig.initialized():
        container["run_dir"] = HydraConfig.get().runtime.output_dir
    return container


def _guard(fn: Callable[[dict[str, Any]], Any]) -> Callable[[DictConfig], Any]:
    def task(cfg: DictConfig) -> Any:
        try:
            return fn(to_plain(cfg))
        except AdvtrainError as e:
            log.error("%s", e)
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)

    return task


def _entry(command: str) -> tuple[str, Callable[[dict[str, Any]], Any]]:
    if command == "train":
        from advtrain.cli.train import run_train

        return "train", run_train
    if command == "eval":
        from advtrain.cli.eval import run_eval

        return "eval", run_eval
    if command == "export":
        from advtrain.cli.export import run_export

        return "export", run_export
    from advtrain.cli.bench import run_bench

    return "bench", run_bench


def run(command: str, overrides: list[str]) -> int:
    """Run `command` as a Hydra app with `overrides` (sys.argv-style, incl. --cfg/-m/--help)."""
    if command == "report":  # takes run paths, not a config to compose: no Hydra app
        from advtrain.cli.report import main as report_main

        return report_main(overrides)
    import hydra

    register_resolvers()
    config_name, fn = _entry(command)
    main = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(
        _guard(fn)
    )
    old_argv = sys.argv
    sys.argv = [f"advtrain {command}", *overrides]
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = old_argv
    return 0
