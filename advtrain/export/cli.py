"""`python -m advtrain export`: a checkpoint + its `advtrain eval` results -> RobustBench files.

Order of work, chosen so that nothing is written unless everything would be right:
1. read results.json and rebuild the evaluated model; refuse if the checkpoint, the weights (EMA or
   not) or the dataset are not the ones that were evaluated (SHA-256 and model hash);
2. refuse a leaderboard entry from a partial or non-standard evaluation (unless `allow_partial`,
   which writes `<id>.partial.json` instead);
3. build the leaderboard entry and validate it;
4. save the zoo checkpoint, load it back exactly as `robustbench.utils.load_model` does into
   RobustBench's class, and compare logits on real test images (refuse on any difference);
5. write model_info JSON, submission text, AA log copy and export.json; optionally run the check.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

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
from advtrain.utils.checkpoint import atomic_write_bytes

__all__ = ["run_export"]

log = logging.getLogger(__name__)

TOP_KEYS = {
    "data",
    "model",
    "ckpt",
    "use_ema",
    "results",
    "model_id",
    "out_dir",
    "allow_partial",
    "checkpoint_url",
    "verify_n_examples",
    "check",
    "check_n_examples",
    "check_tolerance_pp",
    "batch_size",
    "seed",
    "device",
    "model_info",
    "run_dir",
}
INFO_KEYS = {
    "link",
    "name",
    "authors",
    "additional_data",
    "number_forward_passes",
    "venue",
    "architecture",
    "reported",
    "footnote",
    "unreliable",
}
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


def _read_results(path_like: Any) -> tuple[dict[str, Any], Path]:
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


def _load_like_robustbench(path: Path, constructor: Any) -> torch.nn.Module:
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


def _torchvision_layout(dataset: str, root: Path) -> bool:
    folder, files = _TV_FILES[dataset]
    return all((root / folder / f).is_file() for f in files)


def _run_check(
    rb_model: torch.nn.Module,
    results: dict[str, Any],
    results_path: Path,
    cfg: dict[str, Any],
    threat: str,
    root: Path,
    out_dir: Path,
    model_id: str,
) -> dict[str, Any]:
    """RobustBench's own evaluation of the exported model on the first check_n_examples images."""
    from robustbench.utils import clean_accuracy

    from advtrain.eval.cli import load_test_set
    from advtrain.utils.distributed import resolve_device

    dataset = results["dataset"]
    n = int(cfg.get("check_n_examples") or 100)
    bs = int(cfg.get("batch_size") or 100)
    seed = int(cfg.get("seed") or 0)
    device = resolve_device(str(cfg.get("device") or "auto"))
    eps = float(results["eps"])
    log_path = out_dir / "check" / f"{model_id}_autoattack.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    rb_model = rb_model.to(device)
    torch.manual_seed(seed)
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
    else:
        # Offline without torchvision's CIFAR files benchmark() would try to download; run the same
        # steps on our copy of the test set: clean_accuracy, AutoAttack standard, re-evaluation.
        from autoattack import AutoAttack

        method = (
            f"benchmark()'s steps on advtrain's test-set copy (no torchvision layout under {root}): "
            f"robustbench.utils.clean_accuracy + autoattack.AutoAttack(version='standard', seed={seed})"
        )
        images, labels, _ = load_test_set(dataset, root, n)
        x = images.float().div(255.0)
        clean = clean_accuracy(rb_model, x, labels, batch_size=bs, device=device)
        adversary = AutoAttack(
            rb_model,
            norm=threat,
            eps=eps,
            version="standard",
            device=device,
            log_path=str(log_path),
            seed=seed,
            verbose=False,
        )
        x_adv = adversary.run_standard_evaluation(x, labels, bs=bs)
        robust = clean_accuracy(rb_model, x_adv, labels, batch_size=bs, device=device)
    ours_clean = ours_robust = None
    per_example = results_path.parent / "per_example.pt"
    if per_example.is_file():
        pe = torch.load(per_example, map_location="cpu", weights_only=True)
        if len(pe["clean_correct"]) >= n:
            ours_clean = float(pe["clean_correct"][:n].float().mean())
            if "robust_correct" in pe:
                ours_robust = float(pe["robust_correct"][:n].float().mean())
    tol = float(cfg.get("check_tolerance_pp", 3.0))
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
    return {
        "method": method,
        "n_examples": n,
        "clean_acc": clean,
        "robust_acc": robust,
        "ours_clean_acc": ours_clean,
        "ours_robust_acc": ours_robust,
        "tolerance_pp": tol,
        "passed": not problems,
        "problems": problems,
        "log": str(log_path),
    }


