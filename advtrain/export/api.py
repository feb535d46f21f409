"""`export(source, results, spec) -> ExportResult`: an evaluated checkpoint -> RobustBench files.

Order of work, chosen so that nothing is written unless everything would be right:
1. read results.json and rebuild the evaluated model; refuse if the checkpoint, the weights (EMA or
   not) or the dataset are not the ones that were evaluated (SHA-256 and model hash);
2. refuse a leaderboard entry from a partial or non-standard evaluation (unless `allow_partial`,
   which writes `<id>.partial.json` instead);
3. build the leaderboard entry and validate it;
4. save the zoo checkpoint, load it back exactly as `robustbench.utils.load_model` does into
   RobustBench's class, and compare logits on real test images (refuse on any difference);
5. write model_info JSON, submission text, AA log copy and export.json; optionally run
   RobustBench's own evaluation of the exported file (`check`).

Why a library call: the same export from a notebook or a script, without Hydra; the format rules
themselves live in advtrain.export.robustbench.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advtrain.errors import ConfigError
from advtrain.export.robustbench import (
    ExportError,
    architecture_name,
    build_model_info,
    compare_logits,
    export_state_dict,
    leaderboard_problems,
    robustbench_constructor,
    submission_text,
    validate_model_id,
    validate_model_info,
)
from advtrain.models.loading import ROBUSTBENCH_DATASETS, LoadedModel, ModelSource, load_model
from advtrain.utils.checkpoint import atomic_write_bytes

__all__ = ["LOGIT_ATOL", "CheckResult", "ExportResult", "ExportSpec", "export"]


#: A logit difference above this (float32, same ops) means a different computation, not rounding.
LOGIT_ATOL = 1e-4
_TV_FILES = {
    "cifar10": (
        "cifar-10-batches-py",
        [
            "data_batch_1",
            "data_batch_2",
            "data_batch_3",
            "data_batch_4",
            "data_batch_5",
            "test_batch",
            "batches.meta",
        ],
    ),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
}


# --------------------------------------------------------------------------------------------
# inputs and result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportSpec:
    """What to write and how to verify it.

    `metadata`: the leaderboard fields of configs/export.yaml's `model_info` (link, name, authors,
    venue are required). `data_root`: the test images for the logit check (None: $ADVTRAIN_DATA_DIR,
    else ./data). `check`: also run RobustBench's evaluation of the exported model on the first
    `check_n_examples` images and compare with the evaluation (robust accuracy within
    `check_tolerance_pp` points, clean accuracy exactly).
    """

    model_id: str
    out_dir: str | os.PathLike[str]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    allow_partial: bool = False
    checkpoint_url: str | None = None
    data_root: str | os.PathLike[str] | None = None
    verify_n_examples: int = 256
    check: bool = False
    check_n_examples: int = 100
    check_tolerance_pp: float = 3.0
    batch_size: int = 100
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ExportSpec:
        """From an export config (the keys of configs/export.yaml)."""
        return cls(
            model_id=cfg.get("model_id"),  # type: ignore[arg-type]  # validated by export()
            out_dir=str(cfg.get("out_dir") or cfg.get("run_dir") or "."),
            metadata=dict(cfg.get("model_info") or {}),
            allow_partial=bool(cfg.get("allow_partial")),
            checkpoint_url=cfg.get("checkpoint_url"),
            data_root=(cfg.get("data") or {}).get("root"),
            verify_n_examples=int(cfg.get("verify_n_examples") or 256),
            check=bool(cfg.get("check")),
            check_n_examples=int(cfg.get("check_n_examples") or 100),
            check_tolerance_pp=float(cfg.get("check_tolerance_pp", 3.0)),
            batch_size=int(cfg.get("batch_size") or 100),
            seed=int(cfg.get("seed") or 0),
            device=str(cfg.get("device") or "auto"),
        )

    @property
    def root(self) -> Path:
        return Path(str(self.data_root or os.environ.get("ADVTRAIN_DATA_DIR", "data")))


@dataclass(frozen=True)
class CheckResult:
    """RobustBench's own evaluation of the exported model against ours (export.json `check`)."""

    method: str
    n_examples: int
    clean_acc: float
    robust_acc: float
    ours_clean_acc: float | None
    ours_robust_acc: float | None
    tolerance_pp: float
    passed: bool
    problems: list[str]
    log: str


