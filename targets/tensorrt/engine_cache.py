"""The TensorRT engine cache: an engine is reused only where everything it was built for is unchanged.

A serialized engine is valid for exactly one TensorRT version, one GPU (model and compute
capability), one DLA core choice, one precision, one ONNX file (and calibration cache) and one
input-shape range. The key holds all of them; a lookup returns an engine only when its recorded key
equals the wanted one and the file still has the sha256 recorded when it was stored. Anything else
(another TensorRT, a changed ONNX, a half-written or edited file) is rebuilt, never loaded.
Pure Python, so the rules are tested without a GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Tuple

from resnet_deploy.files import sha256_file

# typing.Tuple: a module-level alias is evaluated at import, and the device side runs on Python 3.8.
Shape = Tuple[int, ...]


@dataclass(frozen=True)
class EngineKey:
    tensorrt: str
    gpu: str
    compute_capability: tuple[int, int]
    dla_core: int | None
    precision: str
    onnx_sha256: str
    shapes: tuple[Shape, Shape, Shape]  # min / opt / max input shape
    calibration_sha256: str | None = None  # implicit INT8: the calibration cache is part of the model

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compute_capability"] = list(self.compute_capability)
        d["shapes"] = [list(s) for s in self.shapes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineKey:
        major, minor = (int(v) for v in d["compute_capability"])
        shapes = tuple(tuple(int(v) for v in s) for s in d["shapes"])
        dla = d.get("dla_core")
        return cls(str(d["tensorrt"]), str(d["gpu"]), (major, minor), None if dla is None else int(dla),
                   str(d["precision"]), str(d["onnx_sha256"]), shapes,  # type: ignore[arg-type]
                   d.get("calibration_sha256"))

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def file_stem(self) -> str:
        """A readable, unique name: precision, device, TensorRT version and the key's digest."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-") or "gpu"
        major, minor = self.compute_capability
        where = f"dla{self.dla_core}" if self.dla_core is not None else f"sm{major}{minor}"
        return f"model_{self.precision}_{gpu}_{where}_trt{self.tensorrt}_{self.digest()[:12]}"


@dataclass(frozen=True)
class Lookup:
    engine: Path | None  # set only when the cached engine may be loaded
    reason: str  # why it was reused or must be rebuilt, for the user


def paths(cache_dir: Path, key: EngineKey) -> tuple[Path, Path]:
    stem = key.file_stem()
    return cache_dir / f"{stem}.engine", cache_dir / f"{stem}.json"


def lookup(cache_dir: Path, key: EngineKey) -> Lookup:
    engine, meta = paths(cache_dir, key)
    if not engine.is_file() or not meta.is_file():
        return Lookup(None, "no cached engine for this TensorRT, GPU, precision and model")
    try:
        record = json.loads(meta.read_text())
        recorded = EngineKey.from_dict(record["key"])
    except (OSError, ValueError, KeyError, TypeError):
        return Lookup(None, f"{meta.name} is unreadable; rebuilding")
    if recorded != key:
        changed = sorted(k for k, v in key.to_dict().items() if recorded.to_dict().get(k) != v)
        return Lookup(None, f"cached engine was built for another {', '.join(changed)}; rebuilding")
    if sha256_file(engine) != record.get("engine_sha256"):
        return Lookup(None, f"{engine.name} does not match its recorded sha256 (partial write or edited); rebuilding")
    return Lookup(engine, f"reusing {engine.name}")


def store(cache_dir: Path, key: EngineKey, plan: bytes) -> Path:
    """Write the engine and its key atomically (a crash leaves no engine that looks valid)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    engine, meta = paths(cache_dir, key)
    plan = bytes(plan)
    record = {"key": key.to_dict(), "engine_sha256": hashlib.sha256(plan).hexdigest()}
    for path, data in ((engine, plan), (meta, json.dumps(record, indent=2).encode())):
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return engine
