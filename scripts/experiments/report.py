"""Build a study's README.md, summary.json, PNG plots and report.html from its runs directory.

    python scripts/experiments/report.py RUNS_DIR OUT_DIR

Inputs: `RUNS_DIR/plan.json` (written by the driver: the study and every command) and, per run,
`train/metrics.jsonl`, `train/final.json`, `eval_<key>/results.json` and `driver.json` (wall times).
Nothing is rerun. Missing pieces (a run still training, a failed evaluation) show as "—" and the
reading says how much is missing.

This file is the study's layer over `advtrain.report`, the library behind `python -m advtrain
report`: the run directories are read, the plots drawn and the statistics (seed summaries, binomial
error, paired McNemar tests, the generated reading) computed there, so a study and the command never
disagree. What stays here is what only a study knows: its plan (methods, seeds, which evaluation is
"AutoAttack"), the README's layout and the study-specific caveats. Besides README.md, the driver also
writes the command's full report of the same runs into `OUT_DIR/all_runs/` (every training curve with
loss terms, eps and lr, each AutoAttack stage, each evaluation's red flags) and a self-contained
`report.html` of the README.

The "Reading" section is generated from the numbers alone: rankings by mean, whether the seed ranges
overlap, the binomial standard error of an accuracy measured on n images, the largest per-class
differences. It never states more than those numbers show.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from advtrain.report import (
    EvalRun,
    PairedSeed,
    Problem,
    ReportError,
    Scores,
    Summary,
    TrainRun,
    aa_pgd_gap,
    binomial_se,
    mcnemar_p,
    paired_seed,
    paired_verdict,
    plots,
    read_eval_run,
    read_train_run,
    reading,
    scores,
    summarize,
    write_html,
)
from advtrain.report import write_report as write_runs_report
from advtrain.report.markdown import DASH, fmt_seconds, fmt_summary, pct
from advtrain.report.markdown import code as _code

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PLAN_FILE, driver_seconds  # noqa: E402

__all__ = [
    "Run",
    "Summary",
    "binomial_se",
    "collect",
    "mcnemar_p",
    "paired",
    "paired_verdict",
    "reading",
    "summarize",
    "write_report",
]

ALL_RUNS_DIR = "all_runs"  # the `python -m advtrain report` of the same runs, inside OUT_DIR


# ------------------------------------------------------------------------------------------------
# collecting: the plan's runs, read by advtrain.report
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything the report knows about one (method, seed) pipeline."""

    key: str
    method: str
    slug: str
    seed: int
    commands: dict[str, str]  # "train" / eval key -> command
    train: TrainRun | None = None
    evals: dict[str, EvalRun] = field(default_factory=dict)  # eval key -> its evaluation
    train_seconds: float | None = None
    eval_seconds: dict[str, float | None] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.train is not None and self.train.finished

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """Validated epochs (the curves' points), one per epoch, the last record written winning."""
        return [e for e in (self.train.epochs if self.train else []) if "val_pgd_acc" in e]


def collect(runs_dir: Path) -> tuple[dict[str, Any], list[Run], list[Problem]]:
    """Read plan.json and every run directory it names; problems are returned, not raised."""
    try:
        plan = json.loads((runs_dir / PLAN_FILE).read_text())
    except (OSError, ValueError):
        raise SystemExit(f"{runs_dir / PLAN_FILE} not found: run the study driver first") from None
    runs, problems = [], []
    for p in plan["pipelines"]:
        root = Path(p["root"])
        train_dir = Path(p["train"]["dir"])
        run = Run(
            key=p["key"],
            method=p["method"],
            slug=p["slug"],
            seed=int(p["seed"]),
            commands={"train": p["train"]["command"]}
            | {k: v["command"] for k, v in p["evals"].items()},
            train_seconds=driver_seconds(root, "train"),
        )
        if train_dir.is_dir():
            run.train, probs = read_train_run(train_dir)
            problems += probs
        if run.train_seconds is None and run.epochs:  # run without the driver: training time only
            run.train_seconds = sum(float(r.get("train_seconds", 0.0)) for r in run.epochs)
        for key, ev in p["evals"].items():
            if not (Path(ev["dir"]) / "results.json").is_file():
                continue
            res = read_eval_run(Path(ev["dir"]), strict=False)
            if isinstance(res, Problem):
                problems.append(res)
                continue
            run.evals[key] = res
            run.eval_seconds[key] = driver_seconds(root, f"eval_{key}") or res.wall_time_s
        runs.append(run)
    return plan, runs, problems


