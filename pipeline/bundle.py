"""The deployment bundle on disk: built in a staging folder, moved into place whole, with a manifest.

An interrupted or failed build never leaves a folder that looks complete: the staging folder is
removed on error, and ``manifest.json`` (written last) lists every file with its sha256. A bundle is
recognised by its manifest (tool name and schema), never by a file name; the device side reads only
files the manifest lists, resolved inside the bundle.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.errors import BundleError, ConfigError
from resnet_deploy.files import as_newly_created, sha256_file

MANIFEST = "manifest.json"
REPORT_JSON = "report.json"
EVAL_SAMPLE = "eval_sample.npz"
PREPROCESSING = "preprocessing.json"
MODEL_ONNX = "model_fp32.onnx"
DEVICE_ARTIFACTS = "device_artifacts.json"  # engines recorded by `device-build`; read only when listed
DEVICE_REPORT = "device_report.json"  # `bench` writes it into the bundle; never listed, never verified
EVAL_SAMPLE_MAX_BYTES = 24 * 1024 * 1024
TOOL = "resnet-deploy"
BUNDLE_SCHEMA = 1
WRITTEN_BY_DEVICE = "device-build"  # the ``written_by`` of manifest entries that device-build adds
# In every staging and ``.old-*`` folder we create: only folders carrying it are ever removed as stale.
STAGING_MARKER = ".resnet-deploy-staging"
_STAGING_NAME = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out``; on success the caller calls ``publish``; on error it is removed.

    Named ``.<name>.partial-<pid>-<random>`` and marked, so the next build into the same parent can
    tell a dead process's leftovers from a running build's and from a user's folder.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    (tmp / STAGING_MARKER).write_text(f"{os.getpid()}\n")
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; a published bundle reads like any new folder
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_staging(parent: Path) -> list[Path]:
    """Remove the staging and ``.old-*`` folders in ``parent`` left by processes that no longer run."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _STAGING_NAME.match(entry.name)
        if (m is None or entry.is_symlink() or not entry.is_dir() or not (entry / STAGING_MARKER).is_file()
                or _pid_alive(int(m["pid"]))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def publish(tmp: Path, out: Path, *, force: bool = False) -> None:
    """Replace ``out`` with the finished staging folder (old bundle moved aside first, then removed).

    The caller holds ``out``'s lock (``out_lock.hold``), so no other publish overlaps this one. The
    checks of ``check_out`` run again here: files put into ``out`` during the build are never lost.
    """
    for path in tmp.rglob("*"):  # whatever library wrote a file, it reads like any new file of this user
        if path.is_file() and not path.is_symlink():
            as_newly_created(path)
    old = None
    if out.exists():
        check_out_contents(out, force=force)
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}")
            (out / STAGING_MARKER).write_text(f"{os.getpid()}\n")  # so a crash right here is cleaned up later
            out.rename(old)
        else:
            out.rmdir()
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:  # put the old bundle back rather than leave nothing
            old.rename(out)
            (out / STAGING_MARKER).unlink(missing_ok=True)
        raise
    (out / STAGING_MARKER).unlink(missing_ok=True)  # a crash before this leaves only an ignored marker
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- what --out may be -----------------------------------------------------------------------------

def read_manifest(path: Path) -> dict[str, Any] | None:
    """``path/manifest.json`` parsed, or None when it is missing or not JSON."""
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_bundle(path: Path) -> bool:
    """A folder holding a manifest of ours: tool and schema (or a previous version's, with its version
    under ``versions``), and a ``files`` map."""
    m = read_manifest(path)
    if m is None or not isinstance(m.get("files"), dict):
        return False
    if m.get("tool") == TOOL and m.get("bundle_schema") == BUNDLE_SCHEMA:
        return True
    versions = m.get("versions")
    return "tool" not in m and isinstance(versions, dict) and TOOL in versions  # legacy: before bundle_schema


def _device_written(rel: str) -> bool:
    """Files the device side writes into a bundle without listing them: never a user's files."""
    parts = Path(rel).parts
    return (rel in (DEVICE_REPORT, DEVICE_ARTIFACTS, STAGING_MARKER) or rel.startswith(MANIFEST + ".tmp-")
            or "engines" in parts[:-1])


