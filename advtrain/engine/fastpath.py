"""Which fast paths a run uses: memory format, autocast, torch.compile and cuDNN autotuning, per device.

`auto` picks what measured fastest *and correct* for the device (`python -m advtrain bench
bench=fastpath`, results in results/bench/fastpath.md and README.md); an explicit value always wins.

Measured choices (results/bench/fastpath.md; 2-core Xeon with AVX-512 + AMX, torch 2.14, CPU):

* CPU, channels_last: ON. oneDNN convolutions run faster on NHWC activations: training step
  1.25-1.39x (small CNN) and 1.02-1.30x at 1 thread / 1.14x at 2 threads (PreActResNet-18),
  attack passes 1.01-1.34x; never slower, and losses and gradients are as close to a float64
  reference as NCHW's.
* CPU, bf16 autocast: OFF, by policy rather than speed. On this AMX CPU it was 1.5-3x *faster*
  and within mixed-precision tolerance, but it changes the numbers of every CPU run (input
  gradients 13-23% off in relative L2, 5-7% of their signs flipped), CPU runs here are tests and
  reproducibility checks, and CPUs without AMX / AVX512-BF16 emulate it slowly. Opt in with
  trainer.autocast=bf16.
* CPU, torch.compile: OFF. Attack passes ran 0.67-0.91x (slower), training passes 1.0-1.3x,
  so a 5-step adversarial step was 1.12-1.14x slower, plus compilation per model and mode.
* CUDA, channels_last + bf16 autocast: ON (tensor cores need NHWC and 16-bit inputs); the GPU
  figures come from scripts/bench_gpu.sh (pending: no GPU was available when this was written).
  cuDNN autotuning (cudnn.benchmark) is on unless the run asks for deterministic kernels: input
  shapes are fixed during training. torch.compile stays off until measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from advtrain.errors import ConfigError

__all__ = ["FastPaths", "configure_cudnn", "fast_path_defaults", "resolve_fast_paths"]


@dataclass(frozen=True)
class FastPaths:
    """The resolved fast-path settings of one run."""

    channels_last: bool
    autocast_dtype: torch.dtype | None
    compile: bool
    cudnn_benchmark: bool = False


#: What `auto` means per device type (see the module docstring for the measurements).
_AUTO: dict[str, FastPaths] = {
    "cpu": FastPaths(channels_last=True, autocast_dtype=None, compile=False),
    "cuda": FastPaths(
        channels_last=True, autocast_dtype=torch.bfloat16, compile=False, cudnn_benchmark=True
    ),
}
_OTHER = FastPaths(channels_last=False, autocast_dtype=None, compile=False)

_TRUE = (True, "true", "on", "yes", 1)
_FALSE = (False, None, "false", "off", "no", 0)


def _flag(name: str, value: Any, auto: bool) -> bool:
    if value == "auto":
        return auto
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"trainer.{name}={value!r}: use auto, true or false")


def resolve_fast_paths(t: dict[str, Any], device: torch.device) -> FastPaths:
    """The fast paths for trainer config `t` on `device`; `auto` (the default) -> the table above."""
    auto = _AUTO.get(device.type, _OTHER)
    channels_last = _flag("channels_last", t.get("channels_last", "auto"), auto.channels_last)
    ac = t.get("autocast", "auto")
    if ac == "auto":
        dtype = auto.autocast_dtype
    elif ac in _FALSE:
        dtype = None
    elif ac == "bf16":
        dtype = torch.bfloat16
    else:
        raise ConfigError(f"trainer.autocast={ac!r}: use auto, bf16 or false")
    compiled = _flag("compile", t.get("compile", "auto"), auto.compile)
    deterministic = bool(t.get("deterministic", False))
    return FastPaths(
        channels_last, dtype, compiled, cudnn_benchmark=auto.cudnn_benchmark and not deterministic
    )


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
