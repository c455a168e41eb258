"""Small file helpers every layer uses: content hashes and one copy per content, kept below the packages that
read bundles."""

from __future__ import annotations

import filecmp
import hashlib
from collections.abc import Iterable
from pathlib import Path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stored_once(path: Path, candidates: Iterable[Path]) -> Path:
    """``path``, or a file among ``candidates`` with the same bytes (``path`` is then removed), so a bundle
    stores each content once: two targets built from one model and one calibration share the file."""
    for other in candidates:
        if other.resolve() != path.resolve() and other.is_file() and filecmp.cmp(other, path, shallow=False):
            path.unlink()
            return other
    return path
