"""`python -m advtrain eval`: compose the config, call `advtrain.eval.api.evaluate`, write and print.

The dispatcher (advtrain.cli) composes configs/eval.yaml with Hydra and calls `run_eval(cfg)` with the
resolved plain dict. Outputs in the run directory (rank 0 under torchrun): results.json, per_example.pt,
autoattack.log (and x_adv.pt with save_x_adv=true); advtrain/eval/api.py says what each holds.

Three ways to name the model: an advtrain checkpoint (`ckpt=`), a plain state dict for a zoo model
(`model=NAME ckpt=`), or a RobustBench zoo model whose weights are already on disk
(`robustbench.name=`); see configs/eval.yaml and advtrain/models/loading.py.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from advtrain.errors import ConfigError

__all__ = ["format_summary", "run_eval"]


def _state_dir(cfg: dict[str, Any], run_dir: Path, world_size: int) -> str | Path:
    """AutoAttack's shard folder: state_dir, else <run dir>/aa_state (every rank must reach it)."""
    state_dir = cfg.get("state_dir")
    if state_dir is not None:
        return str(state_dir)
    if world_size > 1:
        raise ConfigError("under torchrun set state_dir=PATH (a folder every rank can reach)")
    return run_dir / "aa_state"


def run_eval(cfg: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the model `cfg` names; returns (and on rank 0 writes) results.json's dict."""
    from advtrain.cli import given_on_command_line
    from advtrain.config import validate_eval
    from advtrain.engine.signals import Interrupted
    from advtrain.eval.api import EvalData, EvalSpec, evaluate
    from advtrain.models.loading import ModelSource, load_model
    from advtrain.utils.distributed import init_distributed

    started = time.perf_counter()
    cfg = validate_eval(cfg)  # the schema: unknown keys, types, the preset (eps as a number)
    spec = EvalSpec.from_config(cfg)
    run_dir = Path(cfg.get("run_dir") or ".")
    env, device, _ = init_distributed(str(cfg.get("device") or "auto"))
    if spec.kind == "autoattack":
        spec = replace(spec, state_dir=_state_dir(cfg, run_dir, env.world_size))
    source = ModelSource.from_config(cfg)
    if given_on_command_line("data", "data.name") is False:
        # configs/eval.yaml's default data=cifar10 is no request: a checkpoint's own dataset is
        # used without a note, and the note stays for a data= the user typed.
        source = replace(source, dataset=None)
    loaded = load_model(source, norm=spec.norm)
    root = (cfg.get("data") or {}).get("root")
    data = EvalData.test_split(loaded.dataset, root, cfg.get("n_examples"))
    try:
        result = evaluate(loaded, data, spec, device=device)
    except Interrupted as stop:
        if spec.kind == "autoattack" and spec.state_dir is not None:
            stop.where = (
                f"during the evaluation; finished AutoAttack shards are kept in {spec.state_dir} "
                "and are reused by the same command"
            )
        else:
            stop.where = (
                "during the evaluation; nothing was written (results.json comes at the end)"
            )
        raise
    result.wall_time_s = time.perf_counter() - started  # the whole command, loading included
    if not env.is_main:
        return result.to_dict(run_dir)
    results = result.save(run_dir, save_x_adv=bool(cfg.get("save_x_adv")))
    print(format_summary(results))
    return results


def _pct(v: float | None) -> str:
    return "   n/a" if v is None else f"{100 * v:6.2f}%"


def format_summary(results: dict[str, Any]) -> str:
    """The short table printed at the end of `advtrain eval` (from results.json's dict)."""
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
