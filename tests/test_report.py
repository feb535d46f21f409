"""`python -m advtrain report` and the advtrain.report library.

The slow tests make real tiny runs through the public CLI (a four-job smoke sweep, AutoAttack and
PGD evaluations of some of its checkpoints, one at another eps) and check that the report's numbers
are the run files' numbers, that every figure is a real PNG, that report.html needs no other file,
and that each kind of bad input gives its message while the rest of the report is still written.
The fast tests cover the pieces that need no training: discovery messages, the option parser and
the Markdown -> HTML step.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from helpers import run_cli

from advtrain.errors import AdvtrainError
from advtrain.report import ReportError, load_runs, markdown_to_html, write_report
from advtrain.report.build import differing_keys
from advtrain.report.runs import short_names

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
N_AA = 16  # test images of the AutoAttack evaluations
N_PGD = 24  # test images of the PGD-20 evaluation (not N_AA: the columns must say which)


def _cli(*args: str, runs_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return run_cli(
        *args, env={"ADVTRAIN_RUNS_DIR": str(runs_dir), "OMP_NUM_THREADS": "2"}, timeout=timeout
    )


def _ckpt(run: Path) -> str:
    """The ckpt= override of a run's last.pt, quoted: a sweep job's path has '=' and ','."""
    return f"ckpt='{run / 'last.pt'}'"


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A real smoke sweep (seed 0/1 x loss.beta 6/3) and evaluations of three of its checkpoints.

    beta 6: both seeds get AutoAttack (custom: APGD-CE + APGD-T, with PGD-20 on the same images);
    beta 3 seed 0 gets PGD-20 only, and also a PGD-20 at eps 2/255 (another threat model);
    beta 3 seed 1 is never evaluated.
    """
    root = tmp_path_factory.mktemp("report_runs")
    _ok(
        _cli(
            "train",
            "-m",
            "+exp=smoke",
            f"data.root={data_dir}",
            "seed=0,1",
            "loss.beta=6,3",
            "data.train_subset=128",
            "trainer.val_examples=64",
            "trainer.test_examples=64",
            runs_dir=root,
        )
    )
    (sweep,) = list((root / "multirun" / "smoke").iterdir())
    jobs = {}
    for d in sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")):
        cfg = json.loads((d / "config.json").read_text())
        jobs[(cfg["loss"]["beta"], cfg["seed"])] = d
    assert len(jobs) == 4, jobs
    evals: dict[str, Path] = {}
    common = [f"data.root={data_dir}", "progress=false"]
    for seed in (0, 1):
        evals[f"aa{seed}"] = root / "eval" / f"aa_beta6_seed{seed}"
        _ok(
            _cli(
                "eval",
                _ckpt(jobs[(6.0, seed)]),
                "eval=aa_custom",
                f"n_examples={N_AA}",
                "batch_size=16",
                "shard_size=16",
                *common,
                f"hydra.run.dir={evals[f'aa{seed}']}",
                runs_dir=root,
            )
        )
    evals["pgd"] = root / "eval" / "pgd_beta3_seed0"
    evals["pgd_eps2"] = root / "eval" / "pgd_eps2_beta3_seed0"
    for key, extra in (("pgd", []), ("pgd_eps2", ["eval.eps=2/255"])):
        _ok(
            _cli(
                "eval",
                _ckpt(jobs[(3.0, 0)]),
                "eval=pgd20",
                f"n_examples={N_PGD}",
                *extra,
                *common,
                f"hydra.run.dir={evals[key]}",
                runs_dir=root,
            )
        )
    return {"root": root, "sweep": sweep, "jobs": jobs, "evals": evals}


def _results(d: Path) -> dict:
    return json.loads((d / "results.json").read_text())


def _section(md: str, title: str) -> str:
    """The text of the `## title` section (up to the next `## `)."""
    start = md.index(f"\n## {title}\n")
    end = md.find("\n## ", start + 1)
    return md[start : end if end > 0 else None]


def _table(text: str, heading: str) -> list[dict[str, str]]:
    """The pipe table after `heading` as dicts (header -> cell), `\\|` unescaped."""
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("|"))
    rows = []
    for x in lines[start:]:
        if not x.startswith("|"):
            break
        rows.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", x)[1:-1]])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r)) for r in body]


def _acc(v: float, n: int, extra: str = "") -> str:
    inside = f"{n}, {extra}" if extra else f"{n}"
    return f"{100 * v:.2f} ({inside})"


