"""Bad input, signals and re-runs through the real command line (a subprocess per case).

Each case is what a user types or puts on disk; each must end in one `error: ...` line printed once,
exit code 1 and no traceback (or, for signals and re-runs, the documented line and exit code), and
leave no half-written run directory behind. The quick cases run concurrently in one pool (one
`python -m advtrain` costs seconds of imports), then each test checks its own result.
`test_readme_common_mistakes` runs every row of README.md's "Common mistakes" tables that can be
typed on the command line and checks that the row's message is what the command prints.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_cli as advtrain

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

#: A training of a few seconds (64 images, one epoch), used by the re-run and file-mode cases.
TINY = [
    "+exp=smoke",
    "data.train_subset=64",
    "data.batch_size=32",
    "data.val_size=32",
    "trainer.epochs=1",
    "trainer.val_examples=32",
    "trainer.val_pgd_steps=1",
    "trainer.test_examples=32",
    "trainer.test_pgd_steps=1",
    "attack.steps=1",
]


def one_error(r: subprocess.CompletedProcess[str]) -> str:
    """Exit code 1, exactly one `error:` line, printed once (not also as a log line), no traceback."""
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, out[-3000:]
    message = errors[0][len("error: ") :]
    assert out.count(message) == 1, f"printed more than once:\n{out[-3000:]}"
    return message


def no_run_dir_left(runs: Path) -> None:
    """A failed start leaves no run directory holding only Hydra's `.hydra/` and `cli.log`."""
    leftovers = [p.parent for p in runs.rglob("cli.log")] if runs.exists() else []
    assert not leftovers, leftovers


# --------------------------------------------------------------------------------------------
# the quick cases, run concurrently once per module
# --------------------------------------------------------------------------------------------


class Case:
    def __init__(self, *args: str, env: dict[str, str] | None = None, setpriv: bool = False):
        self.args, self.env, self.setpriv = list(args), dict(env or {}), setpriv


def _setpriv_drops_dac() -> bool:
    """Whether we are root and may drop CAP_DAC_OVERRIDE (so a read-only folder is read-only)."""
    exe = shutil.which("setpriv")
    if os.geteuid() != 0 or exe is None:
        return False
    r = subprocess.run(
        [exe, "--bounding-set=-dac_override,-dac_read_search", "--", "true"],
        capture_output=True,
    )
    return r.returncode == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Any]:
    """Files the cases need: a file where a folder should be, a read-only folder, non-checkpoints."""
    root = tmp_path_factory.mktemp("mistakes")
    (root / "afile").write_text("a file, not a folder\n")
    ro = root / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    (root / "hello.pt").write_text("hello\n")
    (root / "info.json").write_text('{"a": 1}\n')
    (root / "zeros.pt").write_bytes(bytes(4096))
    return {"root": root, "data": data_dir, "env": {"ADVTRAIN_DATA_DIR": str(data_dir)}}


QUICK: dict[str, Case] = {
    "no_command": Case(),
    "cfg_job_resolves": Case("train", "+exp=smoke", "attack.eps=8/255", "--cfg", "job"),
    "val_examples_0": Case("train", "+exp=smoke", "trainer.val_examples=0"),
    "momentum_2": Case("train", "+exp=smoke", "optim.momentum=2"),
    "seed_float": Case("train", "+exp=smoke", "seed=1.5"),
    "lr_text": Case("train", "+exp=smoke", "optim.lr=abc"),
    "run_dir_under_file": Case("train", "+exp=smoke", "run_dir={root}/afile/run"),
    "runs_dir_is_file": Case("train", "+exp=smoke", env={"ADVTRAIN_RUNS_DIR": "{root}/afile"}),
    "runs_dir_is_file_eval": Case(
        "eval", "ckpt={root}/hello.pt", env={"ADVTRAIN_RUNS_DIR": "{root}/afile"}
    ),
    "read_only_run_dir": Case("train", "+exp=smoke", "run_dir={root}/readonly/run", setpriv=True),
    "eval_text_ckpt": Case("eval", "ckpt={root}/hello.pt", "eval=pgd20", "n_examples=32"),
    "eval_state_dict_text": Case(
        "eval", "model=small_cnn", "ckpt={root}/hello.pt", "eval=pgd20", "n_examples=32"
    ),
    "eval_json_ckpt": Case("eval", "ckpt={root}/info.json", "eval=clean", "n_examples=32"),
    "eval_zero_ckpt": Case("eval", "ckpt={root}/zeros.pt", "eval=clean", "n_examples=32"),
    "resume_text": Case("train", "+exp=smoke", "resume={root}/hello.pt"),
}


