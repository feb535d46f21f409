"""Which CPU this is, in the terms that decide which native kernels PyTorch runs.

Fast-path defaults (`advtrain.engine.fastpath`) are measured per *CPU class*, not per device type:
the same torch build runs different oneDNN convolution kernels on an AVX2-only CPU than on an
AVX-512 one, and one of the AVX2 kernels is broken (docs/cpu_fast_paths.md: torch 2.14.1 /
oneDNN 3.12 corrupts the heap when it computes the weight gradient of a stride-2 1x1 convolution
with few input channels in channels_last). The class is what oneDNN will actually use: the CPU's
instruction sets capped by `ONEDNN_MAX_CPU_ISA` / `DNNL_MAX_CPU_ISA`, which users and tests set to
take the AVX2 code path on an AVX-512 machine.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import cache

import torch

__all__ = ["CpuInfo", "cpu_info", "ONEDNN_ISA_ENV"]

#: Environment variables oneDNN reads to cap its instruction set (the second is the old name).
ONEDNN_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA values), lowest first, mapped to our classes.
_ISA_ORDER = (
    ("SSE41", "sse"),
    ("AVX", "avx"),
    ("AVX2", "avx2"),
    ("AVX2_VNNI", "avx2"),
    ("AVX2_VNNI_2", "avx2"),
    ("AVX512_CORE", "avx512"),
    ("AVX512_CORE_VNNI", "avx512"),
    ("AVX512_CORE_BF16", "avx512"),
    ("AVX10_1_512", "avx512"),
    ("AVX512_CORE_FP16", "avx512"),
    ("AVX10_1_512_AMX", "avx512_amx"),
    ("AVX512_CORE_AMX", "avx512_amx"),
    ("AVX10_1_512_AMX_FP16", "avx512_amx"),
    ("AVX512_CORE_AMX_FP16", "avx512_amx"),
)
_CLASS_RANK = {"other": 0, "sse": 1, "avx": 2, "avx2": 3, "avx512": 4, "avx512_amx": 5}


@dataclass(frozen=True)
class CpuInfo:
    """The CPU as the native kernels see it.

    `hardware_class` comes from the CPU's flags, `isa_class` is what oneDNN uses after any
    environment cap; fast-path decisions use `isa_class`.
    """

    model: str
    machine: str
    flags: tuple[str, ...]  # the vector-extension flags that matter here, sorted
    aten_capability: str  # torch's own dispatch level (DEFAULT, AVX2, AVX512, ...)
    isa_cap: str | None  # ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA as set, or None
    hardware_class: str
    isa_class: str

    def describe(self) -> str:
        """One line for logs and benchmark headers: model and vector extensions."""
        ext = ", ".join(self.flags) if self.flags else "no AVX"
        cap = f", oneDNN capped at {self.isa_cap}" if self.isa_cap else ""
        return f"{self.model} ({self.machine}; {ext}{cap}; oneDNN class {self.isa_class})"

    def short(self) -> str:
        """Model and oneDNN class only, for one-line run headers."""
        cap = f", ONEDNN_MAX_CPU_ISA={self.isa_cap}" if self.isa_cap else ""
        return f"{self.model} (oneDNN class {self.isa_class}{cap})"

    def signature(self) -> str:
        """Everything that may change which kernels run, as one string (a cache key)."""
        return "|".join(
            [
                self.model,
                self.machine,
                ",".join(self.flags),
                self.aten_capability,
                self.isa_cap or "",
                torch.__version__,
                str(torch.backends.mkldnn.is_available()),
            ]
        )


_FLAGS_OF_INTEREST = (
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def _proc_cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; ('unknown', {}) where there is none (macOS, Windows)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor() or "unknown CPU", flags


def _hardware_class(flags: set[str]) -> str:
    if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags:  # oneDNN's avx512_core
        return "avx512_amx" if {"amx_tile", "amx_bf16"} <= flags else "avx512"
    if {"avx2", "fma"} <= flags:
        return "avx2"
    if "avx" in flags:
        return "avx"
    if "sse4_1" in flags:
        return "sse"
    return "other"


def _cap_class(value: str | None) -> str | None:
    """The class an ONEDNN_MAX_CPU_ISA value caps oneDNN at (None: no cap or ALL/unknown name)."""
    if not value:
        return None
    name = value.strip().upper()
    for isa, cls in _ISA_ORDER:
        if name == isa:
            return cls
    return None


@cache
def _cpu_info(env_key: tuple[str | None, ...]) -> CpuInfo:
    model, all_flags = _proc_cpuinfo()
    hw = _hardware_class(all_flags)
    cap_value = next((v for v in env_key if v), None)
    cap = _cap_class(cap_value)
    isa = hw if cap is None or _CLASS_RANK[cap] >= _CLASS_RANK[hw] else cap
    return CpuInfo(
        model=model,
        machine=platform.machine(),
        flags=tuple(sorted(f for f in all_flags if f in _FLAGS_OF_INTEREST)),
        aten_capability=str(torch.backends.cpu.get_cpu_capability()),
        isa_cap=cap_value,
        hardware_class=hw,
        isa_class=isa,
    )


def cpu_info() -> CpuInfo:
    """This machine's CPU (read once per process and oneDNN cap setting)."""
    return _cpu_info(tuple(os.environ.get(k) for k in ONEDNN_ISA_ENV))
