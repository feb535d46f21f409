"""Reading run directories: training runs, evaluation runs, sweep folders and globs, paired by hash.

What is on disk (written by `python -m advtrain train` / `eval`):

* a training run: `config.json` (the resolved config, written when training starts), `metrics.jsonl`
  (one record per epoch, optional step records, a `final` record), `final.json` (only after the last
  epoch and the test pass), `last.pt`, `best.pt` and `checkpoints/step_*.pt` (hard links of each other);
* an evaluation run: `results.json` (accuracies, per class, per AutoAttack stage, the threat model and
  the SHA-256 of the evaluated checkpoint file) and `per_example.pt` (per-image flags).

An evaluation belongs to the training run that holds a checkpoint file with the recorded SHA-256. The
hash, not the recorded path, decides: a run directory may have been copied or moved since, and a path
whose file was overwritten by a longer training would otherwise pair old numbers with new weights.

Nothing here raises on bad input: every unreadable file or unfinished run becomes a `Problem` that the
report prints, so one broken directory never hides the others.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "EvalRun",
    "Problem",
    "RunSet",
    "ThreatModel",
    "TrainRun",
    "eps_label",
    "load_runs",
    "num",
    "read_eval_run",
    "read_train_run",
    "short_names",
]

RESULTS_FORMAT = "advtrain-eval-results"
TRAIN_FILES = ("config.json", "metrics.jsonl", "final.json", "last.pt")
SWEEP_FILES = {"multirun.yaml"}  # Hydra's record of a sweep, next to its job folders
SKIP_DIRS = {".hydra", "checkpoints", "aa_state", "__pycache__", ".git", "wandb"}
MAX_DEPTH = 4  # runs/multirun/<name>/<time>/<job>: a sweep folder is found from runs/
_GLOB_CHARS = re.compile(r"[*?\[]")
_SWEEP_JOB = re.compile(r"^(\d+)_.*=")  # Hydra multirun job folder: "<num>_<override_dirname>"


@dataclass(frozen=True)
class Problem:
    """Something the report could not read or that a reader must know (an unfinished run...)."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def num(v: Any) -> float | None:
    """A metric value as a float: metrics.jsonl writes non-finite floats as strings ("nan")."""
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def eps_label(eps: float) -> str:
    """ "8/255" when eps is k/255 (the RobustBench spelling), else the shortest decimal ("0.5")."""
    k = eps * 255.0
    if eps > 0 and abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class ThreatModel:
    """Data set, norm and radius: numbers measured under two of these are never put in one table."""

    dataset: str
    norm: str
    eps: float

    @property
    def key(self) -> tuple[str, str, float]:
        """Equality up to float noise (8/255 from YAML and from results.json)."""
        return (self.dataset, self.norm, round(self.eps, 8))

    @property
    def title(self) -> str:
        return f"{self.dataset}, {self.norm} eps {eps_label(self.eps)}"


# ------------------------------------------------------------------------------------------------
# evaluation runs
# ------------------------------------------------------------------------------------------------