def _run_case(name: str, case: Case, world: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    root = world["root"]
    runs = root / "runs" / name
    env = {**world["env"], "ADVTRAIN_RUNS_DIR": str(runs)}
    env.update({k: v.format(root=root) for k, v in case.env.items()})
    args = [a.format(root=root) for a in case.args]
    if case.setpriv:
        exe = shutil.which("setpriv")
        assert exe is not None
        cmd = [exe, "--bounding-set=-dac_override,-dac_read_search", "--"]
        return subprocess.run(
            [*cmd, sys.executable, "-m", "advtrain", *args],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, **env},
        )
    return advtrain(*args, env=env, cwd=root)


@pytest.fixture(scope="module")
def quick(world: dict[str, Any]) -> dict[str, subprocess.CompletedProcess[str]]:
    cases = dict(QUICK)
    if not _setpriv_drops_dac():  # not root or no setpriv: a file in the path is the fallback
        cases.pop("read_only_run_dir")
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = {n: pool.submit(_run_case, n, c, world) for n, c in cases.items()}
        return {n: f.result() for n, f in futures.items()}


def test_no_command_is_an_error_with_usage(quick: dict) -> None:
    r = quick["no_command"]
    assert r.returncode == 2
    assert (
        r.stderr.startswith("error: no command given") and "usage: python -m advtrain" in r.stderr
    )


def test_cfg_job_shows_resolved_budgets(quick: dict) -> None:
    r = quick["cfg_job_resolves"]
    assert r.returncode == 0, r.stderr
    assert "eps: 0.03137254901960784" in r.stdout  # attack.eps=8/255 as typed
    assert "step_size: 0.01568627450980392" in r.stdout  # ${frac:4/255} of the smoke experiment
    assert "${" not in r.stdout


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        (
            "val_examples_0",
            r"^trainer\.val_examples must be an integer >= 1, got 0 \(to train without validation, "
            r"hold out no images: data\.val_size=0\)$",
        ),
        ("momentum_2", r"^optim\.momentum=2\.0 must be in \[0, 1\): SGD momentum"),
        ("seed_float", r"^seed=1\.5 must be an integer$"),
        ("lr_text", r"^optim\.lr='abc' must be a number$"),
    ],
)
def test_config_value_mistakes(quick: dict, world: dict, name: str, pattern: str) -> None:
    assert re.search(pattern, one_error(quick[name]))
    no_run_dir_left(world["root"] / "runs" / name)


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("run_dir_under_file", r"run directory \S*afile/run is not writable \(\S*afile is a file"),
        (
            "runs_dir_is_file",
            r"run directory \S*afile/smoke/\S+ is not writable \(\S*afile is a file",
        ),
        ("runs_dir_is_file_eval", r"run directory \S*afile/eval/\S+ is not writable"),
        (
            "read_only_run_dir",
            r"run directory \S*readonly/run is not writable \(Permission denied\)",
        ),
    ],
)
def test_unwritable_run_directory(quick: dict, name: str, pattern: str) -> None:
    if name not in quick:
        pytest.skip(
            "dropping CAP_DAC_OVERRIDE needs root and setpriv (the file cases cover the rest)"
        )
    message = one_error(quick[name])
    assert re.search(pattern, message), message
    assert message.endswith(
        "choose another with run_dir=PATH (or hydra.run.dir=PATH, or ADVTRAIN_RUNS_DIR)"
    )


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("eval_text_ckpt", r"hello\.pt is not a PyTorch checkpoint: it holds text \('hello'\)"),
        ("eval_state_dict_text", r"hello\.pt is not a PyTorch checkpoint: it holds text"),
        (
            "eval_json_ckpt",
            r"info\.json is not a PyTorch checkpoint: it holds JSON \('\{\"a\": 1\}'\)",
        ),
        ("eval_zero_ckpt", r"zeros\.pt is truncated or corrupt \(it starts with zero bytes"),
        ("resume_text", r"hello\.pt is not a PyTorch checkpoint: it holds text"),
    ],
)
def test_garbage_checkpoint_is_one_line(quick: dict, world: dict, name: str, pattern: str) -> None:
    message = one_error(quick[name])
    assert re.search(pattern, message), message
    assert "pickled Python objects" not in message
    no_run_dir_left(world["root"] / "runs" / name)


