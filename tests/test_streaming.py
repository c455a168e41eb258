"""calibration.sampling's streams: evaluation images decoded by a thread pool a chunk at a time, in order,
with memory that does not grow with the number of images."""

from __future__ import annotations

import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import EvalSet, ImageStream, decode
from resnet_deploy.calibration.sources import ArraySource, ImageFolderSource
from resnet_deploy.errors import DataError

PREP = Preprocessing((24, 24), 3, (0.5,) * 3, (0.25,) * 3)


class CountingSource(ArraySource):
    """Random 16x16 RGB images (resized to 24x24 on the pool), counting the reads and the threads reading."""

    def __init__(self, n: int, *, broken: frozenset[int] = frozenset(), delay: float = 0.0) -> None:
        rng = np.random.default_rng(n)
        super().__init__("counted", rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
                         np.arange(n, dtype=np.int64) % 7, tuple("abcdefg"))
        self.broken, self.delay, self.reads, self.threads = broken, delay, 0, set()
        self.lock = threading.Lock()

    def read(self, index: int, *, min_side: int | None = None) -> np.ndarray:
        with self.lock:
            self.reads += 1
            self.threads.add(threading.get_ident())
        if index in self.broken:
            raise OSError("truncated")
        time.sleep(self.delay)  # a slow disk: without it one thread may finish each chunk before the next is queued
        return self.images[index]


def test_chunks_come_in_order_and_match_a_serial_decode():
    source = CountingSource(70, delay=0.005)
    indices = np.arange(5, 70, 2)
    stream = ImageStream(source, indices, PREP, flag="--eval-data", chunk=8, workers=3)
    chunks = list(stream)
    assert [len(c.positions) for c in chunks] == [8, 8, 8, 8, 1]
    positions = np.concatenate([c.positions for c in chunks])
    np.testing.assert_array_equal(positions, np.arange(len(indices)))
    pixels = np.concatenate([c.pixels for c in chunks])
    np.testing.assert_array_equal(pixels, np.stack([PREP.to_uint8(source.images[i]) for i in indices]))
    np.testing.assert_array_equal(np.concatenate([c.labels for c in chunks]), source.labels[indices])
    assert len(source.threads) > 1, "decoded on one thread"
    assert decode(source, indices, PREP, flag="--eval-data", workers=2).pixels.tobytes() == pixels.tobytes()


def test_the_pool_stays_at_most_two_chunks_per_worker_ahead():
    source = CountingSource(400)
    stream = ImageStream(source, np.arange(400), PREP, flag="--eval-data", chunk=10, workers=2)
    for consumed, _ in enumerate(stream, start=1):
        if consumed == 3:
            break
    assert source.reads <= (3 + 2 * 2) * 10 < 400


def test_memory_does_not_grow_with_the_number_of_images():
    """What a consumer that keeps one prediction per image holds at its peak: 10x the images, about the same."""

    def peak(n: int) -> int:
        source = CountingSource(n)
        preds = np.full(n, -1, dtype=np.int64)
        tracemalloc.start()
        for chunk in ImageStream(source, np.arange(n), PREP, flag="--eval-data", chunk=16, workers=2):
            preds[chunk.positions] = PREP.normalize(chunk.pixels).mean(axis=(1, 2, 3)).argsort()
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    small, large = peak(200), peak(2000)
    all_pixels = 2000 * 24 * 24 * 3 * 4  # what holding the large set as float32 would take
    assert large < 1.5 * small and large < all_pixels / 10, (small, large)


def test_unreadable_images_are_skipped_listed_and_refused_on_a_strict_pass():
    source = CountingSource(100, broken=frozenset({3, 50}))
    evals = EvalSet.of(source, np.arange(100))
    stream = evals.stream(PREP, flag="--eval-data", chunk=16)
    kept = np.zeros(len(evals), dtype=bool)
    for chunk in stream:
        kept[chunk.positions] = True
    assert [s.split(":")[0] for s in stream.skipped] == ["counted#3", "counted#50"]
    readable = evals.readable(kept, stream.skipped)
    assert len(readable) == 98 and "counted#3" not in readable.idents and readable.skipped == stream.skipped
    np.testing.assert_array_equal(readable.positions(("counted#4", "counted#99")), [3, 97])
    with pytest.raises(DataError, match=r"^--eval-data: counted#3.*earlier pass"):
        list(evals.stream(PREP, flag="--eval-data", strict=True))


def test_too_many_unreadable_images_stop_the_pass_early():
    source = CountingSource(2000, broken=frozenset(range(0, 2000, 2)))
    with pytest.raises(DataError, match=r"^--eval-data: \d+ of 2000 images in counted could not be read"):
        list(ImageStream(source, np.arange(2000), PREP, flag="--eval-data", chunk=32, workers=2))
    assert source.reads < 1000, "the whole set was read before giving up"


def test_a_folder_streams_the_same_pixels_as_decode(tmp_path: Path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(5):
            Image.new("RGB", (30 + i, 20), (40 * i, 100 if label == "a" else 7, 9)).save(tmp_path / label / f"{i}.png")
    source = ImageFolderSource.open(tmp_path)
    streamed = np.concatenate([c.pixels for c in ImageStream(source, np.arange(10), PREP, flag="--data", chunk=3)])
    np.testing.assert_array_equal(streamed, decode(source, np.arange(10), PREP, flag="--data").pixels)
