"""One latency harness for every target, so figures are comparable (trtexec / benchmark_app style).

Warm-up first, then timed synchronous calls until both a minimum count and a minimum time are
reached (or a maximum count); percentiles over per-call wall times, throughput = images / second.
No torch here: the on-device ``bench`` uses it too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LatencySettings:
    warmup: int = 10
    min_iterations: int = 50
    max_iterations: int = 2000
    min_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_iterations < 1 or self.max_iterations < self.min_iterations:
            raise ValueError("latency settings: need warmup >= 0 and 1 <= min_iterations <= max_iterations")



@dataclass(frozen=True)
class LatencyStats:
    batch: int
    iterations: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    throughput_ips: float
    samples_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)  # every timed call

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("samples_ms")
        return {"batch": d.pop("batch"), "iterations": d.pop("iterations"),
                "throughput_ips": round(d.pop("throughput_ips"), 2),
                "latency_ms": {k: round(v, 4) for k, v in d.items()}}

    @classmethod
    def from_times(cls, times_s: list[float] | np.ndarray, batch: int) -> LatencyStats:
        ms = np.asarray(times_s, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(batch, len(ms), float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min()),
                   batch * 1e3 / float(ms.mean()), tuple(ms.tolist()))


def measure(run: Callable[[np.ndarray], object], batch: np.ndarray, settings: LatencySettings = LatencySettings()
            ) -> LatencyStats:
    """Time ``run(batch)``: warm-up, then at least ``min_iterations`` calls and ``min_seconds``."""
    for _ in range(settings.warmup):
        run(batch)
    times: list[float] = []
    clock = time.perf_counter
    start = clock()
    while len(times) < settings.max_iterations:
        t0 = clock()
        run(batch)
        times.append(clock() - t0)
        if len(times) >= settings.min_iterations and clock() - start >= settings.min_seconds:
            break
    return LatencyStats.from_times(times, len(batch))
