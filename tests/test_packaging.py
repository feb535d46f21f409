"""The installable package: what the wheel holds, and that an installed wheel runs outside the checkout.

The wheel is built from a copy of the sources (so no build/ or egg-info lands in the checkout) without
network or build isolation, and installed without dependencies into a fresh venv that borrows the
test venv's installed packages (torch, hydra, ...) through a .pth line. The `advtrain` it imports is
then the wheel's, and its configs come from the wheel's package data, not from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # builds a wheel, creates a venv, trains for one epoch


def _run(
    cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("advtrain", "configs", "benchmarks", "tests"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation"]
        + ["--no-index", "-w", str(out), "-q"],
        cwd=src,
    )
    (path,) = out.glob("advtrain-*.whl")
    return path


def test_wheel_holds_the_library_its_configs_and_py_typed_only(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"advtrain", "advtrain-0.1.0.dist-info"}
    sources = {p.relative_to(REPO).as_posix() for p in (REPO / "advtrain").rglob("*.py")}
    assert sources <= names, sorted(sources - names)[:10]  # every module of the library
    configs = {
        "advtrain/configs/" + p.relative_to(REPO / "configs").as_posix()
        for p in (REPO / "configs").rglob("*.yaml")
    }
    assert len(configs) > 40 and configs <= names, sorted(configs - names)[:10]
    assert "advtrain/configs/train.yaml" in names and "advtrain/configs/exp/smoke.yaml" in names
    assert "advtrain/py.typed" in names
    assert "advtrain/compat/autoattack/__init__.py" in names
    # scaffolding stays in the checkout
    assert not any(n.startswith(("benchmarks/", "tests/", "autoattack/")) for n in names)
    entry_points = zipfile.ZipFile(wheel).read("advtrain-0.1.0.dist-info/entry_points.txt")
    assert b"advtrain = advtrain.__main__:main" in entry_points


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; the test venv's site-packages supply the dependencies."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(root)
    python = root / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root
    ).strip()
    # appended after the venv's own site-packages: the wheel's advtrain wins over the checkout's
    (Path(purelib) / "borrowed_dependencies.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    _run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=root
    )
    return python


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ADVTRAIN_CONFIG_DIR")}
    env["ADVTRAIN_RUNS_DIR"] = str(tmp / "runs")
    return env


def test_installed_wheel_trains_the_smoke_experiment_from_another_directory(
    installed: Path, tmp_path: Path, data_dir: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _clean_env(tmp_path)
    where = _run(
        [
            str(installed),
            "-c",
            "import advtrain, autoattack; from advtrain.resources import config_dir; "
            "print(advtrain.__file__); print(config_dir()); print(autoattack.__file__)",
        ],
        cwd=elsewhere,
        env=env,
    ).split()
    venv_root = installed.parent.parent.resolve()
    for path in where:  # the package, its configs and the autoattack fallback: all from the wheel
        assert Path(path).resolve().is_relative_to(venv_root), where
    run_dir = tmp_path / "run"
    out = _run(
        [str(installed), "-m", "advtrain", "train", "+exp=smoke", f"data.root={data_dir}"]
        + ["trainer.epochs=1", "data.train_subset=64", "trainer.test_examples=0"]
        + [f"hydra.run.dir={run_dir}"],
        cwd=elsewhere,
        env=env,
    )
    assert "[advtrain] finished smoke" in out
    assert (run_dir / "last.pt").is_file() and (run_dir / "final.json").is_file()


def test_installed_wheel_says_in_one_line_that_benchmarks_need_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [str(installed), "-m", "advtrain", "bench", "bench=gkl_loss", "dry_run=true"],
        cwd=tmp_path,
        env=_clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "benchmarks are part of the source checkout" in errors[0]
    assert "Traceback" not in proc.stderr