# --------------------------------------------------------------------------------------------
# a real run: start line, file modes, re-runs, evaluation
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(world: dict[str, Any]) -> dict[str, Any]:
    """A finished one-epoch run through the command line (attack.eps written 8/255)."""
    run_dir = world["root"] / "finished"
    old = os.umask(0o022)
    try:
        r = advtrain(
            "train",
            *TINY,
            "attack.eps=8/255",
            f"run_dir={run_dir}",
            env=world["env"],
            cwd=world["root"],
        )
    finally:
        os.umask(old)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return {"run_dir": run_dir, "result": r}


def test_start_line_and_file_modes(finished: dict) -> None:
    r, run_dir = finished["result"], finished["run_dir"]
    start = [ln for ln in (r.stdout + r.stderr).splitlines() if "training smoke on" in ln]
    assert len(start) == 1, (r.stdout + r.stderr)[-2000:]
    for part in (
        "small_cnn",
        "64 train images",
        "2 steps per epoch x 1 epochs",
        str(run_dir),
        "fast paths:",
    ):
        assert part in start[0], start[0]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".pt" for p in files)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, modes  # checkpoints too, not mkstemp's 0600


def _snapshot(run_dir: Path) -> dict[str, tuple[float, int]]:
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mtime, p.stat().st_size)
        for p in run_dir.rglob("*")
        if p.is_file() and ".hydra" not in p.parts and p.name != "cli.log"
    }


def test_resume_auto_on_a_finished_run_touches_nothing(finished: dict, world: dict) -> None:
    run_dir = finished["run_dir"]
    before = _snapshot(run_dir)
    r = advtrain(
        "train", *TINY, f"run_dir={run_dir}", "resume=auto", env=world["env"], cwd=world["root"]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{run_dir} is already finished (epoch 1 of 1, final.json): nothing to do" in r.stdout
    assert "trainer.epochs=2 or more" in r.stdout
    assert _snapshot(run_dir) == before  # final.json, config.json, metrics.jsonl, checkpoints


def test_a_fresh_start_into_a_finished_run_is_refused_and_touches_nothing(
    finished: dict, world: dict
) -> None:
    run_dir = finished["run_dir"]
    before = _snapshot(run_dir)
    r = advtrain("train", *TINY, f"run_dir={run_dir}", env=world["env"], cwd=world["root"])
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"run directory {run_dir} already holds a finished run (final.json, last.pt" in lines[0]
    assert "resume=auto" in lines[0] and "run_dir=PATH" in lines[0]
    after = _snapshot(run_dir)
    assert after == before  # nothing of the earlier run replaced, and the directory not removed


def test_eval_without_data_has_no_dataset_note_and_exact_fractions(
    finished: dict, world: dict
) -> None:
    out = world["root"] / "eval_no_data"
    r = advtrain(
        "eval",
        f"ckpt={finished['run_dir'] / 'last.pt'}",
        "eval=pgd20",
        "n_examples=25",
        "progress=false",
        f"run_dir={out}",
        env=world["env"],
        cwd=world["root"],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "results.json").read_text())  # run_dir= honoured
    assert not any("dataset" in w for w in res["warnings"]), res["warnings"]
    n = res["n_examples"]
    for acc in (res["clean_acc"], res["robust_acc"], res["pgd"]["acc"]):
        k = round(acc * n)
        assert acc == k / n  # the nearest float to correct / n, no float32 noise (0.4699999988)
    for acc in res["per_class"]["clean_acc"]:
        assert acc is None or len(repr(acc)) <= 20
    # the note stays for a dataset the user did type
    r = advtrain(
        "eval",
        f"ckpt={finished['run_dir'] / 'last.pt'}",
        "eval=clean",
        "n_examples=16",
        "data=cifar100",
        "progress=false",
        f"run_dir={out}_c100",
        env=world["env"],
        cwd=world["root"],
    )
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = json.loads((Path(f"{out}_c100") / "results.json").read_text())["warnings"]
    assert any("(data=cifar100 ignored)" in w for w in warnings)