# ------------------------------------------------------------------------------------------------
# numbers
# ------------------------------------------------------------------------------------------------


def _scores(run: Run, study: dict[str, Any]) -> Scores:
    return scores(run.evals.get(study["robust_key"]), run.evals.get(study["pgd_key"]))


def metric(run: Run, name: str, study: dict[str, Any]) -> float | None:
    """clean | pgd | aa accuracy of a run (fraction), from its results.json files."""
    if name not in ("clean", "pgd", "aa"):
        raise ValueError(name)
    return getattr(_scores(run, study), name)


def metric_n(runs: list[Run], name: str, study: dict[str, Any]) -> int | None:
    """How many test images `metric(run, name)` was measured on, if the same for every run."""
    ns = set()
    for r in runs:
        s = _scores(r, study)
        if getattr(s, name) is not None:
            ns.add(int(getattr(s, f"{name}_n")))
    return ns.pop() if len(ns) == 1 else None


def per_class(run: Run, study: dict[str, Any]) -> tuple[list[str], list[float | None]] | None:
    """Class names and per-class robust accuracy of the robust evaluation (AutoAttack)."""
    ev = run.evals.get(study["robust_key"]) or run.evals.get(study["pgd_key"])
    return None if ev is None else ev.per_class_robust


def class_means(
    runs: list[Run], slug: str, study: dict[str, Any]
) -> tuple[list[str], list[float | None], list[float | None], list[float | None]] | None:
    """Class names and per-class mean / min / max robust accuracy over a method's seeds."""
    rows = [pc for r in runs if r.slug == slug and (pc := per_class(r, study)) is not None]
    if not rows:
        return None
    names = rows[0][0]
    stats = [summarize([v[i] for _, v in rows]) for i in range(len(names))]
    return (
        names,
        [None if s is None else s.mean for s in stats],
        [None if s is None else s.lo for s in stats],
        [None if s is None else s.hi for s in stats],
    )


def paired(runs: list[Run], a: str, b: str, key: str) -> list[PairedSeed]:
    """A minus B per seed where both have evaluation `key` (McNemar from per_example.pt)."""
    out = []
    for ra in runs:
        ev_a = ra.evals.get(key)
        if ra.slug != a or ev_a is None or ev_a.robust_acc is None:
            continue
        rb = next((r for r in runs if r.slug == b and r.seed == ra.seed and key in r.evals), None)
        if rb is None or rb.evals[key].robust_acc is None:
            continue
        ev_b = rb.evals[key]
        out.append(
            paired_seed(
                ra.seed, ev_a.robust_acc, ev_b.robust_acc, ev_a.robust_flags(), ev_b.robust_flags()
            )
        )
    return out


# ------------------------------------------------------------------------------------------------
# plots (drawn by advtrain.report.plots, the command's own code)
# ------------------------------------------------------------------------------------------------

COLORS = {"pgdat": "tab:blue", "trades": "tab:orange", "gkl": "tab:green", "gkl_loss": "tab:red"}


def _seed_index(runs: list[Run], seed: int) -> int:
    return sorted({r.seed for r in runs}).index(seed)


def plot_val_curves(runs: list[Run], path: Path) -> Path:
    """Held-out clean and PGD-10 accuracy per epoch (from metrics.jsonl), one line per run."""
    lines = [
        plots.Line(
            f"{r.method} seed {r.seed}",
            r.epochs,
            COLORS.get(r.slug),
            plots.LINESTYLES[_seed_index(runs, r.seed) % 4],
        )
        for r in runs
        if r.epochs
    ]
    panels = [
        plots.Panel(
            ("val_pgd_acc",),
            "robust validation accuracy (PGD, held-out split)",
            "accuracy (%)",
            percent=True,
        ),
        plots.Panel(
            ("val_clean_acc",),
            "clean validation accuracy (held-out split)",
            "accuracy (%)",
            percent=True,
        ),
    ]
    return plots.plot_curves(
        lines,
        panels,
        path,
        ncols=2,
        legend=1,
        figsize=(10, 4),
        sharex=True,
        drop_empty=False,
        title_fontsize=None,
    )