def run_export(cfg: dict[str, Any]) -> dict[str, Any]:
    """Export the checkpoint `cfg['ckpt']` evaluated in `cfg['results']`; returns export.json's dict."""
    from advtrain.data import get_info
    from advtrain.eval.cli import load_eval_model, load_test_set
    from advtrain.utils.hashing import model_hash

    started = time.perf_counter()
    unknown = sorted(set(cfg) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown export key(s) {unknown}; valid: {sorted(TOP_KEYS)}")
    meta = dict(cfg.get("model_info") or {})
    unknown = sorted(set(meta) - INFO_KEYS)
    if unknown:
        raise ConfigError(f"unknown model_info key(s) {unknown}; valid: {sorted(INFO_KEYS)}")
    results, results_path = _read_results(cfg.get("results"))
    model_id = validate_model_id(cfg.get("model_id"))
    threat = results.get("norm")
    if threat not in ("Linf", "L2"):
        raise ExportError(
            f"RobustBench leaderboards are Linf or L2; the evaluation used norm={threat}"
        )
    if not cfg.get("ckpt"):
        raise ConfigError("set ckpt=PATH to the checkpoint that was evaluated")
    use_ema = cfg.get("use_ema")
    if use_ema is None:
        use_ema = (results.get("checkpoint") or {}).get("use_ema")
    loaded = load_eval_model(
        {
            "ckpt": cfg["ckpt"],
            "use_ema": use_ema,
            "model": cfg.get("model"),
            "data": cfg.get("data"),
            "robustbench": {},
        },
        norm=threat,
    )
    # 1. the evaluated model, exactly
    rck = results.get("checkpoint") or {}
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
    dataset = loaded.dataset
    if dataset not in ("cifar10", "cifar100"):
        raise ExportError(
            f"RobustBench has no {dataset} leaderboard or zoo (cifar10, cifar100, imagenet only)"
        )
    # 2. leaderboard eligibility
    problems = leaderboard_problems(results, threat)
    partial = bool(problems)
    if partial and not cfg.get("allow_partial"):
        raise ExportError(
            "refusing to write a leaderboard entry: "
            + "; ".join(problems)
            + " (allow_partial=true writes a clearly marked <model_id>.partial.json for demos)"
        )
    # 3. the entry
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
        unreliable = bool(results.get("unreliable"))
    arch = architecture_name(loaded.model_config or {"name": loaded.name})
    info = build_model_info(
        results, meta, dataset=dataset, architecture=arch, unreliable=bool(unreliable)
    )
    errs = validate_model_info(info, threat_model=threat, strict=not partial)
    if errs:
        raise ExportError("the leaderboard entry would be invalid: " + "; ".join(errs))
    # 4. zoo checkpoint + verification
    out_dir = Path(str(cfg.get("out_dir") or cfg.get("run_dir") or ".")).expanduser()
    dinfo = get_info(dataset)
    constructor, arch_note = robustbench_constructor(
        loaded.model_config or {"name": loaded.name}, dinfo.num_classes, dinfo.mean, dinfo.std
    )
    sd = export_state_dict(loaded.model.state_dict())
    verification: dict[str, Any] = {"robustbench_class": arch_note if constructor else None}
    rb_model = None
    if constructor is not None:
        staged = constructor()  # check strict loading before anything is written
        try:
            staged.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ExportError(
                f"weights do not load strictly into {arch_note}: {str(e).splitlines()[0]}"
            ) from None
    root = Path(
        str((cfg.get("data") or {}).get("root") or os.environ.get("ADVTRAIN_DATA_DIR", "data"))
    )
    n_verify = int(cfg.get("verify_n_examples") or 256)
    zoo_path = out_dir / "models" / dataset / threat / f"{model_id}.pt"
    buf_path = zoo_path.with_name(f".{zoo_path.name}.staged")
    buf_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd}, buf_path)
    try:
        if constructor is not None:
            images, _, _ = load_test_set(dataset, root, n_verify)
            x = images.float().div(255.0)
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
    # 5. entry, submission, log
    suffix = ".partial" if partial else ""
    info_path = out_dir / "model_info" / dataset / threat / f"{model_id}{suffix}.json"
    atomic_write_bytes(info_path, json.dumps(info, indent=2) + "\n")
    zoo_note = f"weights verified in {arch_note}" if constructor is not None else arch_note
    sub_path = out_dir / "submission" / f"{model_id}{suffix}.md"
    text = submission_text(
        info,
        model_id=model_id,
        threat_model=threat,
        results=results,
        checkpoint_url=cfg.get("checkpoint_url"),
        zoo_ready=constructor is not None,
        zoo_note=zoo_note,
    )
    if partial:
        text = (
            "NOT FOR SUBMISSION (partial / non-standard evaluation): "
            + "; ".join(problems)
            + "\n\n"
        ) + text
    atomic_write_bytes(sub_path, text)
    aa_log = results_path.parent / ((results.get("files") or {}).get("log") or "autoattack.log")
    log_copy = None
    if aa_log.is_file():
        log_copy = sub_path.with_name(f"{model_id}{suffix}_autoattack.log")
        shutil.copyfile(aa_log, log_copy)
    summary: dict[str, Any] = {
        "model_id": model_id,
        "dataset": dataset,
        "threat_model": threat,
        "partial": partial,
        "problems": problems,
        "files": {
            "checkpoint": str(zoo_path),
            "model_info": str(info_path),
            "submission": str(sub_path),
            "autoattack_log": None if log_copy is None else str(log_copy),
        },
        "zoo_ready": constructor is not None,
        "zoo_note": zoo_note,
        "verification": verification,
        "model_info": info,
        "results": str(results_path),
        "checkpoint": loaded.ckpt_path,
    }
    if cfg.get("check"):
        if rb_model is None:
            raise ExportError(f"check=true needs a RobustBench architecture class: {arch_note}")
        summary["check"] = _run_check(
            rb_model, results, results_path, cfg, threat, root, out_dir, model_id
        )
    summary["wall_time_s"] = time.perf_counter() - started
    atomic_write_bytes(out_dir / "export.json", json.dumps(summary, indent=2) + "\n")
    print(_format(summary))
    if summary.get("check") and not summary["check"]["passed"]:
        raise ExportError("RobustBench check failed: " + "; ".join(summary["check"]["problems"]))
    return summary


