"""The machine's refusals as user errors: disk full, read-only, no permission, not a regular file.

``describe(err)`` turns an ``OSError`` with one of these errnos into an ``EnvironmentFault`` (exit 2)
that names the path and the cause in words. Some libraries lose the errno on the way (OpenVINO's
``save_model`` on a full disk says only "basic_ios::clear: iostream error"): ``probe(folder)`` then
finds the cause by writing, and syncing, a small file where the stage was writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from resnet_deploy.errors import EnvironmentFault, ResnetDeployError

# errno -> (the cause in words, what to do)
_CAUSES = {
    errno.ENOSPC: ("no space left on the device holding {path}", "Free some space or choose a folder on another disk."),
    errno.EDQUOT: ("the disk quota is used up for {path}", "Free some space or choose a folder on another disk."),
    errno.EFBIG: ("{path} would be larger than its file system allows", "Choose a folder on another disk."),
    errno.EROFS: ("{path} is on a read-only file system", "Choose a writable folder."),
    errno.EACCES: ("permission denied for {path}", "Choose a folder you can write to, or fix its permissions."),
    errno.EPERM: ("operation not permitted on {path}", "Choose a folder you can write to, or fix its permissions."),
    errno.EISDIR: ("{path} is a folder where a file was expected", "Give the path of a file."),
    errno.ENOTDIR: ("a part of {path} is not a folder", "Give a path whose parents are folders."),
    errno.ENAMETOOLONG: ("the name {path} is too long for its file system", "Choose a shorter path."),
    errno.ELOOP: ("{path} goes round a loop of symbolic links", "Give a path without the link loop."),
    errno.EIO: ("an input/output error on the device holding {path}", "Check the disk (dmesg) and try again."),
    errno.ENXIO: ("{path} is a device or socket, not a regular file", "Give a regular file or folder."),
    errno.ENODEV: ("{path} is a device, not a regular file", "Give a regular file or folder."),
    errno.EMFILE: ("too many open files while opening {path}", "Raise the limit (ulimit -n) and try again."),
}


def describe(err: OSError, *, path: Path | str | None = None) -> EnvironmentFault | None:
    """The user error for an ``OSError`` the environment caused, or None when it is not one of those."""
    if err.errno not in _CAUSES:
        return None
    where = err.filename if err.filename is not None else path
    cause, fix = _CAUSES[err.errno]
    text = cause.format(path=os.fsdecode(where) if where is not None else "the output folder")
    if err.filename2 is not None:
        text += f" (writing {os.fsdecode(err.filename2)})"
    return EnvironmentFault(f"cannot write: {text}. {fix}")


def probe(folder: Path, *, size: int = 64 * 1024, shown: Path | None = None) -> EnvironmentFault | None:
    """Why ``folder`` cannot take more data, or None when it can. Full: less free space than the largest
    file already in it (the stages write model-sized files; a library that failed half-way may have removed
    its partial file). Otherwise a scratch file of ``size`` bytes is written, synced and removed."""
    scratch = folder / f".resnet-deploy-probe-{os.getpid()}"
    try:
        st = os.statvfs(folder)
        largest = max((f.stat().st_size for f in folder.rglob("*") if f.is_file()), default=0)
        if st.f_bavail * st.f_frsize < max(size, largest):
            return describe(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path=shown or folder)
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        return describe(OSError(err.errno, err.strerror), path=shown or folder)  # not the scratch file's name
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink()
    return None


@contextlib.contextmanager
def explain(folder: Path | None, *, shown: Path | None = None) -> Iterator[None]:
    """Inside, an error the machine caused becomes an ``EnvironmentFault``: an ``OSError`` with one of
    those errnos directly, any other library error when ``probe(folder)`` finds the cause. Messages
    name ``shown`` (the --out the user gave) rather than a staging folder inside it."""
    try:
        yield
    except ResnetDeployError:
        raise
    except Exception as err:
        fault = describe(err, path=shown or folder) if isinstance(err, OSError) else None
        if fault is None and folder is not None:
            fault = probe(folder, shown=shown)
        if fault is None:
            raise
        raise fault from err
