"""`python -m advtrain export`: compose the config, call `advtrain.export.api.export`, print.

The order of work and what each file holds are in advtrain/export/api.py; configs/export.yaml lists
the options. A failed `check=true` is printed with the rest and then exits with one `error:` line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from advtrain.errors import ConfigError

if TYPE_CHECKING:
    from advtrain.export.api import CheckResult, ExportResult

__all__ = ["format_summary", "run_export"]


def run_export(cfg: dict[str, Any]) -> dict[str, Any]:
    """Export the checkpoint `cfg['ckpt']` evaluated in `cfg['results']`; returns export.json's dict."""
    from advtrain.config import validate_export
    from advtrain.export.api import ExportSpec, export
    from advtrain.export.robustbench import ExportError
    from advtrain.models.loading import ModelSource

    cfg = validate_export(cfg)  # the schema: unknown keys (model_info's too) and types
    if not cfg.get("ckpt"):
        raise ConfigError("set ckpt=PATH to the checkpoint that was evaluated")
    result = export(ModelSource.from_config(cfg), cfg.get("results"), ExportSpec.from_config(cfg))
    print(format_summary(result))
    if result.check is not None and not result.check.passed:
        raise ExportError("RobustBench check failed: " + "; ".join(result.check.problems))
    return result.to_dict()


def _check_lines(c: CheckResult) -> list[str]:
    ours = ""
    if c.ours_clean_acc is not None:
        robust = "" if c.ours_robust_acc is None else f", robust {100 * c.ours_robust_acc:.2f}%"
        ours = f" (evaluation: clean {100 * c.ours_clean_acc:.2f}%{robust})"
    return [
        f"  check on {c.n_examples} images: clean {100 * c.clean_acc:.2f}%, robust "
        f"{100 * c.robust_acc:.2f}%{ours}: {'PASSED' if c.passed else 'FAILED'}",
        f"    via {c.method}",
    ]


def format_summary(s: ExportResult) -> str:
    """The lines printed at the end of `advtrain export` (from an ExportResult)."""
    info = s.model_info
    lines = [
        f"advtrain export | {s.model_id} | {s.dataset}/{s.threat_model} | "
        + ("PARTIAL (not a leaderboard entry)" if s.partial else "leaderboard entry"),
        f"  clean {info['clean_acc']}%  AutoAttack {info['autoattack_acc']}%  eps {info['eps']}  unreliable {str(info['unreliable']).lower()}",
    ]
    lines += [f"  ! {p}" for p in s.problems]
    v = s.verification
    if s.zoo_ready:
        same = "bit-identical" if v["bit_identical"] else f"max diff {v['max_abs_logit_diff']:.2g}"
        lines.append(
            f"  zoo: {v['robustbench_class']}: strict load ok, logits on {v['n_images']} test images {same}"
        )
    else:
        lines.append(f"  zoo: {s.zoo_note}")
    lines += [f"  {k:<15}{p}" for k, p in s.files.items() if p]
    if s.check is not None:
        lines += _check_lines(s.check)
    return "\n".join(lines)
