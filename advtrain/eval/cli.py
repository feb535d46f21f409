"""`python -m advtrain eval`: clean / PGD / AutoAttack accuracy of a checkpoint, written to a run dir.

The dispatcher (advtrain.cli) composes configs/eval.yaml with Hydra and calls `run_eval(cfg)` with
the resolved plain dict. Outputs in the run directory:

* `results.json`: accuracies (overall, per class, after each AutoAttack stage), the exact protocol
  (norm, eps as float and as "8/255", version, attacks, seed, n_examples, batch/shard size),
  package versions, checkpoint path + SHA-256, wall time and red-flag warnings. `advtrain export`
  builds a RobustBench entry from it, so it records everything needed to refuse a wrong one.
* `autoattack.log`: AutoAttack's own log, shard by shard, plus the merged summary.
* `per_example.pt`: per-example clean/robust flags in test-set order (and `x_adv.pt` on request).

Three ways to name the model: an advtrain checkpoint (`ckpt=`), a plain state dict for a zoo model
(`model=NAME ckpt=`), or a RobustBench zoo model whose weights are already on disk
(`robustbench.name=`); see configs/eval.yaml.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from advtrain.errors import ConfigError
from advtrain.eval import checks
from advtrain.models.loading import LoadedModel, ModelSource, load_model
from advtrain.utils.distributed import init_distributed
from advtrain.utils.versions import package_versions

__all__ = [
    "format_summary",
    "load_eval_model",
    "load_test_set",
    "run_eval",
]

log = logging.getLogger(__name__)

RESULTS_FORMAT = "advtrain-eval-results"
RESULTS_VERSION = 1
TOP_KEYS = {
    "data",
    "model",
    "eval",
    "ckpt",
    "use_ema",
    "robustbench",
    "n_examples",
    "seed",
    "batch_size",
    "shard_size",
    "device",
    "state_dir",
    "save_x_adv",
    "progress",
    "run_dir",
}
PRESET_KEYS = {
    "clean": {"name", "kind", "norm", "eps"},
    "pgd": {"name", "kind", "norm", "eps", "steps", "step_size", "restarts", "objective"},
    "autoattack": {"name", "kind", "norm", "eps", "version", "attacks", "n_restarts", "pgd_steps"},
}
DEFAULT_SHARD = 1000


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _finite_or_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def _per_class(correct: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    from advtrain.eval.evaluate import per_class_accuracy

    return [_finite_or_none(v) for v in per_class_accuracy(correct, labels, num_classes)]


# --------------------------------------------------------------------------------------------
# model and data loading (shared with `advtrain export`)
# --------------------------------------------------------------------------------------------


def load_eval_model(cfg: dict[str, Any], *, norm: str = "Linf") -> LoadedModel:
    """The model `cfg` names (see advtrain.models.loading.ModelSource.from_config)."""
    return load_model(ModelSource.from_config(cfg), norm=norm)


def load_test_set(
    dataset: str, root: str | os.PathLike[str] | None, n_examples: int | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """First `n_examples` test images (uint8 NCHW) and labels in the official order, and the split size."""
    from advtrain.data import load_arrays

    images, labels = load_arrays(dataset, root, "test")
    total = int(labels.shape[0])
    if n_examples is None:
        return images, labels, total
    if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
        raise ConfigError(f"n_examples={n_examples!r} must be a positive integer or null (all)")
    if n_examples > total:
        raise ConfigError(
            f"n_examples={n_examples} but the {dataset} test split has {total} images"
        )
    return images[:n_examples], labels[:n_examples], total


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------


def _preset(cfg: dict[str, Any]) -> dict[str, Any]:
    ev = dict(cfg.get("eval") or {})
    kind = ev.get("kind")
    if kind not in PRESET_KEYS:
        raise ConfigError(
            f"eval.kind={kind!r}: use clean, pgd or autoattack (presets in configs/eval/)"
        )
    unknown = sorted(set(ev) - PRESET_KEYS[kind])
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in the eval preset; valid: {sorted(PRESET_KEYS[kind])}"
        )
    norm = str(ev.get("norm", "Linf"))
    norms = {"linf": "Linf", "l2": "L2", "l1": "L1"}
    if norm.lower() not in norms:
        raise ConfigError(f"eval.norm={norm!r}: use Linf, L2 or L1")
    ev["norm"] = norms[norm.lower()]
    if ev["norm"] == "L1" and kind == "pgd":
        raise ConfigError("PGD supports Linf and L2; use eval=aa_custom with eval.norm=L1 for L1")
    ev["eps"] = checks.parse_eps(ev.get("eps"))
    return ev


def run_eval(cfg: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the model `cfg` names; write results.json, autoattack.log, per_example.pt."""
    from advtrain.eval.autoattack import run_autoattack
    from advtrain.eval.evaluate import clean_correct, pgd_correct
    from advtrain.utils.hashing import model_hash

    started = time.perf_counter()
    unknown = sorted(set(cfg) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown top-level eval key(s) {unknown}; valid: {sorted(TOP_KEYS)}")
    ev = _preset(cfg)
    kind, norm, eps = ev["kind"], ev["norm"], ev["eps"]
    seed = cfg.get("seed", 0)
    batch_size = cfg.get("batch_size", 250)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r} must be a positive integer")
    shard_size = cfg.get("shard_size")
    if shard_size is None:  # about 1000 images per resumable unit, aligned to AutoAttack batches
        shard_size = -(-DEFAULT_SHARD // batch_size) * batch_size
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} must be an integer")
    run_dir = Path(cfg.get("run_dir") or ".")
    env, device, _ = init_distributed(str(cfg.get("device") or "auto"))
    rank, world = env.rank, env.world_size
    loaded = load_eval_model(cfg, norm=norm)
    model = loaded.model.to(device).eval()
    from advtrain.data import get_info

    info = get_info(loaded.dataset)
    checks.check_eps(norm, eps, (info.channels, info.size, info.size))
    root = (cfg.get("data") or {}).get("root")
    images, labels, total = load_test_set(loaded.dataset, root, cfg.get("n_examples"))
    n = int(labels.shape[0])
    x = images.float().div_(255.0)
    warnings: list[str] = list(loaded.notes)
    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "format_version": RESULTS_VERSION,
        "preset": ev.get("name"),
        "kind": kind,
        "dataset": loaded.dataset,
        "n_examples": n,
        "test_set_size": total,
        "complete": n == total,
        "norm": norm,
        "eps": eps,
        "eps_str": checks.eps_to_str(eps),
        "version": ev.get("version"),
        "attacks": None,
        "n_restarts": ev.get("n_restarts"),
        "seed": seed,
        "batch_size": batch_size,
        "shard_size": None,
        "clean_acc": None,
        "robust_acc": None,
        "robust_metric": None,
        "per_attack_robust_acc": None,
        "pgd": None,
        "per_class": {"names": list(info.class_names), "clean_acc": None, "robust_acc": None},
        "model": {
            "source": loaded.source,
            "name": loaded.name,
            "config": loaded.model_config,
            "hash": model_hash(model),
            "num_parameters": sum(p.numel() for p in model.parameters()),
        },
        "checkpoint": {
            "path": loaded.ckpt_path,
            "sha256": loaded.ckpt_sha256,
            "use_ema": loaded.use_ema,
        },
        "versions": package_versions(),
        "device": str(device),
        "world_size": world,
        "run_dir": str(run_dir),
    }
    log.info(
        "evaluating %s (%s) on %d %s test images: %s",
        loaded.name,
        loaded.source,
        n,
        loaded.dataset,
        ev.get("name"),
    )

    robust = None
    if kind == "autoattack":
        state_dir = cfg.get("state_dir")
        if state_dir is None:
            if world > 1:
                raise ConfigError(
                    "under torchrun set state_dir=PATH (a folder every rank can reach)"
                )
            state_dir = run_dir / "aa_state"
        log.info("AutoAttack state in %s (rerun with state_dir=%s to resume)", state_dir, state_dir)
        aa = run_autoattack(
            model,
            x,
            labels,
            norm=norm,
            eps=eps,
            version=ev["version"],
            attacks=ev.get("attacks"),
            seed=seed,
            batch_size=batch_size,
            state_dir=state_dir,
            device=device,
            shard_size=shard_size,
            progress=bool(cfg.get("progress", True)),
            n_restarts=ev.get("n_restarts"),
        )
        clean, robust = aa.clean_correct, aa.robust_correct
        warnings += aa.preflight_warnings + [f"AutoAttack: {w}" for w in aa.aa_warnings]
        results.update(
            attacks=aa.attacks,
            n_restarts=aa.meta["n_restarts"],
            shard_size=aa.meta["shard_size"],
            state_dir=str(state_dir),
            robust_metric="autoattack",
            per_attack_robust_acc=aa.per_attack_robust_acc,
            aa_shards={"total": aa.n_shards, "resumed": aa.shards_resumed},
        )
        # RobustBench re-evaluates x_adv to get its number: the two must agree.
        reeval = clean_correct(model, aa.x_adv, labels, batch_size=batch_size)
        if not torch.equal(reeval, robust):
            warnings.append(
                f"re-evaluating x_adv gives {int(reeval.sum())} correct vs AutoAttack's "
                f"{int(robust.sum())}: the model is not deterministic"
            )
        if rank == 0:
            (run_dir / "autoattack.log").parent.mkdir(parents=True, exist_ok=True)
            (run_dir / "autoattack.log").write_text(aa.log_text)
            results["files"] = {"log": "autoattack.log"}
            if cfg.get("save_x_adv"):
                torch.save({"x_adv": aa.x_adv, "y": labels}, run_dir / "x_adv.pt")
    else:
        from advtrain.attacks.pgd import model_mode

        with model_mode(model, training=False):
            warnings += checks.preflight(model, x[:batch_size].to(device), norm=norm, eps=eps)
        clean = clean_correct(model, images, labels, batch_size=batch_size)

    pgd_steps = int(ev.get("steps") or 0) if kind == "pgd" else int(ev.get("pgd_steps") or 0)
    if pgd_steps > 0 and norm in ("Linf", "L2"):
        objective = ev.get("objective", "ce") if kind == "pgd" else "ce"
        restarts = int(ev.get("restarts") or 1) if kind == "pgd" else 1
        step_size = ev.get("step_size") if kind == "pgd" else None
        step_size = eps / 4 if step_size is None else checks.parse_eps(step_size)
        pgd_name = f"{'CW' if objective == 'cw' else 'PGD'}-{pgd_steps}"
        log.info("running %s on %d images", pgd_name, n)
        pgd_ok = pgd_correct(
            model,
            images,
            labels,
            norm=norm,
            eps=eps,
            steps=pgd_steps,
            step_size=step_size,
            objective=objective,
            restarts=restarts,
            batch_size=batch_size,
            seed=seed,
        )
        results["pgd"] = {
            "name": pgd_name,
            "steps": pgd_steps,
            "step_size": step_size,
            "objective": objective,
            "restarts": restarts,
            "acc": float(pgd_ok.float().mean()),
        }
        if kind == "pgd":
            robust = pgd_ok
            results["robust_metric"] = pgd_name

    results["clean_acc"] = float(clean.float().mean())
    results["per_class"]["clean_acc"] = _per_class(clean, labels, info.num_classes)
    if robust is not None:
        results["robust_acc"] = float(robust.float().mean())
        results["per_class"]["robust_acc"] = _per_class(robust, labels, info.num_classes)
    masking = checks.masking_warnings(
        aa_robust_acc=results["robust_acc"] if kind == "autoattack" else None,
        pgd_robust_acc=(results["pgd"] or {}).get("acc") if kind == "autoattack" else None,
        pgd_name=(results["pgd"] or {}).get("name", "PGD"),
        per_attack=results["per_attack_robust_acc"],
    )
    warnings += masking
    results["warnings"] = warnings
    results["unreliable"] = bool(masking) or any(
        "randomized defense" in w or "dynamic defense" in w for w in warnings
    )
    results["wall_time_s"] = time.perf_counter() - started
    for w in warnings:
        log.warning("%s", w)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        per_example = {"index": torch.arange(n), "label": labels, "clean_correct": clean}
        if robust is not None:
            per_example["robust_correct"] = robust
        torch.save(per_example, run_dir / "per_example.pt")
        results.setdefault("files", {})["per_example"] = "per_example.pt"
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(format_summary(results))
    return results