# ------------------------------------------------------------------------------------------------
# real runs: numbers, figures, HTML, the command
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_numbers_equal_the_run_files(tiny: dict, tmp_path: Path) -> None:
    jobs, evals = tiny["jobs"], tiny["evals"]
    res = write_report([tiny["sweep"], tiny["root"] / "eval"], tmp_path / "rep")
    assert res.n_train == 4 and res.n_eval == 4
    assert res.sections == ["cifar10, Linf eps 2/255", "cifar10, Linf eps 8/255"]
    md = res.markdown.read_text()
    main = _section(md, "cifar10, Linf eps 8/255")
    rows = _table(main, "### Runs")
    names = short_names(list(jobs.values()))
    by_name = {r["run"]: r for r in rows}
    assert set(by_name) == {names[d] for d in jobs.values()}, by_name.keys()

    for seed in (0, 1):
        row = by_name[names[jobs[(6.0, seed)]]]
        aa = _results(evals[f"aa{seed}"])
        assert aa["n_examples"] == N_AA and aa["pgd"]["name"] == "PGD-20"
        assert row["method"] == "trades" and row["model"] == "small_cnn"
        assert row["data"] == "cifar10" and row["seed"] == str(seed) and row["epochs"] == "2"
        assert row["clean % (images)"] == _acc(aa["clean_acc"], N_AA)
        assert row["AutoAttack % (images)"] == _acc(aa["robust_acc"], N_AA, "custom")
        # this run has no PGD evaluation: its PGD-20 is the AutoAttack run's, on the same images
        assert row["PGD-20 % (images)"] == _acc(aa["pgd"]["acc"], N_AA)
        assert row["checkpoint"].startswith("last.pt")
        assert "loss.beta=6" in row["differing config"]
        final = json.loads((jobs[(6.0, seed)] / "final.json").read_text())
        assert row["train-end test % (images)"] == (
            f"clean {100 * final['test_clean_acc']:.2f} / PGD-5 {100 * final['test_pgd5_acc']:.2f}"
            f" ({final['test_examples']})"
        )
        records = [
            json.loads(x)
            for x in (jobs[(6.0, seed)] / "metrics.jsonl").read_text().splitlines()
            if "lr" in json.loads(x)
        ]
        ips = sum(r["train_images_per_s"] * r["train_seconds"] for r in records) / sum(
            r["train_seconds"] for r in records
        )
        assert row["train images/s"] == f"{ips:.0f}"

    pgd = _results(evals["pgd"])
    row = by_name[names[jobs[(3.0, 0)]]]
    assert row["PGD-20 % (images)"] == _acc(pgd["robust_acc"], N_PGD)
    assert row["clean % (images)"] == _acc(pgd["clean_acc"], N_PGD)
    assert row["AutoAttack % (images)"] == "—"
    row = by_name[names[jobs[(3.0, 1)]]]  # never evaluated: a row with its curves, no accuracies
    assert row["clean % (images)"] == row["AutoAttack % (images)"] == "—"
    assert row["train-end test % (images)"].startswith("clean ")

    # groups: the two beta-6 seeds, mean (min-max) over seeds of the results.json numbers
    groups = {g["group"]: g for g in _table(main, "### Groups")}
    g6 = groups["loss.beta=6"]
    assert g6["rows"] == "2" and g6["seeds"] == "0, 1"
    vals = [_results(evals[f"aa{s}"])["robust_acc"] for s in (0, 1)]
    assert g6["AutoAttack %"] == (
        f"{100 * statistics.fmean(vals):.2f} ({100 * min(vals):.2f}–{100 * max(vals):.2f})"
    )
    assert groups["loss.beta=3"]["PGD-20 %"].startswith(f"{100 * pgd['robust_acc']:.2f} (")

    # per class: the group means of results.json's per-class robust accuracy
    per_class = _table(main, "### Per-class robust accuracy")
    names_cls = _results(evals["aa0"])["per_class"]["names"]
    assert [r["class"] for r in per_class] == names_cls
    for i, r in enumerate(per_class):
        v = [_results(evals[f"aa{s}"])["per_class"]["robust_acc"][i] for s in (0, 1)]
        v = [x for x in v if x is not None]
        assert r["loss.beta=6"] == (f"{100 * statistics.fmean(v):.2f}" if v else "—")

    # AutoAttack stage by stage: clean, then each attack, as results.json has them
    stages = _table(main, "### AutoAttack stage by stage")
    assert len(stages) == 2
    for r in stages:
        seed = 0 if names[jobs[(6.0, 0)]] in r["evaluation"] else 1
        aa = _results(evals[f"aa{seed}"])
        assert r["clean"] == f"{100 * aa['clean_acc']:.2f}"
        for attack, acc in aa["per_attack_robust_acc"].items():
            assert r[f"after {attack}"] == f"{100 * acc:.2f}"

    # the other threat model is its own section and never in the 8/255 one
    other = _section(md, "cifar10, Linf eps 2/255")
    eps2 = _results(evals["pgd_eps2"])
    (row,) = _table(other, "### Runs")
    assert row["run"] == names[jobs[(3.0, 0)]]
    assert row["PGD-20 % (images)"] == _acc(eps2["robust_acc"], N_PGD)
    assert evals["pgd_eps2"].name not in main and evals["pgd_eps2"].name in other

    # the never-evaluated run is named as such
    assert any(
        p.path == jobs[(3.0, 1)].resolve() and "no evaluation" in p.message for p in res.problems
    ), res.problems
    assert "## Problems with the input" in md and "no evaluation of its checkpoints" in md