@dataclass(frozen=True)
class ExportResult:
    """What was written (export.json's content is `to_dict()`).

    `partial`: the files are a clearly marked non-leaderboard result (`problems` says why).
    `verification`: the RobustBench class and the logit comparison of the zoo checkpoint.
    A failed `check` does not raise here: the caller decides (the CLI exits with an error).
    """

    model_id: str
    dataset: str
    threat_model: str
    partial: bool
    problems: list[str]
    files: dict[str, str | None]
    zoo_ready: bool
    zoo_note: str
    verification: dict[str, Any]
    model_info: dict[str, Any]
    results: str
    checkpoint: str | None
    check: CheckResult | None
    wall_time_s: float

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k not in ("check", "wall_time_s")}
        if self.check is not None:
            out["check"] = dict(vars(self.check))
        out["wall_time_s"] = self.wall_time_s
        return out


# --------------------------------------------------------------------------------------------
# the steps
# --------------------------------------------------------------------------------------------


def read_results(path_like: str | os.PathLike[str] | None) -> tuple[dict[str, Any], Path]:
    """results.json of `advtrain eval` (or its run directory) and the file's path."""
    if not path_like:
        raise ConfigError(
            "set results=PATH to the results.json (or run directory) of `advtrain eval`"
        )
    path = Path(str(path_like)).expanduser()
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ConfigError(f"results file not found: {path}")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(results, dict) or results.get("format") != "advtrain-eval-results":
        raise ConfigError(f"{path} is not a results.json written by `advtrain eval`")
    return results, path


def _load_evaluated(
    source: ModelSource, results: Mapping[str, Any], results_path: Path, threat: str
) -> LoadedModel:
    """1. The evaluated model, exactly: same file, same weights (EMA or not), same dataset."""
    from advtrain.utils.hashing import model_hash

    rck = results.get("checkpoint") or {}
    if source.use_ema is None:
        source = replace(source, use_ema=rck.get("use_ema"))
    loaded = load_model(source, norm=threat)
    if rck.get("sha256") != loaded.ckpt_sha256:
        raise ExportError(
            f"{loaded.ckpt_path} (sha256 {str(loaded.ckpt_sha256)[:12]}) is not the checkpoint evaluated in "
            f"{results_path} ({rck.get('path')}, sha256 {str(rck.get('sha256'))[:12]}); evaluate this checkpoint first"
        )
    if loaded.dataset != results.get("dataset"):
        raise ExportError(
            f"the checkpoint is a {loaded.dataset} model but {results_path} evaluated {results.get('dataset')}"
        )
    if model_hash(loaded.model) != (results.get("model") or {}).get("hash"):
        raise ExportError(
            f"the weights differ from the evaluated ones (use_ema={loaded.use_ema}, evaluated with "
            f"use_ema={rck.get('use_ema')}); set use_ema to match the evaluation"
        )
    if loaded.dataset not in ROBUSTBENCH_DATASETS:
        raise ExportError(
            f"RobustBench has no {loaded.dataset} leaderboard or zoo (cifar10, cifar100, imagenet only)"
        )
    return loaded


def _entry(
    results: Mapping[str, Any],
    meta: Mapping[str, Any],
    loaded: LoadedModel,
    threat: str,
    partial: bool,
) -> dict[str, Any]:
    """3. The model_info entry, validated (strictly unless partial)."""
    missing = [k for k in ("link", "name") if not meta.get(k)]
    missing += [k for k in ("authors", "venue") if meta.get(k) is None]
    if missing:
        raise ConfigError(
            "leaderboard metadata missing: "
            + ", ".join(f"model_info.{k}=..." for k in missing)
            + " (paper URL, title, authors 'First Last, First Last', venue e.g. 'NeurIPS 2024')"
        )
    unreliable = meta.get("unreliable")
    if unreliable is None:
        unreliable = masking_evidence(results)
    arch = architecture_name(loaded.model_config or {"name": loaded.name})
    info = build_model_info(
        results, meta, dataset=loaded.dataset, architecture=arch, unreliable=bool(unreliable)
    )
    errs = validate_model_info(info, threat_model=threat, strict=not partial)
    if errs:
        raise ExportError("the leaderboard entry would be invalid: " + "; ".join(errs))
    return info


