"""The handful of CUDA runtime calls the device side makes, through ctypes on ``libcudart``.

Why not cuda-python: its wheels track the newest CUDA (13.x needs a newer driver than JetPack 6's CUDA
12.6) and JetPack 4.6/5.1 ship CUDA 10.2/11.4, for which pip has no matching binding. Every JetPack and
every CUDA install has ``libcudart.so``, and these calls have kept their C signatures since CUDA 10, so
ctypes over the library the device already has works everywhere (Polygraphy's ``cuda`` wrapper does the
same). Nothing here is imported unless an engine is built or run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import sys
from pathlib import Path
from typing import Any

from resnet_deploy.errors import BundleError, DependencyError

# cudaMemcpyKind and cudaDeviceAttr values from CUDA's driver_types.h (unchanged since CUDA 10)
HOST_TO_DEVICE, DEVICE_TO_HOST = 1, 2
ATTR_CC_MAJOR, ATTR_CC_MINOR = 75, 76
_PROPS_BYTES = 4096  # cudaDeviceProp is ~1 KB in CUDA 12; its first field is char name[256]
_CANDIDATES = ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2")
_SEARCH = ("/usr/local/cuda/lib64/libcudart.so*", "/usr/local/cuda/targets/*/lib/libcudart.so*",
           "/usr/lib/aarch64-linux-gnu/libcudart.so*", "/usr/lib/x86_64-linux-gnu/libcudart.so*")


def load_library() -> Any:
    """libcudart through ctypes, or DependencyError naming where it was looked for."""
    names = [n for n in (ctypes.util.find_library("cudart"),) if n] + list(_CANDIDATES)
    # pip's nvidia-cuda-runtime wheel (a dependency of the tensorrt wheel) keeps it in site-packages
    wheels = [str(Path(entry) / "nvidia" / "cuda_runtime" / "lib" / "libcudart.so*") for entry in sys.path if entry]
    names += sorted({p for pattern in (*_SEARCH, *wheels) for p in glob.glob(pattern)}, reverse=True)
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise DependencyError("The CUDA runtime (libcudart.so) was not found: on a Jetson it comes with JetPack "
                          "(`sudo apt install nvidia-jetpack`); on a desktop GPU install the CUDA toolkit or the "
                          "nvidia-cuda-runtime wheel matching your driver.")


class CudaRuntime:
    """Device memory, streams and copies for ``TrtRunner``; device name and compute capability for the
    engine cache. Every call checks its status and raises BundleError naming the call."""

    def __init__(self, lib: Any = None) -> None:
        self._lib = lib if lib is not None else load_library()

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise BundleError(f"CUDA call {what} failed (error {status}); is the NVIDIA driver working "
                              "(nvidia-smi, or tegrastats on a Jetson)?")

    def device_count(self) -> int:
        count = ctypes.c_int(0)
        status = self._lib.cudaGetDeviceCount(ctypes.byref(count))
        return count.value if status == 0 else 0

    def compute_capability(self, device: int = 0) -> tuple[int, int]:
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        self._check(self._lib.cudaDeviceGetAttribute(ctypes.byref(major), ATTR_CC_MAJOR, device),
                    "cudaDeviceGetAttribute")
        self._check(self._lib.cudaDeviceGetAttribute(ctypes.byref(minor), ATTR_CC_MINOR, device),
                    "cudaDeviceGetAttribute")
        return major.value, minor.value

    def device_name(self, device: int = 0) -> str:
        props = ctypes.create_string_buffer(_PROPS_BYTES)
        get = getattr(self._lib, "cudaGetDeviceProperties_v2", None) or self._lib.cudaGetDeviceProperties
        self._check(get(props, device), "cudaGetDeviceProperties")
        return props.raw[:256].split(b"\0", 1)[0].decode(errors="replace").strip()

    def malloc(self, nbytes: int) -> int:
        ptr = ctypes.c_void_p()
        self._check(self._lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(nbytes)), "cudaMalloc")
        return int(ptr.value or 0)

    def free(self, ptr: int) -> None:
        self._lib.cudaFree(ctypes.c_void_p(ptr))

    def stream_create(self) -> int:
        stream = ctypes.c_void_p()
        self._check(self._lib.cudaStreamCreate(ctypes.byref(stream)), "cudaStreamCreate")
        return int(stream.value or 0)

    def stream_destroy(self, stream: int) -> None:
        self._lib.cudaStreamDestroy(ctypes.c_void_p(stream))

    def copy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        status = self._lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                           ctypes.c_int(kind), ctypes.c_void_p(stream))
        self._check(status, "cudaMemcpyAsync" + (" (to the GPU)" if kind == HOST_TO_DEVICE else " (from the GPU)"))

    def synchronize(self, stream: int) -> None:
        self._check(self._lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")