@pytest.mark.slow
def test_readme_command_on_the_default_run_layout(data_dir: Path, tmp_path: Path) -> None:
    """The README's `python -m advtrain report runs/demo/* runs/eval/*`, run by a shell on what
    `train` and `eval` write by default (runs/<name>/<time>, runs/eval/<time>); smoke, not demo, for
    time. Every number of the report's row is the run files' number."""
    env = {k: v for k, v in os.environ.items() if k != "ADVTRAIN_RUNS_DIR"}
    env |= {"ADVTRAIN_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "2"}

    def sh(cmd: str) -> subprocess.CompletedProcess[str]:
        return _ok(
            subprocess.run(
                ["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                timeout=600,
            )
        )  # fmt: skip

    py = sys.executable
    sh(
        f"{py} -m advtrain train +exp=smoke data.train_subset=128 trainer.val_examples=64 "
        "trainer.test_examples=64"
    )
    (run,) = (tmp_path / "runs" / "smoke").iterdir()
    sh(
        f"{py} -m advtrain eval ckpt=runs/smoke/{run.name}/last.pt eval=aa_custom "
        f"n_examples={N_AA} batch_size=16 shard_size=16 progress=false"
    )
    (ev,) = (tmp_path / "runs" / "eval").iterdir()
    proc = sh(f"{py} -m advtrain report runs/smoke/* runs/eval/*")
    assert proc.stdout.startswith(
        "advtrain report | 1 training run(s), 1 evaluation(s) | 1 section"
    )
    assert proc.stderr == "", proc.stderr  # nothing missing: the evaluation paired with its run
    md_path = Path(re.search(r"report\.md +(\S+)", proc.stdout).group(1))
    assert md_path.parent.parent == Path("runs/report")  # the default out=, next to the runs
    md = (tmp_path / md_path).read_text()
    (row,) = _table(md, "### Runs")
    aa, final = _results(ev), json.loads((run / "final.json").read_text())
    assert row["run"] == f"smoke/{run.name}" and row["method"] == "trades" and row["epochs"] == "2"
    assert row["checkpoint"].startswith("last.pt")
    assert row["clean % (images)"] == _acc(aa["clean_acc"], N_AA)
    assert row["PGD-20 % (images)"] == _acc(aa["pgd"]["acc"], N_AA)
    assert row["AutoAttack % (images)"] == _acc(aa["robust_acc"], N_AA, "custom")
    assert row["train-end test % (images)"] == (
        f"clean {100 * final['test_clean_acc']:.2f} / PGD-5 {100 * final['test_pgd5_acc']:.2f} (64)"
    )
    for name in ("curves.png", "clean_vs_aa.png", "per_class.png", "attack_stages.png"):
        assert (tmp_path / md_path.parent / name).read_bytes()[:8] == PNG, name


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.external: list[tuple[str, str, str]] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for k, v in attrs:
            if k == "src" and tag == "img":
                self.imgs.append(v or "")
            elif k in ("src", "href") and v and not v.endswith(".md"):
                self.external.append((tag, k, v))


@pytest.mark.slow
def test_every_figure_is_a_png_and_the_html_is_self_contained(tiny: dict, tmp_path: Path) -> None:
    res = write_report([tiny["sweep"], tiny["root"] / "eval"], tmp_path / "rep")
    md = res.markdown.read_text()
    names = sorted(p.name for p in res.images)
    # per section: curves, clean vs AutoAttack, per class, stages (8/255); curves, per class (2/255)
    assert names == sorted(
        [
            "s1_curves.png",
            "s1_per_class.png",
            "s2_curves.png",
            "s2_clean_vs_aa.png",
            "s2_per_class.png",
            "s2_attack_stages.png",
        ]
    ), names
    for p in res.images:
        data = p.read_bytes()
        assert data[:8] == PNG and len(data) > 5000, p
        assert f"]({p.name})" in md
    assert sorted(x.name for x in res.out_dir.glob("*.png")) == names

    html = res.html.read_text()
    parser = _Images()
    parser.feed(html)
    assert parser.external == [] and not {"script", "link", "iframe"} & parser.tags
    assert len(parser.imgs) == len(res.images)
    embedded = sorted(base64.b64decode(s.split(",", 1)[1]) for s in parser.imgs)
    assert all(s.startswith("data:image/png;base64,") for s in parser.imgs)
    assert embedded == sorted(p.read_bytes() for p in res.images)
    # the HTML is the Markdown: same tables, same numbers
    assert (
        html.count("<table>") == md.count("\n|---|") and "<h2>cifar10, Linf eps 8/255</h2>" in html
    )
    # moved elsewhere, it still shows everything (nothing is read from the report folder)
    moved = tmp_path / "elsewhere.html"
    shutil.copy(res.html, moved)
    shutil.rmtree(res.out_dir)
    assert moved.read_text() == html


@pytest.mark.slow
def test_command_line_globs_and_output(tiny: dict, tmp_path: Path) -> None:
    out = tmp_path / "cmd"
    # quoted globs, as a user types them when the shell does not expand them (or in a script)
    proc = _ok(
        _cli(
            "report",
            f"{tiny['sweep']}/*",
            f"{tiny['root']}/eval/*",
            f"out={out}",
            "title=tiny sweep",
            runs_dir=tmp_path,
        )
    )
    assert proc.stdout.startswith(
        "advtrain report | 4 training run(s), 4 evaluation(s) | 2 section"
    )
    assert f"report.html  {out / 'report.html'}" in proc.stdout
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("warning: ")]
    assert len(warnings) == 1 and "no evaluation of its checkpoints" in warnings[0]
    assert (out / "report.md").read_text().startswith("# tiny sweep\n")
    # a mistake is one line and exit code 1, as in the other commands
    bad = _cli("report", str(tiny["sweep"]), "outt=x", runs_dir=tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: unknown report option 'outt' (valid: out, title); a run path that contains '=' "
        "must exist"
    ]
    none = _cli("report", str(tmp_path / "missing"), f"out={tmp_path / 'x'}", runs_dir=tmp_path)
    assert none.returncode == 1 and none.stderr.startswith("error: no training or evaluation run")
    assert "Traceback" not in bad.stderr + none.stderr


@pytest.mark.slow
def test_bad_inputs_give_messages_and_the_rest_is_written(tiny: dict, tmp_path: Path) -> None:
    jobs, evals = tiny["jobs"], tiny["evals"]
    good = jobs[(6.0, 0)]
    work = tmp_path / "runs"
    # an unfinished run: one epoch recorded, no final.json
    unfinished = work / "unfinished"
    shutil.copytree(good, unfinished)
    (unfinished / "final.json").unlink()
    lines = (unfinished / "metrics.jsonl").read_text().splitlines()
    (unfinished / "metrics.jsonl").write_text(lines[0] + "\n")
    # a corrupt metrics line between two good ones (a torn write, a disk error)
    corrupt = work / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "metrics.jsonl").write_text(
        lines[0] + "\n" + '{"epoch": 2, "lr": 0.0' + "\n" + lines[1] + "\n"
    )
    # an unreadable results.json and an unreadable config.json
    broken_eval = work / "broken_eval"
    shutil.copytree(evals["pgd"], broken_eval)
    (broken_eval / "results.json").write_text('{"format": "advtrain-eval-results", "clean')
    broken_cfg = work / "broken_cfg"
    shutil.copytree(jobs[(3.0, 1)], broken_cfg)
    (broken_cfg / "config.json").write_text("{")
    # an empty directory, and a run that was started but recorded nothing
    (work / "empty").mkdir()
    started = work / "started"
    (started / ".hydra").mkdir(parents=True)
    (started / ".hydra" / "config.yaml").write_text("name: smoke\n")
    # a stale evaluation: its checkpoint was overwritten by further training since
    stale_run, stale_eval = work / "stale_run", work / "stale_eval"
    shutil.copytree(jobs[(6.0, 1)], stale_run)
    for p in stale_run.rglob("*.pt"):
        p.write_bytes(p.read_bytes() + b"retrained")
    shutil.copytree(evals["aa1"], stale_eval)
    res_json = _results(stale_eval)
    res_json["checkpoint"]["path"] = str(stale_run / "last.pt")
    (stale_eval / "results.json").write_text(json.dumps(res_json))

    bad = [
        unfinished,
        corrupt,
        broken_eval,
        broken_cfg,
        work / "empty",
        started,
        stale_run,
        stale_eval,
        tmp_path / "no_such_dir",
    ]
    out = tmp_path / "rep"
    proc = _ok(
        _cli(
            "report", str(good), str(evals["aa0"]), *map(str, bad), f"out={out}", runs_dir=tmp_path
        )
    )
    md = (out / "report.md").read_text()
    expected = {
        unfinished: "unfinished training run: 1 of 2 epochs recorded and no final.json",
        corrupt: "metrics.jsonl: 1 corrupt line(s) skipped (line 2)",
        broken_eval: "results.json is not valid JSON",
        broken_cfg: "config.json is not valid JSON",
        work / "empty": "empty directory: no run in it",
        started: "unfinished training run: started but nothing recorded yet",
        stale_eval: "stale evaluation",
        tmp_path / "no_such_dir": "no such file or directory",
    }
    for path, msg in expected.items():
        assert f"warning: {path}: {msg}" in proc.stderr, (path, proc.stderr)
        assert f"- `{path}`: {msg}" in md, (path, msg)
    # ... and the rest is written: the good run with its AutoAttack numbers, the unfinished run's
    # curve, the corrupt run's two good epochs
    rows = {r["run"]: r for r in _table(md, "### Runs")}
    aa = _results(evals["aa0"])
    job = good.name.split("_")[0]  # Hydra's job number: the report names the folder "job N"
    good_row = next(r for name, r in rows.items() if name.endswith(f"job {job}"))
    assert good_row["AutoAttack % (images)"] == _acc(aa["robust_acc"], N_AA, "custom")
    assert rows["runs/unfinished"]["epochs"] == "1/2 (unfinished)"
    assert rows["runs/corrupt"]["epochs"] == "2"
    assert rows["runs/stale_eval"]["AutoAttack % (images)"] == _acc(
        res_json["robust_acc"], N_AA, "custom"
    )
    runs = load_runs([corrupt])
    assert [e["epoch"] for e in runs.train[0].epochs] == [1, 2]
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == PNG
    assert (out / "report.html").stat().st_size > 10_000