def _pct(v: float | None) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}%"


def format_summary(results: dict[str, Any]) -> str:
    """The short table printed at the end of `advtrain eval`."""
    head = (
        f"advtrain eval | {results['preset']} | {results['dataset']} | {results['n_examples']}"
        f"/{results['test_set_size']} test images | {results['norm']} eps={results['eps_str']}"
        f" | seed {results['seed']}"
    )
    rows = [("clean", results["clean_acc"])]
    if results.get("pgd"):
        rows.append((results["pgd"]["name"], results["pgd"]["acc"]))
    if results["kind"] == "autoattack":
        for a, v in (results.get("per_attack_robust_acc") or {}).items():
            rows.append((f"  after {a}", v))
        rows.append((f"AutoAttack ({results['version']})", results["robust_acc"]))
    width = max(len(r[0]) for r in rows) + 2
    lines = [head, "-" * len(head)]
    lines += [f"{name:<{width}}{_pct(v)}" for name, v in rows]
    if results.get("warnings"):
        lines.append("warnings:")
        lines += [f"  ! {w}" for w in results["warnings"]]
    if not results.get("complete"):
        lines.append(
            f"note: partial evaluation ({results['n_examples']} of {results['test_set_size']} images)"
        )
    lines.append(
        f"wall time {results['wall_time_s']:.1f} s; results: {Path(results['run_dir']) / 'results.json'}"
    )
    return "\n".join(lines)
