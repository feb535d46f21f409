"""The real AutoAttack (PyPI `pyautoattack`), run resumably in shards, on one or many processes.

Every attack step runs inside pyautoattack; this module only decides *what* it is given and
keeps what it returns. Why the wrapping is needed:

* Per-example results. `run_standard_evaluation` returns `(x_adv, y_adv)`; we keep per-example
  `clean_correct`/`robust_correct` flags, per-class numbers and the robust accuracy after each
  attack of the cascade (summed from its log lines, exact integer counts).
* The log. pyautoattack logs through the `logging` logger 'auto-attack' at DEBUG level and prints
  nothing without a handler; we attach one while it runs and keep the lines (autoattack.log).
* Reproducibility. With a fixed `seed` every attack re-seeds the *global* torch RNG, so the
  caller's RNG state is saved and restored around each run, and the clean pass is seeded too.
* Resumability. AutoAttack's own `state_path` resume is broken in both the GitHub and the PyPI
  versions (docs/robustbench_format.md §6.5), so we checkpoint ourselves: the examples are cut into shards
  of `shard_size` consecutive points, AutoAttack runs on each shard separately, and each finished
  shard is written atomically to `state_dir/shard_XXXXX.pt`. A rerun loads finished shards
  (after checking they belong to the same evaluation) and attacks only the rest.
* Several processes. Under torch.distributed shards go round-robin to the ranks, which write
  their shard files into the shared `state_dir`; after a barrier the shards are merged in shard
  order. Because the shard boundaries, not the processes, define what each AutoAttack call sees,
  1 process, N processes and any number of interruptions give bit-identical results.

What the result depends on (read this before comparing numbers): AutoAttack draws its random
starts per *batch* after re-seeding, and between attacks it regroups the still-robust points into
new batches. So a point's outcome depends on which other points share its AutoAttack call. The
result is therefore a deterministic function of (model, data, seed, batch_size, shard_size), and
equals a direct `pyautoattack` run on each shard with the same seed and batch size; with a single
shard (`shard_size=None` or >= n) it equals one direct run on all points exactly. `shard_size`
must be a multiple of `batch_size` so that shard boundaries fall on batch boundaries (every
AutoAttack batch inside a shard is as full as in an unsharded run). Different shard sizes give
statistically equivalent, not bit-identical, numbers: the random starts differ, the attacks do not
(on a 32-image CIFAR-10 check, 1 shard vs 4 gave different x_adv but the same flags).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks.pgd import model_mode
from advtrain.errors import ConfigError
from advtrain.eval import checks
from advtrain.utils.checkpoint import atomic_torch_save, atomic_write_bytes
from advtrain.utils.distributed import barrier, group_rank_world, module_device
from advtrain.utils.hashing import model_hash, tensors_sha256

__all__ = [
    "ATTACK_NAMES",
    "VERSIONS",
    "AutoAttackResult",
    "build_autoattack",
    "model_hash",
    "resolve_attacks",
    "run_autoattack",
]

log = logging.getLogger(__name__)

VERSIONS = ("standard", "plus", "rand", "custom")
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
#: The attack lists pyautoattack's `_set_version` uses (for Linf/L2; also for L1 standard).
_VERSION_ATTACKS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
_AA_LOGGER = "auto-attack"
_STATE_FORMAT = "advtrain-autoattack-state"
_STATE_VERSION = 1
_BATCH_LINE = re.compile(r"^(\S+) - (\d+)/(\d+) - (\d+) out of (\d+) successfully perturbed$")


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------


@dataclass
class AutoAttackResult:
    """Per-example AutoAttack outcome, in the order of the given examples.

    `per_attack_robust` maps each attack (in cascade order) to the number of points still
    robust after it; `log` is AutoAttack's own log, shard by shard, plus a merged summary.
    """

    clean_correct: Tensor
    robust_correct: Tensor
    x_adv: Tensor
    y_adv: Tensor
    attacks: list[str]
    per_attack_robust: dict[str, int]
    log: list[str]
    aa_warnings: list[str]
    meta: dict[str, Any]
    n_shards: int = 1
    shards_resumed: int = 0
    wall_time_s: float = 0.0
    preflight_warnings: list[str] = field(default_factory=list)

    @property
    def n_examples(self) -> int:
        return int(self.clean_correct.numel())

    @property
    def clean_acc(self) -> float:
        return float(self.clean_correct.float().mean()) if self.n_examples else float("nan")

    @property
    def robust_acc(self) -> float:
        return float(self.robust_correct.float().mean()) if self.n_examples else float("nan")

    @property
    def per_attack_robust_acc(self) -> dict[str, float]:
        """Robust accuracy after each attack of the cascade (what AutoAttack logs per attack)."""
        n = max(self.n_examples, 1)
        return {k: v / n for k, v in self.per_attack_robust.items()}

    @property
    def log_text(self) -> str:
        return "\n".join(self.log) + "\n"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def resolve_attacks(version: str, attacks: Sequence[str] | None) -> list[str]:
    """The attack list a version runs; validates a custom list (same rules as pyautoattack)."""
    if version not in VERSIONS:
        raise ConfigError(f"AutoAttack version={version!r} is unknown; use one of {list(VERSIONS)}")
    if version != "custom":
        if attacks:
            raise ConfigError(
                f"attacks={list(attacks)} is only used with version=custom (version={version} "
                "fixes its own attacks); set attacks=null or version=custom"
            )
        return list(_VERSION_ATTACKS[version])
    if not attacks:
        raise ConfigError(
            f"version=custom needs a list of attacks, e.g. [apgd-ce, apgd-t]; choose from {list(ATTACK_NAMES)}"
        )
    out = [str(a) for a in attacks]
    unknown = [a for a in out if a not in ATTACK_NAMES]
    if unknown:
        raise ConfigError(
            f"unknown AutoAttack attack(s) {unknown}; choose from {list(ATTACK_NAMES)}"
        )
    if len(set(out)) != len(out):
        raise ConfigError(f"attacks={out} lists an attack twice")
    return out


def build_autoattack(
    model: nn.Module,
    *,
    norm: str,
    eps: float,
    version: str,
    attacks: Sequence[str] | None,
    seed: int,
    device: torch.device | str,
    n_restarts: int | None = None,
) -> Any:
    """A configured `pyautoattack.AutoAttack`.

    For version=custom, `n_restarts` (default 1) is set on APGD, APGD-T and FAB explicitly:
    pyautoattack's constructor defaults are 5 restarts for APGD-CE/-DLR and FAB, which would make
    a custom `['apgd-ce']` five times the APGD-CE stage of the standard version (docs/robustbench_format.md §8).
    """
    from pyautoattack import AutoAttack

    resolved = resolve_attacks(version, attacks)
    aa = AutoAttack(
        model,
        attacks=resolved if version == "custom" else None,
        device=device,
        eps=eps,
        norm=norm,
        seed=seed,
        version=version,
    )
    if version == "custom":
        restarts = 1 if n_restarts is None else int(n_restarts)
        if restarts < 1:
            raise ConfigError(f"n_restarts={n_restarts} must be >= 1")
        aa.apgd.n_restarts = restarts
        aa.apgd_targeted.n_restarts = restarts
        aa.fab.n_restarts = restarts
    elif n_restarts is not None:
        raise ConfigError(
            f"n_restarts={n_restarts} is only used with version=custom ({version} fixes its own); "
            "set n_restarts=null"
        )
    return aa


@contextmanager
def _preserved_rng(device: torch.device) -> Iterator[None]:
    """Restore the global torch RNG (CPU and, if used, CUDA) that AutoAttack re-seeds."""
    cpu = torch.get_rng_state()
    cuda = (
        torch.cuda.get_rng_state_all()
        if device.type == "cuda" and torch.cuda.is_initialized()
        else None
    )
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class _Capture(logging.Handler):
    """Collects AutoAttack's log lines; warnings separately; optional per-line callback."""

    def __init__(self, on_line: Callable[[str], None] | None = None) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.warnings: list[str] = []
        self.on_line = on_line

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.warnings.append(msg)
            msg = f"Warning: {msg}"
        self.lines.append(msg)
        if self.on_line is not None:
            self.on_line(msg)