def unlisted_files(bundle: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Files in ``bundle`` its manifest does not list and the device side did not write (a user's)."""
    listed = set(manifest.get("files", {}))
    found = []
    for root, dirs, files in os.walk(bundle):
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = str((Path(root) / name).relative_to(bundle))
            if rel != MANIFEST and rel not in listed and not _device_written(rel):
                found.append(rel)
    return sorted(found)


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_out(out: Path, *, force: bool = False, inputs: Sequence[tuple[str, Path]] = ()) -> list[str]:
    """Refuse an ``--out`` whose replacement would lose anything; return the files ``--force`` drops.

    Runs before any data is read. ``inputs`` are (flag, path) pairs the build reads (data folders,
    checkpoint): replacing the bundle must not delete them, nor write into them.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the bundle.")
    where = out.resolve()
    cwd = Path.cwd().resolve()
    home = Path(os.path.expanduser("~")).resolve()
    if _within(cwd, where) or where == home or where.parent == where:
        raise ConfigError(
            f"--out {out} is the current folder, one of its parents, the root or your home folder: the bundle "
            "replaces its --out whole, which would move that folder away. Give a new folder such as build/mymodel."
        )
    for flag, path in inputs:
        src = Path(path).resolve()
        if not Path(path).exists():
            continue
        if _within(where, src) and flag != "--checkpoint":
            raise ConfigError(f"--out {out} lies inside {flag} {path}: the build would write into the data it "
                              "reads. Give an --out outside it.")
        if _within(src, where):
            raise ConfigError(f"{flag} {path} lies inside --out {out}: replacing the bundle would delete it. "
                              "Give an --out that does not hold your inputs.")
    return check_out_contents(out, force=force)


def check_out_contents(out: Path, *, force: bool) -> list[str]:
    """An empty or missing ``out`` is fine; a bundle of ours too, less the user's files it holds (refused
    without ``force``); anything else is refused."""
    if not out.is_dir() or not any(out.iterdir()):
        return []
    manifest = read_manifest(out)
    if manifest is None or not is_bundle(out):
        raise ConfigError(
            f"--out {out} is not empty and is not a resnet-deploy bundle (no {MANIFEST} of ours), so building "
            "would replace what it holds. Choose an empty or new folder for --out."
        )
    extra = unlisted_files(out, manifest)
    if extra and not force:
        named = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise ConfigError(
            f"--out {out} is a resnet-deploy bundle that also holds files it did not write ({named}). A build "
            "replaces the whole folder, so they would be lost: move them out, choose another --out, or pass "
            "--force to drop them."
        )
    return extra


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable, allow_nan=False) + "\n")


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
    for f in sorted(p for p in bundle.rglob("*") if p.is_file() and p.name not in (MANIFEST, STAGING_MARKER)):
        files[str(f.relative_to(bundle))] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    manifest = {"tool": TOOL, "bundle_schema": BUNDLE_SCHEMA, "files": files, "versions": versions, "args": args,
                "seed": seed, "calibration": calibration}
    write_json(bundle / MANIFEST, manifest)
    return manifest


def record_device_files(bundle: Path, files: Mapping[str, Path], *, keep: Sequence[str] = ()) -> None:
    """Rewrite the manifest atomically with ``files`` (relative name -> file) listed as written by
    device-build; earlier device-build entries not in ``keep`` are dropped.

    The entries carry ``"written_by": "device-build"``; ``verify_bundle(skip_device_files=True)`` skips
    their hashes, so a device-build that dies between writing an engine and this call can run again.
    """
    manifest = read_manifest(bundle)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{bundle}: {MANIFEST} is missing or damaged. Rebuild the bundle or copy it again.")
    entries = {rel: info for rel, info in manifest["files"].items()
               if not (isinstance(info, dict) and info.get("written_by") == WRITTEN_BY_DEVICE) or rel in keep}
    for rel, path in files.items():
        entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "written_by": WRITTEN_BY_DEVICE}
    manifest["files"] = dict(sorted(entries.items()))
    tmp = bundle / f"{MANIFEST}.tmp-{os.getpid()}"
    write_json(tmp, manifest)
    os.replace(tmp, bundle / MANIFEST)


def _damaged(bundle: Path, what: str) -> BundleError:
    return BundleError(f"{bundle}: the bundle is damaged: {what}. Rebuild the bundle or copy it again.")


def _check_schema(bundle: Path, manifest: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(manifest, dict):
        raise _damaged(bundle, f"{MANIFEST} holds a {type(manifest).__name__}, not an object")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise _damaged(bundle, f"{MANIFEST} has no \"files\" object")
    for rel, info in files.items():
        if not isinstance(info, dict):
            raise _damaged(bundle, f"{MANIFEST} entry {rel!r} is not an object")
        if not is_sha256(info.get("sha256")):
            raise _damaged(bundle, f"{MANIFEST} entry {rel!r} has no valid sha256")
        if type(info.get("bytes")) is not int or info["bytes"] < 0:
            raise _damaged(bundle, f"{MANIFEST} entry {rel!r} has no valid byte count")
    return files


def listed_file(bundle: Path, rel: str) -> Path:
    """``bundle/rel`` for a manifest name: relative, no ``..``, inside the bundle after symlinks."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise _damaged(bundle, f"{MANIFEST} lists {rel!r}, a path outside the bundle")
    path = bundle / rel
    if not _within(path.resolve(), bundle.resolve()):
        raise _damaged(bundle, f"{rel} is a link to {path.resolve()}, outside the bundle")
    return path


def verify_bundle(bundle: Path, *, check_hashes: bool = True, skip_device_files: bool = False) -> dict[str, Any]:
    """The manifest, after checking its schema and that every listed file lies in the bundle, is a regular
    file, and has its size (and sha256). Unlisted files are ignored: the device side never reads them."""
    manifest_path = bundle / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(
            f"{bundle} is not a complete resnet-deploy bundle: {MANIFEST} is missing (the build may have been "
            "interrupted). Run `resnet-deploy build` again."
        )
    listed_file(bundle, MANIFEST)  # not a link out of the bundle
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{manifest_path} is not valid JSON ({err}). Rebuild the bundle.") from None
    listed = _check_schema(bundle, manifest)
    to_hash = []
    for rel, info in listed.items():  # the cheap checks of every file before any is hashed
        f = listed_file(bundle, rel)
        try:
            st = f.stat()
        except FileNotFoundError:
            raise BundleError(f"{bundle}: {rel} is listed in {MANIFEST} but missing. Copy the whole bundle again."
                              ) from None
        if skip_device_files and info.get("written_by") == WRITTEN_BY_DEVICE:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise _damaged(bundle, f"{rel} is not a regular file")
        if st.st_size != info["bytes"]:
            raise BundleError(f"{bundle}: {rel} does not match its sha256 in {MANIFEST}: it has {st.st_size} bytes "
                              f"where {MANIFEST} says {info['bytes']}, so the file was changed or damaged (it was not "
                              "read). Copy the bundle again.")
        to_hash.append((rel, f, info))
    for rel, f, info in to_hash if check_hashes else ():
        if sha256_file(f) != info["sha256"]:
            raise BundleError(f"{bundle}: {rel} does not match its sha256 in {MANIFEST}: the file was changed or "
                              "damaged. Copy the bundle again.")
    return manifest


def is_sha256(value: Any) -> bool:
    return isinstance(value, str) and _SHA256.match(value) is not None


def verify_external(path: Path, *, sha256: str, size: int | None = None) -> None:
    """A file outside the bundle (an engine in a --cache-dir) checked against the hash recorded for it."""
    try:
        st = path.stat()
    except OSError:
        raise BundleError(f"{path} (recorded by device-build) is missing. Run `resnet-deploy device-build` "
                          "again.") from None
    if not stat.S_ISREG(st.st_mode) or (size is not None and st.st_size != size) or sha256_file(path) != sha256:
        raise BundleError(f"{path} does not match the sha256 device-build recorded for it: the engine was changed "
                          "or damaged. Run `resnet-deploy device-build --force` again.")


def require_listed(bundle: Path, manifest: Mapping[str, Any], names: Sequence[str]) -> None:
    """Every file the device side is about to read must be one the manifest lists (and so was verified)."""
    files = manifest["files"]
    for rel in names:
        if rel not in files:
            raise _damaged(bundle, f"{rel} is not listed in {MANIFEST}, so it cannot be trusted")


def eval_sample_indices(count: int, image_bytes: int, *, limit: int, seed: int) -> np.ndarray:
    """Which of ``count`` evaluation images (``image_bytes`` of uint8 pixels each) the bundle carries: ``limit``
    of them (at most 24 MB of pixels), drawn at random from ``seed`` so every class is represented (the
    evaluation set may be sorted by class)."""
    n = int(min(limit, count, max(1, EVAL_SAMPLE_MAX_BYTES // max(1, image_bytes))))
    return np.sort(np.random.default_rng(seed).permutation(count)[:n])


def save_eval_sample(path: Path, pixels: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> int:
    """A compact labelled sample (uint8 NHWC) the device-side ``bench`` measures accuracy on."""
    np.savez_compressed(path, pixels=pixels, labels=labels.astype(np.int16), class_names=np.asarray(class_names))
    return len(labels)


def load_eval_sample(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    with np.load(path, allow_pickle=False) as data:
        return data["pixels"], data["labels"].astype(np.int64), tuple(str(c) for c in data["class_names"])
