"""Small file helpers every layer uses: content hashes and one copy per content, kept below the packages that
read bundles."""

from __future__ import annotations

import filecmp
import hashlib
import os
import stat
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


def umask() -> int:
    """This process's umask (read by setting it and putting it back: there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_newly_created(path: Path) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` gives (0644 under the usual umask, execute bits kept
    where it had them): some writers make files 0600 (safetensors' ``save_file``, whatever the umask),
    and a published file should read like its neighbours."""
    mode = path.stat().st_mode
    wanted = 0o666 | (0o111 if mode & stat.S_IXUSR else 0)
    wanted &= ~umask()
    if stat.S_IMODE(mode) != wanted:
        path.chmod(wanted)
