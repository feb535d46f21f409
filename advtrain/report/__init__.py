"""Look at runs instead of reading JSON: `python -m advtrain report RUN [RUN ...] out=DIR`.

`write_report(paths, out_dir)` reads training runs (config.json, metrics.jsonl, final.json, checkpoint
names), evaluation runs (results.json, per_example.pt), sweep folders and globs; pairs each evaluation
with the training run whose checkpoint has the SHA-256 that results.json records; and writes
`report.md`, its PNGs and a self-contained `report.html`. The pieces are public so that other reports
(the study drivers in scripts/experiments) draw with the same code and state the same statistics:

* `runs`: `load_runs`, `read_train_run`, `read_eval_run`, `TrainRun`, `EvalRun`, `Problem`;
* `stats`: `summarize`, `binomial_se`, `mcnemar_p`, `paired_seed`, `paired_verdict`, `reading`;
* `plots`: `plot_curves`, `plot_scatter`, `plot_per_class`, `plot_attack_stages`;
* `markdown` / `html`: table formatting and the Markdown -> self-contained HTML step.

Importing this package loads neither matplotlib nor torch; they are imported when a plot is drawn or
a per-image file is read.
"""

from __future__ import annotations

from advtrain.report.build import (
    ReportError,
    ReportResult,
    Scores,
    aa_pgd_gap,
    pick_evals,
    scores,
    write_report,
)
from advtrain.report.html import markdown_to_html, write_html
from advtrain.report.runs import (
    EvalRun,
    Problem,
    RunSet,
    ThreatModel,
    TrainRun,
    load_runs,
    read_eval_run,
    read_train_run,
)
from advtrain.report.stats import (
    PairedSeed,
    Summary,
    binomial_se,
    mcnemar_p,
    paired_seed,
    paired_verdict,
    reading,
    summarize,
)

__all__ = [
    "EvalRun",
    "PairedSeed",
    "Problem",
    "ReportError",
    "ReportResult",
    "RunSet",
    "Scores",
    "Summary",
    "ThreatModel",
    "TrainRun",
    "aa_pgd_gap",
    "binomial_se",
    "load_runs",
    "markdown_to_html",
    "mcnemar_p",
    "paired_seed",
    "paired_verdict",
    "pick_evals",
    "read_eval_run",
    "read_train_run",
    "reading",
    "scores",
    "summarize",
    "write_html",
    "write_report",
]