@contextmanager
def _captured_aa_log(on_line: Callable[[str], None] | None = None) -> Iterator[_Capture]:
    """Attach a capturing handler to pyautoattack's logger at DEBUG, without propagating.

    Not propagating keeps hundreds of progress lines off the console of a Hydra app (whose root
    handler would print them); the lines land in autoattack.log instead.
    """
    logger = logging.getLogger(_AA_LOGGER)
    handler = _Capture(on_line)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def _broken_per_attack(lines: Sequence[str], attacks: Sequence[str]) -> dict[str, int]:
    """Points each attack broke, summed from AutoAttack's 'k out of m successfully perturbed' lines."""
    broken = dict.fromkeys(attacks, 0)
    for line in lines:
        m = _BATCH_LINE.match(line)
        if m and m.group(1) in broken:
            broken[m.group(1)] += int(m.group(4))
    return broken


def _check_meta(found: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    diff = [
        f"{k}: {found.get(k)!r} there vs {expected.get(k)!r} now"
        for k in sorted(set(found) | set(expected))
        if found.get(k) != expected.get(k)
    ]
    if diff:
        raise ConfigError(
            f"{where} belongs to a different AutoAttack evaluation ({'; '.join(diff[:4])}); "
            "use another state_dir or delete that one to start over"
        )


def _wait_for_files(paths: Sequence[Path], poll_s: float = 2.0) -> None:
    """Wait until other ranks have written their shards.

    Polling the shared folder instead of sitting in a collective barrier: ranks can finish hours
    apart on a large model, far beyond the default 30-minute collective timeout. A crashed rank
    makes torchrun stop the whole job, so this never waits on a dead peer for long.
    """
    while True:
        missing = [p for p in paths if not p.exists()]
        if not missing:
            return
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------
# main entry
# --------------------------------------------------------------------------------------------


@dataclass
class _Shard:
    index: int
    start: int
    stop: int
    clean_correct: Tensor
    robust_correct: Tensor
    x_adv: Tensor
    y_adv: Tensor
    lines: list[str]
    warnings: list[str]
    broken: dict[str, int]
    resumed: bool = False


def run_autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "Linf",
    eps: float = 8 / 255,
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 250,
    state_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    shard_size: int | None = None,
    progress: bool = True,
    n_restarts: int | None = None,
    preflight: bool = True,
    on_shard_done: Callable[[int], None] | None = None,
) -> AutoAttackResult:
    """AutoAttack on `x` (float (N, C, H, W) in [0, 1], any device) with labels `y`.

    `version`: standard | plus | rand | custom (then `attacks` lists the attacks and `n_restarts`,
    default 1, their restarts). `shard_size` (None: one shard) must be a multiple of
    `batch_size`; see the module docstring for what the result depends on. With `state_dir`, each
    finished shard is saved there and a rerun resumes; under torch.distributed `state_dir` is
    required (it is how ranks share results) and every rank returns the same merged result.
    `on_shard_done(index)` is called after each shard this process computes and saves.
    The model is put in eval mode for the run (its modes are restored afterwards); the caller's
    global RNG state is restored too.
    """
    started = time.perf_counter()
    attack_list = resolve_attacks(version, attacks)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(
            f"seed={seed!r} must be an integer (AutoAttack without a seed is not reproducible)"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
    eps = checks.parse_eps(eps)
    checks.check_eps(norm, eps, tuple(x.shape[1:]) if x.dim() == 4 else None)
    checks.check_inputs(x)
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ConfigError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if version == "custom":
        restarts: int | None = 1 if n_restarts is None else n_restarts
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise ConfigError(f"n_restarts={n_restarts!r} must be an integer >= 1")
    elif n_restarts is not None:
        raise ConfigError(
            f"n_restarts={n_restarts} is only used with version=custom ({version} fixes its own); "
            "set n_restarts=null"
        )
    else:
        restarts = None
    n = int(x.shape[0])
    if shard_size is None:
        shard_size = -(-n // batch_size) * batch_size
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ConfigError(f"shard_size={shard_size!r} must be a positive integer or null")
    if shard_size % batch_size:
        raise ConfigError(
            f"shard_size={shard_size} must be a multiple of batch_size={batch_size} so shard "
            f"boundaries fall on AutoAttack batch boundaries (e.g. shard_size={4 * batch_size})"
        )
    model_dev = module_device(model)
    dev = torch.device(device) if device is not None else model_dev
    if dev.type != model_dev.type or (
        dev.index is not None and model_dev.index is not None and dev.index != model_dev.index
    ):
        raise ConfigError(
            f"device={dev} but the model is on {model_dev}; move the model first (model.to(device))"
        )
    rank, world = group_rank_world()
    state_path = Path(state_dir) if state_dir is not None else None
    if world > 1 and state_path is None:
        raise ConfigError(
            "AutoAttack under torch.distributed needs a shared state_dir (set state_dir=PATH)"
        )

    # Standard-contiguous NCHW float32 on the CPU: pyautoattack's L2 APGD and Linf APGD-T call
    # .view() and fail on permuted or channels_last tensors (docs/robustbench_format.md §8). Batches move to `dev` one by one.
    x = x.detach().to("cpu", torch.float32).contiguous(memory_format=torch.contiguous_format)
    y = y.detach().to("cpu", torch.long).contiguous()

    meta = {
        "format": _STATE_FORMAT,
        "format_version": _STATE_VERSION,
        "norm": norm,
        "eps": eps,
        "version": version,
        "attacks": attack_list,
        "n_restarts": restarts,
        "seed": seed,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "n_examples": n,
        "model_hash": model_hash(model),
        "data_hash": tensors_sha256([x, y]),
    }
    bounds = [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    mine = [i for i in range(len(bounds)) if i % world == rank]

    if state_path is not None:
        meta_file = state_path / "meta.json"
        if meta_file.exists():
            _check_meta(json.loads(meta_file.read_text()), meta, meta_file)
        barrier()  # every rank has checked before rank 0 may create the file
        if rank == 0:
            state_path.mkdir(parents=True, exist_ok=True)
            if not meta_file.exists():
                atomic_write_bytes(meta_file, json.dumps(meta, indent=2) + "\n")
            for stale in state_path.glob(".shard_*.tmp"):  # left by a kill mid-write
                stale.unlink(missing_ok=True)
        barrier()

    preflight_warnings: list[str] = []
    done: dict[int, _Shard] = {}
    with _preserved_rng(dev), model_mode(model, training=False):
        if preflight:
            xb = x[: min(batch_size, n)].to(dev)
            preflight_warnings = checks.preflight(
                model, xb, norm=norm, eps=eps, version=version, attacks=attack_list
            )
        # One tick per attack per shard: with few large shards the bar still moves.
        bar = _progress_bar(len(mine) * len(attack_list), progress and rank == 0)
        try:
            for i in mine:
                path = state_path / f"shard_{i:05d}.pt" if state_path is not None else None
                if path is not None and path.exists():
                    loaded = _load_shard(path, meta, i, bounds[i], missing_ok=True)
                    if loaded is not None:
                        done[i] = loaded
                        bar.update(len(attack_list))
                        continue
                start, stop = bounds[i]
                bar.set_description(f"AutoAttack shard {i + 1}/{len(bounds)}")
                shard = _attack_shard(model, x[start:stop], y[start:stop], i, start, dev, meta, bar)
                if path is not None:
                    atomic_torch_save(_shard_payload(shard, meta), path)
                done[i] = shard
                if on_shard_done is not None:
                    on_shard_done(i)
                ran = sum(line.startswith("robust accuracy after") for line in shard.lines)
                bar.update(len(attack_list) - ran)  # attacks skipped: nothing left robust
        finally:
            bar.close()
    if world > 1:
        assert state_path is not None
        _wait_for_files(
            [state_path / f"shard_{i:05d}.pt" for i in range(len(bounds)) if i not in done]
        )
    barrier()
    shards: list[_Shard] = []
    for i, b in enumerate(bounds):
        if i in done:
            shards.append(done[i])
        else:  # computed by another rank
            assert state_path is not None
            loaded = _load_shard(state_path / f"shard_{i:05d}.pt", meta, i, b, missing_ok=False)
            assert loaded is not None
            shards.append(loaded)
    result = _merge(shards, x, meta, attack_list, norm)
    result.preflight_warnings = preflight_warnings
    result.wall_time_s = time.perf_counter() - started
    return result


class _NoBar:
    def update(self, k: int = 1) -> None:
        pass

    def set_description(self, desc: str) -> None:
        pass

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="AutoAttack", unit="attack", dynamic_ncols=True, leave=True)


def _attack_shard(
    model: nn.Module,
    xs: Tensor,
    ys: Tensor,
    index: int,
    start: int,
    dev: torch.device,
    meta: dict[str, Any],
    bar: Any,
) -> _Shard:
    """One pyautoattack call on one shard, with its log captured and the caller's RNG restored."""
    bs = meta["batch_size"]

    def on_line(line: str) -> None:
        m = _BATCH_LINE.match(line)
        if m:
            bar.set_postfix_str(f"{m.group(1)} batch {m.group(2)}/{m.group(3)}")
        elif line.startswith("robust accuracy after"):
            bar.set_postfix_str(line.replace("robust accuracy after ", "")[:48])
            bar.update(1)

    with _preserved_rng(dev), _captured_aa_log(on_line) as cap:
        # Seeded before the clean pass too, so a randomised model's clean predictions (and the
        # shard) do not depend on what ran before in this process.
        torch.manual_seed(meta["seed"])
        with torch.no_grad():
            preds = [model(xs[i : i + bs].to(dev)).argmax(1).cpu() for i in range(0, len(xs), bs)]
        clean = torch.cat(preds) == ys
        aa = build_autoattack(
            model,
            norm=meta["norm"],
            eps=meta["eps"],
            version=meta["version"],
            attacks=meta["attacks"] if meta["version"] == "custom" else None,
            seed=meta["seed"],
            device=dev,
            n_restarts=meta["n_restarts"],
        )
        x_adv, y_adv = aa.run_standard_evaluation(xs, ys, batch_size=bs)
    x_adv = x_adv.detach().cpu().contiguous()
    y_adv = y_adv.detach().cpu()
    return _Shard(
        index=index,
        start=start,
        stop=start + len(xs),
        clean_correct=clean,
        robust_correct=y_adv == ys,
        x_adv=x_adv,
        y_adv=y_adv,
        lines=cap.lines,
        warnings=cap.warnings,
        broken=_broken_per_attack(cap.lines, meta["attacks"]),
    )


def _shard_payload(shard: _Shard, meta: dict[str, Any]) -> dict[str, Any]:
    """A tensors-and-plain-values dict, loadable with weights_only=True."""
    return {
        "meta": meta,
        "shard": shard.index,
        "indices": torch.arange(shard.start, shard.stop),
        "clean_correct": shard.clean_correct,
        "robust_correct": shard.robust_correct,
        "x_adv": shard.x_adv,
        "y_adv": shard.y_adv,
        "log": list(shard.lines),
        "warnings": list(shard.warnings),
        "broken": dict(shard.broken),
    }


def _load_shard(
    path: Path, meta: dict[str, Any], index: int, bounds: tuple[int, int], *, missing_ok: bool
) -> _Shard | None:
    """A saved shard after checking it belongs to this evaluation; None if unreadable and allowed."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        ok = isinstance(data, dict) and {"meta", "indices", "x_adv"} <= set(data)
    except Exception as exc:  # a file that fails to load is recomputed, never trusted
        if not missing_ok:
            raise ConfigError(
                f"AutoAttack shard {path} cannot be read ({type(exc).__name__}); delete it and rerun"
            ) from None
        log.warning("recomputing unreadable AutoAttack shard %s (%s)", path, type(exc).__name__)
        return None
    if not ok:
        raise ConfigError(
            f"{path} is not an advtrain AutoAttack shard; delete it or use another state_dir"
        )
    _check_meta(data["meta"], meta, path)
    start, stop = bounds
    if data["shard"] != index or not torch.equal(data["indices"], torch.arange(start, stop)):
        raise ConfigError(f"{path} holds the wrong examples for shard {index}; delete it and rerun")
    return _Shard(
        index=index,
        start=start,
        stop=stop,
        clean_correct=data["clean_correct"],
        robust_correct=data["robust_correct"],
        x_adv=data["x_adv"],
        y_adv=data["y_adv"],
        lines=list(data["log"]),
        warnings=list(data["warnings"]),
        broken={k: int(v) for k, v in data["broken"].items()},
        resumed=True,
    )


def _merge(
    shards: list[_Shard], x: Tensor, meta: dict[str, Any], attacks: list[str], norm: str
) -> AutoAttackResult:
    """Concatenate shards in shard order and write the merged AutoAttack-style summary."""
    n = int(x.shape[0])
    clean = torch.cat([s.clean_correct for s in shards])
    robust = torch.cat([s.robust_correct for s in shards])
    x_adv = torch.cat([s.x_adv for s in shards])
    y_adv = torch.cat([s.y_adv for s in shards])
    remaining = int(clean.sum())
    per_attack: dict[str, int] = {}
    for a in attacks:
        remaining -= sum(s.broken.get(a, 0) for s in shards)
        per_attack[a] = remaining
    lines: list[str] = []
    warnings: list[str] = []
    for s in shards:
        lines.append(f"=== shard {s.index + 1}/{len(shards)}: examples {s.start}..{s.stop - 1} ===")
        lines.extend(s.lines)
        warnings.extend(w for w in s.warnings if w not in warnings)
    delta = (x_adv - x).flatten(1)
    if norm == "Linf":
        size = delta.abs().amax(1)
    elif norm == "L2":
        size = delta.norm(dim=1)
    else:
        size = delta.abs().sum(1)
    lines.append(
        f"=== all {len(shards)} shard(s): {n} examples, seed {meta['seed']}, batch size {meta['batch_size']} ==="
    )
    lines.append(f"using {meta['version']} version including {', '.join(attacks)}.")
    lines.append(f"initial accuracy: {int(clean.sum()) / max(n, 1):.2%}")
    for a, left in per_attack.items():
        lines.append(f"robust accuracy after {a.upper()}: {left / max(n, 1):.2%}")
    lines.append(
        f"max {norm} perturbation: {float(size.max()) if n else 0.0:.5f}, nan in tensor: "
        f"{int(torch.isnan(x_adv).sum())}, max: {float(x_adv.max()):.5f}, min: {float(x_adv.min()):.5f}"
    )
    lines.append(f"robust accuracy: {int(robust.sum()) / max(n, 1):.2%}")
    if per_attack and int(robust.sum()) != remaining:
        warnings.append(
            f"AutoAttack's per-attack log counts ({remaining} robust) disagree with its final flags "
            f"({int(robust.sum())} robust)"
        )
    return AutoAttackResult(
        clean_correct=clean,
        robust_correct=robust,
        x_adv=x_adv,
        y_adv=y_adv,
        attacks=attacks,
        per_attack_robust=per_attack,
        log=lines,
        aa_warnings=warnings,
        meta=meta,
        n_shards=len(shards),
        shards_resumed=sum(s.resumed for s in shards),
    )
