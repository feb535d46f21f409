"""Devices and processes: who am I, which device is mine, one process group, collectives that are no-ops alone.

Why a module of its own: training, evaluation, export, the benchmarks and the Hydra entry all need the same
answers (rank, world size, device, backend) and the same few collectives, and every one of them must degrade to a
plain single-process no-op so that `python -m advtrain train` and `torchrun --nproc_per_node=N -m advtrain train`
(or `eval`) run the same code. This is the only place that resolves a `device=` option or starts a process group.

Launchers: `torchrun` (single or multi node) sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
a Slurm job started by submitit with several tasks gets them from `submitit.helpers.TorchDistributedEnvironment`.
The process group uses NCCL for CUDA tensors and gloo for CPU tensors (`cpu:gloo,cuda:nccl` on a CUDA run, so
CPU-side objects such as checkpoint states can still be gathered).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from advtrain.errors import ConfigError
from advtrain.utils.hashing import tensors_sha256
from advtrain.values import positive

log = logging.getLogger(__name__)

BACKENDS = ("auto", "nccl", "gloo")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job. `world_size == 1` means plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics, wandb and the run directory's files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer") from None


def _export_submitit_env() -> None:
    """Inside a multi-task submitit job (Slurm, or local), export the env:// variables torchrun would have set.

    CUDA_VISIBLE_DEVICES is left alone: each task then uses cuda:LOCAL_RANK, as under torchrun.
    """
    if "RANK" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:  # pragma: no cover - submitit is a dependency
        return
    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def env_info() -> DistEnv:
    """Rank / world size / local rank from the launcher's environment (1 process when none is set)."""
    _export_submitit_env()
    world = _int_env("WORLD_SIZE", 1)
    rank = _int_env("RANK", 0)
    local = _int_env("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} / WORLD_SIZE={world} from the environment are inconsistent")
    return DistEnv(rank=rank, world_size=world, local_rank=local)


