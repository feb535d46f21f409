"""`write_report`: runs on disk -> report.md, PNGs and one self-contained report.html.

How the report is organised, and why:

* **One section per data set and threat model** (norm, eps). Accuracies under different threat models
  or on different data are not comparable, so they never share a table, a plot or a mean.
* **Rows** are (training run, evaluated checkpoint): `last.pt` and `best.pt` are different models. A
  training run nobody evaluated still gets a row (its curves and train-end test numbers are real);
  an evaluation of a checkpoint outside the given runs gets a row of its own.
* **Groups** are the runs whose configs agree on everything except the seed (and paths, devices and
  other settings that do not change the result): their mean and spread over seeds is what a
  comparison between settings should look at, and the reading says when seeds overlap.
* Every input problem (unreadable file, unfinished run, stale evaluation) is listed at the top and
  returned, and the rest of the report is written anyway.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from advtrain.errors import AdvtrainError
from advtrain.report import plots
from advtrain.report.html import write_html
from advtrain.report.markdown import DASH, cell, fmt_seconds, fmt_summary, md_table, pct
from advtrain.report.runs import (
    EvalRun,
    Problem,
    RunSet,
    ThreatModel,
    TrainRun,
    load_runs,
    num,
    short_names,
)
from advtrain.report.stats import Summary, reading, summarize

__all__ = [
    "ReportError",
    "ReportResult",
    "Row",
    "Scores",
    "Section",
    "aa_pgd_gap",
    "build_sections",
    "differing_keys",
    "flatten",
    "masking_lines",
    "pick_evals",
    "scores",
    "write_report",
]

DIGITS = 2  # the eval command prints accuracies with two decimals; the report shows the same
MAX_DIFF_CELL = 4  # differing config values shown in a table cell (all of them are listed below it)

# Config keys that never make two runs different experiments: where they ran, what they printed.
IGNORED_KEYS = (
    "run_dir",
    "resume",
    "device",
    "data.root",
    "data.download",
    "data.eval_batch_size",
    "trainer.progress",
    "trainer.log_every_steps",
    "trainer.checkpoint_every_steps",
    "trainer.keep_last",
    "trainer.channels_last",
    "trainer.compile",
    "logger",
    "distributed",
)
# Shown in their own columns, so left out of the "differing config" cell.
COLUMN_KEYS = ("name", "seed", "loss.name", "model.name", "data.name", "trainer.epochs")


_OUR_FIGURE = re.compile(r"(s\d+_)?(curves|clean_vs_aa|per_class|attack_stages)\.png")


class ReportError(AdvtrainError):
    """Nothing to report: none of the given paths holds a readable run."""


@dataclass(frozen=True)
class Scores:
    """Clean, PGD and AutoAttack accuracy of one model and the number of test images of each."""

    clean: float | None = None
    clean_n: int | None = None
    pgd: float | None = None
    pgd_n: int | None = None
    pgd_name: str | None = None
    aa: float | None = None
    aa_n: int | None = None
    aa_version: str | None = None


def scores(aa: EvalRun | None, pgd: EvalRun | None) -> Scores:
    """The three accuracies from an AutoAttack evaluation and a PGD evaluation of one checkpoint.

    Clean comes from the AutoAttack run when it has it (usually the larger, final evaluation), else
    from the PGD run; PGD is the PGD run's robust accuracy, else the PGD block an AutoAttack run
    computes on its own images.
    """
    clean = clean_n = p = p_n = p_name = a = a_n = version = None
    for ev in (aa, pgd):
        if ev is not None and ev.clean_acc is not None:
            clean, clean_n = ev.clean_acc, ev.n_examples
            break
    if pgd is not None and pgd.robust_acc is not None:
        p, p_n, p_name = pgd.robust_acc, pgd.n_examples, pgd.robust_name
    elif aa is not None and aa.pgd is not None:
        p, p_n, p_name = float(aa.pgd["acc"]), aa.n_examples, str(aa.pgd.get("name") or "PGD")
    if aa is not None and aa.robust_acc is not None:
        a, a_n = aa.robust_acc, aa.n_examples
        version = str(aa.results.get("version") or "") or None
    return Scores(clean, clean_n, p, p_n, p_name, a, a_n, version)


def aa_pgd_gap(aa: EvalRun | None) -> tuple[str, float, int] | None:
    """(PGD name, PGD minus AutoAttack accuracy, images) of one AutoAttack evaluation, measured on
    the same images (its own PGD run), or None when it ran no PGD."""
    if aa is None or not aa.is_autoattack or aa.pgd is None or aa.robust_acc is None:
        return None
    return str(aa.pgd.get("name") or "PGD"), float(aa.pgd["acc"]) - aa.robust_acc, aa.n_examples


def pick_evals(evals: Sequence[EvalRun]) -> tuple[EvalRun | None, EvalRun | None]:
    """The AutoAttack and the PGD evaluation a table row shows, out of all of one checkpoint's.

    AutoAttack: the standard version on the most images wins (the leaderboard number). PGD: PGD-20
    (the column's name) on the most images, else any PGD evaluation on the most images.
    """
    aas = [e for e in evals if e.is_autoattack and e.robust_acc is not None]
    aa = max(
        aas,
        key=lambda e: (e.results.get("version") == "standard", e.n_examples, str(e.path)),
        default=None,
    )
    pgds = [e for e in evals if e.kind == "pgd" and e.robust_acc is not None]
    pgd = max(
        pgds, key=lambda e: (e.robust_name == "PGD-20", e.n_examples, str(e.path)), default=None
    )
    return aa, pgd


# ------------------------------------------------------------------------------------------------
# rows, sections, groups
# ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One model in a section's table: a training run's checkpoint, or a lone evaluated model."""

    name: str
    threat: ThreatModel | None
    run: TrainRun | None
    checkpoint: str | None
    evals: list[EvalRun]
    group: str = ""
    aa: EvalRun | None = None
    pgd: EvalRun | None = None

    @property
    def scores(self) -> Scores:
        return scores(self.aa, self.pgd)

    @property
    def seed(self) -> int | None:
        """The training seed (an evaluation's own seed only drives its attacks' random starts)."""
        return self.run.seed if self.run is not None else None

    @property
    def same_image_gap(self) -> tuple[str, float, int] | None:
        """(PGD name, PGD minus AutoAttack accuracy, images) inside this row's AutoAttack evaluation.

        Both accuracies come from one evaluation on its own images; the PGD column may show a PGD
        evaluation on other (more) images, whose difference to AutoAttack is not a gap.
        """
        return aa_pgd_gap(self.aa)

    @property
    def role(self) -> str:
        """ "last" / "best" / a step file: rows of different roles are different models."""
        c = self.checkpoint or ""
        return "last" if "last.pt" in c else "best" if "best.pt" in c else c


@dataclass
class Section:
    threat: ThreatModel | None
    rows: list[Row] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.threat.title if self.threat else "unknown data set and threat model"

    @property
    def runs(self) -> list[TrainRun]:
        seen: dict[int, TrainRun] = {}
        for r in self.rows:
            if r.run is not None:
                seen.setdefault(id(r.run), r.run)
        return list(seen.values())

    @property
    def evals(self) -> list[EvalRun]:
        return [e for r in self.rows for e in r.evals]


def _threat_key(t: ThreatModel | None) -> tuple:
    return ("~",) if t is None else t.key


def build_sections(runs: RunSet) -> list[Section]:
    """Rows grouped by threat model; one training run may appear in several sections."""
    names = short_names(
        [r.path for r in runs.train] + [e.path for e in runs.unpaired],
    )
    sections: dict[tuple, Section] = {}

    def add(row: Row) -> None:
        sections.setdefault(_threat_key(row.threat), Section(row.threat)).rows.append(row)

    for run in runs.train:
        if not run.evaluated:
            add(Row(names[run.path], run.threat, run, None, []))
            continue
        by_key: dict[tuple, list[tuple[str, EvalRun]]] = {}
        for label, ev in run.evaluated:
            by_key.setdefault((label, ev.threat.key), []).append((label, ev))
        for (label, _), items in by_key.items():
            evs = [ev for _, ev in items]
            add(Row(names[run.path], evs[0].threat, run, label, evs))
    lone: dict[tuple, list[EvalRun]] = {}
    for ev in runs.unpaired:
        ident = ev.checkpoint_sha256 or str(ev.path)
        lone.setdefault((ident, ev.threat.key), []).append(ev)
    for evs in lone.values():
        first = min(evs, key=lambda e: str(e.path))
        ck = first.checkpoint_path
        add(
            Row(
                names[first.path],
                first.threat,
                None,
                Path(ck).name if ck else first.model_name,
                evs,
            )
        )
    for sec in sections.values():
        for row in sec.rows:
            row.aa, row.pgd = pick_evals(row.evals)
    return [sections[k] for k in sorted(sections)]


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"loss": {"beta": 6}} -> {"loss.beta": 6}; lists stay values (milestones [0.75, 0.9])."""
    if not isinstance(cfg, dict):
        return {prefix: cfg} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if any(key == i or key.startswith(i + ".") for i in IGNORED_KEYS):
            continue
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


_MISSING = "(unset)"


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in every run ("name" first, then alphabetical)."""
    flats = [flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    diff = [
        k for k in keys if len({json.dumps(f.get(k, _MISSING), sort_keys=True) for f in flats}) > 1
    ]
    return sorted(diff, key=lambda k: (k != "name", k))


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


_LABEL_PRIORITY = ("name", "loss.name", "model.name", "data.name")


def _label_keys(idents: Sequence[dict[str, str]], keys: Sequence[str]) -> list[str]:
    """The fewest keys (experiment name, loss, model first) whose values tell the groups apart.

    A label listing 30 config values helps nobody; "study_cifar10_gkl" or "loss.beta=6" does. Every
    value is still listed in the group table, so shortening the label hides nothing.
    """
    ordered = sorted(
        keys, key=lambda k: (_LABEL_PRIORITY.index(k) if k in _LABEL_PRIORITY else 99, k)
    )
    want = len({tuple(sorted(i.items())) for i in idents})
    chosen: list[str] = []
    distinct = 1
    for k in ordered:
        n = len({tuple(i[c] for c in [*chosen, k]) for i in idents})
        if n > distinct:
            chosen.append(k)
            distinct = n
        if distinct == want:
            break
    return chosen


def assign_groups(section: Section) -> list[str]:
    """Give each row its group label; returns the differing config keys of the section's runs."""
    runs = section.runs
    flats = {id(r): flatten(r.config or {}) for r in runs}
    keys = differing_keys([r.config or {} for r in runs])
    gkeys = [k for k in keys if k != "seed"]

    def ident(run: TrainRun) -> dict[str, str]:
        return {k: json.dumps(flats[id(run)].get(k, _MISSING), sort_keys=True) for k in gkeys}

    label_keys = _label_keys([ident(r) for r in runs], gkeys)
    label_of: dict[tuple, str] = {}
    for run in runs:
        key = tuple(ident(run).values())
        if key in label_of:
            continue
        f = flats[id(run)]
        parts = [
            _value(f.get(k, _MISSING)) if k == "name" else f"{k}={_value(f.get(k, _MISSING))}"
            for k in label_keys
        ]
        label_of[key] = "; ".join(parts) or run.name
    roles = {r.role for r in section.rows if r.run is not None and r.checkpoint}
    for row in section.rows:
        if row.run is None:
            row.group = f"{row.name} ({row.evals[0].model_name})"
            continue
        row.group = label_of[tuple(ident(row.run).values())]
        if len(roles) > 1 and row.role:
            row.group += f" [{row.role}]"
    return keys


# ------------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------------


def _acc(v: float | None, n: int | None, extra: str = "") -> str:
    if v is None:
        return DASH
    inside = ", ".join(x for x in (str(n) if n else "", extra) if x)
    return f"{pct(v, DIGITS)} ({inside})" if inside else pct(v, DIGITS)


def _train_end(run: TrainRun | None) -> str:
    """final.json's test numbers (the training command's own quick test on its first test images)."""
    if run is None or run.final is None:
        return DASH
    f = run.final
    parts = []
    if num(f.get("test_clean_acc")) is not None:
        parts.append(f"clean {pct(num(f['test_clean_acc']), DIGITS)}")
    for k, v in f.items():
        m = re.fullmatch(r"test_pgd(\d+)_acc", k)
        if m and num(v) is not None:
            parts.append(f"PGD-{m.group(1)} {pct(num(v), DIGITS)}")
    if not parts:
        return DASH
    n = f.get("test_examples")
    return " / ".join(parts) + (f" ({n})" if n else "")


def _epochs(run: TrainRun | None) -> str:
    if run is None:
        return DASH
    done = len(run.epochs)
    if run.finished:
        return str(run.planned_epochs or done)
    return f"{done}/{run.planned_epochs or '?'} (unfinished)"


def _diff_cell(run: TrainRun | None, keys: Sequence[str]) -> str:
    if run is None:
        return DASH
    f = flatten(run.config or {})
    shown = [k for k in keys if k not in COLUMN_KEYS]
    parts = [f"{k}={_value(f.get(k, _MISSING))}" for k in shown]
    if len(parts) > MAX_DIFF_CELL:
        parts = parts[:MAX_DIFF_CELL] + [f"+{len(parts) - MAX_DIFF_CELL} more (groups below)"]
    return cell(", ".join(parts)) if parts else DASH


def _uniform(values: Sequence[Any]) -> Any:
    vals = {v for v in values if v is not None}
    return vals.pop() if len(vals) == 1 else None


# ------------------------------------------------------------------------------------------------
# one section
# ------------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    out: Path
    prefix: str
    images: list[Path]


def _runs_table(sec: Section, keys: list[str]) -> list[str]:
    pgd_names = [r.scores.pgd_name for r in sec.rows if r.scores.pgd is not None]
    pgd_head = _uniform(pgd_names) or "PGD"
    header = [
        "run",
        "method",
        "model",
        "data",
        "seed",
        "epochs",
        "differing config",
        "checkpoint",
        "clean % (images)",
        f"{pgd_head} % (images)",
        "AutoAttack % (images)",
        "train-end test % (images)",
        "train time",
        "eval time",
        "train images/s",
    ]
    rows = []
    for r in sec.rows:
        s = r.scores
        run = r.run
        evs = [e.wall_time_s for e in r.evals if e.wall_time_s is not None]
        ips = run.images_per_s if run else None
        pgd_extra = s.pgd_name if s.pgd_name and s.pgd_name != pgd_head else ""
        aa_extra = s.aa_version if s.aa_version and s.aa_version != "standard" else ""
        rows.append(
            [
                cell(r.name),
                run.method if run else DASH,
                run.model if run else cell(r.evals[0].model_name),
                (run.dataset if run else r.evals[0].dataset) or DASH,
                DASH if r.seed is None else str(r.seed),
                _epochs(run),
                _diff_cell(run, keys),
                cell(r.checkpoint) if r.checkpoint else DASH,
                _acc(s.clean, s.clean_n),
                _acc(s.pgd, s.pgd_n, pgd_extra),
                _acc(s.aa, s.aa_n, aa_extra),
                _train_end(run),
                fmt_seconds(run.train_seconds if run else None),
                fmt_seconds(sum(evs) if evs else None),
                DASH if ips is None else f"{ips:.0f}",
            ]
        )
    return md_table(header, rows)


def _group_summaries(sec: Section) -> dict[str, dict[str, Summary | None]]:
    groups: dict[str, list[Row]] = {}
    for r in sec.rows:
        groups.setdefault(r.group, []).append(r)
    out: dict[str, dict[str, Summary | None]] = {"clean": {}, "pgd": {}, "aa": {}, "gap": {}}
    for g, rows in groups.items():
        sc = [r.scores for r in rows]
        out["clean"][g] = summarize([s.clean for s in sc])
        out["pgd"][g] = summarize([s.pgd for s in sc])
        out["aa"][g] = summarize([s.aa for s in sc])
        gaps = [r.same_image_gap for r in rows]
        out["gap"][g] = summarize([None if x is None else x[1] for x in gaps])
    return out


def _groups_table(sec: Section, keys: list[str], summaries: dict) -> list[str]:
    groups: dict[str, list[Row]] = {}
    for r in sec.rows:
        groups.setdefault(r.group, []).append(r)
    pgd_head = _uniform([r.scores.pgd_name for r in sec.rows if r.scores.pgd is not None]) or "PGD"
    rows = []
    for g, members in groups.items():
        seeds = sorted({r.seed for r in members if r.seed is not None})
        tw = summarize([r.run.train_seconds for r in members if r.run is not None])
        rows.append(
            [
                cell(g),
                str(len(members)),
                ", ".join(map(str, seeds)) or DASH,
                fmt_summary(summaries["clean"][g], DIGITS),
                fmt_summary(summaries["pgd"][g], DIGITS),
                fmt_summary(summaries["aa"][g], DIGITS),
                fmt_seconds(tw.mean if tw else None),
            ]
        )
    lines = md_table(
        ["group", "rows", "seeds", "clean %", f"{pgd_head} %", "AutoAttack %", "mean train time"],
        rows,
    )
    gkeys = [k for k in keys if k != "seed"]
    if gkeys:
        lines += [
            "",
            "What each group is (every config value that differs between the runs shown):",
            "",
        ]
        defs = []
        seen: set[str] = set()
        for r in sec.rows:
            if r.run is None or r.group in seen:
                continue
            seen.add(r.group)
            f = flatten(r.run.config or {})
            defs.append(
                [cell(r.group), cell(", ".join(f"{k}={_value(f.get(k, _MISSING))}" for k in gkeys))]
            )
        lines += md_table(["group", "config values"], defs)
    return lines


CURVE_PANELS = (
    plots.Panel(("train_adv_acc",), "train adversarial accuracy", "accuracy (%)", percent=True),
    plots.Panel(("train_nat_acc",), "train clean accuracy", "accuracy (%)", percent=True),
    plots.Panel(("val_clean_acc",), "validation clean accuracy", "accuracy (%)", percent=True),
    plots.Panel(("val_pgd_acc",), "validation PGD accuracy", "accuracy (%)", percent=True),
    plots.Panel(("train_loss",), "training loss", "loss"),
)


def _colors(sec: Section) -> tuple[dict[str, str], dict[int | None, int]]:
    groups = list(dict.fromkeys(r.group for r in sec.rows))
    seeds = sorted({r.seed for r in sec.rows if r.seed is not None})
    return (
        {g: plots.palette(i) for i, g in enumerate(groups)},
        {s: i for i, s in enumerate(seeds)},
    )


def _curves(sec: Section, ctx: _Ctx) -> list[str]:
    runs = [r for r in sec.runs if r.epochs]
    if not runs:
        return []
    color, seed_ix = _colors(sec)
    group_of = {id(r.run): r.group for r in sec.rows if r.run is not None}
    names = {id(r.run): r.name for r in sec.rows if r.run is not None}
    several = len(set(group_of.values())) > 1  # then the legend says which group a line is
    lines = [
        plots.Line(
            f"{names[id(run)]} ({group_of[id(run)]})" if several else names[id(run)],
            run.epochs,
            color[group_of[id(run)]],
            plots.LINESTYLES[seed_ix.get(run.seed, 0) % len(plots.LINESTYLES)],
        )
        for run in runs
    ]
    terms = list(dict.fromkeys(t for run in runs for t in run.loss_terms if t != "train_loss"))
    steps = _uniform([(r.config or {}).get("trainer", {}).get("val_pgd_steps") for r in runs])
    panels = list(CURVE_PANELS)
    if steps:
        panels[3] = plots.Panel(
            ("val_pgd_acc",), f"validation PGD-{steps} accuracy", "accuracy (%)", percent=True
        )
    if terms:
        panels.append(plots.Panel(tuple(terms), "loss terms (style: term)", "value", log=True))
    panels += [
        plots.Panel(("eps",), "training attack eps", "eps"),
        plots.Panel(("lr",), "learning rate (epoch start)", "lr"),
    ]
    path = plots.plot_curves(lines, panels, ctx.out / f"{ctx.prefix}curves.png")
    ctx.images.append(path)
    return [
        "### Training curves",
        "",
        "Per epoch, from each run's metrics.jsonl (colour: group, line style: seed). Training "
        "accuracies are on the training batches under the training attack; validation on the held-out "
        "split. A validation PGD curve that falls while the training one rises is robust overfitting.",
        "",
        f"![training curves]({path.name})",
        "",
    ]


def _scatter(sec: Section, ctx: _Ctx) -> list[str]:
    color, seed_ix = _colors(sec)
    pts = []
    for r in sec.rows:
        s = r.scores
        if s.clean is None or s.aa is None:
            continue
        pts.append(
            plots.Point(
                s.clean,
                s.aa,
                r.group,
                color[r.group],
                plots.MARKERS[seed_ix.get(r.seed, 0) % len(plots.MARKERS)],
                "" if r.seed is None else f"s{r.seed}",
            )
        )
    if not pts:
        return []
    path = plots.plot_scatter(
        pts,
        ctx.out / f"{ctx.prefix}clean_vs_aa.png",
        xlabel="clean accuracy (%)",
        ylabel="AutoAttack accuracy (%)",
        title="clean vs AutoAttack (test images)",
    )
    ctx.images.append(path)
    return ["### Clean vs AutoAttack", "", f"![clean vs AutoAttack]({path.name})", ""]


def _per_class(sec: Section, ctx: _Ctx) -> list[str]:
    use_aa = any(r.aa is not None and r.aa.per_class_robust for r in sec.rows)
    metric = "AutoAttack" if use_aa else "PGD"
    by_group: dict[str, list[tuple[list[str], list[float | None]]]] = {}
    for r in sec.rows:
        ev = r.aa if use_aa else r.pgd
        pc = ev.per_class_robust if ev is not None else None
        if pc is not None:
            by_group.setdefault(r.group, []).append(pc)
    if not by_group:
        return []
    color, _ = _colors(sec)
    bars = []
    for g, items in by_group.items():
        names = items[0][0]
        stats = [summarize([v[i] for _, v in items]) for i in range(len(names))]
        bars.append(
            plots.Bars(
                g,
                names,
                [None if s is None else s.mean for s in stats],
                [None if s is None else s.lo for s in stats],
                [None if s is None else s.hi for s in stats],
                color[g],
            )
        )
    path = plots.plot_per_class(
        bars,
        ctx.out / f"{ctx.prefix}per_class.png",
        title=f"per-class robust accuracy ({metric}; bars: mean over seeds, whiskers: range)",
    )
    ctx.images.append(path)
    names = bars[0].names
    rows = [
        [cell(n)] + [pct(b.means[i], DIGITS) if i < len(b.means) else DASH for b in bars]
        for i, n in enumerate(names)
    ]
    return [
        "### Per-class robust accuracy",
        "",
        f"{metric} accuracy per class in %, mean over the seeds of each group ({DASH}: no test image "
        "of that class among those evaluated).",
        "",
        f"![per-class robust accuracy]({path.name})",
        "",
        *md_table(["class", *(cell(b.label) for b in bars)], rows),
        "",
    ]


def _stages(sec: Section, ctx: _Ctx) -> list[str]:
    color, seed_ix = _colors(sec)
    items = []
    table = []
    order: list[str] = []
    for r in sec.rows:
        for ev in r.evals:
            if not ev.is_autoattack or ev.clean_acc is None or not ev.per_attack:
                continue
            pgd = None
            if ev.pgd is not None:
                pgd = (str(ev.pgd.get("name") or "PGD"), float(ev.pgd["acc"]))
            elif (
                r.pgd is not None
                and r.pgd.n_examples == ev.n_examples
                and r.pgd.robust_acc is not None
            ):
                pgd = (r.pgd.robust_name or "PGD", r.pgd.robust_acc)
            label = f"{r.name} ({ev.results.get('preset') or ev.kind}, {ev.n_examples})"
            stages = [("clean", ev.clean_acc), *ev.per_attack.items()]
            order += [n for n, _ in stages if n not in order]
            items.append(
                plots.Stages(
                    label,
                    stages,
                    pgd,
                    color[r.group],
                    plots.LINESTYLES[seed_ix.get(r.seed, 0) % len(plots.LINESTYLES)],
                )
            )
            table.append((label, dict(stages), pgd))
    if not items:
        return []
    path = plots.plot_attack_stages(
        items,
        ctx.out / f"{ctx.prefix}attack_stages.png",
        title="accuracy after each AutoAttack stage (cumulative)",
    )
    ctx.images.append(path)
    rows = [
        [
            cell(label),
            *(pct(acc.get(n), DIGITS) for n in order),
            f"{pgd[0]} {pct(pgd[1], DIGITS)}" if pgd else DASH,
        ]
        for label, acc, pgd in table
    ]
    return [
        "### AutoAttack stage by stage",
        "",
        "Accuracy in % before any attack and after each attack of the AutoAttack run (an image broken "
        "by one stage stays broken). PGD well above the last stage, or the black-box Square attack "
        "breaking many images the gradient attacks missed, points at gradient masking; the red flags "
        "below test whether the images behind such a gap are more than chance.",
        "",
        f"![AutoAttack stages]({path.name})",
        "",
        *md_table(
            ["evaluation", *("clean" if n == "clean" else f"after {n}" for n in order), "PGD"], rows
        ),
        "",
    ]


def _evaluations(sec: Section) -> list[str]:
    rows = []
    names = short_names([e.path for e in sec.evals])
    for r in sec.rows:
        for ev in sorted(r.evals, key=lambda e: str(e.path)):
            parts = ["unreliable"] if ev.unreliable else []
            if ev.masking_flags:
                parts.append(f"{len(ev.masking_flags)} masking flag(s)")
            if ev.other_warnings:
                parts.append(f"{len(ev.other_warnings)} warning(s)")
            flags = ", ".join(parts)
            rows.append(
                [
                    cell(names[ev.path]),
                    cell(f"{r.name}: {r.checkpoint}" if r.run else r.checkpoint or DASH),
                    cell(str(ev.results.get("preset") or ev.kind)),
                    f"{ev.n_examples}/{ev.results.get('test_set_size', '?')}",
                    pct(ev.clean_acc, DIGITS),
                    pct(num((ev.pgd or {}).get("acc")), DIGITS)
                    + (f" ({ev.pgd['name']})" if ev.pgd else ""),
                    pct(ev.robust_acc, DIGITS) + (f" ({ev.robust_name})" if ev.robust_name else ""),
                    fmt_seconds(ev.wall_time_s),
                    flags or "none",
                ]
            )
    if not rows:
        return []
    return [
        "### Evaluations",
        "",
        "Every evaluation in this section, as its results.json states it (accuracies in %); flags: "
        "the significant masking tests and other warnings, detailed under Red flags.",
        "",
        *md_table(
            [
                "evaluation",
                "of",
                "preset",
                "images",
                "clean",
                "PGD",
                "robust",
                "wall time",
                "flags",
            ],
            rows,
        ),
        "",
    ]


MASKING_TEST_NAMES = {
    "square": "Square (black-box) broke images the white-box attacks left robust",
    "pgd_vs_autoattack": "AutoAttack broke images robust to its PGD run",
}


def masking_lines(ev: EvalRun) -> list[str]:
    """What the red flags say about one evaluation: each masking test with the images it rests on
    (flag or not), its other warnings, and a raw-gap warning an older results.json carries."""
    out = []
    for t in ev.masking_tests:
        what = MASKING_TEST_NAMES.get(t.name, t.name)
        if t.name == "pgd_vs_autoattack" and ev.pgd is not None:
            what = what.replace("its PGD run", f"its {ev.pgd.get('name') or 'PGD'} run")
        # from two accuracies, k is the fewest images consistent with them (Square's is exact)
        least = "at least " if ev.masking_recomputed and t.name == "pgd_vs_autoattack" else ""
        if t.significant:
            out.append(f"**gradient masking flag**: {what}: {least}{t.describe()} < {t.alpha:g}")
        elif t.k > 0:
            out.append(f"no flag: {what}: {least}{t.describe()}, not significant at {t.alpha:g}")
    if out and ev.masking_recomputed:
        out.append("(tests recomputed from results.json's accuracies on its images)")
    if ev.raw_masking_warnings and not ev.masking_flags:
        out.append(
            f"its results.json ({len(ev.raw_masking_warnings)} warning(s)) flagged gradient masking "
            "from a raw accuracy gap, before advtrain tested it; the test above does not support "
            "the flag"
        )
    return out + ev.other_warnings


def _red_flags(sec: Section) -> list[str]:
    names = short_names([e.path for e in sec.evals]) if sec.evals else {}
    lines = [
        "### Red flags",
        "",
        "A gradient-masking flag rests on a test, not a raw gap: of the n images an AutoAttack "
        "evaluation attacked, k were broken only by the stronger attack, and a one-sided exact "
        "binomial test asks whether k exceeds the tolerated share (10% for PGD vs AutoAttack, "
        "AutoAttack's own 0.2% for Square) at p < 0.01. Tests with k > 0 are listed even when they "
        "do not flag.",
        "",
    ]
    if not sec.evals:
        return lines + ["No evaluation in this section.", ""]
    items = [(ev, masking_lines(ev)) for ev in sec.evals]
    items = [(ev, ls) for ev, ls in items if ls or ev.unreliable]
    if not items:
        return lines + [
            "None: no evaluation in this section has a warning, a masking test with an image only "
            "the stronger attack broke, or an unreliable mark.",
            "",
        ]
    for ev, ls in items:
        mark = " **unreliable**" if ev.unreliable else ""
        lines.append(f"- {names[ev.path]}{mark}: " + "; ".join(ls or ["marked unreliable"]))
    return lines + [""]


def _section(sec: Section, index: int, n_sections: int, out: Path, images: list[Path]) -> list[str]:
    ctx = _Ctx(out, f"s{index}_" if n_sections > 1 else "", images)
    keys = assign_groups(sec)
    summaries = _group_summaries(sec)
    runs, evals = sec.runs, sec.evals
    L = [f"## {sec.title}", ""]
    L.append(
        f"{len(runs)} training run(s), {len(evals)} evaluation(s). Accuracies in % with the number of "
        "test images in brackets (the first N of the official test order); a custom AutoAttack "
        "says so next to its number. Train time is the time spent in training steps (validation "
        "excluded), summed over epochs and resumed attempts."
    )
    L.append("")
    L += ["### Runs", "", *_runs_table(sec, keys), ""]
    n_groups = len({r.group for r in sec.rows})
    if n_groups < len(sec.rows) or n_groups > 1:
        L += [
            "### Groups: mean and spread over seeds",
            "",
            "Runs whose configs differ only in the seed form a group; mean (min–max over its rows).",
            "",
            *_groups_table(sec, keys, summaries),
            "",
        ]
    if n_groups > 1:
        pgd_head = _uniform([r.scores.pgd_name for r in sec.rows if r.scores.pgd is not None])
        labels = {"clean": "Clean", "pgd": pgd_head or "PGD", "aa": "AutoAttack"}
        n_test = {
            "clean": _uniform([r.scores.clean_n for r in sec.rows]),
            "pgd": _uniform([r.scores.pgd_n for r in sec.rows]),
            "aa": _uniform([r.scores.aa_n for r in sec.rows]),
        }
        present = {m: lab for m, lab in labels.items() if any(summaries[m].values())}
        if present:
            L += [
                "### Reading",
                "",
                "Generated from the group means above; it states nothing they do not show.",
                "",
            ]
            gaps = [g for r in sec.rows if (g := r.same_image_gap) is not None]
            L += [
                f"- {x}"
                for x in reading(
                    summaries,
                    present,
                    n_test=n_test,
                    pgd_aa_gap=summaries["gap"],
                    gap_pgd=_uniform([g[0] for g in gaps]) or "PGD",
                    gap_n=_uniform([g[2] for g in gaps]),
                )
            ]
            L.append("")
    L += _curves(sec, ctx)
    L += _scatter(sec, ctx)
    L += _per_class(sec, ctx)
    L += _stages(sec, ctx)
    L += _evaluations(sec)
    L += _red_flags(sec)
    return L


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------


@dataclass
class ReportResult:
    """What `write_report` wrote and what it found wrong with its input."""

    out_dir: Path
    markdown: Path
    html: Path
    images: list[Path]
    problems: list[Problem]
    sections: list[str]
    n_train: int
    n_eval: int


def _problem_lines(problems: Sequence[Problem]) -> list[str]:
    if not problems:
        return []
    return [
        "## Problems with the input",
        "",
        "What could not be read or is not finished; everything else is reported below.",
        "",
        *(f"- `{p.path}`: {p.message}" for p in problems),
        "",
    ]


def write_report(
    paths: Sequence[str | Path], out_dir: str | Path, *, title: str | None = None
) -> ReportResult:
    """Read the runs `paths` name and write `out_dir`/report.md, its PNGs and report.html.

    `paths`: training run directories, evaluation run directories, folders of runs (a sweep, a
    study) or glob patterns. Raises ReportError only when no path holds a readable run; every other
    problem is listed in the report and in `ReportResult.problems`.
    """
    out = Path(out_dir)
    runs = load_runs(paths)
    if not runs.train and not runs.unpaired:
        why = "; ".join(str(p) for p in runs.problems[:3]) or "no path given"
        more = f" (and {len(runs.problems) - 3} more)" if len(runs.problems) > 3 else ""
        raise ReportError(f"no training or evaluation run to report: {why}{more}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.png"):  # an earlier report's figures would linger; only ours go
            if _OUR_FIGURE.fullmatch(old.name):
                old.unlink()
    except OSError as e:
        raise ReportError(
            f"cannot write the report to {out} ({e.strerror or e}); choose out=DIR"
        ) from None
    sections = build_sections(runs)
    images: list[Path] = []
    n_eval = len(runs.evals)
    L = [f"# {title or 'advtrain report'}", ""]
    L.append(
        f"Generated by `python -m advtrain report` on {time.strftime('%Y-%m-%d %H:%M')} from "
        + ", ".join(f"`{p}`" for p in paths)
        + f": {len(runs.train)} training run(s), {n_eval} evaluation(s)."
    )
    L.append("")
    if len(sections) > 1:
        L.append(
            "The runs span several data sets or threat models: each has its own section below, and "
            "numbers from different sections are not comparable. Sections: "
            + "; ".join(s.title for s in sections)
            + "."
        )
        L.append("")
    L += _problem_lines(runs.problems)
    for i, sec in enumerate(sections, start=1):
        L += _section(sec, i, len(sections), out, images)
    md = out / "report.md"
    md.write_text("\n".join(L).rstrip() + "\n")
    html = write_html(md, out / "report.html", title=title or "advtrain report")
    return ReportResult(
        out,
        md,
        html,
        images,
        list(runs.problems),
        [s.title for s in sections],
        len(runs.train),
        n_eval,
    )
