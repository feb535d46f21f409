"""One Hydra entry per command. User mistakes (AdvtrainError) become one line on stderr and exit code 1.

Also handled here, because only the command line knows them: a run directory that cannot be created
(Hydra creates it before any of our code runs), the empty run directory a failed start would leave
behind, `run_dir=` in a sweep, `--cfg` printing resolved values, and SIGINT/SIGTERM (engine/signals.py:
one line with where the run stopped and the command that resumes it; exit code 130 or 143).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from advtrain.config.validate import register_resolvers
from advtrain.engine import signals
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
        given = container.get("run_dir")
        container["run_dir"] = HydraConfig.get().runtime.output_dir
        if (
            "out_dir" in container and container["out_dir"] == given
        ):  # export: a sweep job's own folder
            container["out_dir"] = container["run_dir"]
    return container


def given_on_command_line(*keys: str) -> bool | None:
    """Whether the user's overrides set one of `keys` (a group or a key: `data`, `data.name`);
    None outside a Hydra job (a library call: every value counts as given)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    names = {str(o).split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    return any(k in names for k in keys)


def _fail(message: str, *, to_log: bool = True) -> NoReturn:
    """The one way a user mistake ends a command: one `error:` line on stderr, exit code 1.

    `to_log`: also into the run's log file (a job's error), never a second time on the console; a
    config that does not compose has no run yet.
    """
    if to_log:
        _to_log_files(message)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _to_log_files(message: str) -> None:
    """`message` as an ERROR record into the file handlers only (cli.log): the console gets the
    `error:` line alone."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (message,), None)
    for handler in {*logging.getLogger().handlers, *log.handlers}:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


#: What Hydra writes into a run directory before our code runs (`.hydra/` and the job log).
_HYDRA_FILES = (".hydra", "cli.log")


def _hydra_output_dir() -> Path | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return Path(HydraConfig.get().runtime.output_dir)


def _remove_if_empty(run_dir: Path | None) -> bool:
    """Remove a run directory that holds nothing but what Hydra wrote for this failed start.

    A directory with anything else in it (checkpoints, metrics, results of an earlier run) is left
    exactly as it is. Returns whether it was removed.
    """
    if run_dir is None or not run_dir.is_dir():
        return False
    if any(p.name not in _HYDRA_FILES for p in run_dir.iterdir()):
        return False
    root = logging.getLogger()
    for handler in list(root.handlers):  # our log file lives in it: close it first
        if (
            isinstance(handler, logging.FileHandler)
            and Path(handler.baseFilename).parent == run_dir
        ):
            root.removeHandler(handler)
            handler.close()
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)
    (run_dir / "cli.log").unlink(missing_ok=True)
    try:
        run_dir.rmdir()
    except OSError:
        return False
    return True


def _guard(
    fn: Callable[[dict[str, Any]], Any], raised: list[BaseException]
) -> Callable[[DictConfig], Any]:
    """The Hydra task: a user mistake -> one line (and the empty run directory of this failed start
    removed); any other exception is noted in `raised` (so `run` keeps its traceback, even in a sweep
    whose later jobs are still composed after it) and re-raised. A signal's `Interrupted` learns the
    run directory (for the resume command) and goes up to `run`."""

    def task(cfg: DictConfig) -> Any:
        try:
            try:
                plain = to_plain(cfg)
            except OmegaConfBaseException as e:  # e.g. ${frac:abc}: a value that does not resolve
                _user_error(_one_line(e))
            try:
                return fn(plain)
            except AdvtrainError as e:
                _user_error(str(e))
        except signals.Interrupted as stop:
            run_dir = _hydra_output_dir()
            # stopped before anything was written: no empty run directory stays behind
            stop.run_dir = None if _remove_if_empty(run_dir) else run_dir  # type: ignore[attr-defined]
            raise
        except Exception as e:
            raised.append(e)
            raise

    return task


def _user_error(message: str) -> NoReturn:
    """A job's user mistake: the error line, and no run directory left with nothing but Hydra's files."""
    _fail(message, to_log=not _remove_if_empty(_hydra_output_dir()))


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


def _is_sweep(overrides: list[str]) -> bool:
    return any(a in ("-m", "--multirun") for a in overrides)


def _prepare(command: str, overrides: list[str]) -> list[str]:
    """The user's arguments as Hydra gets them.

    * `--cfg`/`-c` prints values resolved (`${frac:8/255}` as 0.0313...), unless `--resolve` is given;
    * in a sweep (`-m`), `run_dir=PATH` names the sweep's folder (`hydra.sweep.dir=PATH`; each job
      writes to a subfolder of it): a single run_dir for all jobs would mix their files.
    """
    out = [_fraction_budget(a) for a in overrides]
    if any(a in ("--cfg", "-c") for a in out) and "--resolve" not in out:
        out.append("--resolve")
    if _is_sweep(out):
        given = [a for a in out if a.split("=", 1)[0].lstrip("+") == "run_dir"]
        for arg in given:
            value = arg.split("=", 1)[1]
            if not value or "," in value:
                _fail(
                    f"{arg}: with -m, run_dir= names one folder for the whole sweep (each job gets a "
                    "subfolder); give a single path",
                    to_log=False,
                )
            out.remove(arg)
            out.append(f"hydra.sweep.dir={value}")
    return out


_FRACTION = re.compile(r"\s*\d+(\.\d*)?\s*/\s*\d+(\.\d*)?\s*")
_BUDGET_KEYS = ("eps", "step_size")


def _fraction_budget(arg: str) -> str:
    """`attack.eps=8/255` as `attack.eps=${frac:8/255}`: the budget a user types becomes a number
    in the composed config (and in `--cfg job`), not the string "8/255"."""
    key, sep, value = arg.partition("=")
    if sep and key.rsplit(".", 1)[-1] in _BUDGET_KEYS and _FRACTION.fullmatch(value):
        return f"{key}=${{frac:{value.replace(' ', '')}}}"
    return arg


def _unwritable(e: BaseException) -> OSError | None:
    """The OSError (with a file name) behind a failure of Hydra's own setup of the run directory."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.filename:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _run_dir_message(err: OSError) -> str:
    """`run directory X is not writable (...)` naming the directory and, for a file in the way, the file."""
    path = Path(str(err.filename))
    if path.name.endswith((".log", ".yaml")):  # Hydra's cli.log or .hydra/*.yaml
        path = path.parent
    if path.name == ".hydra":
        path = path.parent
    reason = err.strerror or type(err).__name__
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        reason = f"{blocker} is a file, not a directory"
    return (
        f"run directory {path} is not writable ({reason}); choose another with run_dir=PATH "
        "(or hydra.run.dir=PATH, or ADVTRAIN_RUNS_DIR)"
    )