def masking_evidence(results: Mapping[str, Any]) -> bool:
    """Whether an evaluation's numbers give evidence of gradient masking (the `unreliable` flag).

    results.json of this version records the tests its flag rests on (`masking_tests`, see
    advtrain.eval.checks.masking_test); for an older file without them the same tests are run on
    its accuracies and image count, so a raw gap on a few images never becomes a red flag. A
    randomised defence (AutoAttack's own warning) is flagged as before.
    """
    from advtrain.eval.checks import masking_tests

    warnings = results.get("warnings") or []
    randomised = any("randomized defense" in w or "dynamic defense" in w for w in warnings)
    tests = results.get("masking_tests")
    if tests is not None:
        return randomised or any(bool(t.get("significant")) for t in tests)
    n = results.get("n_examples")
    if not isinstance(n, int) or n < 1:
        return randomised or bool(results.get("unreliable"))
    found = masking_tests(
        n_examples=n,
        aa_robust_acc=results.get("robust_acc") if results.get("kind") == "autoattack" else None,
        pgd_robust_acc=(results.get("pgd") or {}).get("acc"),
        per_attack=results.get("per_attack_robust_acc"),
    )
    return randomised or any(t.significant for t in found)


def _load_like_robustbench(path: Path, constructor: Callable[[], nn.Module]) -> nn.Module:
    """Load our exported file the way `robustbench.utils.load_model` does (weights_only, key stripping)."""
    from robustbench.utils import rm_substr_from_state_dict

    checkpoint = torch.load(path, map_location=torch.device("cpu"), weights_only=True)
    sd = rm_substr_from_state_dict(checkpoint["state_dict"], "module.")
    sd = rm_substr_from_state_dict(sd, "model.")
    model = constructor()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ExportError(
            f"the exported weights do not load strictly into RobustBench's class: {first}"
        ) from None
    return model.eval()


@dataclass
class _Zoo:
    """What step 4 produced: the zoo file, its verification and (if any) RobustBench's model."""

    path: Path
    ready: bool
    note: str
    verification: dict[str, Any]
    rb_model: nn.Module | None


def _write_zoo_checkpoint(loaded: LoadedModel, threat: str, spec: ExportSpec) -> _Zoo:
    """4. models/<dataset>/<threat>/<id>.pt, moved into place only after it reproduced our logits."""
    from advtrain.data import get_info
    from advtrain.eval.api import EvalData

    dataset = loaded.dataset
    dinfo = get_info(dataset)
    constructor, arch_note = robustbench_constructor(
        loaded.model_config or {"name": loaded.name}, dinfo.num_classes, dinfo.mean, dinfo.std
    )
    sd = export_state_dict(loaded.model.state_dict())
    verification: dict[str, Any] = {"robustbench_class": arch_note if constructor else None}
    if constructor is not None:
        staged = constructor()  # check strict loading before anything is written
        try:
            staged.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ExportError(
                f"weights do not load strictly into {arch_note}: {str(e).splitlines()[0]}"
            ) from None
    zoo_path = Path(spec.out_dir).expanduser() / "models" / dataset / threat / f"{spec.model_id}.pt"
    buf_path = zoo_path.with_name(f".{zoo_path.name}.staged")
    buf_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd}, buf_path)
    rb_model = None
    try:
        if constructor is not None:
            x = EvalData.test_split(dataset, spec.root, spec.verify_n_examples).unit_float
            rb_model = _load_like_robustbench(buf_path, constructor)
            max_diff, identical = compare_logits(loaded.model.cpu(), rb_model, x)
            verification.update(
                n_images=len(x), max_abs_logit_diff=max_diff, bit_identical=identical
            )
            if not max_diff <= LOGIT_ATOL:
                raise ExportError(
                    f"RobustBench's class does not reproduce the model: max |logit difference| {max_diff:.3g} "
                    f"on {len(x)} test images (> {LOGIT_ATOL:g}); refusing to export"
                )
        os.replace(buf_path, zoo_path)
    finally:
        buf_path.unlink(missing_ok=True)
    note = f"weights verified in {arch_note}" if constructor is not None else arch_note
    return _Zoo(zoo_path, constructor is not None, note, verification, rb_model)


