"""`python -m advtrain report RUN [RUN ...] out=DIR`: the report command's thin command line.

Why no Hydra app: a report takes paths, not a config to compose, and Hydra would create a run
directory of its own and read `key=value` paths (a sweep job folder "0_seed=1,loss.beta=6") as
overrides. The style still matches the other commands: `key=value` options, one `error: ...` line
and exit code 1 for a mistake, 0 when the report was written (problems with some inputs are
warnings: they are listed in the report, and the rest of it is written).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from advtrain.errors import AdvtrainError

USAGE = """usage: python -m advtrain report RUN [RUN ...] [out=DIR] [title=TEXT]

RUN      a training run directory (config.json, metrics.jsonl), an evaluation run directory
         (results.json), a folder of runs (runs/demo, a multirun sweep folder, a study's runs)
         or a glob such as 'runs/demo/*'; evaluations are paired with the training run whose
         checkpoint has the SHA-256 their results.json records
out=DIR  where report.md, report.html (one self-contained file) and the PNGs go
         (default: $ADVTRAIN_RUNS_DIR/report/<time>, else runs/report/<time>)
title=T  the report's title

example: python -m advtrain report runs/demo/* runs/eval/* out=reports/demo
"""

OPTIONS = ("out", "title")


def parse(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split argv into run paths and `key=value` options; raise AdvtrainError on a mistake.

    An argument is an option only if its key is one of OPTIONS; anything else containing "=" is a
    path when it exists (Hydra names sweep jobs "<n>_key=value,..."), and a typo otherwise.
    """
    paths: list[str] = []
    opts: dict[str, str] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+") in OPTIONS:
            if not value:
                raise AdvtrainError(f"{key}= needs a value, e.g. {key}=reports/demo")
            opts[key.lstrip("+")] = value
        elif arg.startswith("-"):
            raise AdvtrainError(
                f"unknown flag {arg!r}: report takes run paths and out=DIR, title=TEXT "
                "(no Hydra flags; see python -m advtrain report --help)"
            )
        elif sep and not Path(arg).exists() and "/" not in key:
            raise AdvtrainError(
                f"unknown report option {key!r} (valid: {', '.join(OPTIONS)}); a run path that "
                "contains '=' must exist"
            )
        else:
            paths.append(arg)
    if not paths:
        raise AdvtrainError(
            "report needs at least one run: python -m advtrain report RUN [RUN ...] out=DIR"
        )
    return paths, opts


def default_out() -> Path:
    """Next to the runs, like the other commands' run directories."""
    root = Path(os.environ.get("ADVTRAIN_RUNS_DIR", "runs"))
    return root / "report" / time.strftime("%Y-%m-%d_%H-%M-%S")


def main(argv: list[str]) -> int:
    """Write the report; print where it is, each input problem as a `warning:` line; exit code."""
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    from advtrain.report import write_report

    try:
        paths, opts = parse(list(argv))
        result = write_report(
            paths, Path(opts.get("out") or default_out()), title=opts.get("title")
        )
    except AdvtrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for p in result.problems:
        print(f"warning: {p}", file=sys.stderr)
    n_sec = len(result.sections)
    print(
        f"advtrain report | {result.n_train} training run(s), {result.n_eval} evaluation(s) | "
        f"{n_sec} section(s): {'; '.join(result.sections)}"
    )
    print(f"  report.md    {result.markdown}")
    print(f"  report.html  {result.html} (self-contained: the figures are embedded)")
    print(f"  figures      {', '.join(p.name for p in result.images) or 'none'}")
    if result.problems:
        print(f"  {len(result.problems)} problem(s) with the input: listed at the top of report.md")
    return 0