@dataclass
class EvalRun:
    """One `python -m advtrain eval` run directory (its results.json)."""

    path: Path
    results: dict[str, Any]
    _flags: list[bool] | None = field(default=None, repr=False)
    _flags_read: bool = field(default=False, repr=False)
    _tests: list[Any] | None = field(default=None, repr=False)

    @property
    def dataset(self) -> str:
        return str(self.results["dataset"])

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.dataset, str(self.results["norm"]), float(self.results["eps"]))

    @property
    def kind(self) -> str:
        """ "autoattack", "pgd" or "clean"."""
        return str(self.results.get("kind") or "")

    @property
    def is_autoattack(self) -> bool:
        return self.kind == "autoattack"

    @property
    def n_examples(self) -> int:
        return int(self.results["n_examples"])

    @property
    def clean_acc(self) -> float | None:
        return num(self.results.get("clean_acc"))

    @property
    def robust_acc(self) -> float | None:
        return num(self.results.get("robust_acc"))

    @property
    def robust_name(self) -> str | None:
        """What the robust accuracy measures: "AutoAttack (standard)", "PGD-20", ... or None."""
        if self.robust_acc is None:
            return None
        if self.is_autoattack:
            return f"AutoAttack ({self.results.get('version') or 'custom'})"
        return str(self.results.get("robust_metric") or (self.pgd or {}).get("name") or "PGD")

    @property
    def pgd(self) -> dict[str, Any] | None:
        """The PGD/CW block ({"name": "PGD-20", "acc": ...}) of any evaluation kind."""
        p = self.results.get("pgd")
        return p if isinstance(p, dict) and num(p.get("acc")) is not None else None

    @property
    def per_attack(self) -> dict[str, float]:
        """Robust accuracy after each AutoAttack stage, in the order the attacks ran."""
        out = {}
        for k, v in (self.results.get("per_attack_robust_acc") or {}).items():
            f = num(v)
            if f is not None:
                out[str(k)] = f
        return out

    @property
    def per_class_robust(self) -> tuple[list[str], list[float | None]] | None:
        pc = self.results.get("per_class") or {}
        if not pc.get("names") or pc.get("robust_acc") is None:
            return None
        return [str(n) for n in pc["names"]], [num(v) for v in pc["robust_acc"]]

    @property
    def warnings(self) -> list[str]:
        return [str(w) for w in self.results.get("warnings") or []]

    @property
    def masking_recomputed(self) -> bool:
        """True when results.json predates the masking tests, so the report recomputes them."""
        return not isinstance(self.results.get("masking_tests"), list)

    @property
    def masking_tests(self) -> list[Any]:
        """The gradient-masking tests (`advtrain.eval.checks.MaskingTest`) of an AutoAttack run.

        Each tests k of n images broken only by the stronger attack (Square after the white-box
        attacks; AutoAttack after PGD) against a tolerated share, exactly (one-sided binomial). A
        results.json written since the tests exist records them with their counts; for an older
        one they are recomputed from its numbers, all on its own `n_examples` images: the accuracy
        after each AutoAttack stage (exact counts from AutoAttack's log) and its own PGD run (the
        smallest count consistent with the two accuracies, so a recomputed test errs towards no flag).
        """
        if self._tests is None:
            self._tests = _masking_tests(self)
        return self._tests

    @property
    def masking_flags(self) -> list[Any]:
        """The significant masking tests: the only gradient-masking flags the report raises."""
        return [t for t in self.masking_tests if t.significant]

    @property
    def other_warnings(self) -> list[str]:
        """results.json's warnings except the gradient-masking ones (which the tests replace)."""
        return [w for w in self.warnings if not w.startswith(MASKING_WARNING)]

    @property
    def raw_masking_warnings(self) -> list[str]:
        """Masking warnings an older advtrain wrote from a raw accuracy gap, without a test."""
        return (
            [w for w in self.warnings if w.startswith(MASKING_WARNING)]
            if (self.masking_recomputed)
            else []
        )

    @property
    def unreliable(self) -> bool:
        """Marked unreliable: a significant masking test, or a randomised defence.

        A results.json with recorded tests is taken as written; an older one's flag, which a raw
        gap could set, is recomputed from the tests.
        """
        if not self.masking_recomputed:
            return bool(self.results.get("unreliable"))
        return bool(self.masking_flags) or any(
            "randomized defense" in w or "dynamic defense" in w for w in self.warnings
        )

    @property
    def checkpoint_sha256(self) -> str | None:
        return (self.results.get("checkpoint") or {}).get("sha256")

    @property
    def checkpoint_path(self) -> str | None:
        return (self.results.get("checkpoint") or {}).get("path")

    @property
    def model_name(self) -> str:
        return str((self.results.get("model") or {}).get("name") or "?")

    @property
    def wall_time_s(self) -> float | None:
        return num(self.results.get("wall_time_s"))

    @property
    def complete(self) -> bool:
        return bool(self.results.get("complete"))

    def robust_flags(self) -> list[bool] | None:
        """Per test image, whether it stayed correct under the attack (per_example.pt), if readable.

        Paired comparisons need these; they are read on first use only, because a report of many
        evaluations needs them for a few pairs at most.
        """
        if not self._flags_read:
            self._flags_read = True
            self._flags = _read_flags(self.path / "per_example.pt")
        return self._flags