def plot_clean_vs_aa(runs: list[Run], study: dict[str, Any], path: Path) -> Path:
    """Clean vs AutoAttack accuracy on the test images, one point per run."""
    points = []
    for r in runs:
        c, a = metric(r, "clean", study), metric(r, "aa", study)
        if c is None or a is None:
            continue
        marker = plots.MARKERS[_seed_index(runs, r.seed) % 5]
        points.append(plots.Point(c, a, r.method, COLORS.get(r.slug), marker, f"s{r.seed}"))
    return plots.plot_scatter(
        points,
        path,
        xlabel="clean accuracy (%)",
        ylabel="AutoAttack accuracy (%)",
        title="clean vs AutoAttack (test images)",
    )


def plot_per_class(
    runs: list[Run], study: dict[str, Any], labels: dict[str, str], path: Path
) -> Path:
    """Per-class robust accuracy of the two compared methods (bars: mean over seeds; whiskers: range)."""
    bars = []
    for slug in study["compare"]:
        cm = class_means(runs, slug, study)
        if cm is not None:
            names, means, los, his = cm
            bars.append(
                plots.Bars(labels.get(slug, slug), names, means, los, his, COLORS.get(slug))
            )
    return plots.plot_per_class(
        bars,
        path,
        title="per-class robust accuracy (AutoAttack, test images; whiskers: seed range)",
    )


# ------------------------------------------------------------------------------------------------
# the README
# ------------------------------------------------------------------------------------------------


def _least(ev: EvalRun, test: Any) -> str:
    """ "at least " when a PGD-vs-AutoAttack count was recomputed from two accuracies (the fewest
    images consistent with them; the per-image count may be larger)."""
    return "at least " if ev.masking_recomputed and test.name == "pgd_vs_autoattack" else ""


def _all_runs_report(runs_dir: Path, out: Path, title: str) -> Path | None:
    """The command's report of every run in the study (None if there is no run to show yet)."""
    try:
        return write_runs_report([runs_dir], out, title=f"{title}: every run").markdown
    except ReportError as e:
        print(f"warning: no all-runs report: {e}", file=sys.stderr)
        return None


