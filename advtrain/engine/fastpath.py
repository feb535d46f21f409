"""Which fast paths a run uses: memory format, autocast, torch.compile and cuDNN autotuning.

`auto` picks what measured fastest *and correct* for the device, and on the CPU for the CPU's
class (`advtrain.utils.cpu`: the instruction set oneDNN runs), never for the device type alone:
the same torch build runs other convolution kernels on an AVX2-only CPU than on an AVX-512 one.
An explicit value always wins. Measurements: `python -m advtrain bench bench=fastpath`, results
in results/bench/fastpath*.md; the AVX2 defect: docs/cpu_fast_paths.md.

CPU, channels_last (fp32), by oneDNN class:

* avx512_amx (2-core Xeon with AVX-512 + AMX, torch 2.14.1): ON. Training step 0.77x, attack pass
  0.86x the NCHW time (geometric mean over small CNN and PreActResNet-18), as exact as NCHW.
* avx512 (2-core AMD EPYC Zen 4, AVX-512 without AMX, torch 2.14.1): ON. Training step 0.88x,
  attack pass 0.91x, as exact as NCHW.
* avx2 (AMD EPYC AVX2-only; also an AVX-512 CPU with ONEDNN_MAX_CPU_ISA=AVX2): OFF. oneDNN's AVX2
  weight-gradient kernel for stride-2 1x1 convolutions with few input channels writes outside
  its buffers in channels_last: the interpreter aborts ("double free or corruption") or the
  weight gradients come out wrong (relative error 1.13 on a width-4 PreActResNet-18).
* anything else (unmeasured, or not x86): OFF.

Where the table says ON, `auto` also needs this machine to pass a self-check
(`advtrain.engine.fastpath_probe`, run once in a child process so a native crash cannot take
the run down, cached per CPU, torch version and oneDNN cap); a failed check means OFF.

Other fast paths:

* CPU, bf16 autocast: OFF, by policy rather than speed. On AVX-512 CPUs it is ~2x faster but
  changes the numbers of every CPU run (input gradients 13-23% off in relative L2, 5-7% of their
  signs flipped); CPU runs here are tests and reproducibility checks, and CPUs without
  AVX512-BF16/AMX emulate it slowly. Opt in with trainer.autocast=bf16.
* CPU, torch.compile: OFF. Attack passes ran 0.67-0.91x (slower), training passes 1.0-1.3x,
  so a 5-step adversarial step was 1.12-1.14x slower, plus compilation per model and mode.
* CUDA, channels_last + bf16 autocast: ON (tensor cores need NHWC and 16-bit inputs) for the
  natural forward/backward; the GPU figures come from scripts/bench_gpu.sh.
* Attacks: fp32 on every device, whatever `autocast` says (the precision policy,
  `resolve_attack_autocast`): the training attack and the adversarial forward of the loss stay
  fp32 (TF32 where PyTorch's defaults allow it); bf16 there is an explicit opt-in,
  trainer.autocast_attack=bf16, logged as a warning. Its cost on a GPU: bench=attack_precision. cuDNN autotuning (cudnn.benchmark) is on unless the
  run asks for deterministic kernels: input shapes are fixed during training. torch.compile
  stays off until measured.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advtrain.errors import ConfigError
from advtrain.utils.cpu import CpuInfo, cpu_info

__all__ = [
    "CPU_CHANNELS_LAST",
    "FastPaths",
    "ProbeResult",
    "cache_dir",
    "configure_cudnn",
    "cpu_channels_last_auto",
    "fast_path_defaults",
    "resolve_attack_autocast",
    "resolve_fast_paths",
    "run_probe",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FastPaths:
    """The resolved fast-path settings of one run; `why` says how each `auto` was decided."""

    channels_last: bool
    autocast_dtype: torch.dtype | None
    compile: bool
    cudnn_benchmark: bool = False
    why: str = field(default="", compare=False)
    #: The attack's and the adversarial forward's autocast (`trainer.autocast_attack`): None (fp32,
    #: the default on every device) unless explicitly opted in.
    attack_autocast_dtype: torch.dtype | None = None

    def describe(self) -> str:
        """The one line a run prints at its start."""
        on = {True: "on", False: "off"}
        ac = (
            "off" if self.autocast_dtype is None else str(self.autocast_dtype).replace("torch.", "")
        )
        attack = (
            "fp32"
            if self.attack_autocast_dtype is None
            else str(self.attack_autocast_dtype).replace("torch.", "")
        )
        line = (
            f"fast paths: channels_last={on[self.channels_last]}, autocast={ac} "
            f"(attack {attack}), compile={on[self.compile]}"
        )
        if self.cudnn_benchmark:
            line += ", cudnn.benchmark=on"
        return f"{line} ({self.why})" if self.why else line


#: channels_last on the CPU under `auto`, by oneDNN class (see the module docstring).
CPU_CHANNELS_LAST: dict[str, tuple[bool, str]] = {
    "avx512_amx": (True, "measured faster and exact (Xeon AVX-512 + AMX, torch 2.14.1)"),
    "avx512": (True, "measured faster and exact (AMD EPYC Zen 4 AVX-512, torch 2.14.1)"),
    "avx2": (
        False,
        "oneDNN's AVX2 channels_last weight-gradient kernel is broken (heap "
        "corruption, wrong gradients: docs/cpu_fast_paths.md)",
    ),
}

#: Classes where the layout is not merely unmeasured but known to compute wrong results.
KNOWN_BROKEN = frozenset({"avx2"})

#: What `auto` means for the other settings, per device type.
_AUTO_AUTOCAST = {"cuda": torch.bfloat16}
_AUTO_CUDNN_BENCHMARK = {"cuda": True}

_TRUE = (True, "true", "on", "yes", 1)
_FALSE = (False, None, "false", "off", "no", 0)

PROBE_VERSION = 1


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    cached: bool = False


def cache_dir() -> Path:
    """Where per-machine results (the fast-path self-check) are kept between runs."""
    env = os.environ.get("ADVTRAIN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "advtrain"


def _cache_path() -> Path:
    return cache_dir() / "fastpath_probe.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(key: str, entry: dict[str, Any]) -> None:
    """Best effort: an unwritable cache only means the probe runs again next time."""
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache()
        data[key] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fastpath_probe.")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except OSError as e:
        log.debug("could not cache the fast-path self-check in %s: %s", path, e)


PROBE_COMMAND = (sys.executable, "-m", "advtrain.engine.fastpath_probe")


def run_probe(
    info: CpuInfo | None = None,
    *,
    use_cache: bool = True,
    command: Sequence[str] = PROBE_COMMAND,
) -> ProbeResult:
    """Run (or recall) the channels_last self-check for this CPU in a child process.

    The child prints one JSON line (`fastpath_probe.main`); a crash, a timeout or anything
    else counts as a failed check. `command` replaces the child (tests inject crashes); only
    the real check is cached.
    """
    info = info or cpu_info()
    key = f"v{PROBE_VERSION}|{info.signature()}"
    real = tuple(command) == PROBE_COMMAND
    use_cache = use_cache and real
    if use_cache:
        hit = _read_cache().get(key)
        if isinstance(hit, dict) and isinstance(hit.get("ok"), bool):
            return ProbeResult(hit["ok"], str(hit.get("detail", "")), cached=True)
    try:
        r = subprocess.run(list(command), capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return ProbeResult(False, f"self-check did not run: {e}")
    if r.returncode != 0:
        res = ProbeResult(False, _death(r.returncode, r.stdout, r.stderr))
    else:
        try:
            out = json.loads(r.stdout.strip().splitlines()[-1])
            failed = out["failed"]
        except (ValueError, IndexError, KeyError, TypeError):
            return ProbeResult(False, f"self-check printed no result: {r.stdout[-200:]!r}")
        if failed:
            worst = failed[0]
            res = ProbeResult(
                False,
                f"self-check failed {len(failed)} of {out['cases']} cases, e.g. {worst['case']} "
                f"at {worst['threads']} thread(s): relative errors {worst['errors']}",
            )
        else:
            res = ProbeResult(True, f"self-check passed {out['cases']} cases")
    if real:
        _write_cache(key, {"ok": res.ok, "detail": res.detail, "cpu": info.describe()})
    return res


def _death(code: int, stdout: str, stderr: str) -> str:
    """What a dead self-check says: the signal or exit code, the case it was running, libc's words."""
    how = f"exit code {code}"
    if code < 0:
        try:
            how = f"{signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            pass
    running = [ln for ln in stdout.splitlines() if ln.startswith("running: ")]
    where = f" while {running[-1][len('running: ') :]}" if running else ""
    # glibc's heap checks ("double free or corruption", "free(): invalid size") and Python's
    # fatal-error header say what happened; faulthandler's stack dump around them does not.
    words = [
        ln.strip()
        for ln in stderr.splitlines()
        if "free" in ln or "corruption" in ln or ln.startswith("Fatal Python error")
    ]
    said = f" ({'; '.join(words[:2])})" if words else ""
    return f"self-check process died with {how}{where}{said}"


