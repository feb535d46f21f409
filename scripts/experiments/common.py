"""Shared machinery of the study drivers (study_a_cifar10.py, study_b_fashion_mnist.py).

A study is a grid of trainings (method x seed) followed by evaluations of each trained model. Every
training and evaluation runs through the public CLI as a subprocess, so what the README reports is
exactly what a user gets by typing the printed command:

    python -m advtrain train +exp=<exp> seed=<s> data.root=<data> resume=auto hydra.run.dir=<fixed dir>
    python -m advtrain eval ckpt=<fixed dir>/last.pt <eval overrides> hydra.run.dir=<fixed eval dir>

Each run has a fixed directory, which is what makes the driver restartable: a training whose
`final.json` exists is skipped, an unfinished one resumes from its newest checkpoint (`resume=auto`),
and an evaluation whose `results.json` was computed from the current `last.pt` (same SHA-256) is
skipped. Killing the driver and starting it again therefore loses at most one epoch or one
AutoAttack shard.

The driver writes `plan.json` (the study, every command, the interpreter and thread settings) into the
runs directory; `report.py` reads it together with the run directories, so the report can be rebuilt
at any time without rerunning anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

# The same file hash `advtrain eval` records in results.json (the "is this evaluation current" test).
from advtrain.utils.hashing import file_sha256

REPO_ROOT = Path(__file__).resolve().parents[2]
PLAN_FILE = "plan.json"
DRIVER_FILE = "driver.json"

log = logging.getLogger("advtrain.studies")


# ------------------------------------------------------------------------------------------------
# what a study is
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One training recipe: a display label, a short slug for directory names and its exp config."""

    label: str
    slug: str
    exp: str
    relative_cost: float = 1.0  # only orders the work (most expensive first balances parallel jobs)


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation of every trained model: a column key, its display label and the CLI overrides."""

    key: str
    label: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """Everything that defines a study; the report copies `scaling` verbatim into its README."""

    name: str
    title: str
    dataset: str
    methods: tuple[Method, ...]
    seeds: tuple[int, ...]
    evals: tuple[EvalSpec, ...]
    train_overrides: tuple[str, ...] = ()
    robust_key: str = "aa"  # the eval whose robust accuracy is "AutoAttack" in tables and plots
    pgd_key: str = "pgd20"
    compare: tuple[str, str] = ("gkl", "trades")  # slugs of the per-class comparison plot
    # (A, B) slug pairs whose robust accuracy the report compares seed by seed, A minus B, on the
    # same test images (paired: per-image results, McNemar's exact test per seed).
    pairs: tuple[tuple[str, str], ...] = (
        ("gkl", "trades"),
        ("gkl_loss", "trades"),
        ("gkl", "pgdat"),
    )
    scaling: str = ""


@dataclass(frozen=True)
class Job:
    """One subprocess: where it runs, its exact argv (after the interpreter) and how to tell it is done."""

    kind: str  # train | eval
    name: str  # "train" or "eval_<key>"
    run_dir: Path
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]

    def display(self) -> str:
        """The command as a user would type it (`python` is the driver's interpreter)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        cmd = " ".join(shlex.quote(a) for a in ("python", *self.argv))
        return f"{env} {cmd}".strip()


@dataclass(frozen=True)
class Pipeline:
    """A training and the evaluations of its `last.pt`, run in order."""

    method: Method
    seed: int
    key: str
    root: Path
    train: Job
    evals: tuple[tuple[str, Job], ...]


@dataclass
class JobRecord:
    """What happened to one job in this invocation of the driver."""

    pipeline: str
    job: str
    status: str  # ran | skipped | failed | blocked | planned
    seconds: float = 0.0
    returncode: int | None = None
    log: str | None = None


# ------------------------------------------------------------------------------------------------
# planning
# ------------------------------------------------------------------------------------------------


def thread_env(threads: int) -> tuple[tuple[str, str], ...]:
    """Per-process thread count: with `--jobs 2` on 2 cores each process gets one thread."""
    return (("OMP_NUM_THREADS", str(threads)), ("MKL_NUM_THREADS", str(threads)))


def plan(study: Study, runs_dir: Path, data_dir: Path, *, threads: int) -> list[Pipeline]:
    """All pipelines of `study`, most expensive first (balances `--jobs` > 1), with fixed run dirs."""
    runs_dir = runs_dir.resolve()
    env = thread_env(threads)
    pipelines: list[Pipeline] = []
    order = sorted(study.methods, key=lambda m: -m.relative_cost)
    for method in order:
        for seed in study.seeds:
            key = f"{method.slug}_seed{seed}"
            root = runs_dir / key
            train_dir = root / "train"
            train = Job(
                kind="train",
                name="train",
                run_dir=train_dir,
                argv=(
                    "-m",
                    "advtrain",
                    "train",
                    f"+exp={method.exp}",
                    f"seed={seed}",
                    f"data.root={data_dir.resolve()}",
                    *study.train_overrides,
                    "resume=auto",
                    f"hydra.run.dir={train_dir}",
                ),
                env=env,
            )
            evals = []
            for spec in study.evals:
                eval_dir = root / f"eval_{spec.key}"
                evals.append(
                    (
                        spec.key,
                        Job(
                            kind="eval",
                            name=f"eval_{spec.key}",
                            run_dir=eval_dir,
                            argv=(
                                "-m",
                                "advtrain",
                                "eval",
                                f"ckpt={train_dir / 'last.pt'}",
                                *spec.overrides,
                                f"data.root={data_dir.resolve()}",
                                "progress=false",
                                f"hydra.run.dir={eval_dir}",
                            ),
                            env=env,
                        ),
                    )
                )
            pipelines.append(Pipeline(method, seed, key, root, train, tuple(evals)))
    return pipelines


def write_plan(
    study: Study, pipelines: Sequence[Pipeline], runs_dir: Path, *, jobs: int, threads: int
) -> Path:
    """`plan.json`: the study and every command, the single input of report.py besides the runs."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "study": _study_dict(study),
        "python": sys.executable,
        "jobs": jobs,
        "threads_per_job": threads,
        "cpu_count": os.cpu_count(),
        "pipelines": [
            {
                "key": p.key,
                "method": p.method.label,
                "slug": p.method.slug,
                "exp": p.method.exp,
                "seed": p.seed,
                "root": str(p.root),
                "train": {"dir": str(p.train.run_dir), "command": p.train.display()},
                "evals": {k: {"dir": str(j.run_dir), "command": j.display()} for k, j in p.evals},
            }
            for p in pipelines
        ],
    }
    path = runs_dir / PLAN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def _study_dict(study: Study) -> dict[str, Any]:
    d = asdict(study)
    d["methods"] = [asdict(m) for m in study.methods]
    d["evals"] = [asdict(e) for e in study.evals]
    return d


# ------------------------------------------------------------------------------------------------
# state on disk: what is finished
# ------------------------------------------------------------------------------------------------


def training_done(train_dir: Path) -> bool:
    """`final.json` is written only after the last epoch and the final test pass."""
    return (train_dir / "final.json").is_file()


def eval_done(eval_dir: Path, ckpt: Path) -> bool:
    """results.json exists and was computed from this very checkpoint (a retrained model is re-evaluated)."""
    results = eval_dir / "results.json"
    if not results.is_file() or not ckpt.is_file():
        return False
    try:
        recorded = json.loads(results.read_text())["checkpoint"]["sha256"]
    except (ValueError, KeyError, TypeError):
        return False
    return recorded == file_sha256(ckpt)


def _record_attempt(root: Path, job: Job, seconds: float, rc: int) -> None:
    """Append one attempt to `<pipeline>/driver.json` (wall time of resumed runs adds up)."""
    path = root / DRIVER_FILE
    data: dict[str, list[dict[str, Any]]] = {}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except ValueError:
            data = {}
    data.setdefault(job.name, []).append(
        {
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - seconds)),
            "seconds": round(seconds, 2),
            "returncode": rc,
            "command": job.display(),
        }
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def driver_seconds(root: Path, job_name: str) -> float | None:
    """Total wall seconds the driver spent on `job_name` over all attempts, or None if never run."""
    path = root / DRIVER_FILE
    if not path.is_file():
        return None
    try:
        attempts = json.loads(path.read_text()).get(job_name) or []
    except ValueError:
        return None
    return sum(float(a["seconds"]) for a in attempts) if attempts else None


# ------------------------------------------------------------------------------------------------
# execution
# ------------------------------------------------------------------------------------------------


def _run_job(p: Pipeline, job: Job, python: str) -> JobRecord:
    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = p.root / f"{job.name}.log"
    env = {**os.environ, **dict(job.env), "PYTHONUNBUFFERED": "1"}
    log.info("[%s] %s: %s", p.key, job.name, job.display())
    started = time.perf_counter()
    with open(log_path, "a") as out:
        out.write(f"\n### {time.strftime('%Y-%m-%d %H:%M:%S')} {job.display()}\n")
        out.flush()
        rc = subprocess.run(
            [python, *job.argv], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    seconds = time.perf_counter() - started
    _record_attempt(p.root, job, seconds, rc)
    status = "ran" if rc == 0 else "failed"
    level = logging.INFO if rc == 0 else logging.ERROR
    log.log(level, "[%s] %s %s in %.0f s (log: %s)", p.key, job.name, status, seconds, log_path)
    return JobRecord(p.key, job.name, status, seconds, rc, str(log_path))


def run_pipeline(
    p: Pipeline, *, python: str = sys.executable, dry_run: bool = False
) -> list[JobRecord]:
    """Train (unless finished), then every evaluation of `last.pt` (unless current); never raises."""
    records: list[JobRecord] = []
    ckpt = p.train.run_dir / "last.pt"
    if training_done(p.train.run_dir):
        records.append(JobRecord(p.key, "train", "skipped"))
    elif dry_run:
        records.append(JobRecord(p.key, "train", "planned"))
    else:
        records.append(_run_job(p, p.train, python))
    trained = records[-1].status in ("ran", "skipped")
    for _key, job in p.evals:
        if dry_run and not trained:
            records.append(JobRecord(p.key, job.name, "planned"))
        elif not trained:
            records.append(JobRecord(p.key, job.name, "blocked"))
        elif eval_done(job.run_dir, ckpt):
            records.append(JobRecord(p.key, job.name, "skipped"))
        elif dry_run:
            records.append(JobRecord(p.key, job.name, "planned"))
        else:
            if (job.run_dir / "results.json").is_file():  # stale: computed from another checkpoint
                stale = job.run_dir / "results.json"
                stale.rename(job.run_dir / f"results.stale-{int(time.time())}.json")
                log.warning(
                    "[%s] %s was computed from an older checkpoint; re-evaluating", p.key, job.name
                )
            records.append(_run_job(p, job, python))
    return records


def execute(
    pipelines: Sequence[Pipeline],
    *,
    jobs: int = 1,
    python: str = sys.executable,
    dry_run: bool = False,
) -> list[JobRecord]:
    """Run the pipelines, `jobs` at a time (each pipeline's own jobs stay sequential)."""
    if jobs <= 1 or len(pipelines) <= 1:
        return [r for p in pipelines for r in run_pipeline(p, python=python, dry_run=dry_run)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_pipeline, p, python=python, dry_run=dry_run) for p in pipelines]
        return [r for f in futures for r in f.result()]


# ------------------------------------------------------------------------------------------------
# the command line shared by both drivers
# ------------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    env = os.environ.get("ADVTRAIN_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def parse_args(study: Study, argv: Sequence[str] | None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    ap = argparse.ArgumentParser(
        description=f"{study.title}: train and evaluate through `python -m advtrain`, then report.",
        epilog="A rerun skips finished trainings/evaluations and resumes unfinished ones.",
    )
    ap.add_argument(
        "--runs-dir",
        type=Path,
        default=REPO_ROOT / "runs" / "studies" / study.name,
        help="run directories (checkpoints, logs); default runs/studies/<study>",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "results" / study.name,
        help="report folder (README.md, PNGs, summary.json); default results/<study>",
    )
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="folder with <dataset>_{train,test}.npz; default $ADVTRAIN_DATA_DIR or ../shared/data",
    )
    ap.add_argument(
        "--jobs", type=int, default=min(2, cpus), help="pipelines run at once (default 2)"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per process (default: CPU count // jobs)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=list(study.seeds))
    ap.add_argument(
        "--methods",
        nargs="+",
        default=[m.slug for m in study.methods],
        choices=[m.slug for m in study.methods],
    )
    ap.add_argument(
        "--train-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override for every training (printed in the report)",
    )
    ap.add_argument(
        "--eval",
        action="append",
        default=[],
        metavar="KEY=OVERRIDES",
        help="replace an evaluation's overrides, e.g. 'aa=eval=aa_custom n_examples=8'",
    )
    ap.add_argument(
        "--dry-run", action="store_true", help="print the plan and commands; run nothing"
    )
    ap.add_argument(
        "--report-only", action="store_true", help="only rebuild the report from the runs"
    )
    ap.add_argument("--no-report", action="store_true", help="run, but do not write the report")
    return ap.parse_args(argv)


def customise(study: Study, args: argparse.Namespace) -> Study:
    """Apply --seeds/--methods/--train-override/--eval to the study definition."""
    evals = {e.key: e for e in study.evals}
    for item in args.eval:
        key, sep, rest = item.partition("=")
        if not sep or key not in evals:
            raise SystemExit(
                f"--eval {item!r}: write KEY=OVERRIDES with KEY one of {sorted(evals)}"
            )
        evals[key] = replace(evals[key], overrides=tuple(shlex.split(rest)))
    for o in args.train_override:
        if "=" not in o:
            raise SystemExit(f"--train-override {o!r}: write KEY=VALUE (a Hydra override)")
    return replace(
        study,
        seeds=tuple(args.seeds),
        methods=tuple(m for m in study.methods if m.slug in args.methods),
        evals=tuple(evals[e.key] for e in study.evals),
        train_overrides=study.train_overrides + tuple(args.train_override),
    )


def run_study(
    study: Study,
    argv: Sequence[str] | None = None,
    *,
    write_report: Callable[[Path, Path], Path] | None = None,
) -> int:
    """Entry point of a study driver; returns the process exit code (1 if any job failed).

    `write_report(runs_dir, out)` draws the study's report (report.py's); it is passed in by the driver
    rather than imported here because report.py reads this module's plan and timing helpers.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(study, argv)
    study = customise(study, args)
    jobs = max(1, args.jobs)
    threads = args.threads or max(1, (os.cpu_count() or 1) // jobs)
    runs_dir = args.runs_dir.resolve()
    if not args.report_only:
        for split in ("train", "test"):
            f = args.data_dir / f"{study.dataset}_{split}.npz"
            if not f.is_file():
                raise SystemExit(f"{f} not found: pass --data-dir or set ADVTRAIN_DATA_DIR")
    pipelines = plan(study, runs_dir, args.data_dir, threads=threads)
    failed = False
    if not args.report_only:
        write_plan(study, pipelines, runs_dir, jobs=jobs, threads=threads)
        if args.dry_run:
            for p in pipelines:
                print(p.train.display())
                for _k, j in p.evals:
                    print(j.display())
        records = execute(pipelines, jobs=jobs, dry_run=args.dry_run)
        for r in records:
            print(f"{r.pipeline:<16} {r.job:<14} {r.status:<8} {r.seconds:8.0f} s")
        failed = any(r.status in ("failed", "blocked") for r in records)
    if write_report is not None and not (args.no_report or args.dry_run):
        readme = write_report(runs_dir, args.out)
        print(f"report: {readme}")
    return 1 if failed else 0


__all__ = [
    "EvalSpec",
    "Job",
    "JobRecord",
    "Method",
    "Pipeline",
    "Study",
    "driver_seconds",
    "eval_done",
    "execute",
    "run_study",
    "plan",
    "run_pipeline",
    "training_done",
    "write_plan",
]
