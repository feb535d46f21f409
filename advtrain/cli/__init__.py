"""One Hydra entry per command. User mistakes (AdvtrainError) become one line on stderr and exit code 1."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from advtrain.config.validate import register_resolvers
from advtrain.errors import AdvtrainError
from advtrain.resources import config_dir

# The installed configs (package data `advtrain.configs`), or $ADVTRAIN_CONFIG_DIR.
CONFIG_DIR = config_dir()
log = logging.getLogger("advtrain")


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The fully resolved config as plain Python containers (what checkpoints store)."""
    from hydra.core.hydra_config import HydraConfig

    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    if HydraConfig.initialized():
        container["run_dir"] = HydraConfig.get().runtime.output_dir
    return container


def _fail(message: str, *, to_log: bool = True) -> NoReturn:
    """The one way a user mistake ends a command: one `error:` line on stderr, exit code 1.

    `to_log`: also into the run's log file (a job's error); a config that does not compose has no run yet.
    """
    if to_log:
        log.error("%s", message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _guard(
    fn: Callable[[dict[str, Any]], Any], raised: list[BaseException]
) -> Callable[[DictConfig], Any]:
    """The Hydra task: a user mistake -> one line; any other exception is noted in `raised` (so `run`
    keeps its traceback, even in a sweep whose later jobs are still composed after it) and re-raised."""

    def task(cfg: DictConfig) -> Any:
        try:
            try:
                plain = to_plain(cfg)
            except OmegaConfBaseException as e:  # e.g. ${frac:abc}: a value that does not resolve
                _fail(_one_line(e))
            try:
                return fn(plain)
            except AdvtrainError as e:
                _fail(str(e))
        except Exception as e:
            raised.append(e)
            raise

    return task


def _one_line(e: BaseException) -> str:
    """A Hydra composition error or an OmegaConf resolution error as one line that names the fix.

    Hydra reports these over several lines (and suggests `+key=` for a typo, which the schema would refuse
    next). An unknown key names the valid ones, an unknown option lists the options.
    """
    from hydra.errors import MissingConfigException

    cause = e.__cause__
    inner: BaseException | None = e
    while inner is not None and not isinstance(inner, AdvtrainError):
        inner = inner.__cause__ or inner.__context__
    if inner is not None:  # our own resolver (${frac:...}) refused a value
        where = getattr(e, "full_key", None)
        return f"{where}: {inner}" if where else str(inner)
    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        if group and e.options:
            return (
                f"{group}={option} is not an option; choose one of: {', '.join(e.options)} "
                f"(the files in configs/{group}/)"
            )
        return f"there is no config {e.missing_cfg_file!r} (configs/{e.missing_cfg_file}.yaml)"
    parent = getattr(cause, "parent_node", None)
    key = getattr(cause, "key", None)
    if isinstance(cause, ConfigKeyError | ConfigAttributeError) and isinstance(parent, DictConfig):
        from advtrain.config.schema import unknown_keys_message

        label = str(getattr(cause, "full_key", "") or "").rpartition(".")[0] or "top level"
        valid = [str(k) for k in parent.keys() if k != "hydra"]
        return unknown_keys_message(label, [str(key)], valid)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [
        ln
        for ln in lines
        if not ln.startswith(("Config search path", "provider=", "full_key", "object_type"))
    ]
    if cause is not None and str(cause).strip():
        lines.append(str(cause).strip().splitlines()[0])
    return " ".join(lines) or type(e).__name__


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
    from hydra.errors import HydraException

    register_resolvers()
    config_name, fn = _entry(command)
    raised: list[BaseException] = []
    main = hydra.main(config_path=str(CONFIG_DIR), config_name=config_name, version_base="1.3")(
        _guard(fn, raised)
    )
    old_argv, old_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [f"advtrain {command}", *overrides]
    # Hydra prints its own errors over several lines and exits; with HYDRA_FULL_ERROR it raises them
    # instead, so a composition mistake (unknown key or option, bad override) becomes our one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        try:
            main()
        except (HydraException, OmegaConfBaseException) as e:
            if any(
                e is r for r in raised
            ):  # the command's own failure, not its config's: keep the traceback
                raise
            _fail(_one_line(e), to_log=False)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = old_argv
        if old_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = old_full_error
    return 0
