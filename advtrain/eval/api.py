"""`evaluate(model, data, spec) -> EvalResult`: clean / PGD / AutoAttack accuracy as a library call.

Why a typed call and not a config dict: a notebook, a study driver and `python -m advtrain eval` must
get the same numbers from the same inputs, and each input says what it is. `EvalSpec` is the protocol
(one preset of configs/eval/ plus seed, batch and shard size: everything the numbers depend on),
`EvalData` the images in test-set order, and the model either a plain `nn.Module` or a `LoadedModel`
(advtrain.models.loading), whose origin (checkpoint path and SHA-256, EMA or not) is then recorded.

`EvalResult` carries everything results.json records (`to_dict()` is that file's content) plus the
per-example flags; `save(run_dir)` writes results.json, per_example.pt and autoattack.log, the files
`advtrain export` reads. Nothing here reads a Hydra config or prints.

    from advtrain.eval.api import EvalData, EvalSpec, evaluate
    from advtrain.models.loading import ModelSource, load_model

    loaded = load_model(ModelSource(ckpt="runs/train/.../last.pt"))
    data = EvalData.test_split(loaded.dataset, "data", n_examples=1000)
    result = evaluate(loaded, data, EvalSpec(kind="autoattack", version="standard"))
    print(result.clean_acc, result.robust_acc)
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.errors import ConfigError
from advtrain.eval import checks
from advtrain.models.loading import LoadedModel
from advtrain.utils.distributed import module_device

__all__ = [
    "DEFAULT_SHARD",
    "RESULTS_FORMAT",
    "RESULTS_VERSION",
    "CheckpointRecord",
    "EvalData",
    "EvalResult",
    "EvalSpec",
    "ModelRecord",
    "PGDRecord",
    "evaluate",
]

log = logging.getLogger(__name__)

RESULTS_FORMAT = "advtrain-eval-results"
RESULTS_VERSION = 1
#: AutoAttack's resumable unit is about this many images (rounded up to whole batches).
DEFAULT_SHARD = 1000
KINDS = ("clean", "pgd", "autoattack")
_NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be a positive integer")


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSpec:
    """The protocol: what attack, at what budget, with which seed and batching.

    `kind`: clean | pgd | autoattack. The `pgd_*` fields describe the PGD run: the robust metric of
    kind=pgd, an extra gradient-masking check next to AutoAttack when `pgd_steps > 0` (step size
    eps/4 unless given). `version`/`attacks`/`n_restarts` configure AutoAttack (see
    advtrain.eval.autoattack). `shard_size=None` is the first multiple of `batch_size` >= 1000;
    AutoAttack's result depends on it. `state_dir` keeps finished AutoAttack shards for resuming
    (None: in memory only). `name` is the preset name results.json records.
    """

    kind: str = "autoattack"
    norm: str = "Linf"
    eps: float = 8 / 255
    name: str | None = None
    pgd_steps: int = 0
    pgd_step_size: float | None = None
    pgd_restarts: int = 1
    pgd_objective: str = "ce"
    version: str | None = "standard"
    attacks: tuple[str, ...] | None = None
    n_restarts: int | None = None
    seed: int = 0
    batch_size: int = 250
    shard_size: int | None = None
    state_dir: str | os.PathLike[str] | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(
                f"eval.kind={self.kind!r}: use clean, pgd or autoattack (presets in configs/eval/)"
            )
        norm = str(self.norm)
        if norm.lower() not in _NORMS:
            raise ConfigError(f"eval.norm={norm!r}: use Linf, L2 or L1")
        object.__setattr__(self, "norm", _NORMS[norm.lower()])
        if self.norm == "L1" and self.kind == "pgd":
            raise ConfigError(
                "PGD supports Linf and L2; use eval=aa_custom with eval.norm=L1 for L1"
            )
        object.__setattr__(self, "eps", checks.parse_eps(self.eps))
        if self.pgd_step_size is not None:
            object.__setattr__(self, "pgd_step_size", checks.parse_eps(self.pgd_step_size))
        if self.attacks is not None:
            object.__setattr__(self, "attacks", tuple(str(a) for a in self.attacks))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed={self.seed!r} must be an integer")
        _positive_int("batch_size", self.batch_size)

    @property
    def pgd_name(self) -> str:
        """How results.json names the PGD run: PGD-20, CW-40 (CW: the margin objective)."""
        return f"{'CW' if self.pgd_objective == 'cw' else 'PGD'}-{self.pgd_steps}"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> EvalSpec:
        """From an eval config: the `eval` preset group plus seed, batch_size, shard_size,
        state_dir and progress (the keys of configs/eval.yaml)."""
        from advtrain.config import check_group

        ev = check_group("eval", cfg.get("eval") or {})  # the preset's schema (per kind)
        kind = ev["kind"]
        if kind == "pgd":
            pgd: dict[str, Any] = {
                "pgd_steps": int(ev.get("steps") or 0),
                "pgd_step_size": ev.get("step_size"),
                "pgd_restarts": int(ev.get("restarts") or 1),
                "pgd_objective": ev.get("objective", "ce"),
            }
        else:
            pgd = {"pgd_steps": int(ev.get("pgd_steps") or 0)}
        attacks = ev.get("attacks")
        return cls(
            kind=kind,
            norm=str(ev.get("norm", "Linf")),
            eps=ev.get("eps"),  # type: ignore[arg-type]  # parsed in __post_init__
            name=ev.get("name"),
            version=ev.get("version"),
            attacks=tuple(attacks) if attacks else None,
            n_restarts=ev.get("n_restarts"),
            seed=cfg.get("seed", 0),
            batch_size=cfg.get("batch_size", 250),
            shard_size=cfg.get("shard_size"),
            state_dir=cfg.get("state_dir"),
            progress=bool(cfg.get("progress", True)),
            **pgd,
        )


@dataclass(frozen=True)
class EvalData:
    """Test images in the official order: (N, C, H, W) uint8, or float in [0, 1], on the CPU.

    `test_set_size` is the size of the split the images were taken from (None: these N are all of
    it); an evaluation on fewer images is recorded as partial and cannot become a leaderboard entry.
    """

    images: Tensor
    labels: Tensor
    dataset: str
    test_set_size: int | None = None

    @classmethod
    def test_split(
        cls,
        dataset: str,
        root: str | os.PathLike[str] | None = None,
        n_examples: int | None = None,
    ) -> EvalData:
        """The first `n_examples` test images of `dataset` (None: all), read from `root`."""
        from advtrain.data import load_arrays

        images, labels = load_arrays(dataset, root, "test")
        total = int(labels.shape[0])
        if n_examples is not None:
            if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
                raise ConfigError(
                    f"n_examples={n_examples!r} must be a positive integer or null (all)"
                )
            if n_examples > total:
                raise ConfigError(
                    f"n_examples={n_examples} but the {dataset} test split has {total} images"
                )
            images, labels = images[:n_examples], labels[:n_examples]
        return cls(images=images, labels=labels, dataset=dataset, test_set_size=total)

    @property
    def unit_float(self) -> Tensor:
        """The images as float32 in [0, 1] (what AutoAttack and the pre-flight checks take)."""
        x = self.images
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PGDRecord:
    """The PGD run of an evaluation (results.json `pgd`)."""

    name: str
    steps: int
    step_size: float
    objective: str
    restarts: int
    acc: float


@dataclass(frozen=True)
class ModelRecord:
    """Which model was evaluated (results.json `model`): `hash` is what export checks weights against."""

    source: str  # advtrain | state_dict | robustbench | module (a plain nn.Module was passed)
    name: str
    config: dict[str, Any] | None
    hash: str
    num_parameters: int


@dataclass(frozen=True)
class CheckpointRecord:
    """Which file the weights came from (results.json `checkpoint`); all None for a plain module."""

    path: str | None = None
    sha256: str | None = None
    use_ema: bool | None = None


@dataclass
class AutoAttackRecord:
    """What an AutoAttack run adds to results.json (and its log for autoattack.log)."""

    attacks: list[str]
    n_restarts: int | None
    shard_size: int
    state_dir: str | None
    per_attack_robust_acc: dict[str, float]
    shards_total: int
    shards_resumed: int
    log_text: str
    x_adv: Tensor = field(repr=False)


@dataclass
class EvalResult:
    """One evaluation: the numbers, the protocol, the provenance and the per-example flags."""

    spec: EvalSpec
    dataset: str
    test_set_size: int
    class_names: list[str]
    labels: Tensor = field(repr=False)
    clean_correct: Tensor = field(repr=False)
    robust_correct: Tensor | None = field(repr=False)
    robust_metric: str | None
    pgd: PGDRecord | None
    autoattack: AutoAttackRecord | None
    model: ModelRecord
    checkpoint: CheckpointRecord
    versions: dict[str, str | None]
    device: str
    world_size: int
    warnings: list[str]
    unreliable: bool
    wall_time_s: float
    #: The tests the gradient-masking flags rest on (checks.masking_test), with their image counts.
    masking_tests: list[checks.MaskingTest] = field(default_factory=list)

    @property
    def n_examples(self) -> int:
        return int(self.labels.numel())

    @property
    def complete(self) -> bool:
        """Whether every image of the test split was evaluated (the leaderboard protocol)."""
        return self.n_examples == self.test_set_size

    @property
    def clean_acc(self) -> float:
        return _fraction(self.clean_correct)

    @property
    def robust_acc(self) -> float | None:
        return None if self.robust_correct is None else _fraction(self.robust_correct)

    def to_dict(self, run_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The content of results.json (format `advtrain-eval-results`, version 1)."""
        spec, aa = self.spec, self.autoattack
        n_classes = len(self.class_names)
        out: dict[str, Any] = {
            "format": RESULTS_FORMAT,
            "format_version": RESULTS_VERSION,
            "preset": spec.name,
            "kind": spec.kind,
            "dataset": self.dataset,
            "n_examples": self.n_examples,
            "test_set_size": self.test_set_size,
            "complete": self.complete,
            "norm": spec.norm,
            "eps": spec.eps,
            "eps_str": checks.eps_to_str(spec.eps),
            "version": spec.version if spec.kind == "autoattack" else None,
            "attacks": aa.attacks if aa else None,
            "n_restarts": aa.n_restarts if aa else spec.n_restarts,
            "seed": spec.seed,
            "batch_size": spec.batch_size,
            "shard_size": aa.shard_size if aa else None,
            "clean_acc": self.clean_acc,
            "robust_acc": self.robust_acc,
            "robust_metric": self.robust_metric,
            "per_attack_robust_acc": aa.per_attack_robust_acc if aa else None,
            "pgd": None if self.pgd is None else dict(vars(self.pgd)),
            "per_class": {
                "names": list(self.class_names),
                "clean_acc": _per_class(self.clean_correct, self.labels, n_classes),
                "robust_acc": None
                if self.robust_correct is None
                else _per_class(self.robust_correct, self.labels, n_classes),
            },
            "model": dict(vars(self.model)),
            "checkpoint": dict(vars(self.checkpoint)),
            "versions": dict(self.versions),
            "device": self.device,
            "world_size": self.world_size,
            "run_dir": None if run_dir is None else str(run_dir),
        }
        if aa is not None:
            out["state_dir"] = aa.state_dir
            out["aa_shards"] = {"total": aa.shards_total, "resumed": aa.shards_resumed}
        out["warnings"] = list(self.warnings)
        out["unreliable"] = self.unreliable
        out["masking_tests"] = [t.to_dict() for t in self.masking_tests]
        out["wall_time_s"] = self.wall_time_s
        return out

    def save(self, run_dir: str | os.PathLike[str], *, save_x_adv: bool = False) -> dict[str, Any]:
        """Write results.json, per_example.pt, autoattack.log (AutoAttack) and optionally x_adv.pt.

        per_example.pt holds the flags in test-set order (`index`, `label`, `clean_correct`,
        `robust_correct`); x_adv.pt the adversarial images and labels. Returns results.json's dict.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        results = self.to_dict(run_dir)
        files: dict[str, str] = {}
        if self.autoattack is not None:
            (run_dir / "autoattack.log").write_text(self.autoattack.log_text)
            files["log"] = "autoattack.log"
            if save_x_adv:
                torch.save({"x_adv": self.autoattack.x_adv, "y": self.labels}, run_dir / "x_adv.pt")
        per_example = {
            "index": torch.arange(self.n_examples),
            "label": self.labels,
            "clean_correct": self.clean_correct,
        }
        if self.robust_correct is not None:
            per_example["robust_correct"] = self.robust_correct
        torch.save(per_example, run_dir / "per_example.pt")
        files["per_example"] = "per_example.pt"
        results["files"] = files
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results


def _per_class(correct: Tensor, labels: Tensor, num_classes: int) -> list[float | None]:
    """Accuracy per class as exact fractions hits / count; None (JSON null) for a class without examples."""
    labels = labels.cpu().long()
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    hits = torch.bincount(labels[correct.cpu().bool()], minlength=num_classes).tolist()
    return [h / c if c else None for h, c in zip(hits, counts)]


# --------------------------------------------------------------------------------------------
# the call
# --------------------------------------------------------------------------------------------


def _records(
    model: nn.Module | LoadedModel, net: nn.Module
) -> tuple[ModelRecord, CheckpointRecord]:
    from advtrain.utils.hashing import model_hash

    n_params = sum(p.numel() for p in net.parameters())
    if isinstance(model, LoadedModel):
        record = ModelRecord(
            model.source, model.name, model.model_config, model_hash(net), n_params
        )
        return record, CheckpointRecord(model.ckpt_path, model.ckpt_sha256, model.use_ema)
    name = type(net).__name__
    return ModelRecord("module", name, None, model_hash(net), n_params), CheckpointRecord()


def _run_autoattack(
    net: nn.Module, x: Tensor, labels: Tensor, spec: EvalSpec, device: torch.device
) -> tuple[Tensor, Tensor, AutoAttackRecord, list[str]]:
    """AutoAttack on all images; (clean, robust, record, warnings), x_adv re-checked as RobustBench does."""
    from advtrain.eval.autoattack import run_autoattack
    from advtrain.eval.evaluate import clean_correct

    shard_size = spec.shard_size
    if shard_size is None:  # about DEFAULT_SHARD images per resumable unit, whole batches
        shard_size = -(-DEFAULT_SHARD // spec.batch_size) * spec.batch_size
    if spec.state_dir is not None:
        log.info(
            "AutoAttack state in %s (rerun with state_dir=%s to resume)",
            spec.state_dir,
            spec.state_dir,
        )
    aa = run_autoattack(
        net,
        x,
        labels,
        norm=spec.norm,
        eps=spec.eps,
        version=str(spec.version),
        attacks=spec.attacks,
        seed=spec.seed,
        batch_size=spec.batch_size,
        state_dir=spec.state_dir,
        device=device,
        shard_size=shard_size,
        progress=spec.progress,
        n_restarts=spec.n_restarts,
    )
    warnings = aa.preflight_warnings + [f"AutoAttack: {w}" for w in aa.aa_warnings]
    # RobustBench re-evaluates x_adv to get its number: the two must agree.
    reeval = clean_correct(net, aa.x_adv, labels, batch_size=spec.batch_size)
    if not torch.equal(reeval, aa.robust_correct):
        warnings.append(
            f"re-evaluating x_adv gives {int(reeval.sum())} correct vs AutoAttack's "
            f"{int(aa.robust_correct.sum())}: the model is not deterministic"
        )
    record = AutoAttackRecord(
        attacks=aa.attacks,
        n_restarts=aa.meta["n_restarts"],
        shard_size=aa.meta["shard_size"],
        state_dir=None if spec.state_dir is None else str(spec.state_dir),
        per_attack_robust_acc=aa.per_attack_robust_acc,
        shards_total=aa.n_shards,
        shards_resumed=aa.shards_resumed,
        log_text=aa.log_text,
        x_adv=aa.x_adv,
    )
    return aa.clean_correct, aa.robust_correct, record, warnings


def _run_pgd(net: nn.Module, data: EvalData, spec: EvalSpec) -> tuple[PGDRecord, Tensor]:
    from advtrain.eval.evaluate import pgd_correct

    step_size = spec.eps / 4 if spec.pgd_step_size is None else spec.pgd_step_size
    log.info("running %s on %d images", spec.pgd_name, len(data.labels))
    ok = pgd_correct(
        net,
        data.images,
        data.labels,
        norm=spec.norm,
        eps=spec.eps,
        steps=spec.pgd_steps,
        step_size=step_size,
        objective=spec.pgd_objective,
        restarts=spec.pgd_restarts,
        batch_size=spec.batch_size,
        seed=spec.seed,
    )
    record = PGDRecord(
        name=spec.pgd_name,
        steps=spec.pgd_steps,
        step_size=step_size,
        objective=spec.pgd_objective,
        restarts=spec.pgd_restarts,
        acc=_fraction(ok),
    )
    return record, ok


def _red_flags(
    spec: EvalSpec,
    robust: Tensor | None,
    pgd: PGDRecord | None,
    pgd_ok: Tensor | None,
    aa: AutoAttackRecord | None,
    warnings: Sequence[str],
) -> tuple[list[str], bool, list[checks.MaskingTest]]:
    """Gradient-masking warnings, the `unreliable` flag (also set for randomised defences) and the
    tests the flags rest on (checks.masking_test: a flag needs a significant excess, not a raw gap)."""
    is_aa = spec.kind == "autoattack"
    n = 0 if robust is None else int(robust.numel())
    aa_acc = _fraction(robust) if is_aa and robust is not None else None
    pgd_acc = pgd.acc if is_aa and pgd is not None else None
    # Images robust to PGD that AutoAttack broke: the discordant images the PGD flag rests on.
    pgd_only = (
        int((pgd_ok.bool() & ~robust.bool()).sum())
        if aa_acc is not None and pgd_ok is not None and robust is not None
        else None
    )
    per_attack = aa.per_attack_robust_acc if aa is not None else None
    tests = (
        checks.masking_tests(
            n_examples=n,
            aa_robust_acc=aa_acc,
            pgd_robust_acc=pgd_acc,
            pgd_only_robust=pgd_only,
            per_attack=per_attack,
        )
        if n
        else []
    )
    masking = checks.masking_warnings(
        aa_robust_acc=aa_acc,
        pgd_robust_acc=pgd_acc,
        pgd_name=pgd.name if pgd is not None else "PGD",
        per_attack=per_attack,
        n_examples=n or None,
        pgd_only_robust=pgd_only,
    )
    for t in tests:
        if not t.significant and t.k > t.n * t.tolerated_rate:
            log.info(
                "no masking flag (%s): %s, not significant at %g", t.name, t.describe(), t.alpha
            )
    unreliable = bool(masking) or any(
        "randomized defense" in w or "dynamic defense" in w for w in warnings
    )
    return masking, unreliable, tests


def _fraction(correct: Tensor) -> float:
    """The share of True flags as the nearest float to the exact fraction correct / n (no float32
    noise: 47 of 100 is 0.47, not 0.4699999988)."""
    n = int(correct.numel())
    return int(correct.sum()) / n if n else float("nan")


def evaluate(
    model: nn.Module | LoadedModel,
    data: EvalData,
    spec: EvalSpec,
    *,
    device: torch.device | str | None = None,
) -> EvalResult:
    """Clean accuracy, plus PGD or AutoAttack robust accuracy, of `model` on `data` under `spec`.

    `device=None` evaluates where the model is; otherwise the model is moved there. Under a running
    torch.distributed group AutoAttack shards the images over the ranks (`spec.state_dir` must then
    be a folder every rank can reach) and every rank returns the same merged result. The model's
    train/eval mode and the global RNG state are left as they were.
    """
    from advtrain.data import get_info
    from advtrain.eval.evaluate import clean_correct
    from advtrain.utils.distributed import group_rank_world
    from advtrain.utils.versions import package_versions

    started = time.perf_counter()
    net = model.model if isinstance(model, LoadedModel) else model
    if isinstance(model, LoadedModel) and model.dataset != data.dataset:
        raise ConfigError(f"the model is a {model.dataset} model but the data is {data.dataset}")
    if device is not None:
        net = net.to(device)
    dev = module_device(net)
    checks.check_eps(spec.norm, spec.eps, tuple(data.images.shape[1:]))
    model_record, ckpt_record = _records(model, net)
    warnings = list(model.notes) if isinstance(model, LoadedModel) else []
    log.info(
        "evaluating %s (%s) on %d %s test images: %s",
        model_record.name,
        model_record.source,
        len(data.labels),
        data.dataset,
        spec.name,
    )
    x = data.unit_float
    aa = robust = None
    if spec.kind == "autoattack":
        clean, robust, aa, aa_warnings = _run_autoattack(net, x, data.labels, spec, dev)
        warnings += aa_warnings
    else:
        from advtrain.attacks.pgd import model_mode

        with model_mode(net, training=False):
            warnings += checks.preflight(
                net, x[: spec.batch_size].to(dev), norm=spec.norm, eps=spec.eps
            )
        clean = clean_correct(net, data.images, data.labels, batch_size=spec.batch_size)
    pgd = pgd_ok = None
    if spec.pgd_steps > 0 and spec.norm in ("Linf", "L2"):
        pgd, pgd_ok = _run_pgd(net, data, spec)
        if spec.kind == "pgd":
            robust = pgd_ok
    masking, unreliable, tests = _red_flags(spec, robust, pgd, pgd_ok, aa, warnings)
    warnings += masking
    for w in warnings:
        log.warning("%s", w)
    return EvalResult(
        spec=spec,
        dataset=data.dataset,
        test_set_size=data.test_set_size or len(data.labels),
        class_names=list(get_info(data.dataset).class_names),
        labels=data.labels,
        clean_correct=clean,
        robust_correct=robust,
        robust_metric="autoattack" if aa else (pgd.name if robust is not None and pgd else None),
        pgd=pgd,
        autoattack=aa,
        model=model_record,
        checkpoint=ckpt_record,
        versions=package_versions(),
        device=str(dev),
        world_size=group_rank_world()[1],
        warnings=warnings,
        unreliable=unreliable,
        wall_time_s=time.perf_counter() - started,
        masking_tests=tests,
    )
