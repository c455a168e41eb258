"""Facts about the host CPU that decide INT8 settings (VNNI) and what reports name."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_vnni() -> bool:
    """AVX512-VNNI or AVX-VNNI: u8 x s8 dot products without the 16-bit saturation of plain AVX2."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction-set extensions that decide which int8/bf16 kernels the runtimes pick, as reports name them.
_ISA = (("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8"),
        ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16"), ("avx512f", "AVX512F"), ("avx2", "AVX2"))


def isa_summary() -> str:
    """e.g. 'AVX512-VNNI AVX-VNNI AVX512-BF16 AVX512F AVX2': what a bare CPU name (often 'AMD EPYC' under a
    hypervisor) does not say."""
    flags = cpu_flags()
    return " ".join(name for flag, name in _ISA if flag in flags) or "unknown ISA"