MASKING_WARNING = "gradient masking suspected"  # how eval's masking warnings begin


def _masking_tests(ev: EvalRun) -> list[Any]:
    from advtrain.eval.checks import MaskingTest, masking_tests

    stored = ev.results.get("masking_tests")
    if isinstance(stored, list):
        out = []
        for t in stored:
            try:
                out.append(
                    MaskingTest(
                        str(t["name"]),
                        int(t["k"]),
                        int(t["n"]),
                        float(t["tolerated_rate"]),
                        float(t["p_value"]),
                        float(t["alpha"]),
                    )
                )
            except (KeyError, TypeError, ValueError):
                continue
        return out
    if not ev.is_autoattack or ev.robust_acc is None:
        return []
    try:
        n = ev.n_examples
    except (KeyError, TypeError, ValueError):
        return []
    pgd = ev.pgd
    return masking_tests(
        n_examples=n,
        aa_robust_acc=ev.robust_acc,
        pgd_robust_acc=None if pgd is None else float(pgd["acc"]),
        per_attack=ev.per_attack or None,
    )


def _read_flags(path: Path) -> list[bool] | None:
    if not path.is_file():
        return None
    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        return [bool(v) for v in data["robust_correct"].tolist()]
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, AttributeError):
        return None


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(data, None) or (None, why it could not be read)."""
    try:
        return json.loads(path.read_text()), None
    except OSError as e:
        return None, f"cannot read {path.name} ({e.strerror or e})"
    except ValueError as e:
        return None, f"{path.name} is not valid JSON ({e}); is the run still being written?"


_RESULT_KEYS = ("dataset", "n_examples", "norm", "eps", "kind", "clean_acc")


def read_eval_run(path: Path, *, strict: bool = True) -> EvalRun | Problem:
    """The evaluation in `path` (a directory with results.json), or why it cannot be used.

    `strict` (the report command, which finds directories by looking) also demands the format tag
    and the threat-model fields a section needs; a caller that already knows the directory holds an
    evaluation (a study's plan names it) may pass strict=False and read what is there.
    """
    path = Path(path)
    data, err = _read_json(path / "results.json")
    if err is not None:
        return Problem(path, err)
    if not isinstance(data, dict):
        return Problem(path, "results.json is not a JSON object")
    if not strict:
        return EvalRun(path, data)
    if data.get("format") != RESULTS_FORMAT:
        return Problem(
            path, f"results.json is not an advtrain evaluation ('format' is not {RESULTS_FORMAT!r})"
        )
    missing = [k for k in _RESULT_KEYS if data.get(k) is None]
    if missing:
        return Problem(path, f"results.json lacks {', '.join(missing)}; skipped")
    return EvalRun(path, data)


# ------------------------------------------------------------------------------------------------
# training runs
# ------------------------------------------------------------------------------------------------

_PLAIN_TRAIN_KEYS = {"train_adv_acc", "train_nat_acc", "train_seconds", "train_images_per_s"}


@dataclass
class TrainRun:
    """One `python -m advtrain train` run directory and the evaluations of its checkpoints."""

    path: Path
    config: dict[str, Any] | None
    epochs: list[dict[str, Any]]  # one record per epoch; a resumed epoch's later record wins
    final: dict[str, Any] | None
    checkpoints: dict[str, Path]  # name inside the run ("last.pt", "checkpoints/step_*.pt") -> file
    evaluated: list[tuple[str, EvalRun]] = field(default_factory=list)  # (checkpoint name, eval)

    @property
    def finished(self) -> bool:
        """`final.json` is written only after the last epoch and the final test pass."""
        return self.final is not None

    def _cfg(self, *keys: str) -> Any:
        node: Any = self.config or {}
        for k in keys:
            if not isinstance(node, dict):
                return None
            node = node.get(k)
        return node

    @property
    def name(self) -> str:
        return str(self._cfg("name") or self.path.name)

    @property
    def method(self) -> str:
        """The training loss (pgdat, trades, mart, gkl, ikl): what "method" means in this package."""
        return str(self._cfg("loss", "name") or "?")

    @property
    def model(self) -> str:
        return str(self._cfg("model", "name") or "?")

    @property
    def dataset(self) -> str | None:
        d = self._cfg("data", "name")
        return None if d is None else str(d)

    @property
    def seed(self) -> int | None:
        s = self._cfg("seed")
        return int(s) if isinstance(s, int) else None

    @property
    def planned_epochs(self) -> int | None:
        e = self._cfg("trainer", "epochs")
        return int(e) if isinstance(e, int) else None

    @property
    def threat(self) -> ThreatModel | None:
        """The training attack's threat model (its final eps, for a ramped schedule)."""
        eps = num(self._cfg("attack", "eps"))
        if self.dataset is None or eps is None:
            return None
        return ThreatModel(self.dataset, str(self._cfg("attack", "norm") or "Linf"), eps)

    @property
    def train_seconds(self) -> float | None:
        """Time spent in training steps, summed over epochs (validation and test passes excluded)."""
        secs = [num(e.get("train_seconds")) for e in self.epochs]
        vals = [s for s in secs if s is not None]
        return sum(vals) if vals else None

    @property
    def images_per_s(self) -> float | None:
        """Training throughput over the whole run (epochs weighted by their duration)."""
        pairs = [
            (num(e.get("train_images_per_s")), num(e.get("train_seconds"))) for e in self.epochs
        ]
        pairs = [(ips, s) for ips, s in pairs if ips is not None and s is not None and s > 0]
        if not pairs:
            return None
        return sum(ips * s for ips, s in pairs) / sum(s for _, s in pairs)

    @property
    def loss_terms(self) -> list[str]:
        """The loss components the run logged (train_ce, train_kl, ... minus accuracies and speed)."""
        keys: dict[str, None] = {}
        for e in self.epochs:
            for k, v in e.items():
                if k.startswith("train_") and k not in _PLAIN_TRAIN_KEYS and num(v) is not None:
                    keys[k] = None
        return list(keys)


def _is_epoch_record(rec: dict[str, Any]) -> bool:
    """Epoch records carry the schedule or validation; step records (log_every_steps) do not."""
    if rec.get("final") or "epoch" not in rec:
        return False
    return any(k in rec for k in ("lr", "train_seconds", "val_pgd_acc", "val_clean_acc"))


def _read_metrics(path: Path, problems: list[Problem]) -> list[dict[str, Any]]:
    """Epoch records (the last one per epoch); a corrupt line is reported and skipped.

    A resumed run logs its interrupted epoch again, so the later record is the one that counts; step
    records (trainer.log_every_steps) and the final test record are not epochs.
    """
    by_epoch: dict[int, dict[str, Any]] = {}
    try:
        text = path.read_text()
    except OSError as e:
        problems.append(Problem(path.parent, f"cannot read metrics.jsonl ({e.strerror or e})"))
        return []
    bad: list[int] = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except ValueError:
            bad.append(i)
            continue
        if _is_epoch_record(rec):
            try:
                by_epoch[int(rec["epoch"])] = rec
            except (TypeError, ValueError):
                bad.append(i)
    if bad:
        shown = ", ".join(str(i) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        problems.append(
            Problem(
                path.parent,
                f"metrics.jsonl: {len(bad)} corrupt line(s) skipped (line {shown}); the curves "
                "leave those epochs out",
            )
        )
    return [by_epoch[e] for e in sorted(by_epoch)]


def _checkpoint_files(run_dir: Path) -> dict[str, Path]:
    """The run's checkpoint files by name, last.pt and best.pt first (the names people evaluate)."""
    out = {n: run_dir / n for n in ("last.pt", "best.pt") if (run_dir / n).is_file()}
    ckdir = run_dir / "checkpoints"
    if ckdir.is_dir():
        for p in sorted(ckdir.glob("*.pt")):
            out[f"checkpoints/{p.name}"] = p
    return out


def read_train_run(path: Path) -> tuple[TrainRun | None, list[Problem]]:
    """The training run in `path`, and what is wrong or unfinished about it.

    Returns no run when nothing is recorded yet (no config.json and no epoch), since such a run has
    nothing to show; the problem list then says so.
    """
    path = Path(path)
    problems: list[Problem] = []
    config = None
    if (path / "config.json").is_file():
        config, err = _read_json(path / "config.json")
        if err is not None:
            problems.append(Problem(path, err))
            config = None
        elif not isinstance(config, dict):
            problems.append(Problem(path, "config.json is not a JSON object"))
            config = None
    epochs: list[dict[str, Any]] = []
    if (path / "metrics.jsonl").is_file():
        epochs = _read_metrics(path / "metrics.jsonl", problems)
    final = None
    if (path / "final.json").is_file():
        final, err = _read_json(path / "final.json")
        if err is not None:
            problems.append(Problem(path, err))
            final = None
    checkpoints = _checkpoint_files(path)
    if config is None and not epochs:
        if not problems:
            problems.append(
                Problem(
                    path,
                    "unfinished training run: no config.json and no epoch in metrics.jsonl yet "
                    "(it stopped or is still starting); nothing to show",
                )
            )
        return None, problems
    run = TrainRun(path, config, epochs, final, checkpoints)
    if config is None:
        problems.append(
            Problem(path, "no readable config.json: method, model and data set are unknown")
        )
    if not run.finished and not (path / "final.json").is_file():
        planned = run.planned_epochs
        done = len(epochs)
        of = f" of {planned}" if planned else ""
        problems.append(
            Problem(
                path,
                f"unfinished training run: {done}{of} epochs recorded and no final.json (still "
                "running, or stopped: resume with resume=auto); its curves are shown as far as they go",
            )
        )
    return run, problems


# ------------------------------------------------------------------------------------------------
# discovery: paths, globs and folders of runs
# ------------------------------------------------------------------------------------------------


def _kind(d: Path) -> str | None:
    """ "eval", "train", "started" (a Hydra folder and nothing else yet) or None (not a run)."""
    if (d / "results.json").is_file():
        return "eval"
    if any((d / f).exists() for f in TRAIN_FILES) or (d / "checkpoints").is_dir():
        return "train"
    if (d / ".hydra").is_dir() or (d / "aa_state").is_dir():
        return "started"
    return None


def _walk(d: Path, depth: int, found: list[tuple[str, Path]]) -> None:
    kind = _kind(d)
    if kind is not None:
        found.append((kind, d))
        return
    if depth >= MAX_DEPTH:
        return
    try:
        children = sorted(p for p in d.iterdir() if p.is_dir() and p.name not in SKIP_DIRS)
    except OSError:
        return
    for c in children:
        if not c.name.startswith("."):
            _walk(c, depth + 1, found)


def _expand(arg: str | Path) -> tuple[list[Path], list[Problem]]:
    """One command-line argument -> existing paths (a quoted glob is expanded here)."""
    s = str(arg)
    p = Path(s).expanduser()
    if p.exists():
        return [p], []
    if _GLOB_CHARS.search(s):
        hits = sorted(Path(h) for h in glob.glob(os.path.expanduser(s)))
        if hits:
            return hits, []
        return [], [Problem(p, "no file or directory matches this pattern")]
    return [], [Problem(p, "no such file or directory")]


def _started_message(d: Path) -> str:
    cfg = d / ".hydra" / "config.yaml"
    try:
        is_eval = (d / "aa_state").is_dir() or any(
            line.startswith("ckpt:") for line in cfg.read_text().splitlines()
        )
    except OSError:
        is_eval = (d / "aa_state").is_dir()
    if is_eval:
        return (
            "unfinished evaluation: no results.json (it stopped or is still running; rerun the same "
            "eval command to resume from its finished AutoAttack shards)"
        )
    return "unfinished training run: started but nothing recorded yet (no config.json, no epoch)"


def discover(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path], list[Problem]]:
    """Training run dirs, evaluation run dirs and problems for command-line paths.

    A path may be a run directory, a file inside one (results.json, metrics.jsonl, ...), a folder of
    runs (runs/demo, a multirun sweep folder, a study's runs folder: searched MAX_DEPTH levels down)
    or a glob pattern the shell did not expand.
    """
    train: dict[Path, None] = {}
    evals: dict[Path, None] = {}
    problems: list[Problem] = []
    for arg in paths:
        hits, probs = _expand(arg)
        problems += probs
        from_glob = len(hits) > 1 or (hits and Path(str(arg)) != hits[0])
        for p in hits:
            if p.is_file():
                kind = _kind(p.parent)
                if kind in ("eval", "train"):
                    (evals if kind == "eval" else train)[p.parent.resolve()] = None
                elif not from_glob and p.name not in SWEEP_FILES:
                    # a glob over a sweep folder also matches its multirun.yaml: not a mistake
                    problems.append(
                        Problem(
                            p,
                            "not part of a run directory (give a training run directory with "
                            "config.json/metrics.jsonl, an evaluation run directory with "
                            "results.json, or a folder of them)",
                        )
                    )
                continue
            found: list[tuple[str, Path]] = []
            _walk(p, 0, found)
            if not found:
                try:
                    empty = not any(p.iterdir())
                except OSError as e:
                    problems.append(Problem(p, f"cannot list this directory ({e.strerror or e})"))
                    continue
                problems.append(
                    Problem(
                        p,
                        "empty directory: no run in it"
                        if empty
                        else "no training run (config.json, metrics.jsonl) or evaluation run "
                        f"(results.json) found in it, {MAX_DEPTH} levels down",
                    )
                )
            for kind, d in found:
                if kind == "eval":
                    evals[d.resolve()] = None
                elif kind == "train":
                    train[d.resolve()] = None
                else:
                    problems.append(Problem(d, _started_message(d)))
    return list(train), list(evals), problems


# ------------------------------------------------------------------------------------------------
# pairing evaluations with training runs
# ------------------------------------------------------------------------------------------------


class _Hasher:
    """File SHA-256s, computed once per file (last.pt, best.pt and step files are hard links)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, int, int], str] = {}

    def __call__(self, path: Path) -> str | None:
        from advtrain.utils.hashing import file_sha256

        try:
            st = path.stat()
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in self._cache:
                self._cache[key] = file_sha256(path)
            return self._cache[key]
        except OSError:
            return None


def _aliases(run: TrainRun, path: Path) -> str:
    """ "last.pt = best.pt" when those names are one file (hard links): the checkpoint's name."""
    try:
        ino = path.stat().st_ino
        names = [n for n, p in run.checkpoints.items() if p.stat().st_ino == ino]
    except OSError:
        names = []
    names = names or [str(path.relative_to(run.path))]
    top = [n for n in names if not n.startswith("checkpoints/")]
    return " = ".join(top or names)


def _size(path: Path) -> int | None:
    """File size, or None: a file of another size cannot have the same hash (a free pre-filter)."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def pair(
    train: Sequence[TrainRun], evals: Sequence[EvalRun]
) -> tuple[list[EvalRun], list[Problem]]:
    """Attach each evaluation to the training run holding its checkpoint; returns the unpaired ones.

    The recorded path is tried first (one hash), then every checkpoint of every run (a moved or
    copied run) of the recorded file's size when that file still exists; each file is hashed at
    most once, so a report over large checkpoints reads each of them once at most.
    """
    hasher = _Hasher()
    by_file: dict[Path, tuple[TrainRun, Path]] = {}
    for run in train:
        for p in run.checkpoints.values():
            by_file[p.resolve()] = (run, p)
    unpaired: list[EvalRun] = []
    problems: list[Problem] = []
    for ev in evals:
        sha = ev.checkpoint_sha256
        match: tuple[TrainRun, Path] | None = None
        if sha and ev.checkpoint_path:
            hit = by_file.get(Path(ev.checkpoint_path).resolve())
            if hit is not None and hasher(hit[1]) == sha:
                match = hit
        owner = next(
            (r for r in train if ev.checkpoint_path and _inside(Path(ev.checkpoint_path), r.path)),
            None,
        )
        if sha and match is None:
            # The recorded file's size narrows the search, unless that file was overwritten since
            # (inside a given run): then an older step file may hold the evaluated weights.
            rec = Path(ev.checkpoint_path) if ev.checkpoint_path and owner is None else None
            size = _size(rec) if rec is not None else None
            match = next(
                (
                    (run, p)
                    for run in train
                    for p in run.checkpoints.values()
                    if (size is None or _size(p) == size) and hasher(p) == sha
                ),
                None,
            )
        if match is not None:
            run, p = match
            run.evaluated.append((_aliases(run, p), ev))
            continue
        unpaired.append(ev)
        if owner is not None:
            problems.append(
                Problem(
                    ev.path,
                    f"stale evaluation: it evaluated {ev.checkpoint_path}, but no checkpoint of "
                    f"{owner.path} has that SHA-256 any more (trained further or retrained since); "
                    "shown on its own, re-evaluate the current checkpoint",
                )
            )
    return unpaired, problems


def _ckpt_override(path: Path) -> str:
    """`ckpt=PATH`, quoted when Hydra's override grammar would split it (sweep job folders have
    '=' and ',' in their names)."""
    return f"ckpt='{path}'" if re.search(r"[=,\s\[\]{}()'\"]", str(path)) else f"ckpt={path}"


@dataclass
class RunSet:
    """Everything a report shows: training runs (with their evaluations), lone evaluations, problems."""

    train: list[TrainRun]
    unpaired: list[EvalRun]
    problems: list[Problem]

    @property
    def evals(self) -> list[EvalRun]:
        return [ev for r in self.train for _, ev in r.evaluated] + list(self.unpaired)


def load_runs(paths: Iterable[str | Path]) -> RunSet:
    """Read every run the paths name and pair the evaluations with their training runs."""
    train_dirs, eval_dirs, problems = discover(paths)
    train: list[TrainRun] = []
    for d in train_dirs:
        run, probs = read_train_run(d)
        problems += probs
        if run is not None:
            train.append(run)
    evals: list[EvalRun] = []
    for d in eval_dirs:
        ev = read_eval_run(d)
        if isinstance(ev, Problem):
            problems.append(ev)
        else:
            evals.append(ev)
    unpaired, probs = pair(train, evals)
    problems += probs
    for run in train:
        if not run.evaluated:
            problems.append(
                Problem(
                    run.path,
                    "no evaluation of its checkpoints among the given paths (clean / PGD-20 / "
                    "AutoAttack columns stay empty): python -m advtrain eval "
                    f"{_ckpt_override(run.path / 'last.pt')} eval=aa_standard, then pass the eval "
                    "run too",
                )
            )
    return RunSet(train, unpaired, problems)


def short_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Shortest unique trailing parts of the paths (at least two: "demo/2026-12-06_19-58-13").

    A Hydra sweep job folder ("3_loss.beta=6,seed=1") becomes "job 3": its overrides are listed in
    the table's differing-config column anyway.
    """

    def parts(p: Path) -> list[str]:
        out = []
        for part in p.parts:
            m = _SWEEP_JOB.match(part)
            out.append(f"job {m.group(1)}" if m else part)
        return out

    split = {p: parts(p) for p in paths}
    names: dict[Path, str] = {}
    for p, ps in split.items():
        k = min(2, len(ps))
        while k < len(ps):
            tail = ps[-k:]
            if all(q is p or split[q][-k:] != tail for q in paths):
                break
            k += 1
        names[p] = "/".join(ps[-k:])
    return names
