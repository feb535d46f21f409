"""`python -m advtrain bench [bench=NAME] [overrides]`: run benchmarks, write their result files.

The composed config (configs/bench.yaml) has one key per selected benchmark under `bench:` (its
settings, see each module's DEFAULTS) plus where and how to run: `out_dir`, `device`, `threads`,
`seed`, `data_root`, `dry_run` (tiny sizes, seconds per benchmark: a smoke test of the code,
not a measurement) and `only` (a subset of the selected benchmarks, e.g. `bench=gpu only=[data]`).
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

import torch

from advtrain.config import validate_bench
from advtrain.errors import ConfigError
from advtrain.utils.distributed import resolve_device
from benchmarks import get_benchmark
from benchmarks.common import BenchContext, write_result

log = logging.getLogger(__name__)

__all__ = ["run_bench"]


def _command() -> str:
    """The command line that reproduces this run (Hydra's task overrides)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            overrides = list(HydraConfig.get().overrides.task)
            return "python -m advtrain bench " + " ".join(shlex.quote(o) for o in overrides)
    except (ImportError, ValueError):
        pass
    return "benchmarks.cli.run_bench(cfg) (called from Python)"


def run_bench(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run every benchmark under `cfg['bench']`, in order; return their JSON payloads by name."""
    cfg = validate_bench(cfg)  # the top-level keys and types (configs/bench.yaml's schema)
    benches = cfg.get("bench") or {}
    if not isinstance(benches, dict) or not benches:
        raise ConfigError("no benchmark selected: use bench=NAME or bench=all")
    only = cfg.get("only")
    if only:
        missing = sorted(set(only) - set(benches))
        if missing:
            raise ConfigError(
                f"only={list(only)}: {missing} not in the selected config (it has {list(benches)})"
            )
        benches = {k: v for k, v in benches.items() if k in set(only)}
    threads = int(cfg.get("threads") or torch.get_num_threads())
    if threads < 1:
        raise ConfigError(f"threads={threads} must be >= 1")
    device = resolve_device(str(cfg.get("device", "cpu")))
    modules = {name: get_benchmark(name) for name in benches}  # unknown names fail first
    ctx = BenchContext(
        out_dir=Path(str(cfg.get("out_dir", "results/bench"))),
        device=device,
        threads=threads,
        seed=int(cfg.get("seed", 0)),
        command=_command(),
        data_root=cfg.get("data_root"),
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    payloads: dict[str, dict[str, Any]] = {}
    try:
        for name, module in modules.items():
            settings = dict(benches[name] or {})
            if cfg.get("dry_run"):
                settings.update(module.TINY)
            log.info("bench %s: %s", name, settings)
            result = module.run(settings, ctx)
            payload = write_result(result, ctx)
            payloads[name] = payload
            for t in payload["targets"]:
                log.info(
                    "  %s: %.4g (target %s %g) %s",
                    t["name"],
                    float(t["value"]),
                    t["op"],
                    t["limit"],
                    "met" if t["met"] else "NOT met",
                )
    finally:
        torch.set_num_threads(previous_threads)
    return payloads
