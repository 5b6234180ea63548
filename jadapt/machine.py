"""Which machine this is: CPU model and the instruction-set flags that decide bf16 speed.

Why: the CPUs jadapt is built and measured on change from day to day. With AMX
(``amx_bf16``) bf16 matmuls run several times faster than fp32; with AVX512-BF16 alone they
run slower than fp32; some CPUs have neither. A speed figure means nothing without the line
this module prints, so every benchmark and study report carries it. Reads ``/proc/cpuinfo``
(the flags ``lscpu`` shows), falling back to ``lscpu``; no JAX import.
"""
from __future__ import annotations

import os
import platform
import subprocess

BF16_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f")


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _lscpu_field(name: str) -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.split(":", 1)[0].strip().lower() == name.lower():
            return line.split(":", 1)[1].strip()
    return None


def cpu_model() -> str:
    """``model name`` of the CPU (e.g. "Intel(R) Xeon(R) Processor")."""
    return _cpuinfo_field("model name") or _lscpu_field("Model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    flags = _cpuinfo_field("flags") or _lscpu_field("Flags") or ""
    return set(flags.split())


def cpu_isa(flags: set[str] | None = None) -> str:
    """The bf16-relevant flags present, e.g. "amx_bf16, amx_tile, avx512_bf16, avx512f", or
    "no amx / avx512" (then bf16 matmuls are emulated and slow)."""
    flags = cpu_flags() if flags is None else flags
    have = [f for f in BF16_FLAGS if f in flags]
    return ", ".join(have) if have else "no amx / avx512"


def bf16_class(flags: set[str] | None = None) -> str:
    """"amx" (bf16 matmuls fast), "avx512_bf16" (bf16 slower than fp32) or "none"."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "none"


def cores() -> int:
    """Cores this process may use (the affinity mask, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_line() -> str:
    """One line for a benchmark header or report: model, usable cores, ISA."""
    return f"{cpu_model()}, {cores()} cores, ISA: {cpu_isa()}"