# ------------------------------------------------------------------------------------------------
# fast: no training
# ------------------------------------------------------------------------------------------------


def test_nothing_to_report_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ReportError) as e:
        write_report([tmp_path / "empty", tmp_path / "other", tmp_path / "nope*"], tmp_path / "o")
    msg = str(e.value)
    assert (
        "empty directory" in msg
        and "no training run" in msg
        and "no file or directory matches" in msg
    )
    assert not (tmp_path / "o").exists()


def test_option_parser() -> None:
    from advtrain.cli.report import parse

    assert parse(["a", "b", "out=x", "title=T"]) == (["a", "b"], {"out": "x", "title": "T"})
    # a sweep job folder has '=' in its name: a path, not an option
    assert parse(["runs/multirun/smoke/t/0_seed=1,loss.beta=6"])[0] == [
        "runs/multirun/smoke/t/0_seed=1,loss.beta=6"
    ]
    for argv, text in (
        ([], "needs at least one run"),
        (["a", "out="], "out= needs a value"),
        (["a", "--cfg"], "unknown flag '--cfg'"),
        (["a", "seed=1"], "unknown report option 'seed'"),
    ):
        with pytest.raises(AdvtrainError, match=re.escape(text)):
            parse(argv)


def test_differing_keys_ignore_paths_and_devices() -> None:
    a = {"seed": 0, "run_dir": "/a", "data": {"root": "/x", "name": "cifar10"}, "loss": {"beta": 6}}
    b = {"seed": 1, "run_dir": "/b", "data": {"root": "/y", "name": "cifar10"}, "loss": {"beta": 3}}
    assert differing_keys([a, b]) == ["loss.beta", "seed"]