def _write_entry_files(
    info: Mapping[str, Any],
    results: Mapping[str, Any],
    results_path: Path,
    threat: str,
    spec: ExportSpec,
    problems: list[str],
    zoo: _Zoo,
) -> dict[str, str | None]:
    """5. model_info JSON, submission text and a copy of the AutoAttack log; returns their paths."""
    out_dir = Path(spec.out_dir).expanduser()
    suffix = ".partial" if problems else ""
    model_id, dataset = spec.model_id, str(info["dataset"])
    info_path = out_dir / "model_info" / dataset / threat / f"{model_id}{suffix}.json"
    atomic_write_bytes(info_path, json.dumps(info, indent=2) + "\n")
    sub_path = out_dir / "submission" / f"{model_id}{suffix}.md"
    text = submission_text(
        info,
        model_id=model_id,
        threat_model=threat,
        results=results,
        checkpoint_url=spec.checkpoint_url,
        zoo_ready=zoo.ready,
        zoo_note=zoo.note,
    )
    if problems:
        warning = "NOT FOR SUBMISSION (partial / non-standard evaluation): " + "; ".join(problems)
        text = warning + "\n\n" + text
    atomic_write_bytes(sub_path, text)
    aa_log = results_path.parent / ((results.get("files") or {}).get("log") or "autoattack.log")
    log_copy = None
    if aa_log.is_file():
        log_copy = sub_path.with_name(f"{model_id}{suffix}_autoattack.log")
        shutil.copyfile(aa_log, log_copy)
    return {
        "checkpoint": str(zoo.path),
        "model_info": str(info_path),
        "submission": str(sub_path),
        "autoattack_log": None if log_copy is None else str(log_copy),
    }


def _torchvision_layout(dataset: str, root: Path) -> bool:
    folder, files = _TV_FILES[dataset]
    return all((root / folder / f).is_file() for f in files)


def _robustbench_numbers(
    rb_model: nn.Module, dataset: str, threat: str, eps: float, spec: ExportSpec, log_path: Path
) -> tuple[str, float, float]:
    """(method, clean, robust) of RobustBench's protocol on the first check_n_examples images."""
    from robustbench.utils import clean_accuracy

    from advtrain.eval.api import EvalData
    from advtrain.utils.distributed import resolve_device

    n, bs, root = spec.check_n_examples, spec.batch_size, spec.root
    device = resolve_device(spec.device)
    rb_model = rb_model.to(device)
    torch.manual_seed(spec.seed)
    if _torchvision_layout(dataset, root):
        from robustbench.eval import benchmark

        method = "robustbench.eval.benchmark (torchvision data; AutoAttack without a seed, as robustbench runs it)"
        clean, robust = benchmark(
            rb_model,
            n_examples=n,
            dataset=dataset,
            threat_model=threat,
            data_dir=str(root),
            device=device,
            batch_size=bs,
            eps=eps,
            log_path=str(log_path),
        )
        return method, clean, robust
    # Offline without torchvision's CIFAR files benchmark() would try to download; run the same
    # steps on our copy of the test set: clean_accuracy, AutoAttack standard, re-evaluation.
    from autoattack import AutoAttack

    method = (
        f"benchmark()'s steps on advtrain's test-set copy (no torchvision layout under {root}): "
        f"robustbench.utils.clean_accuracy + autoattack.AutoAttack(version='standard', seed={spec.seed})"
    )
    data = EvalData.test_split(dataset, root, n)
    x = data.unit_float
    clean = clean_accuracy(rb_model, x, data.labels, batch_size=bs, device=device)
    adversary = AutoAttack(
        rb_model,
        norm=threat,
        eps=eps,
        version="standard",
        device=device,
        log_path=str(log_path),
        seed=spec.seed,
        verbose=False,
    )
    x_adv = adversary.run_standard_evaluation(x, data.labels, bs=bs)
    robust = clean_accuracy(rb_model, x_adv, data.labels, batch_size=bs, device=device)
    return method, clean, robust