def resume_command(command: str, overrides: list[str], run_dir: Path | None) -> str:
    """The command line that continues an interrupted run: the same arguments, its run directory
    (a timestamped default would otherwise be a new one) and `resume=auto`."""
    replaced = ("run_dir", "hydra.run.dir", "resume") if run_dir is not None else ("resume",)
    keep = [a for a in overrides if a.split("=", 1)[0].lstrip("+") not in replaced]
    if run_dir is not None:
        keep.append(f"run_dir={run_dir}")
    if command == "train":
        keep.append("resume=auto")
    return " ".join(["python -m advtrain", command, *(shlex.quote(a) for a in keep)])


def _interrupted(command: str, overrides: list[str], stop: signals.Interrupted) -> int:
    """One line: what stopped, where, the checkpoint kept, and the command that continues."""
    run_dir = getattr(stop, "run_dir", None)
    parts = [f"interrupted by {stop.name}"]
    if stop.where:
        parts.append(stop.where)
    line = " ".join(parts)
    if stop.checkpoint is None and run_dir is not None and (Path(run_dir) / "last.pt").is_file():
        stop.checkpoint = Path(run_dir) / "last.pt"  # stopped before training resumed
    if command == "train":
        if stop.checkpoint is not None:
            kept = "saved" if stop.saved else "kept the last checkpoint,"
            line += f"; {kept} {stop.checkpoint}"
            line += f"; resume with: {resume_command(command, overrides, run_dir)}"
        else:
            line += (
                f"; no checkpoint yet, start again with: python -m advtrain {command} "
                + " ".join(shlex.quote(a) for a in overrides)
            )
    else:
        line += f"; run again with: {resume_command(command, overrides, run_dir)}"
    print(line, file=sys.stderr, flush=True)
    return stop.exit_code


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
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    # Hydra prints its own errors over several lines and exits; with HYDRA_FULL_ERROR it raises them
    # instead, so a composition mistake (unknown key or option, bad override) becomes our one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with signals.install(world_size=world_size):
            sys.argv = [f"advtrain {command}", *_prepare(command, overrides)]
            try:
                main()
            except (HydraException, OmegaConfBaseException, OSError, ValueError) as e:
                if any(e is r for r in raised):  # the command's own failure: keep the traceback
                    raise
                err = _unwritable(e)
                if err is not None:  # Hydra could not create the run directory or its files
                    _fail(_run_dir_message(err), to_log=False)
                if not isinstance(e, HydraException | OmegaConfBaseException):
                    raise
                _fail(_one_line(e), to_log=False)
            except signals.Interrupted as stop:
                return _interrupted(command, overrides, stop)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = old_argv
        if old_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = old_full_error
    return 0