def test_short_names_are_unique_and_name_sweep_jobs() -> None:
    paths = [
        Path("/r/multirun/smoke/t1/0_seed=0"),
        Path("/r/multirun/smoke/t1/1_seed=1"),
        Path("/r/a/train"),
        Path("/r/b/train"),
    ]
    assert list(short_names(paths).values()) == ["t1/job 0", "t1/job 1", "a/train", "b/train"]


def test_markdown_to_html_subset(tmp_path: Path) -> None:
    (tmp_path / "fig.png").write_bytes(PNG + b"0" * 10)
    md = "\n".join(
        [
            "# Title",
            "",
            "Some **bold** text with `a | b` and",
            "a second line.",
            "",
            "| a | b |",
            "|---|---|",
            "| `x \\| y` | 1<br>2 |",
            "",
            "- one <script>",
            "- two",
            "",
            "![a figure](fig.png)",
            "![gone](missing.png)",
        ]
    )
    html = markdown_to_html(md, tmp_path, title="T")
    assert "<h1>Title</h1>" in html
    assert (
        "<p>Some <strong>bold</strong> text with <code>a | b</code> and a second line.</p>" in html
    )
    assert "<td><code>x | y</code></td><td>1<br>2</td>" in html
    assert "<li>one &lt;script&gt;</li>" in html and "<script>" not in html
    b64 = base64.b64encode(PNG + b"0" * 10).decode()
    assert f'<img src="data:image/png;base64,{b64}" alt="a figure">' in html
    assert "[image missing.png not found]" in html


