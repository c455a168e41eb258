"""The deployment bundle on disk: built in a staging folder, moved into place whole, with a manifest.

An interrupted or failed build never leaves a folder that looks complete: the staging folder is
removed on error, and ``manifest.json`` (written last) lists every file with its sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from resnet_deploy.errors import BundleError

MANIFEST = "manifest.json"
REPORT_JSON = "report.json"
EVAL_SAMPLE = "eval_sample.npz"
PREPROCESSING = "preprocessing.json"
MODEL_ONNX = "model_fp32.onnx"
EVAL_SAMPLE_MAX_BYTES = 24 * 1024 * 1024


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out``; on success the caller calls ``publish``; on error it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a published bundle reads like any new folder
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path) -> None:
    """Replace ``out`` with the finished staging folder (old bundle moved aside first, then removed)."""
    old = None
    if out.exists():
        if not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise BundleError(
                f"--out {out} exists and is not a resnet-deploy bundle (no {MANIFEST}); refusing to replace it. "
                "Choose another --out or remove the folder."
            )
        old = out.with_name(f".{out.name}.old-{tmp.name[-8:]}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_manifest(bundle: Path, *, versions: dict[str, str], args: dict[str, Any], seed: int,
                   calibration: dict[str, Any]) -> dict[str, Any]:
    """List every file (path relative to the bundle, sha256, bytes); written last."""
    files = {}
    for f in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name != MANIFEST):
        files[str(f.relative_to(bundle))] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    manifest = {"files": files, "versions": versions, "args": args, "seed": seed, "calibration": calibration}
    write_json(bundle / MANIFEST, manifest)
    return manifest


def verify_bundle(bundle: Path, *, check_hashes: bool = True) -> dict[str, Any]:
    """The manifest, after checking every listed file exists (and matches its hash)."""
    manifest_path = bundle / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{bundle} is not a complete resnet-deploy bundle: {MANIFEST} is missing (the build may have been "
            "interrupted). Run `resnet-deploy build` again."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{manifest_path} is not valid JSON ({err}). Rebuild the bundle.") from None
    for rel, info in manifest.get("files", {}).items():
        f = bundle / rel
        if not f.is_file():
            raise BundleError(f"{bundle}: {rel} is listed in {MANIFEST} but missing. Copy the whole bundle again.")
        if check_hashes and sha256_file(f) != info["sha256"]:
            raise BundleError(f"{bundle}: {rel} does not match its sha256 in {MANIFEST}: the file was changed or "
                              "damaged. Copy the bundle again.")
    return manifest


def eval_sample_indices(pixels: np.ndarray, *, limit: int, seed: int) -> np.ndarray:
    """Which evaluation images the bundle carries: ``limit`` of them (at most 24 MB of pixels), drawn at
    random from ``seed`` so every class is represented (the evaluation set may be sorted by class)."""
    per_image = int(np.prod(pixels.shape[1:]))
    n = int(min(limit, len(pixels), max(1, EVAL_SAMPLE_MAX_BYTES // per_image)))
    return np.sort(np.random.default_rng(seed).permutation(len(pixels))[:n])


def save_eval_sample(path: Path, pixels: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> int:
    """A compact labelled sample (uint8 NHWC) the device-side ``bench`` measures accuracy on."""
    np.savez_compressed(path, pixels=pixels, labels=labels.astype(np.int16), class_names=np.asarray(class_names))
    return len(labels)


def load_eval_sample(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    with np.load(path, allow_pickle=False) as data:
        return data["pixels"], data["labels"].astype(np.int64), tuple(str(c) for c in data["class_names"])