def current() -> DistEnv:
    """The running process group's view (falls back to the environment when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistEnv(rank=rank, world_size=world, local_rank=_int_env("LOCAL_RANK", rank))
    return env_info()


def resolve_device(name: str = "auto", env: DistEnv | None = None) -> torch.device:
    """The device of this rank: `auto`/`cuda` -> cuda:LOCAL_RANK under a launcher, else as single-process.

    The one device resolution of advtrain (training, evaluation, export and the benchmarks): `auto`
    is CUDA when available, else the CPU. `env` defaults to the launcher's environment. A CUDA request
    without a GPU and a fixed `cuda:N` under several processes are user mistakes (ConfigError).
    """
    env = env_info() if env is None else env
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device={name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device={name} but no CUDA GPU is available here; use device=cpu or device=auto"
            )
        if env.is_distributed:
            if dev.index is not None:
                raise ConfigError(
                    f"device={name} with {env.world_size} processes: each rank uses cuda:LOCAL_RANK; "
                    "set device=cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
                )
            if env.local_rank >= torch.cuda.device_count():
                raise ConfigError(
                    f"LOCAL_RANK={env.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                    "start at most one process per GPU (torchrun --nproc_per_node)"
                )
            dev = torch.device("cuda", env.local_rank)
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def module_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights live on (its first parameter, else buffer; the CPU when it has none).

    Evaluation moves each batch to the model rather than the model to a configured device, so a caller's
    placement (a notebook's `model.cuda()`) is respected.
    """
    t = next(model.parameters(), None)
    if t is None:
        t = next(model.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def backend_for(device: torch.device, requested: str = "auto") -> str:
    """`auto`: NCCL for CUDA tensors plus gloo for CPU ones on a CUDA run, gloo alone on the CPU."""
    if requested not in BACKENDS:
        raise ConfigError(f"distributed.backend={requested!r}: use one of {', '.join(BACKENDS)}")
    if requested == "nccl" and device.type != "cuda":
        raise ConfigError(
            f"distributed.backend=nccl needs CUDA but this run's device is {device}; "
            "use distributed.backend=gloo (or auto) on the CPU"
        )
    if requested == "gloo":
        return "gloo"
    if device.type == "cuda":
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_distributed(
    device_name: str = "auto", *, backend: str = "auto", timeout_minutes: float = 30.0
) -> tuple[DistEnv, torch.device, bool]:
    """Join the launcher's process group if there is one; returns (env, this rank's device, created).

    Idempotent: with a group already running (the Hydra callback starts it early to agree on the run
    directory, or an earlier run in this process did) nothing is re-initialised and `created` is False.
    A group created here lives until the process exits.
    """
    env = env_info()
    device = resolve_device(device_name, env)
    if not env.is_distributed:
        backend_for(device, backend)  # still validate the option
        return env, device, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return current(), device, False
    timeout_minutes = positive("distributed.timeout_minutes", timeout_minutes)
    name = backend_for(device, backend)
    dist.init_process_group(
        backend=name, timeout=datetime.timedelta(minutes=float(timeout_minutes))
    )
    # Kept for the life of the process: re-creating a group on the launcher's store after destroying one fails
    # (stale rendezvous keys), and a process may train several times (Hydra -m under torchrun, tests).
    atexit.register(destroy, True)
    log.info(
        "process group up: rank %d of %d (local %d), backend %s, device %s",
        env.rank,
        env.world_size,
        env.local_rank,
        name,
        device,
    )
    return current(), device, True


def destroy(created: bool) -> None:
    """Tear the group down if this caller created it (registered at exit for the groups created here)."""
    if created and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def group_rank_world() -> tuple[int, int]:
    """(rank, world size) of the running process group; (0, 1) when none is running.

    Unlike `current()`, this never trusts the launcher's variables alone: code that shards work over
    ranks (AutoAttack) must only do so when a group exists to gather the shards through.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (no-op alone). On NCCL the barrier is pinned to this rank's GPU."""
    if not _active():
        return
    if torch.cuda.is_available() and "nccl" in str(dist.get_backend()):
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from rank `src` on every rank (picklable objects; no-op alone)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list alone)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_true(flag: bool, device: torch.device) -> bool:
    """True on every rank iff `flag` is true on every rank (a MIN all-reduce; plain `flag` alone).

    The non-finite guard uses it so that all ranks skip or stop together: a rank that skips its backward
    while the others all-reduce gradients would hang the job.
    """
    if not _active():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def all_true_tensor(flag: torch.Tensor) -> torch.Tensor:
    """`flag` (a 0-d bool tensor) AND-ed over the ranks by a MIN all-reduce on the device; `flag` alone.

    Never read on the host: the trainer's non-finite guard applies or drops a step on every rank
    together without a device-to-host sync.
    """
    if not _active():
        return flag
    t = flag.to(torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.bool()


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks of a short list of floats (float64; the list itself alone)."""
    if not _active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().tolist()


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each `.grad` by its mean over ranks, in one flat all-reduce (no-op alone).

    For modules DDP does not wrap (the AWP proxy): the same averaging DDP applies to the model's gradients.
    """
    if not _active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def replicas_agree(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether `tensors` are bit-identical on every rank (True alone).

    DDP keeps parameters equal by construction and the GKL tracker is summed over ranks, so a mismatch means a
    desynchronised job (a skipped collective, a rank-local update); checked once per epoch.
    """
    if not _active():
        return True
    prints = all_gather_object(tensors_sha256(tensors))
    return len(set(prints)) == 1


def per_rank_batch_size(global_batch: int, world_size: int) -> int:
    """`data.batch_size` is the global batch; each rank trains on global / world_size examples per step."""
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ConfigError(f"data.batch_size must be an integer >= 1, got {global_batch!r}")
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        raise ConfigError(
            f"data.batch_size={global_batch} is the global batch and must divide by the {world_size} processes; "
            f"use e.g. data.batch_size={max(lower, world_size)} or {lower + world_size}"
        )
    return global_batch // world_size


# --------------------------------------------------------------------------------------------------------------
# Hydra: one run directory per job, chosen by rank 0
# --------------------------------------------------------------------------------------------------------------

try:  # Hydra is a dependency; the import is guarded only so this module stays importable without it
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover
    _HydraCallback = object  # type: ignore[assignment,misc]


def _drop_file_handlers(job_logging: Any) -> None:
    """Remove every handler with a `filename` from a logging dictConfig (in place)."""
    handlers = job_logging.get("handlers") or {}
    files = [name for name, h in handlers.items() if h is not None and "filename" in h]
    for name in files:
        del handlers[name]
    root = job_logging.get("root")
    if root is not None and root.get("handlers") is not None:
        root.handlers = [h for h in root.handlers if h not in files]


class SharedRunDir(_HydraCallback):
    """Make rank 0's Hydra run directory the run directory of every rank.

    Under torchrun every rank is its own Hydra app and would resolve `${now:...}` to its own second, creating
    one directory per rank. Before Hydra creates anything (`on_run_start`), this callback starts the process
    group, broadcasts rank 0's resolved `hydra.run.dir` and pins it on all ranks; ranks > 0 also skip the
    `.hydra/` snapshot and the log file (their log lines go to the console at WARNING). Single-process runs are
    untouched. Sweeps (`-m`) already share a directory per job; there ranks > 0 only drop their log file.
    """

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        from omegaconf import open_dict, read_write

        env = env_info()
        if not env.is_distributed:
            return
        d = config.get("distributed") or {}
        init_distributed(
            str(config.get("device", "auto")),
            backend=str(d.get("backend", "auto")),
            timeout_minutes=float(d.get("timeout_minutes", 30)),
        )
        run_dir = broadcast_object(str(config.hydra.run.dir) if env.is_main else None)
        with read_write(config), open_dict(config):
            config.hydra.run.dir = run_dir
            if "run_dir" in config:
                config.run_dir = run_dir
            if not env.is_main:
                config.hydra.output_subdir = None
                _drop_file_handlers(config.hydra.job_logging)
                if config.hydra.job_logging.get("root") is not None:
                    config.hydra.job_logging.root.level = "WARNING"

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        if env_info().is_main:
            return
        root = logging.getLogger()
        for h in list(root.handlers):
            if isinstance(h, logging.FileHandler):
                root.removeHandler(h)
                h.close()