def cpu_channels_last_auto(info: CpuInfo | None = None) -> tuple[bool, str]:
    """(channels_last, reason) that `auto` means on this CPU: the class table, then the self-check."""
    info = info or cpu_info()
    on, why = CPU_CHANNELS_LAST.get(
        info.isa_class, (False, "not measured on this CPU class, so the safe NCHW layout")
    )
    if not on:
        return False, f"{info.short()}: {why}"
    probe = run_probe(info)
    if not probe.ok:
        return False, f"{info.short()}: {probe.detail}"
    cached = ", cached" if probe.cached else ""
    return True, f"{info.short()}: {why}; {probe.detail}{cached}"


def _flag(name: str, value: Any) -> bool | None:
    """True/False for an explicit setting, None for `auto`."""
    if value == "auto":
        return None
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"trainer.{name}={value!r}: use auto, true or false")


def resolve_fast_paths(t: dict[str, Any], device: torch.device) -> FastPaths:
    """The fast paths for trainer config `t` on `device`; `auto` (the default) per the table above."""
    why: list[str] = []
    channels_last = _flag("channels_last", t.get("channels_last", "auto"))
    if channels_last is None:
        if device.type == "cuda":
            channels_last = True
            why.append("channels_last auto: on for CUDA")
        elif device.type == "cpu":
            channels_last, reason = cpu_channels_last_auto()
            why.append(f"channels_last auto on {reason}")
        else:
            channels_last = False
            why.append(f"channels_last auto: off on {device.type}")
    elif channels_last and device.type == "cpu" and cpu_info().isa_class in KNOWN_BROKEN:
        info = cpu_info()
        log.warning(
            "trainer.channels_last=true on %s: %s; set trainer.channels_last=auto",
            info.describe(),
            CPU_CHANNELS_LAST[info.isa_class][1],
        )
    ac = t.get("autocast", "auto")
    if ac == "auto":
        dtype = _AUTO_AUTOCAST.get(device.type)
    elif ac in _FALSE:
        dtype = None
    elif ac == "bf16":
        dtype = torch.bfloat16
    else:
        raise ConfigError(f"trainer.autocast={ac!r}: use auto, bf16 or false")
    compiled = _flag("compile", t.get("compile", "auto"))
    deterministic = bool(t.get("deterministic", False))
    return FastPaths(
        channels_last,
        dtype,
        bool(compiled),
        cudnn_benchmark=_AUTO_CUDNN_BENCHMARK.get(device.type, False) and not deterministic,
        why="; ".join(why),
        attack_autocast_dtype=resolve_attack_autocast(t.get("autocast_attack", False)),
    )


