"""One latency harness and one throughput harness for every target, so figures are comparable.

Latency (trtexec / benchmark_app -hint latency style): warm-up, then timed synchronous calls until both
a minimum count and a minimum time are reached (or a maximum count); percentiles over per-call wall
times. Throughput (benchmark_app -hint throughput style): the runtime's own parallel requests kept busy,
images/s = completed images over the wall time of the run, never batch / mean latency.
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
    def from_times(cls, times_s: list[float] | np.ndarray, batch: int, *, wall_s: float | None = None) -> LatencyStats:
        """``throughput_ips``: the images of every call over ``wall_s``, the wall time of the run (the sum of
        the call times when not given)."""
        ms = np.asarray(times_s, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        wall = wall_s if wall_s else float(ms.sum()) / 1e3
        return cls(batch, len(ms), float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min()),
                   batch * len(ms) / wall, tuple(ms.tolist()))


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
    return LatencyStats.from_times(times, len(batch), wall_s=clock() - start)


@dataclass(frozen=True)
class ThroughputStats:
    """One throughput run: ``images`` completed in ``seconds`` of wall time with ``requests`` in flight."""

    images: int
    seconds: float
    requests: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"images": self.images, "seconds": round(self.seconds, 3), "requests": self.requests,
                "throughput_ips": round(self.images_per_second, 2)}


def measure_throughput(run_many: Callable[[np.ndarray], object], images: np.ndarray,
                       settings: LatencySettings = LatencySettings(), *, requests: int = 1) -> ThroughputStats:
    """Images/s of ``run_many`` (a runner in its runtime's throughput mode) on ``images``: a warm-up on
    ``settings.warmup`` images (at least one per request, as ``benchmark_app`` warms each up once), then passes
    over ``images`` until at least ``min_iterations`` images and ``min_seconds`` are done, or
    ``max_iterations`` images. Make ``images`` many times ``requests`` long: each pass ends by waiting for
    its last requests."""
    if settings.warmup:
        run_many(images[: max(settings.warmup, requests)])
    clock = time.perf_counter
    done = 0
    start = clock()
    while True:
        run_many(images)
        done += len(images)
        elapsed = clock() - start
        if done >= settings.max_iterations or (done >= settings.min_iterations and elapsed >= settings.min_seconds):
            return ThroughputStats(done, elapsed, requests)