def write_report(runs_dir: Path, out_dir: Path) -> Path:
    """Write README.md, report.html, summary.json, the PNG plots and all_runs/ into out_dir.

    Returns the README path.
    """
    runs_dir, out_dir = Path(runs_dir).resolve(), Path(out_dir)
    plan, runs, problems = collect(runs_dir)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    study = plan["study"]
    out_dir.mkdir(parents=True, exist_ok=True)
    methods: list[tuple[str, str]] = []  # (slug, label) in the study's order, present in the plan
    for m in study["methods"]:
        if any(r.slug == m["slug"] for r in runs):
            methods.append((m["slug"], m["label"]))
    method_label = dict(methods)
    runs.sort(key=lambda r: ([s for s, _ in methods].index(r.slug), r.seed))
    eval_label = {e["key"]: e["label"] for e in study["evals"]}
    pgd_label = eval_label.get(study["pgd_key"], "PGD-20")
    aa_label = eval_label.get(study["robust_key"], "AutoAttack")
    labels = {"clean": "Clean", "pgd": pgd_label, "aa": aa_label}

    summaries: dict[str, dict[str, Summary | None]] = {
        m: {
            lab: summarize([metric(r, m, study) for r in runs if r.slug == slug])
            for slug, lab in methods
        }
        for m in labels
    }
    n_test = {m: metric_n(runs, m, study) for m in labels}
    # PGD minus AutoAttack on the same images: each AutoAttack evaluation's own PGD run, never the
    # separate PGD evaluation (study B ran PGD-20 on 1,000 images and AutoAttack on 300).
    gaps = {r.key: aa_pgd_gap(r.evals.get(study["robust_key"])) for r in runs}
    gap_summaries = {
        lab: summarize([g[1] for r in runs if r.slug == slug and (g := gaps[r.key]) is not None])
        for slug, lab in methods
    }
    gap_items = [g for g in gaps.values() if g is not None]
    gap_names = {g[0] for g in gap_items}
    gap_ns = {g[2] for g in gap_items}

    figures = {
        "val_curves": plot_val_curves(runs, out_dir / "val_curves.png"),
        "clean_vs_aa": plot_clean_vs_aa(runs, study, out_dir / "clean_vs_aa.png"),
        "per_class": plot_per_class(runs, study, method_label, out_dir / "per_class_robust.png"),
    }

    a, b = study["compare"]
    ca, cb = class_means(runs, a, study), class_means(runs, b, study)
    class_diff = None
    if ca is not None and cb is not None:
        class_diff = (method_label.get(a, a), method_label.get(b, b), ca[0], ca[1], cb[1])

    L: list[str] = [f"# {study['title']}", ""]
    L.append(
        f"Generated by `scripts/experiments/report.py` from `{runs_dir}` on "
        f"{time.strftime('%Y-%m-%d %H:%M')}; do not edit by hand (rerun the driver or the report)."
    )
    L.append("")
    L += ["## Setup", "", study.get("scaling", "").strip(), ""]
    extra = study.get("train_overrides") or []
    if extra:
        L.append(
            "**This run adds overrides to every training that the table above does not describe:** "
            + " ".join(f"`{o}`" for o in extra)
            + ". The commands below are what ran."
        )
        L.append("")
    L.append(
        f"Commands ran as subprocesses of the driver with `python` = `{plan['python']}`, "
        f"{plan['jobs']} pipeline(s) at once and {plan['threads_per_job']} torch thread(s) each "
        f"on a {plan['cpu_count']}-CPU machine. Each evaluation uses the training's `last.pt` "
        "(with its weight average when the checkpoint has one)."
    )
    L.append("")

    L += ["## Results per run", ""]
    L.append(
        "Accuracies in % on the first "
        + ", ".join(f"{n if n else 'N'} ({labels[m]})" for m, n in n_test.items())
        + " test images. "
        "Wall times are the driver's, summed over attempts (a resumed run adds up). Evaluations: "
        + "; ".join(
            f"{e['label']} = " + " ".join(f"`{o}`" for o in e["overrides"]) for e in study["evals"]
        )
        + "."
    )
    L.append("")
    L.append(
        f"| method | seed | clean | {pgd_label} | {aa_label} | train wall | eval wall | commands |"
    )
    L.append("|---|---|---|---|---|---|---|---|")
    for r in runs:
        ev_secs = [s for s in r.eval_seconds.values() if s is not None]
        cmds = "<br>".join(f"{k}: {_code(c)}" for k, c in r.commands.items())
        status = "" if r.finished else " (unfinished)"
        L.append(
            f"| {r.method}{status} | {r.seed} | {pct(metric(r, 'clean', study))} | "
            f"{pct(metric(r, 'pgd', study))} | {pct(metric(r, 'aa', study))} | "
            f"{fmt_seconds(r.train_seconds)} | {fmt_seconds(sum(ev_secs) if ev_secs else None)} | "
            f"{cmds} |"
        )
    L.append("")
    L += ["## Mean over seeds", ""]
    L.append("Mean (min–max over seeds), accuracies in %.")
    L.append("")
    L.append(f"| method | seeds | clean | {pgd_label} | {aa_label} | mean train wall |")
    L.append("|---|---|---|---|---|---|")
    for slug, lab in methods:
        mine = [r for r in runs if r.slug == slug]
        tw = summarize([r.train_seconds for r in mine])
        L.append(
            f"| {lab} | {len(mine)} | {fmt_summary(summaries['clean'][lab])} | "
            f"{fmt_summary(summaries['pgd'][lab])} | {fmt_summary(summaries['aa'][lab])} | "
            f"{fmt_seconds(tw.mean if tw else None)} |"
        )
    L.append("")

    cms = {slug: class_means(runs, slug, study) for slug, _ in methods}
    names = next((cm[0] for cm in cms.values() if cm is not None), None)
    if names:
        L += ["## Per-class robust accuracy", ""]
        L.append(f"{aa_label} accuracy per class in %, mean over seeds.")
        L.append("")
        L.append("| class | " + " | ".join(lab for _, lab in methods) + " |")
        L.append("|---|" + "---|" * len(methods))
        for i, name in enumerate(names):
            cells = [pct(cms[s][1][i]) if cms[s] is not None else DASH for s, _ in methods]
            L.append(f"| {name} | " + " | ".join(cells) + " |")
        L.append("")

    pair_rows = []
    for pa, pb in study.get("pairs") or []:
        if pa not in method_label or pb not in method_label:
            continue
        ps = paired(runs, pa, pb, study["robust_key"])
        pair_rows.append((method_label[pa], method_label[pb], ps))
    if pair_rows:
        L += ["## Paired comparison", ""]
        L.append(
            f"{aa_label} accuracy of A minus B in points, seed by seed on the same test images. "
            "Spread: the range of the difference over seeds. McNemar: exact two-sided test on the "
            "images that one model keeps and the other loses (a/b = robust only under A / only "
            "under B); p < 0.05 says the two models of that seed differ beyond test-image sampling."
        )
        L.append("")
        L.append(
            "| A minus B | per seed | mean | spread | McNemar per seed | mean exceeds the spread? |"
        )
        L.append("|---|---|---|---|---|---|")
        for la, lb, ps in pair_rows:
            per_seed = ", ".join(f"s{x.seed} {100 * x.diff:+.1f}" for x in ps) or DASH
            mean = f"{100 * statistics.fmean(x.diff for x in ps):+.1f}" if ps else DASH
            spread = (
                f"{100 * (max(x.diff for x in ps) - min(x.diff for x in ps)):.1f}"
                if len(ps) > 1
                else DASH
            )
            mc = (
                ", ".join(
                    f"s{x.seed} {x.a_only}/{x.b_only} p={x.p:.2g}"
                    if x.p is not None
                    else f"s{x.seed} {DASH}"
                    for x in ps
                )
                or DASH
            )
            L.append(
                f"| {la} − {lb} | {per_seed} | {mean} | {spread} | {mc} | {paired_verdict(ps)} |"
            )
        L.append("")

    L += ["## Plots", ""]
    L.append("Robust (PGD, held-out training images) and clean validation accuracy per epoch:")
    L.append("")
    L.append("![validation curves](val_curves.png)")
    L.append("")
    L.append("![clean vs AutoAttack](clean_vs_aa.png)")
    L.append("")
    L.append(
        f"![per-class robust accuracy, {method_label.get(a, a)} vs {method_label.get(b, b)}]"
        "(per_class_robust.png)"
    )
    L.append("")
    all_runs = _all_runs_report(runs_dir, out_dir / ALL_RUNS_DIR, study["title"])
    if all_runs is not None:
        L.append(
            "Every run's training curves (loss terms, eps, lr), each AutoAttack stage and each "
            "evaluation's red flags, as `python -m advtrain report` draws them: "
            f"[{ALL_RUNS_DIR}/report.md]({ALL_RUNS_DIR}/report.md) (as one file: "
            f"`{ALL_RUNS_DIR}/report.html`)."
        )
        L.append("")

    L += ["## Reading", ""]
    L.append("Generated from the numbers above; it states nothing they do not show.")
    L.append("")
    expected = len(runs) * (1 + len(study["evals"]))
    done = sum(r.finished for r in runs) + sum(len(r.evals) for r in runs)
    if done < expected:
        L.append(f"- Incomplete: {done} of {expected} trainings and evaluations have finished.")
    for line in reading(
        summaries,
        labels,
        n_test=n_test,
        class_diff=class_diff,
        pgd_aa_gap=gap_summaries,
        gap_pgd=gap_names.pop() if len(gap_names) == 1 else "PGD",
        gap_n=gap_ns.pop() if len(gap_ns) == 1 else None,
    ):
        L.append(f"- {line}")
    for la, lb, ps in pair_rows:
        if ps:
            mean = 100 * statistics.fmean(x.diff for x in ps)
            sig = [x for x in ps if x.p is not None and x.p < 0.05]
            L.append(
                f"- {la} minus {lb} ({aa_label}, paired): {mean:+.1f} points on average over "
                f"{len(ps)} seed(s); mean exceeds the seed spread: {paired_verdict(ps)}; "
                f"McNemar p < 0.05 on {len(sig)} of {len(ps)} seed(s)."
            )
    tested = [res for r in runs for res in r.evals.values() if res.masking_tests]
    if tested:
        n_flag = sum(bool(res.masking_flags) for res in tested)
        recomputed = sum(res.masking_recomputed for res in tested)
        L.append(
            f"- Gradient-masking tests (images broken only by AutoAttack after its PGD run, or only "
            f"by Square; one-sided exact binomial test against a 10% / 0.2% tolerated share, p < "
            f"0.01): {n_flag} of {len(tested)} evaluation(s) flagged"
            + (f" ({recomputed} recomputed from results.json's accuracies)" if recomputed else "")
            + "; the command's report (all_runs) lists each test with its image counts."
        )
    for r in runs:
        for k, res in r.evals.items():
            what = [
                f"gradient masking flag: {t.name}, {_least(res, t)}{t.describe()} < {t.alpha:g}"
                for t in res.masking_flags
            ] + res.other_warnings
            if what or res.unreliable:
                L.append(
                    f"- Evaluation warning ({r.method} seed {r.seed}, {eval_label.get(k, k)}): "
                    + "; ".join(what or ["marked unreliable"])
                )
    if "gkl" in method_label:
        L.append(
            "- Caveat on the GKL recipe: its eps ramp eps_t = eps · t/E reaches the full eps only at "
            "the last epoch, so the GKL arm trains at half the final eps on average and at the full "
            "eps for one epoch. At the paper's 200 epochs the same ramp gives many epochs close to the "
            "full eps (the last 20 are above 90% of it); at 10 epochs only the last one is, so the "
            "ramp costs GKL more here than it would at full length."
            + (
                " The GKL-loss-only arm, trained at the full eps from epoch 1, separates the loss "
                "from the ramp."
                if "gkl_loss" in method_label
                else ""
            )
        )
    L.append(
        "- Caveat: small models, a training subset and short schedules are not the papers' setting "
        "(WRN-34-10 on all 50,000 CIFAR-10 images for 100-200 epochs); these numbers compare the methods at "
        "this scale only and say nothing about how they rank at full scale."
    )
    L.append("")
    readme = out_dir / "README.md"
    readme.write_text("\n".join(L))
    write_html(readme, out_dir / "report.html", title=study["title"])

    summary = {
        "study": study["name"],
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "n_test": n_test,
        "runs": [
            {
                "method": r.method,
                "slug": r.slug,
                "seed": r.seed,
                "finished": r.finished,
                "clean": metric(r, "clean", study),
                "pgd": metric(r, "pgd", study),
                "aa": metric(r, "aa", study),
                "pgd_minus_aa_same_images": None
                if gaps[r.key] is None
                else {"pgd": gaps[r.key][0], "gap": gaps[r.key][1], "n": gaps[r.key][2]},
                "train_seconds": r.train_seconds,
                "eval_seconds": r.eval_seconds,
                "commands": r.commands,
                "per_class": per_class(r, study),
                "eval_flags": {
                    k: {
                        "unreliable": res.unreliable,
                        "warnings": res.other_warnings,
                        "masking_tests": [t.to_dict() for t in res.masking_tests],
                        "masking_tests_recomputed": res.masking_recomputed
                        and bool(res.masking_tests),
                    }
                    for k, res in r.evals.items()
                },
                "val_curve": [
                    {
                        "epoch": e["epoch"],
                        "val_clean_acc": e["val_clean_acc"],
                        "val_pgd_acc": e["val_pgd_acc"],
                    }
                    for e in r.epochs
                ],
            }
            for r in runs
        ],
        "means": {
            m: {lab: (None if s is None else asdict(s)) for lab, s in d.items()}
            for m, d in summaries.items()
        },
        "plots": {k: p.name for k, p in figures.items()},
        "paired": [
            {
                "a": la,
                "b": lb,
                "seeds": [asdict(x) | {"p": x.p} for x in ps],
                "verdict": paired_verdict(ps),
            }
            for la, lb, ps in pair_rows
        ],
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return readme


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Rebuild a study report from its runs directory.")
    ap.add_argument("runs_dir", type=Path, help="the driver's --runs-dir (holds plan.json)")
    ap.add_argument("out_dir", type=Path, help="where README.md, summary.json and the PNGs go")
    args = ap.parse_args(argv)
    print(write_report(args.runs_dir, args.out_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
