"""One writer per output folder: an advisory lock file beside it, held while build, train or device-build writes.

``flock`` is dropped by the kernel when its process dies, so a killed build never blocks the next one;
the file holds the writer's pid and command for the message. The lock lives beside the folder (``.<name>.lock``)
because the folder itself is replaced whole when a bundle is published.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from resnet_deploy.errors import ConfigError, OutputInUse

try:
    import fcntl
except ImportError:  # not POSIX (Windows): no advisory locks, so concurrent writers are not caught there
    fcntl = None  # type: ignore[assignment]


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def hold(out: Path, *, flag: str = "--out", what: str = "build") -> Iterator[None]:
    """Hold ``out``'s lock for the block, or raise ``OutputInUse`` at once when another process holds it."""
    if fcntl is None:
        yield
        return
    path = lock_path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, out, flag=flag, what=what)
    except OSError as err:
        raise ConfigError(f"{flag} {out}: cannot create the lock file {path} ({err.strerror or err}). "
                          f"Give a {flag} in a folder you can write to.") from None
    try:
        yield
    finally:
        # Unlink while still holding it: a waiter that opened the old file sees it gone and retries.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _acquire(path: Path, out: Path, *, flag: str, what: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, holder = os.pread(fd, 64, 0).decode(errors="replace").strip().partition(" ")
            os.close(fd)
            raise OutputInUse(f"another resnet-deploy {holder or 'process'} (pid {pid or 'unknown'}) is writing "
                              f"{flag} {out}; wait for it to finish or choose another {flag}.") from None
        except BaseException:
            os.close(fd)
            raise
        # The last holder may have unlinked the file between our open and our flock: then we hold a lock
        # on a file nobody else will open, so start again with the one now at the path.
        try:
            now = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        mine = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)  # for the message a second writer gets
        return fd