def _format(s: dict[str, Any]) -> str:
    info = s["model_info"]
    lines = [
        f"advtrain export | {s['model_id']} | {s['dataset']}/{s['threat_model']} | "
        + ("PARTIAL (not a leaderboard entry)" if s["partial"] else "leaderboard entry"),
        f"  clean {info['clean_acc']}%  AutoAttack {info['autoattack_acc']}%  eps {info['eps']}  unreliable {str(info['unreliable']).lower()}",
    ]
    for p in s["problems"]:
        lines.append(f"  ! {p}")
    v = s["verification"]
    if s["zoo_ready"]:
        same = "bit-identical" if v["bit_identical"] else f"max diff {v['max_abs_logit_diff']:.2g}"
        lines.append(
            f"  zoo: {v['robustbench_class']}: strict load ok, logits on {v['n_images']} test images {same}"
        )
    else:
        lines.append(f"  zoo: {s['zoo_note']}")
    for k, p in s["files"].items():
        if p:
            lines.append(f"  {k:<15}{p}")
    if s.get("check"):
        c = s["check"]
        ours = (
            ""
            if c["ours_clean_acc"] is None
            else f" (evaluation: clean {100 * c['ours_clean_acc']:.2f}%"
            + (
                ""
                if c["ours_robust_acc"] is None
                else f", robust {100 * c['ours_robust_acc']:.2f}%"
            )
            + ")"
        )
        lines.append(
            f"  check on {c['n_examples']} images: clean {100 * c['clean_acc']:.2f}%, robust "
            f"{100 * c['robust_acc']:.2f}%{ours}: {'PASSED' if c['passed'] else 'FAILED'}"
        )
        lines.append(f"    via {c['method']}")
    return "\n".join(lines)
