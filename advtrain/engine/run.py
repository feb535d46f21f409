"""`train` end to end: config dict -> data, model, attack, loss, optimiser, callbacks -> Trainer.fit().

One code path for one process and for `torchrun --nproc_per_node=N` (DDP): the process group comes from the
launcher's environment, `data.batch_size` is the global batch (each rank trains on batch_size / world_size), rank 0
alone writes to the run directory. Everything that can be checked without data is checked before any data is
loaded, so a config mistake costs a second.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from advtrain.engine.build import (
    build_attack,
    build_callbacks,
    build_loss,
    build_model,
    build_optimization,
    validate_config,
)
from advtrain.engine.fastpath import resolve_fast_paths
from advtrain.engine.trainer import EvalSet, Trainer, check_resume_compatible
from advtrain.errors import AdvtrainError, CheckpointError, ConfigError, DataError
from advtrain.utils import distributed as dist_utils
from advtrain.utils.checkpoint import find_latest_valid, load_checkpoint
from advtrain.utils.distributed import DistEnv
from advtrain.utils.logging import MetricsLogger
from advtrain.utils.seed import seed_everything

log = logging.getLogger(__name__)
T = TypeVar("T")


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"run directory {run_dir} is not writable ({e.strerror}); choose another with run_dir=PATH "
            "(or hydra.run.dir=PATH, or ADVTRAIN_RUNS_DIR)"
        ) from None


def _on_rank0(env: DistEnv, fn: Callable[[], T]) -> T:
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


def run_training(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train as configured; returns the last epoch's record plus the final test metrics.

    Under torchrun (or a multi-task submitit job) this joins the process group (unless the Hydra callback or an
    earlier run in this process already did); the group lives until the process exits.
    """
    env = dist_utils.env_info()
    validate_config(cfg, env.world_size)
    dcfg = cfg.get("distributed") or {}
    env, device, _ = dist_utils.init_distributed(
        str(cfg.get("device", "auto")),
        backend=str(dcfg.get("backend", "auto")),
        timeout_minutes=float(dcfg.get("timeout_minutes", 30)),
    )
    return _run(cfg, env, device)


