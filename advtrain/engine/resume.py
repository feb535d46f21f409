"""Resuming a run: find the checkpoint, check it fits the config, restore the trainer, tidy the run directory.

Split from `advtrain.train` (engine/api.py) because resume is its own contract: a checkpoint is found and
checked before any data is loaded (a wrong path or a changed model fails in a second), the trainer's full
state follows once the trainer exists, and what an interrupted attempt wrote after the checkpoint is set
aside, never deleted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from advtrain.engine.trainer import Trainer
from advtrain.errors import AdvtrainError, CheckpointError
from advtrain.models import load_model_state
from advtrain.utils import distributed as dist_utils
from advtrain.utils.checkpoint import find_latest_valid, load_checkpoint
from advtrain.utils.distributed import DistEnv

__all__ = [
    "apply_resume",
    "check_resume_compatible",
    "finished_run",
    "latest_checkpoint",
    "load_resume",
    "on_rank0",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


def on_rank0(env: DistEnv, fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 and give its result to every rank; a user error on rank 0 is raised on all ranks.

    For the few steps only rank 0 may take (touching the run directory): without this, rank 0 would stop with a
    clear message while the other ranks hang in their next collective.
    """
    if not env.is_distributed:
        return fn()
    result: Any = None
    if env.is_main:
        try:
            result = ("ok", fn())
        except AdvtrainError as e:
            result = ("error", e)
    result = dist_utils.broadcast_object(result)
    if result[0] == "error":
        raise result[1]
    return result[1]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of `run_dir` that loads and verifies: `checkpoints/step_*.pt`, else `last.pt`.

    Truncated or corrupt files (a crash mid-copy, a full disk) are skipped with a warning, so `resume=auto`
    falls back to the previous good checkpoint.
    """
    path = find_latest_valid(run_dir / "checkpoints", pattern="step_*.pt")
    if path is None and (run_dir / "last.pt").is_file():
        try:
            load_checkpoint(run_dir / "last.pt")
            path = run_dir / "last.pt"
        except CheckpointError as e:
            log.warning("skipping %s: %s", run_dir / "last.pt", e)
    return path


def _resolve_resume(cfg: dict[str, Any], run_dir: Path) -> Path | None:
    resume = cfg.get("resume")
    if not resume:
        return None
    if resume == "auto":
        path = latest_checkpoint(run_dir)
        if path is None:
            log.info(
                "resume=auto: no valid checkpoint in %s, starting fresh (to continue a run, pass its "
                "directory: run_dir=PATH or hydra.run.dir=PATH)",
                run_dir,
            )
        return path
    path = Path(os.path.expanduser(str(resume)))
    if not path.is_file():
        raise CheckpointError(
            f"resume={resume}: no such checkpoint file (use resume=auto to pick the newest "
            "valid checkpoint of the run directory)"
        )
    return path


def load_resume(
    cfg: dict[str, Any], run_dir: Path, env: DistEnv, model: torch.nn.Module
) -> tuple[Path, dict[str, Any]] | None:
    """Find, load and check the checkpoint to resume from, before any data is loaded (fail fast).

    Checks: the file verifies, its model/dataset/loss match the config, and its weights fit the model (the
    weights are loaded into `model` here; the full trainer state follows once the trainer exists).
    """
    path = on_rank0(env, lambda: _resolve_resume(cfg, run_dir))
    if path is None:
        return None
    if not path.is_file():
        raise CheckpointError(
            f"rank {env.rank} cannot read {path}: with several nodes the run directory must "
            "be on a filesystem every node shares"
        )
    # On the CPU: the model/optimizer loads move each tensor to its device, RNG states must stay CPU tensors.
    ckpt = load_checkpoint(path, map_location="cpu")
    check_resume_compatible(ckpt["config"], cfg)
    load_model_state(model, ckpt["model"])
    return path, ckpt


def finished_run(
    cfg: dict[str, Any], run_dir: Path, path: Path, ckpt: dict[str, Any]
) -> dict[str, Any] | None:
    """The record of a finished run that this resume would only repeat, or None to continue.

    A run is finished when its run directory has final.json (written after the test pass of its
    last epoch, which it names) and the checkpoint holds the step final.json ends at (when that
    checkpoint was lost, resume=auto finds an older one and re-trains the rest). Re-running it with the same or fewer `trainer.epochs` would
    repeat the test pass and rewrite final.json and config.json: instead the caller reports it
    and touches nothing. More epochs continue the run (announced, with the schedule recomputed).
    A change of `trainer.epochs` on any resume is announced; fewer epochs than a checkpoint has
    already trained are refused.
    """
    old = int(((ckpt.get("config") or {}).get("trainer") or {}).get("epochs", 0) or 0)
    new = int(cfg["trainer"]["epochs"])
    trained = int(ckpt.get("epoch", 1)) - 1
    final = run_dir / "final.json"
    record = _read_json(final)
    if (
        record is not None
        and isinstance(record.get("epoch"), int)
        and new <= record["epoch"]
        # the checkpoint is the run's end state (a torn final checkpoint is re-trained instead)
        and int(ckpt.get("step", -1)) >= int(record.get("step", 0))
    ):
        return record
    if new < trained:
        raise CheckpointError(
            f"trainer.epochs={new} but {path} has already trained {trained} epochs; resume with "
            f"trainer.epochs={trained} or more (epochs can grow on resume, not shrink)"
        )
    if old and new != old:
        what = "continuing the finished run" if final.is_file() else "resuming"
        log.info(
            "trainer.epochs %d -> %d: %s from epoch %d; the lr schedule (and any eps ramp) is "
            "recomputed for %d epoch(s)",
            old,
            new,
            what,
            trained + 1,
            new,
        )
    return None


def apply_resume(
    trainer: Trainer, path: Path, ckpt: dict[str, Any], run_dir: Path, env: DistEnv
) -> None:
    try:
        trainer.load_state_dict(ckpt)
    except (KeyError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot resume from {path}: {str(e)[:300]}") from None
    if env.is_main and path.resolve().parent in (
        run_dir.resolve(),
        (run_dir / "checkpoints").resolve(),
    ):
        _tidy_for_resume(run_dir, trainer.step)
    log.info("resumed from %s at epoch %d step %d", path, trainer.epoch, trainer.step)


def _tidy_for_resume(run_dir: Path, step: int) -> None:
    """Continue `run_dir` from `step`: set aside what the interrupted attempt wrote after it. Nothing is deleted.

    - `checkpoints/step_N.pt` with N > step (corrupt, or from an abandoned continuation) are renamed to
      `*.pt.abandoned`, so neither the rotation nor a later `resume=auto` mistakes them for the newest state.
    - our own temporary files from a write that was killed midway (`.step_*.tmp`, `.last.pt.tmp`) are removed.
    - `metrics.jsonl` keeps only the lines with step <= `step` (the killed attempt's later lines are re-logged
      by this one); the original is kept as `metrics.jsonl.before_resume_<step>` (`.1`, `.2`, ... when a
      backup of that step exists already: an earlier backup is never overwritten).
    """
    ckdir = run_dir / "checkpoints"
    for p in sorted(ckdir.glob("step_*.pt")):
        try:
            n = int(p.stem.split("_")[1])
        except (IndexError, ValueError):
            continue
        if n > step:
            log.warning(
                "resume at step %d: setting aside %s (newer but not resumable)", step, p.name
            )
            os.replace(p, p.with_name(p.name + ".abandoned"))
    for folder in (ckdir, run_dir):
        for tmp in folder.glob(".*.tmp"):
            if tmp.name.startswith((".step_", ".last.pt", ".best.pt")):
                tmp.unlink(missing_ok=True)
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        lines = metrics.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if int(rec.get("step", 0)) <= step and not rec.get("final"):
                keep.append(line)
        if len(keep) != len(lines):
            backup = _free_name(metrics.with_name(f"metrics.jsonl.before_resume_{step}"))
            os.replace(metrics, backup)
            tmp = metrics.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(f"{line}\n" for line in keep))
            os.replace(tmp, metrics)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`, ...: the first name not taken (a backup never overwrites one)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def check_resume_compatible(ckpt_cfg: dict[str, Any], cfg: dict[str, Any]) -> None:
    """Refuse to resume when the model, dataset or loss changed (weights would not fit or mean something else).

    Other settings (epochs, lr, attack, checkpointing) may change on resume: extending a run is legitimate.
    """
    fix = "resume with the checkpoint's settings, or train in a new run directory without resume"
    if ckpt_cfg.get("model") != cfg.get("model"):
        raise CheckpointError(
            f"cannot resume: the model config changed (checkpoint: {ckpt_cfg.get('model')}, now: {cfg.get('model')}); "
            + fix
        )
    old_data, new_data = (
        (ckpt_cfg.get("data") or {}).get("name"),
        (cfg.get("data") or {}).get("name"),
    )
    if old_data != new_data:
        raise CheckpointError(f"cannot resume: dataset changed ({old_data} -> {new_data}); " + fix)
    old_loss, new_loss = (
        (ckpt_cfg.get("loss") or {}).get("name"),
        (cfg.get("loss") or {}).get("name"),
    )
    if old_loss != new_loss:
        raise CheckpointError(f"cannot resume: the loss changed ({old_loss} -> {new_loss}); " + fix)