@pytest.mark.slow
def test_more_epochs_continue_a_finished_run_and_say_so(finished: dict, world: dict) -> None:
    run_dir = world["root"] / "extended"
    shutil.copytree(finished["run_dir"], run_dir)
    env, cwd = world["env"], world["root"]
    r = advtrain(
        "train", *TINY, "trainer.epochs=2", f"run_dir={run_dir}", "resume=auto", env=env, cwd=cwd
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (
        "trainer.epochs 1 -> 2: continuing the finished run from epoch 2; the lr schedule (and any "
        "eps ramp) is recomputed for 2 epoch(s)"
    ) in r.stdout + r.stderr
    assert json.loads((run_dir / "final.json").read_text())["epoch"] == 2
    backup = run_dir / "metrics.jsonl.before_resume_2"
    first = backup.read_text()
    # resuming at the same step again keeps the first backup and writes a second one
    step2 = run_dir / "checkpoints" / "step_000000002.pt"
    r = advtrain(
        "train",
        *TINY,
        "trainer.epochs=3",
        f"run_dir={run_dir}",
        f"resume={step2}",
        env=env,
        cwd=cwd,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert backup.read_text() == first and (run_dir / "metrics.jsonl.before_resume_2.1").is_file()
    # fewer epochs than the checkpoint has trained (a run stopped in its final test pass)
    (run_dir / "final.json").unlink()
    r = advtrain(
        "train", *TINY, "trainer.epochs=2", f"run_dir={run_dir}", "resume=auto", env=env, cwd=cwd
    )
    message = one_error(r)
    assert re.search(
        r"trainer\.epochs=2 but \S+step_000000006\.pt has already trained 3 epochs; resume with "
        r"trainer\.epochs=3 or more \(epochs can grow on resume, not shrink\)$",
        message,
    ), message


def test_a_run_stopped_before_final_json_is_completed_not_refused(
    finished: dict, world: dict
) -> None:
    run_dir = world["root"] / "unfinished"
    shutil.copytree(finished["run_dir"], run_dir)
    (run_dir / "final.json").unlink()  # as if stopped during the final test pass
    r = advtrain(
        "train", *TINY, f"run_dir={run_dir}", "resume=auto", env=world["env"], cwd=world["root"]
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((run_dir / "final.json").read_text())["epoch"] == 1


@pytest.mark.parametrize("garbage", ["text", "zeros"])
def test_resume_auto_skips_a_garbage_newest_checkpoint(
    finished: dict, world: dict, garbage: str
) -> None:
    run_dir = world["root"] / f"garbage_{garbage}"
    shutil.copytree(finished["run_dir"], run_dir)
    bad = run_dir / "checkpoints" / "step_000000009.pt"
    if garbage == "text":
        bad.write_text("hello\n")
    else:
        bad.write_bytes(bytes(8192))
    r = advtrain(
        "train", *TINY, "trainer.epochs=2", f"run_dir={run_dir}", "resume=auto",
        env=world["env"], cwd=world["root"],
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Traceback" not in out, out[-3000:]
    assert f"skipping {bad}" in out
    assert f"resumed from {run_dir / 'checkpoints' / 'step_000000002.pt'} at epoch 2 step 2" in out
    assert (run_dir / "checkpoints" / "step_000000009.pt.abandoned").is_file()  # set aside


# --------------------------------------------------------------------------------------------
# signals
# --------------------------------------------------------------------------------------------

SIGNAL_RUN = [
    "+exp=smoke",
    "data.train_subset=512",
    "data.batch_size=32",
    "data.val_size=32",
    "trainer.epochs=1",
    "trainer.val_examples=16",
    "trainer.val_pgd_steps=1",
    "trainer.test_examples=16",
    "trainer.test_pgd_steps=1",
    "attack.steps=5",
    "trainer.log_every_steps=1",
]


def _train_until_first_step(
    run_dir: Path, world: dict, send: Callable[[subprocess.Popen[str]], None]
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "advtrain", "train", *SIGNAL_RUN, f"run_dir={run_dir}"],
        cwd=world["root"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **world["env"]},
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and '"step": 1' in metrics.read_text():
            send(proc)
            break
        time.sleep(0.05)
    return proc


def _stopped_line(err: str, name: str) -> str:
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith(f"interrupted by {name}")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.mark.slow
def test_sigint_stops_at_a_step_and_the_printed_command_resumes(world: dict) -> None:
    run_dir = world["root"] / "sigint"
    proc = _train_until_first_step(run_dir, world, lambda p: p.send_signal(signal.SIGINT))
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    line = _stopped_line(err, "SIGINT")
    m = re.search(
        r"at epoch 1, step (\d+) \(a step boundary\); saved (\S+); resume with: (.+)$", line
    )
    assert m, line
    step, ckpt, command = int(m.group(1)), Path(m.group(2)), m.group(3)
    assert 1 <= step < 16 and ckpt == run_dir / "checkpoints" / f"step_{step:09d}.pt"
    from advtrain.utils.checkpoint import load_checkpoint

    assert load_checkpoint(ckpt)["step"] == step
    assert not (run_dir / "final.json").exists()
    argv = shlex.split(command)
    assert argv[:4] == ["python", "-m", "advtrain", "train"]
    assert f"run_dir={run_dir}" in argv and argv[-1] == "resume=auto"
    done = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=world["root"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **world["env"]},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resumed from {ckpt} at epoch 1 step {step}" in done.stdout + done.stderr
    assert json.loads((run_dir / "final.json").read_text())["step"] == 16


def test_sigterm_stops_with_143_and_keeps_a_loadable_checkpoint(world: dict) -> None:
    run_dir = world["root"] / "sigterm"
    proc = _train_until_first_step(run_dir, world, lambda p: p.send_signal(signal.SIGTERM))
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, err[-3000:]
    line = _stopped_line(err, "SIGTERM")
    assert f"run_dir={run_dir} resume=auto" in line
    from advtrain.utils.checkpoint import load_checkpoint

    assert load_checkpoint(run_dir / "last.pt")["step"] >= 1


# --------------------------------------------------------------------------------------------
# README "Common mistakes": every row typed on the command line prints its message
# --------------------------------------------------------------------------------------------

#: Row (the table's first column) -> the arguments that make that mistake. "{ckpt}" is a finished
#: smoke run's last.pt, "{root}" a scratch folder with the files of `world`.
README_CLI: dict[str, list[str]] = {
    "a key that does not exist (typo)": ["train", "+exp=smoke", "+lrr=0.1"],
    "a typo without `+` (`trainer.epochz=3`)": ["train", "+exp=smoke", "trainer.epochz=3"],
    "an option that does not exist (`model=resnet1000`)": ["train", "model=resnet1000"],
    "a value of the wrong type (`seed=abc`, `seed=1.5`, `optim.lr=abc`)": [
        "train",
        "+exp=smoke",
        "seed=abc",
    ],
    "Linf eps in pixels (`attack.eps=8`)": ["train", "+exp=smoke", "attack.eps=8"],
    "Linf eps of L2 size (`attack.eps=0.5`)": ["train", "+exp=smoke", "attack.eps=0.5"],
    "L2 eps of Linf size (`attack=pgd_l2 attack.eps=8/255`)": [
        "train",
        "+exp=smoke",
        "attack=pgd_l2",
        "attack.eps=8/255",
    ],
    "step size larger than eps": ["train", "+exp=smoke", "attack.step_size=16/255"],
    "zero or negative attack steps": ["train", "+exp=smoke", "attack.steps=0"],
    "`data.aux_fraction` outside [0, 1)": ["train", "+exp=smoke", "data.aux_fraction=1.0"],
    "`aux_fraction > 0` without `aux_path`": ["train", "+exp=smoke", "data.aux_fraction=0.5"],
    "class or channel count that disagrees with the data (`+model.num_classes=100` on CIFAR-10)": [
        "train",
        "+exp=smoke",
        "+model.num_classes=100",
    ],
    "`trainer.nonfinite` not stop/skip": ["train", "+exp=smoke", "trainer.nonfinite=ignore"],
    "`trainer.checkpoint_every_steps=0`, `keep_last=0`, `epochs=0`": [
        "train",
        "+exp=smoke",
        "trainer.checkpoint_every_steps=0",
    ],
    "`trainer.val_examples=0`": ["train", "+exp=smoke", "trainer.val_examples=0"],
    "a momentum outside [0, 1) (`optim.momentum=2`)": ["train", "+exp=smoke", "optim.momentum=2"],
    "unknown dataset": ["train", "+exp=smoke", "data.name=cifar11"],
    "not a device (`device=tpu`)": ["train", "+exp=smoke", "device=tpu"],
    "no command (`python -m advtrain`)": [],
    "two-view data without its loss weight": ["train", "+exp=smoke", "data.two_view=true"],
    "an experiment needing aux data without it (`+exp=cifar10_gkl_synthetic`)": [
        "train",
        "+exp=cifar10_gkl_synthetic",
    ],
    "`device=cuda` on a machine without a GPU": ["train", "+exp=smoke", "device=cuda"],
    "`trainer.sync_bn=true` on the CPU": [
        "train",
        "+exp=smoke",
        "device=cpu",
        "trainer.sync_bn=true",
    ],
    "`distributed.backend=nccl` on the CPU": [
        "train",
        "+exp=smoke",
        "device=cpu",
        "distributed.backend=nccl",
    ],
    "`distributed.timeout_minutes=0`": ["train", "+exp=smoke", "distributed.timeout_minutes=0"],
    "dataset not found (tests/test_train.py)": ["train", "+exp=smoke", "data.root={root}/nodata"],
    "resume from another architecture": ["train", *TINY, "model=resnet18", "resume={ckpt}"],
    "resume with a changed model option (`model.width=16`)": [
        "train",
        *TINY,
        "model.width=16",
        "resume={ckpt}",
    ],
    "resume on another dataset (other class count)": [
        "train",
        *TINY,
        "data=cifar100",
        "resume={ckpt}",
    ],
    "resume with another loss": ["train", *TINY, "loss=pgdat", "resume={ckpt}"],
    "`resume=PATH` that does not exist": ["train", "+exp=smoke", "resume={root}/missing.pt"],
    "a file that is not a checkpoint (text, JSON) as `ckpt=`, `model=NAME ckpt=` or `resume=` (also for `eval`)": [
        "eval",
        "ckpt={root}/hello.pt",
    ],
    "a zero-filled checkpoint (a file allocated but never written)": [
        "eval",
        "ckpt={root}/zeros.pt",
    ],
    "`resume=auto` on a finished run (not an error: exit code 0, no file touched)": [
        "train",
        *TINY,
        "run_dir={ckpt_dir}",
        "resume=auto",
    ],
    "resuming with fewer epochs than the checkpoint has trained": [
        "train",
        *TINY,
        "trainer.epochs=1",
        "resume={root}/two_epochs.pt",
    ],
    "a truncated or corrupt checkpoint": ["train", "+exp=smoke", "resume={root}/truncated.pt"],
    "a checkpoint containing pickled objects": ["train", "+exp=smoke", "resume={root}/pickled.pt"],
    "run directory not writable (a file in its path, a read-only folder; also for `eval` and `export`)": [
        "train",
        "+exp=smoke",
        "run_dir=afile/run",
    ],
    "`logger=wandb` without wandb installed": ["train", *TINY, "logger=wandb"],
    "`logger=wandb` without a wandb login": ["train", *TINY, "logger=wandb"],
}

#: Rows that cannot be typed on a one-process command line here, and where they are tested.
README_ELSEWHERE = {
    "global batch not divisible by the number of processes": "tests/test_validation.py (3 processes)",
    "`device=cuda:1` under torchrun (needs GPUs; not tested here)": "not tested",
    "more processes than GPUs (needs GPUs; not tested here)": "not tested",
    "resuming a multi-node run whose run directory is not shared (not tested here)": "not tested",
    "`.npz` without the `image` (or `label`) array": "tests/test_validation.py",
    "float images": "tests/test_validation.py",
    "attacking 0-255 or normalised images (`pgd`, `run_autoattack`)": "tests/test_validation.py",
    "wrong image size or layout": "tests/test_validation.py",
    "labels off by one (1..10)": "tests/test_validation.py",
    "float labels": "tests/test_validation.py",
    "image and label counts differ": "tests/test_validation.py",
    "weights that do not fit the model": "tests/test_validation.py",
    "`resume=auto` in a new timestamped directory (not an error; not tested)": "not tested",
    "Ctrl-C or SIGTERM (preemption) during training (not a mistake: exit code 130 / 143)": "the signal tests above",
    "a new run (no `resume`) into a run directory that already holds one": (
        "tests/test_cli_mistakes.py (a finished run: the fixture's)"
    ),
    "learning rate too high (NaN)": "tests/test_kill_resume.py",
    "too many non-finite batches with `nonfinite=skip`": "tests/test_kill_resume.py",
    "a frozen model handed to the `Trainer`": "tests/test_validation.py (a library call)",
}


def _code_spans(cell: str) -> list[str]:
    """The inline code of a Markdown table cell (`x` and ``x `y` z``)."""
    return [m.group(2).strip() for m in re.finditer(r"(`+)(.+?)\1", cell)]


def readme_rows() -> dict[str, str]:
    """First column -> the first code span of the message column, for every Common-mistakes row."""
    text = README.read_text()
    section = text[text.index("## Common mistakes") :]
    section = section[: section.index("\n## ", 5)]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| mistake", "| ---")):
            continue
        cells = [c.strip() for c in line.split("|")[1:-1]]
        spans = _code_spans(cells[1])
        if spans:
            rows[cells[0]] = spans[0]
        else:  # "same message, ...": the row above's
            rows[cells[0]] = list(rows.values())[-1]
    return rows


def message_pattern(message: str) -> str:
    """A README message as a regex: `...` and `<placeholder>` match any text."""
    parts = re.split(r"(\.\.\.|<[^<>]+>)", message)
    return "".join(".*" if p == "..." or p.startswith("<") else re.escape(p) for p in parts)


def test_every_readme_row_is_covered() -> None:
    rows = readme_rows()
    assert len(rows) > 40
    unknown = sorted(set(rows) - set(README_CLI) - set(README_ELSEWHERE))
    assert not unknown, f"README rows without a test here or a named test file: {unknown}"
    stale = sorted((set(README_CLI) | set(README_ELSEWHERE)) - set(rows))
    assert not stale, f"no such README row any more: {stale}"


@pytest.fixture(scope="module")
def readme_files(world: dict[str, Any], finished: dict[str, Any]) -> dict[str, str]:
    root = world["root"]
    ckpt = finished["run_dir"] / "last.pt"
    data = ckpt.read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    from fractions import Fraction

    torch.save({"x": Fraction(1, 3)}, root / "pickled.pt")
    from advtrain.utils.checkpoint import load_checkpoint, save_checkpoint

    two = load_checkpoint(ckpt)
    two["epoch"] = 3  # two epochs trained
    two.pop("checksum")
    save_checkpoint(root / "two_epochs.pt", two)
    return {"root": str(root), "ckpt": str(ckpt), "ckpt_dir": str(finished["run_dir"])}


@pytest.mark.slow
def test_readme_common_mistakes(world: dict[str, Any], readme_files: dict[str, str]) -> None:
    """Every README row typed on the command line prints its message (concurrently: ~40 commands)."""
    rows = readme_rows()
    skip: set[str] = set()
    if torch.cuda.is_available():
        skip |= {"`device=cuda` on a machine without a GPU", "`trainer.sync_bn=true` on the CPU"}
    try:
        import wandb  # noqa: F401

        skip.add("`logger=wandb` without wandb installed")
        if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
            skip.add("`logger=wandb` without a wandb login")
    except ImportError:
        skip.add("`logger=wandb` without a wandb login")
    todo = {k: v for k, v in README_CLI.items() if k not in skip}

    def run(item: tuple[str, list[str]]) -> tuple[str, subprocess.CompletedProcess[str]]:
        name, args = item
        i = list(README_CLI).index(name)
        env = {**world["env"], "ADVTRAIN_RUNS_DIR": str(world["root"] / "readme_runs" / str(i))}
        env.pop("WANDB_MODE", None)
        return name, advtrain(*[a.format(**readme_files) for a in args], env=env, cwd=world["root"])

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        results = dict(pool.map(run, todo.items()))
    failures = []
    for name, r in results.items():
        pattern = message_pattern(rows[name])
        out = r.stdout + r.stderr
        if not re.search(pattern, out, re.DOTALL) or "Traceback" in out:
            failures.append(f"{name}: expected /{pattern}/, got rc={r.returncode}: {out[-600:]}")
        elif name.startswith(("no command", "`resume=auto` on a finished")):
            continue  # exit codes 2 and 0, checked by their own tests
        elif (
            r.returncode != 1 or sum(ln.startswith("error: ") for ln in r.stderr.splitlines()) != 1
        ):
            failures.append(f"{name}: not one error line with exit code 1: {out[-600:]}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------------------------
# no alarm without evidence: the gradient-masking flag rests on a test, not a raw gap
# --------------------------------------------------------------------------------------------


def test_a_four_image_gap_on_32_images_is_no_red_flag() -> None:
    from advtrain.eval.checks import masking_test, masking_warnings
    from advtrain.export.api import masking_evidence

    small = masking_test(4, 32, tolerated_rate=0.10)
    assert not small.significant and small.p_value == pytest.approx(0.39969, abs=1e-4)
    assert masking_test(10, 32, tolerated_rate=0.10).significant  # p = 0.0008
    assert masking_test(1100, 10_000, tolerated_rate=0.10).significant  # 11% of 10,000
    assert not masking_test(1020, 10_000, tolerated_rate=0.10).significant  # 10.2%: within noise
    # the same 12.5 pp gap: no warning on 32 images, a warning (naming its images) on 10,000
    assert masking_warnings(aa_robust_acc=0.25, pgd_robust_acc=0.375, n_examples=32) == []
    (w,) = masking_warnings(
        aa_robust_acc=0.25, pgd_robust_acc=0.375, n_examples=10_000, pgd_name="PGD-20"
    )
    assert "1250 of 10000 images robust to PGD-20 were broken by AutoAttack" in w
    # export: an older results.json (no masking_tests) is judged by the same test
    legacy = {
        "kind": "autoattack",
        "n_examples": 32,
        "robust_acc": 0.25,
        "pgd": {"acc": 0.375},
        "per_attack_robust_acc": {"apgd-ce": 0.25},
        "warnings": ["gradient masking suspected: ..."],
        "unreliable": True,
    }
    assert masking_evidence(legacy) is False
    assert masking_evidence({**legacy, "n_examples": 10_000}) is True
    recorded = {**legacy, "masking_tests": [small.to_dict()]}
    assert masking_evidence(recorded) is False


@pytest.mark.slow
def test_sigint_during_eval_is_one_line_and_exit_130(finished: dict, world: dict) -> None:
    out = world["root"] / "eval_sigint"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "advtrain", "eval", f"ckpt={finished['run_dir'] / 'last.pt'}",
            "eval=pgd20", "n_examples=2000", "batch_size=50", "progress=false", f"run_dir={out}",
        ],
        cwd=world["root"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **world["env"]},
    )  # fmt: skip
    log = out / "cli.log"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if log.is_file() and "running PGD-20" in log.read_text():
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    line = _stopped_line(err, "SIGINT")
    assert "during the evaluation; nothing was written" in line
    assert "run again with: python -m advtrain eval" in line and f"run_dir={out}" in line
    assert not (out / "results.json").exists()
