"""TensorRT INT8 calibration cache: the text file ``trtexec --calib`` and ``IInt8Calibrator`` read.

Format, as TensorRT writes it:

    TRT-<version code>-EntropyCalibration2
    <tensor name>: <scale as the big-endian hex of its IEEE-754 float32 bits>

with scale = amax / 127 (symmetric INT8). The version code is the ``NV_TENSORRT_VERSION`` macro of
the release: ``major*1000 + minor*100 + patch`` up to TensorRT 8 (8.5.2 -> ``TRT-8502-...``), and
``major*10000 + minor*100 + patch`` from TensorRT 10 (10.3.0 -> ``TRT-100300-...``, the header of
NVIDIA's TAO model caches for TensorRT 10.3). TensorRT refuses a cache whose header names another
version or algorithm, so the header must match the TensorRT that builds the engine.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import SupportsFloat

import numpy as np

from resnet_deploy.errors import BundleError, ConfigError

ALGORITHM = "EntropyCalibration2"  # the header of IInt8EntropyCalibrator2, TensorRT's default calibrator
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


def parse_version(version: str) -> tuple[int, int, int]:
    """'8.5.2' or '10.3.0.30' -> (major, minor, patch)."""
    parts = version.strip().split(".")
    try:
        major, minor, patch = (int(p) for p in [*parts, "0", "0"][:3])
    except ValueError:
        raise ConfigError(f"TensorRT version must look like 10.3.0, got {version!r}.") from None
    return major, minor, patch


def version_code(trt_version: str) -> int:
    """``NV_TENSORRT_VERSION`` of a release, the number in the cache header."""
    major, minor, patch = parse_version(trt_version)
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def cache_header(trt_version: str, *, algorithm: str = ALGORITHM) -> str:
    return f"TRT-{version_code(trt_version)}-{algorithm}"


def scale_to_hex(scale: SupportsFloat) -> str:
    """The big-endian hex of the float32 bits: 0.0078125 -> '3c000000'."""
    return struct.pack(">f", float(np.float32(scale))).hex()


def hex_to_scale(text: str) -> float:
    return float(struct.unpack(">f", int(text, 16).to_bytes(4, "big"))[0])


def amax_to_scale(amax: float) -> np.float32:
    return np.float32(float(amax) / 127.0)


def write_cache(path: Path, amax: dict[str, float], *, trt_version: str) -> Path:
    """Write one ``name: hex(amax / 127)`` line per tensor under the header for ``trt_version``."""
    lines = [cache_header(trt_version)]
    for name, value in amax.items():
        if "\n" in name or not np.isfinite(value) or value <= 0:
            raise ConfigError(f"calibration cache: tensor {name!r} has no usable range ({value!r}).")
        lines.append(f"{name}: {scale_to_hex(amax_to_scale(value))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def read_cache(path: Path) -> tuple[str, dict[str, float]]:
    """(header line, tensor name -> float32 scale) of a TensorRT calibration cache."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: cannot read the calibration cache ({err}). Copy the bundle again.") from None
    if not lines or not _HEADER.match(lines[0].strip()):
        raise BundleError(f"{path} is not a TensorRT calibration cache: the first line should be "
                          f"TRT-<version>-{ALGORITHM}.")
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        try:
            if not sep:
                raise ValueError
            scales[name] = hex_to_scale(value.strip())
        except (ValueError, OverflowError):
            raise BundleError(f"{path}, line {number}: expected 'tensor: hex scale', got {line!r}.") from None
    return lines[0].strip(), scales


def header_version(header: str) -> int:
    """The version code of a header line ('TRT-8502-EntropyCalibration2' -> 8502)."""
    match = _HEADER.match(header)
    if not match:
        raise BundleError(f"not a TensorRT calibration cache header: {header!r}")
    return int(match.group(1))


def retarget_cache(src: Path, dst: Path, *, trt_version: str) -> Path:
    """Copy a cache under the header of another TensorRT release, keeping every scale's exact bits."""
    header, _ = read_cache(src)
    body = src.read_text().splitlines()[1:]
    dst.write_text("\n".join([cache_header(trt_version, algorithm=header.split("-", 2)[2]), *body]) + "\n")
    return dst
