"""Which fast paths a run uses: memory format, autocast, torch.compile and cuDNN autotuning, per device.

`auto` picks what measured fastest *and correct* for the device (`python -m advtrain bench
bench=fastpath`, results in results/bench/fastpath.md and README.md); an explicit value always wins.

Measured choices (why each default is what it is):

* CPU, channels_last: ON. oneDNN's convolutions are faster on NHWC activations; on the 2-core
  Xeon (AVX-512, torch 2.14) a training step ran ~1.2x (PreActResNet-18) and ~1.4x (small CNN)
  faster, with losses and input gradients equal to fp32 precision (results/bench/fastpath.md).
* CPU, bf16 autocast: OFF. 1.5-3x *slower* there (the casts and bf16 kernels cost more than they
  save at these sizes) and it changes the numbers.
* CPU, torch.compile: OFF. Minutes of compilation per model and mode for a gain that was small
  and not consistent between the training and the attack passes (see fastpath.md).
* CUDA, channels_last + bf16 autocast: ON (tensor cores need NHWC and 16-bit inputs); the GPU
  figures are produced by scripts/bench_gpu.sh. cuDNN autotuning (cudnn.benchmark) is enabled
  unless the run asks for deterministic kernels: input shapes are fixed during training.
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