def _run_check(
    rb_model: nn.Module,
    results: Mapping[str, Any],
    results_path: Path,
    threat: str,
    spec: ExportSpec,
) -> CheckResult:
    """RobustBench's own evaluation of the exported model, compared with our per-example flags."""
    n = spec.check_n_examples
    log_path = Path(spec.out_dir).expanduser() / "check" / f"{spec.model_id}_autoattack.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    method, clean, robust = _robustbench_numbers(
        rb_model, results["dataset"], threat, float(results["eps"]), spec, log_path
    )
    ours_clean = ours_robust = None
    per_example = results_path.parent / "per_example.pt"
    if per_example.is_file():
        pe = torch.load(per_example, map_location="cpu", weights_only=True)
        if len(pe["clean_correct"]) >= n:
            ours_clean = float(pe["clean_correct"][:n].float().mean())
            if "robust_correct" in pe:
                ours_robust = float(pe["robust_correct"][:n].float().mean())
    tol = spec.check_tolerance_pp
    problems = []
    # robustbench's clean_accuracy divides a float32 count: compare counts, not floats
    if ours_clean is not None and round(ours_clean * n) != round(float(clean) * n):
        problems.append(
            f"clean accuracy {100 * clean:.2f}% differs from the evaluation's {100 * ours_clean:.2f}% on the same images"
        )
    if ours_robust is not None and abs(ours_robust - robust) * 100 > tol:
        problems.append(
            f"robust accuracy {100 * robust:.2f}% differs from the evaluation's {100 * ours_robust:.2f}% by more than {tol:g} pp"
        )
    return CheckResult(
        method,
        n,
        clean,
        robust,
        ours_clean,
        ours_robust,
        tol,
        not problems,
        problems,
        str(log_path),
    )


# --------------------------------------------------------------------------------------------
# the call
# --------------------------------------------------------------------------------------------


def export(
    source: ModelSource, results: str | os.PathLike[str] | None, spec: ExportSpec
) -> ExportResult:
    """Export the checkpoint `source` names, evaluated in `results` (results.json or its run dir;
    None is refused with a message naming the `results=` option).

    Writes under `spec.out_dir`: the zoo checkpoint, the model_info JSON (`<id>.partial.json` for
    a partial evaluation with `allow_partial`), the submission text, the AutoAttack log copy and
    export.json. Raises ExportError or ConfigError, before writing anything, when the checkpoint is
    not the evaluated one, the evaluation cannot back a leaderboard entry, or the metadata is
    incomplete or invalid.
    """
    started = time.perf_counter()
    from advtrain.config import check_group

    # The leaderboard metadata a user gives (the rest of model_info comes from results.json):
    # keys and types from the schema of configs/export.yaml's model_info group.
    check_group("model_info", spec.metadata, partial=True)
    results_dict, results_path = read_results(results)
    validate_model_id(spec.model_id)
    threat = results_dict.get("norm")
    if threat not in ("Linf", "L2"):
        raise ExportError(
            f"RobustBench leaderboards are Linf or L2; the evaluation used norm={threat}"
        )
    if not source.ckpt or source.robustbench_name:
        raise ConfigError("set ckpt=PATH to the checkpoint that was evaluated")
    loaded = _load_evaluated(source, results_dict, results_path, threat)
    problems = leaderboard_problems(results_dict, threat)  # 2.
    if problems and not spec.allow_partial:
        raise ExportError(
            "refusing to write a leaderboard entry: "
            + "; ".join(problems)
            + " (allow_partial=true writes a clearly marked <model_id>.partial.json for demos)"
        )
    info = _entry(results_dict, spec.metadata, loaded, threat, partial=bool(problems))
    zoo = _write_zoo_checkpoint(loaded, threat, spec)
    files = _write_entry_files(info, results_dict, results_path, threat, spec, problems, zoo)
    check = None
    if spec.check:
        if zoo.rb_model is None:
            raise ExportError(f"check=true needs a RobustBench architecture class: {zoo.note}")
        check = _run_check(zoo.rb_model, results_dict, results_path, threat, spec)
    result = ExportResult(
        model_id=spec.model_id,
        dataset=loaded.dataset,
        threat_model=threat,
        partial=bool(problems),
        problems=problems,
        files=files,
        zoo_ready=zoo.ready,
        zoo_note=zoo.note,
        verification=zoo.verification,
        model_info=info,
        results=str(results_path),
        checkpoint=loaded.ckpt_path,
        check=check,
        wall_time_s=time.perf_counter() - started,
    )
    out_dir = Path(spec.out_dir).expanduser()
    atomic_write_bytes(out_dir / "export.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result
