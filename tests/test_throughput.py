"""The throughput harness: completed images over the wall time of the run, never batch / mean latency."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from resnet_deploy.pipeline.latency import LatencySettings, measure, measure_throughput
from resnet_deploy.targets.base import OneRequestAtATime


def test_counts_completed_images_until_both_minimums_hold():
    calls: list[int] = []
    stats = measure_throughput(lambda b: calls.append(len(b)), np.zeros((8, 3)),
                               LatencySettings(warmup=1, min_iterations=20, max_iterations=1000, min_seconds=0.0),
                               requests=3)
    assert calls == [3, 8, 8, 8]  # a warm-up image per request, then passes until 20 images: 24
    assert stats.images == 24 and stats.requests == 3
    assert stats.to_dict()["throughput_ips"] == pytest.approx(stats.images / stats.seconds, rel=1e-2)


def test_the_time_budget_and_the_cap():
    calls: list[int] = []
    stats = measure_throughput(lambda b: (time.sleep(0.01), calls.append(len(b))), np.zeros((2, 1)),
                               LatencySettings(warmup=0, min_iterations=1, max_iterations=10_000, min_seconds=0.1))
    assert stats.seconds >= 0.1 and stats.images == sum(calls) and len(calls) >= 2
    capped = measure_throughput(lambda b: None, np.zeros((5, 1)),
                                LatencySettings(warmup=0, min_iterations=1, max_iterations=12, min_seconds=60.0))
    assert capped.images == 15  # the cap in images wins over the time budget


def test_parallel_requests_show_in_images_per_second_not_in_latency():
    """Two requests of 50 ms each in flight: ~40 img/s, twice what one 50 ms request at a time gives. Sleeps, not
    work, so a loaded machine changes little; the margin (1.3x, not 2x) absorbs thread start-up under load."""

    def two_at_once(batch: np.ndarray) -> None:
        workers = [threading.Thread(target=time.sleep, args=(0.05,)) for _ in range(0, len(batch), 1)]
        for pair in range(0, len(workers), 2):
            for w in workers[pair:pair + 2]:
                w.start()
            for w in workers[pair:pair + 2]:
                w.join()

    images = np.zeros((8, 1))
    settings = LatencySettings(warmup=0, min_iterations=8, max_iterations=64, min_seconds=0.4)
    parallel = measure_throughput(two_at_once, images, settings, requests=2)
    serial = measure(lambda b: time.sleep(0.05), images[:1], settings)
    assert parallel.images_per_second > 1.3 * serial.throughput_ips


def test_latency_throughput_is_images_over_the_wall_time():
    stats = measure(lambda b: time.sleep(0.005), np.zeros((4, 1)),
                    LatencySettings(warmup=0, min_iterations=10, max_iterations=10, min_seconds=0.0))
    total = sum(stats.samples_ms) / 1e3
    assert stats.throughput_ips <= 4 * 10 / total + 1e-9  # wall time includes the loop, never less than the calls


def test_runtimes_without_a_throughput_mode_run_the_whole_batch_at_once():
    class Runner:
        description = "doubles"

        def __init__(self) -> None:
            self.batches: list[int] = []

        def run(self, batch: np.ndarray) -> np.ndarray:
            self.batches.append(len(batch))
            return batch * 2

    runner = Runner()
    many = OneRequestAtATime(runner)
    out = many.run_many(np.arange(6, dtype=np.float32).reshape(3, 2))
    np.testing.assert_array_equal(out, np.arange(6).reshape(3, 2) * 2)
    assert runner.batches == [3] and many.requests == 1 and many.description == "doubles"
