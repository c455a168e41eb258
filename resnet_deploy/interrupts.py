"""Ctrl-C and SIGTERM: stop at once, clean up, and say truly what was written.

``handling()`` (the CLI, for one command) makes SIGTERM raise ``Interrupted`` the way Ctrl-C raises
``KeyboardInterrupt``, so both unwind through every ``finally`` (the staging folder's removal); once
one arrived, more are ignored while the command cleans up (a third gives up and lets the signal kill
the process). ``critical()`` holds signals back across steps that must not be cut in half (replacing
the bundle at --out); ``saying()`` attaches the sentence the CLI prints. ``test_point()`` is the one
hook tests use to deliver real signals at known moments.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

from resnet_deploy.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stopping = False  # a signal arrived: the command is unwinding
_extra = 0  # signals received while unwinding
_deferred: list[int] | None = None  # inside critical(): signals held back
_done: str | None = None  # what the last critical() block finished writing, for later interrupts


def _handler(signum: int, frame) -> None:
    global _stopping, _extra
    if _deferred is not None:
        _deferred.append(signum)
        return
    if _stopping:  # a second Ctrl-C must not cut the cleanup short; a third means the cleanup itself hangs
        _extra += 1
        if _extra >= 2:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        return
    _stopping = True
    raise Interrupted(signum)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Install the handler for SIGINT and SIGTERM for the block (main thread only). A signal the caller
    ignores stays ignored (``nohup``, background jobs). After a real signal the handler stays, so
    another one during interpreter shutdown cannot print a traceback."""
    global _stopping, _extra, _done
    if not _main_thread():
        yield
        return
    _stopping, _extra, _done = False, 0, None
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s, old in previous.items():
        if old is not signal.SIG_IGN:
            signal.signal(s, _handler)
    try:
        yield
    finally:
        if not _stopping:
            for s, old in previous.items():
                signal.signal(s, old if old is not None else signal.SIG_DFL)


@contextlib.contextmanager
def critical(*, done: str | None = None) -> Iterator[None]:
    """Signals arriving inside the block are acted on when it ends: the block is never cut in half.
    ``done`` is what to say when such a held-back signal stops the command right after the block."""
    global _deferred, _done
    if _deferred is not None or not _main_thread():
        yield
        return
    _deferred = []
    installed = {s: signal.getsignal(s) for s in SIGNALS}
    for s, old in installed.items():  # also when a library caller runs without the CLI's handler
        if old is not signal.SIG_IGN and old is not _handler:
            signal.signal(s, _handler)
    failed = True
    try:
        yield
        failed = False
        _done = done or _done
    finally:
        pending, _deferred = _deferred, None
        for s, old in installed.items():
            if old is not signal.SIG_IGN and old is not _handler:
                signal.signal(s, old if old is not None else signal.SIG_DFL)
        if pending:  # the block finished (or failed): now stop, as the signal asked
            global _stopping
            _stopping = True
            raise Interrupted(pending[0], None if failed else done)


def done() -> str | None:
    """The sentence of the last ``critical(done=...)`` block that finished in this command, if any."""
    return _done


@contextlib.contextmanager
def saying(written: str | Callable[[], str]) -> Iterator[None]:
    """An interrupt inside the block that carries no sentence yet gets this one (or the callable's answer,
    asked after the inner cleanups ran), unless a ``critical(done=...)`` block inside finished since."""
    before = _done
    try:
        yield
    except KeyboardInterrupt as err:
        if getattr(err, "written", None):
            raise
        text = _done if _done is not before else written() if callable(written) else written
        raise Interrupted(getattr(err, "signum", signal.SIGINT), text) from None


TEST_PAUSE_ENV = "RESNET_DEPLOY_TEST_PAUSE_AT"


def test_point(name: str) -> None:
    """Test-only: when ``RESNET_DEPLOY_TEST_PAUSE_AT`` names this point, say so on stderr and wait (up to
    60 s) for the test to send a signal. Unset, it costs one dictionary lookup."""
    if os.environ.get(TEST_PAUSE_ENV) != name:
        return
    print(f"[test] paused at {name}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _deferred:  # inside critical(), a held-back signal ends the wait
        time.sleep(0.05)