def _run(cfg: dict[str, Any], env: DistEnv, device: torch.device) -> dict[str, Any]:
    # Rank 0's run directory is authoritative (the Hydra callback already agrees on it; library callers may not).
    run_dir = Path(dist_utils.broadcast_object(str(cfg["run_dir"]) if env.is_main else None))
    cfg = {**cfg, "run_dir": str(run_dir)}
    _on_rank0(env, lambda: _check_writable(run_dir))
    t = cfg["trainer"]
    seed_everything(int(cfg["seed"]), deterministic=bool(t.get("deterministic", False)))
    fast = resolve_fast_paths(t, device)
    channels_last, autocast_dtype = fast.channels_last, fast.autocast_dtype
    if env.is_main:
        log.info("%s", fast.describe())
    global_batch = int(cfg["data"]["batch_size"])
    per_rank = dist_utils.per_rank_batch_size(global_batch, env.world_size)
    if env.is_distributed and env.is_main:
        log.info(
            "DDP over %d processes: global batch %d = %d per rank",
            env.world_size,
            global_batch,
            per_rank,
        )
    if t.get("sync_bn") and not env.is_distributed:
        log.info(
            "trainer.sync_bn=true with one process: nothing to synchronise, plain BatchNorm is used"
        )

    # Everything that needs no data first: config mistakes fail before the (slow) data loading.
    d = cfg["data"]
    model = build_model(cfg)
    loss = build_loss(cfg)
    attack, schedule = build_attack(cfg)
    resume = _load_resume(cfg, run_dir, env, model)

    from advtrain.data import AuxDataset, TrainLoader, make_datasets

    data = make_datasets(
        d["name"],
        d["root"],
        download=bool(d["download"]),
        val_size=d["val_size"],
        train_subset=d["train_subset"],
    )
    aux = AuxDataset(d["aux_path"], info=data.info) if d.get("aux_path") else None
    loader = TrainLoader(
        data.train_images,
        data.train_labels,
        batch_size=per_rank,
        augment=d["augment"],
        pad_mode=str(d.get("pad_mode", "zeros")),
        seed=int(cfg["seed"]),
        aux=aux,
        aux_fraction=float(d.get("aux_fraction") or 0.0),
        two_view=bool(d.get("two_view")),
        cutout=int(d.get("cutout") or 0),
        rank=env.rank,
        world_size=env.world_size,
    )
    if data.info.num_classes != _num_outputs(model, data):
        raise DataError("the model's number of outputs does not match the dataset's classes")
    model = model.to(
        device, memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    if t.get("sync_bn") and env.is_distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    loss = loss.to(device)
    optimizer, lr_schedule, settings = build_optimization(cfg, model, len(loader))
    callbacks = build_callbacks(cfg, model, schedule)
    compiled = torch.compile(model) if t.get("compile") else None
    ddp = None
    if env.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (BatchNorm statistics) are re-broadcast from rank 0 at every forward (DDP's default).
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    lg = cfg.get("logger") or {"name": "jsonl"}
    wandb_cfg = None
    if lg.get("name") == "wandb" and env.is_main:
        wandb_cfg = {k: v for k, v in lg.items() if k != "name"}
        wandb_cfg.setdefault("name", run_dir.name)
    logger = MetricsLogger(run_dir, enabled=env.is_main, wandb_cfg=wandb_cfg, config=cfg)
    try:
        trainer = Trainer(
            model=model,
            loss=loss,
            attack=attack,
            optimizer=optimizer,
            lr_schedule=lr_schedule,
            train_loader=loader,
            val_set=EvalSet(data.val_images, data.val_labels),
            test_set=EvalSet(data.test_images, data.test_labels),
            callbacks=callbacks,
            settings=settings,
            run_dir=run_dir,
            device=device,
            config=cfg,
            seed=int(cfg["seed"]),
            logger=logger,
            autocast_dtype=autocast_dtype,
            attack_autocast_dtype=fast.attack_autocast_dtype,
            channels_last=channels_last,
            compiled_model=compiled,
            ddp_model=ddp,
            dist_env=env,
        )
        if resume is not None:
            _apply_resume(trainer, *resume, run_dir, env)
        if env.is_main:
            (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        result = trainer.fit()
    finally:
        logger.close()
    result = {
        **result,
        "world_size": env.world_size,
        "global_batch_size": global_batch,
        "per_rank_batch_size": per_rank,
    }
    if env.is_main:
        (run_dir / "final.json").write_text(json.dumps(result, indent=2))
    return result


def _num_outputs(model: torch.nn.Module, data: Any) -> int:
    with torch.no_grad():
        was = model.training
        model.eval()
        out = model(
            data.val_images[:1].float().div(255)
            if len(data.val_images)
            else data.train_images[:1].float().div(255)
        )
        model.train(was)
    return int(out.shape[1])


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


def _load_resume(
    cfg: dict[str, Any], run_dir: Path, env: DistEnv, model: torch.nn.Module
) -> tuple[Path, dict[str, Any]] | None:
    """Find, load and check the checkpoint to resume from, before any data is loaded (fail fast).

    Checks: the file verifies, its model/dataset/loss match the config, and its weights fit the model (the
    weights are loaded into `model` here; the full trainer state follows once the trainer exists).
    """
    path = _on_rank0(env, lambda: _resolve_resume(cfg, run_dir))
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
    from advtrain.models import load_model_state

    load_model_state(model, ckpt["model"])
    return path, ckpt


def _apply_resume(
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
      by this one); the original is kept as `metrics.jsonl.before_resume_<step>`.
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
            backup = metrics.with_name(f"metrics.jsonl.before_resume_{step}")
            os.replace(metrics, backup)
            tmp = metrics.with_name(".metrics.jsonl.tmp")
            tmp.write_text("".join(f"{line}\n" for line in keep))
            os.replace(tmp, metrics)