def test_handmade_run_figures_and_foreign_files_are_kept(tmp_path: Path) -> None:
    """A training run without evaluations: its curves and a row; the out folder's other files stay."""
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    cfg = {"name": "x", "seed": 3, "data": {"name": "cifar10"}, "loss": {"name": "gkl"},
           "model": {"name": "small_cnn"}, "attack": {"norm": "Linf", "eps": 8 / 255},
           "trainer": {"epochs": 3}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg))
    recs = [
        {"epoch": e, "lr": 0.1 / e, "eps": e * 8 / 765, "train_adv_acc": 0.1 * e, "train_loss": 2.0,
         "train_ce": 1.5, "train_wmse": "nan", "train_seconds": 2.0, "train_images_per_s": 100.0 * e,
         "val_clean_acc": 0.2 * e, "val_pgd_acc": 0.1 * e}
        for e in (1, 2)
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    out.mkdir()
    (out / "my_curves.png").write_bytes(b"mine")
    (out / "curves.png").write_bytes(b"an earlier report's")
    res = write_report([run], out)
    assert (out / "my_curves.png").read_bytes() == b"mine"
    assert [p.name for p in res.images] == ["curves.png"]
    assert (out / "curves.png").read_bytes()[:8] == PNG
    (row,) = _table(res.markdown.read_text(), "### Runs")
    assert (row["method"], row["seed"], row["epochs"]) == ("gkl", "3", "2/3 (unfinished)")
    assert row["train images/s"] == "150" and row["train time"] == "4s"
    messages = sorted(p.message.split(":")[0] for p in res.problems)
    assert messages == ["no evaluation of its checkpoints among the given paths (clean / PGD-20 / "
                        "AutoAttack columns stay empty)", "unfinished training run"]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# fast: hand-made run directories in the formats train/eval write
# ------------------------------------------------------------------------------------------------


def _made_train(
    root: Path, name: str, *, loss: str = "trades", data: str = "cifar10", seed: int = 0
) -> Path:
    """A finished training run as `train` writes it (config.json, metrics.jsonl, final.json,
    last.pt); last.pt's bytes are unique to the run, so evaluations pair with it by SHA-256."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {"name": name, "seed": seed, "data": {"name": data}, "loss": {"name": loss},
           "model": {"name": "small_cnn"}, "attack": {"norm": "Linf", "eps": 8 / 255},
           "trainer": {"epochs": 2}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(cfg))
    recs = [{"epoch": e, "lr": 0.1, "eps": 8 / 255, "train_adv_acc": 0.1 * e, "train_loss": 2.0,
             "train_seconds": 1.0, "train_images_per_s": 100.0, "val_clean_acc": 0.2 * e,
             "val_pgd_acc": 0.1 * e} for e in (1, 2)]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run / "final.json").write_text(json.dumps({"test_clean_acc": 0.5, "test_examples": 64}))
    (run / "last.pt").write_bytes(f"weights of {name}".encode())
    return run


def _made_eval(
    root: Path,
    name: str,
    run: Path,
    *,
    kind: str,
    n: int,
    clean: float,
    robust: float,
    pgd: float | None = None,
    per_attack: dict[str, float] | None = None,
    data: str = "cifar10",
    **extra: object,
) -> Path:
    """An evaluation run's results.json (the fields the report reads) for `run`'s last.pt."""
    import hashlib

    ev = root / name
    ev.mkdir(parents=True)
    ckpt = run / "last.pt"
    res = {
        "format": "advtrain-eval-results",
        "preset": {"autoattack": "aa_standard", "pgd": "pgd20"}[kind],
        "kind": kind,
        "dataset": data,
        "n_examples": n,
        "test_set_size": 10000,
        "norm": "Linf",
        "eps": 8 / 255,
        "version": "standard" if kind == "autoattack" else None,
        "clean_acc": clean,
        "robust_acc": robust,
        "robust_metric": None if kind == "autoattack" else "PGD-20",
        "per_attack_robust_acc": per_attack,
        "pgd": None if pgd is None else {"name": "PGD-20", "acc": pgd},
        "per_class": {"names": [], "robust_acc": None},
        "model": {"name": "small_cnn"},
        "checkpoint": {"path": str(ckpt), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()},
        "warnings": [],
        "unreliable": False,
        "wall_time_s": 1.0,
    }
    res.update(extra)
    (ev / "results.json").write_text(json.dumps(res))
    return ev


def test_pgd_autoattack_gap_is_taken_on_the_same_images(tmp_path: Path) -> None:
    """The PGD column may come from a PGD evaluation on more images; the gap never does."""
    root = tmp_path / "runs"
    a = _made_train(root, "a", loss="gkl")
    b = _made_train(root, "b", loss="trades")
    # a: AutoAttack on 300 images (its own PGD-20 on them: 34%) and PGD-20 on 1,000 images (29%)
    _made_eval(root, "aa_a", a, kind="autoattack", n=300, clean=0.6, robust=0.30, pgd=0.34)
    _made_eval(root, "pgd_a", a, kind="pgd", n=1000, clean=0.61, robust=0.29, pgd=0.29)
    _made_eval(root, "aa_b", b, kind="autoattack", n=300, clean=0.5, robust=0.20, pgd=0.27)
    _made_eval(root, "pgd_b", b, kind="pgd", n=1000, clean=0.52, robust=0.26, pgd=0.26)
    res = write_report([root], tmp_path / "rep")
    md = res.markdown.read_text()
    rows = {r["run"]: r for r in _table(md, "### Runs")}
    assert rows["runs/a"]["PGD-20 % (images)"] == "29.00 (1000)"  # the larger PGD evaluation
    assert rows["runs/a"]["AutoAttack % (images)"] == "30.00 (300)"
    (gap,) = [x for x in md.splitlines() if "minus AutoAttack" in x]
    # 34 - 30 and 27 - 20 on the AutoAttack evaluations' own 300 images, not 29 - 30 and 26 - 20
    assert "on the same 300 test images" in gap and ": a 4.0, b 7.0." in gap, gap


def test_mixed_datasets_get_separate_sections(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    c10 = _made_train(root, "c10", data="cifar10")
    fm = _made_train(root, "fm", data="fashion_mnist")
    _made_eval(root, "aa_c10", c10, kind="autoattack", n=100, clean=0.5, robust=0.2, pgd=0.25)
    _made_eval(
        root, "aa_fm", fm, kind="autoattack", n=100, clean=0.8, robust=0.6, pgd=0.6,
        data="fashion_mnist",
    )  # fmt: skip
    res = write_report([root], tmp_path / "rep")
    assert res.sections == ["cifar10, Linf eps 8/255", "fashion_mnist, Linf eps 8/255"]
    md = res.markdown.read_text()
    assert "several data sets or threat models: each has its own section" in md
    for title, mine, other in (
        ("cifar10, Linf eps 8/255", "runs/c10", "runs/fm"),
        ("fashion_mnist, Linf eps 8/255", "runs/fm", "runs/c10"),
    ):
        sec = _section(md, title)
        assert [r["run"] for r in _table(sec, "### Runs")] == [mine]
        assert other not in sec  # in no table, figure caption or evaluation list of this section
    # each section draws its own figures from its own runs only
    assert sorted(p.name for p in res.images) == sorted(
        f"s{i}_{f}.png" for i in (1, 2) for f in ("curves", "clean_vs_aa")
    )


def test_masking_flags_rest_on_a_test_with_image_counts(tmp_path: Path) -> None:
    """Older results.json files flagged masking from a raw gap; the report tests the counts."""
    root = tmp_path / "runs"
    runs = [_made_train(root, name) for name in ("a", "b", "c")]
    stages = {"apgd-ce": 0.40, "apgd-t": 0.35, "fab-t": 0.35, "square": 104 / 300}
    raw = (
        "gradient masking suspected: the black-box Square attack lowered robust accuracy by 0.33 pp"
    )
    # a: Square broke 1 of 300 images (0.33% > the raw 0.2% threshold): an old file flagged it
    _made_eval(
        root, "eval_a", runs[0], kind="autoattack", n=300, clean=0.5, robust=104 / 300,
        pgd=110 / 300, per_attack=stages, warnings=[raw], unreliable=True,
    )  # fmt: skip
    # b: PGD-20 robust on 180 of 300 images, AutoAttack on 90: at least 90 images only AA broke
    _made_eval(root, "eval_b", runs[1], kind="autoattack", n=300, clean=0.7, robust=0.3, pgd=0.6)
    # c: a new file records its test (7 of 32, from per-image flags); it is used as recorded
    stored = {"name": "pgd_vs_autoattack", "k": 7, "n": 32, "tolerated_rate": 0.1,
              "p_value": 0.1221, "alpha": 0.01, "significant": False}  # fmt: skip
    _made_eval(
        root, "eval_c", runs[2], kind="autoattack", n=32, clean=0.5, robust=0.25, pgd=0.5,
        masking_tests=[stored],
    )  # fmt: skip
    res = write_report([root], tmp_path / "rep")
    md = res.markdown.read_text()
    flags = md[md.index("### Red flags") :]
    line = {
        n: next(x for x in flags.splitlines() if x.startswith(f"- runs/eval_{n}")) for n in "abc"
    }
    assert "**unreliable**" not in line["a"]
    assert "no flag: Square (black-box) broke images the white-box attacks left robust: 1 of 300 " \
           "images (0.33%), tolerated 0.2%: p = 0.45, not significant at 0.01" in line["a"]  # fmt: skip
    assert "flagged gradient masking from a raw accuracy gap" in line["a"] and raw not in line["a"]
    assert "recomputed from results.json" in line["a"]
    assert line["b"].startswith("- runs/eval_b **unreliable**: **gradient masking flag**: ")
    assert (
        "AutoAttack broke images robust to its PGD-20 run: at least 90 of 300 images (30.00%)"
        in line["b"]
    )
    assert "no flag: AutoAttack broke images robust to its PGD-20 run: 7 of 32 images" in line["c"]
    assert "p = 0.12," in line["c"] and "recomputed" not in line["c"]  # recomputed: 8 of 32
    evals = {r["evaluation"]: r["flags"] for r in _table(md, "### Evaluations")}
    assert evals == {
        "runs/eval_a": "none",
        "runs/eval_b": "unreliable, 1 masking flag(s)",
        "runs/eval_c": "none",
    }


def test_matplotlib_is_a_runtime_dependency() -> None:
    """In the installed package's requirements without an extra (not a dev-only dependency)."""
    from importlib.metadata import requires

    reqs = requires("advtrain") or []
    assert any(re.match(r"matplotlib\b", r) and "extra ==" not in r for r in reqs), reqs


def test_report_draws_headless_whatever_backend_the_user_set(tmp_path: Path) -> None:
    """A server without a display, with a desktop user's GUI backend in MPLBACKEND: the report is
    drawn with Agg and written (plots.py selects Agg; matplotlib would also fall back to it)."""
    run = _made_train(tmp_path / "runs", "a")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    code = (
        "import sys; from advtrain.report import write_report; "
        "r = write_report([sys.argv[1]], sys.argv[2]); import matplotlib; "
        "print(matplotlib.get_backend().lower(), *sorted(p.name for p in r.images))"
    )
    proc = _ok(
        subprocess.run(
            [sys.executable, "-c", code, str(run), str(tmp_path / "out")],
            env=env, capture_output=True, text=True, timeout=300,
        )
    )  # fmt: skip
    assert proc.stdout.split() == ["agg", "curves.png"]
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == PNG


def _study_modules() -> tuple[object, object, object]:
    """scripts/experiments' common, report and study B (not a package; imported by path)."""
    import importlib.util

    exp = REPO / "scripts" / "experiments"
    if str(exp) not in sys.path:
        sys.path.insert(0, str(exp))
    mods = []
    for name in ("common", "report", "study_b_fashion_mnist"):
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, exp / f"{name}.py")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        mods.append(sys.modules[name])
    return tuple(mods)