def resolve_attack_autocast(value: Any) -> torch.dtype | None:
    """`trainer.autocast_attack`: false / fp32 (default) -> None, bf16 -> torch.bfloat16.

    The precision policy: whatever `trainer.autocast` does for the natural pass, the training attack
    (its forwards and input gradients) and the adversarial forward of the loss run in fp32 unless
    this says bf16. There is no `auto`: bf16 attacks change what is trained (the TRADES/GKL start
    x + 0.001 N(0, 1) and an early GKL eps_t are below bf16's resolution near pixel values 0.5-1,
    so the first step's gradient signs are close to random), so only an explicit opt-in gets them.
    """
    if value in _FALSE or value == "fp32":
        return None
    if value == "bf16":
        return torch.bfloat16
    raise ConfigError(f"trainer.autocast_attack={value!r}: use false (fp32, the default) or bf16")


def fast_path_defaults(t: dict[str, Any], device: torch.device) -> tuple[bool, torch.dtype | None]:
    """(channels_last, autocast dtype) for trainer config `t` on `device` (see resolve_fast_paths)."""
    fp = resolve_fast_paths(t, device)
    return fp.channels_last, fp.autocast_dtype


def configure_cudnn(fast: FastPaths, device: torch.device) -> bool:
    """Set cuDNN autotuning for a CUDA run (a process-wide flag, so only the run's entry point
    should call this); returns the value set. No-op off CUDA."""
    if device.type != "cuda":
        return False
    torch.backends.cudnn.benchmark = fast.cudnn_benchmark
    return fast.cudnn_benchmark
