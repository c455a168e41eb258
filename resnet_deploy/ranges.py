"""Range checks for numbers that come from flags, files or metadata: finite, in a sane range, and an
error that names where the value came from. Settings objects call these when they are built, so the
Python API gets the same checks as the command line, before any work starts."""

from __future__ import annotations

import math
from typing import Any

from resnet_deploy.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's and torch's seeds
THREADS_MAX = 1024


def check_int(value: Any, name: str, *, lo: int, hi: int | None = None, optional: bool = False) -> None:
    """``value`` is a whole number in [lo, hi] (None allowed when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be a whole number, got {value!r}.")
    if value < lo or (hi is not None and value > hi):
        span = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise ConfigError(f"{name} must be {span}, got {value}.")


def check_float(value: Any, name: str, *, lo: float, hi: float, lo_open: bool = False,
                optional: bool = False) -> None:
    """``value`` is a finite number in [lo, hi] (or (lo, hi] with ``lo_open``); NaN and inf are refused."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
        low = f"above {lo:g}" if lo_open else f"at least {lo:g}"
        raise ConfigError(f"{name} must be a finite number {low} and at most {hi:g}, got {value}.")