def test_study_report_gap_and_masking_flags_from_the_autoattack_runs(tmp_path: Path) -> None:
    """Study B ran PGD-20 on 1,000 images and AutoAttack on 300: the study's gap is AutoAttack's
    own PGD-20 minus AutoAttack on the 300, and its masking flags are the tests' verdicts."""
    common, study_report, study_b = _study_modules()
    runs, out = tmp_path / "runs", tmp_path / "out"
    pipes = common.plan(study_b.STUDY, runs, Path("/data"), threads=1)
    common.write_plan(study_b.STUDY, pipes, runs, jobs=1, threads=1)
    for i, p in enumerate(pipes):
        p.train.run_dir.mkdir(parents=True)
        cfg = {"name": p.method.exp, "seed": p.seed, "data": {"name": "fashion_mnist"},
               "loss": {"name": p.method.slug}, "attack": {"norm": "Linf", "eps": 0.1}}  # fmt: skip
        (p.train.run_dir / "config.json").write_text(json.dumps(cfg))
        (p.train.run_dir / "metrics.jsonl").write_text(
            json.dumps({"epoch": 1, "lr": 0.1, "val_clean_acc": 0.7, "val_pgd_acc": 0.5}) + "\n"
        )
        (p.train.run_dir / "final.json").write_text("{}")
        # the 1,000-image PGD-20 run is 5 points below AutoAttack's own PGD-20 on its 300 images
        aa_pgd, aa = 0.60, (0.45 if i == 0 else 0.57)  # run 0: 45 of 300 only AutoAttack broke
        stages = {"apgd-ce": aa + 2 / 300, "apgd-t": aa + 1 / 300, "fab-t": aa + 1 / 300,
                  "square": aa}  # Square broke 1 image: no flag on 300  # fmt: skip
        for key, job in p.evals:
            job.run_dir.mkdir(parents=True)
            res = {
                "kind": "autoattack" if key == "aa" else "pgd",
                "n_examples": 300 if key == "aa" else 1000,
                "clean_acc": 0.8,
                "robust_acc": aa if key == "aa" else aa_pgd - 0.05,
                "pgd": {"name": "PGD-20", "acc": aa_pgd if key == "aa" else aa_pgd - 0.05},
                "per_attack_robust_acc": stages if key == "aa" else None,
                "warnings": [],
            }
            (job.run_dir / "results.json").write_text(json.dumps(res))
    readme = study_report.write_report(runs, out).read_text()
    gap = next(x for x in readme.splitlines() if "minus AutoAttack" in x)
    assert "on the same 300 test images" in gap, gap
    first = pipes[0].method.label
    # (15 + 3) / 2 over its two seeds, 3 for the others; not 55 - 45 and 55 - 57 (the 1,000-image
    # PGD-20 run against AutoAttack's 300 images)
    assert f"{first} 9.0, " in gap and gap.count(" 3.0") == 3, gap
    masking = next(x for x in readme.splitlines() if x.startswith("- Gradient-masking tests"))
    assert f"1 of {len(pipes)} evaluation(s) flagged ({len(pipes)} recomputed" in masking
    (flag,) = [x for x in readme.splitlines() if "gradient masking flag" in x]
    assert f"({first} seed {pipes[0].seed}, AutoAttack)" in flag
    assert "pgd_vs_autoattack, at least 45 of 300 images (15.00%), tolerated 10%: p = 0.0" in flag
    # 9 of 300 (3%) on the other runs and Square's single image everywhere: no flag
    summary = json.loads((out / "summary.json").read_text())
    (row,) = [
        r
        for r in summary["runs"]
        if (r["slug"], r["seed"]) == (pipes[0].method.slug, pipes[0].seed)
    ]
    assert row["pgd_minus_aa_same_images"]["n"] == 300
    assert row["pgd_minus_aa_same_images"]["gap"] == pytest.approx(0.15)
    assert [t["name"] for t in row["eval_flags"]["aa"]["masking_tests"]] == [
        "square",
        "pgd_vs_autoattack",
    ]
