"""Facts about the host CPU that decide INT8 settings (VNNI) and what reports name.

Read from /proc/cpuinfo: x86 lists its extensions under ``flags``, ARM (a Jetson, Graviton) under ``Features``
and names the board in the device tree rather than a ``model name``.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _field(cpuinfo: str, *keys: str) -> str | None:
    """The value of the first line whose key is one of ``keys`` (the first processor's)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in keys:
            return value.strip()
    return None


def flags_of(cpuinfo: str) -> frozenset[str]:
    """The CPU's extensions as /proc/cpuinfo lists them: ``flags`` on x86, ``Features`` on ARM."""
    return frozenset((_field(cpuinfo, "flags", "Features") or "").split())


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    return flags_of(_cpuinfo())


def has_vnni() -> bool:
    """AVX512-VNNI or AVX-VNNI: u8 x s8 dot products without the 16-bit saturation of plain AVX2."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    name = _field(_cpuinfo(), "model name", "Hardware")
    if not name:
        try:  # ARM boards (a Jetson) name themselves in the device tree
            name = Path("/proc/device-tree/model").read_text().strip("\x00\n ")
        except OSError:
            name = None
    return name or platform.processor() or platform.machine()


# The instruction-set extensions that decide which int8/bf16 kernels the runtimes pick, as reports name them.
# x86: VNNI (u8 x s8 dot products), AMX (tile matrix units), BF16; ARM: the dot-product and int8 matrix
# instructions ONNX Runtime's and OpenVINO's ARM kernels use, BF16, SVE, and NEON as the baseline.
_ISA = (("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8"),
        ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"), ("avx512f", "AVX512F"), ("avx2", "AVX2"),
        ("asimddp", "DOTPROD"), ("i8mm", "I8MM"), ("bf16", "BF16"), ("sve2", "SVE2"), ("sve", "SVE"),
        ("asimd", "NEON"))


def isa_of(flags: frozenset[str]) -> tuple[str, ...]:
    """The extensions among ``flags`` that decide the int8/bf16 kernels, by their usual names."""
    return tuple(name for flag, name in _ISA if flag in flags)


def isa() -> tuple[str, ...]:
    return isa_of(cpu_flags())


def isa_summary() -> str:
    """e.g. 'AVX512-VNNI AVX-VNNI AVX512-BF16 AVX512F AVX2': what a bare CPU name (often 'AMD EPYC' under a
    hypervisor) does not say."""
    return " ".join(isa()) or "unknown ISA"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share), at least 1: the size
    of decode pools and of runtimes' concurrent requests."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)
