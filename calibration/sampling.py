"""Deterministic, disjoint selection of calibration and evaluation images, and decoding them.

Decoding runs on a pool of threads, one per usable core: Pillow releases the GIL while it decodes and
resizes, so threads decode as fast as processes did here (benchmarks/results/README.md, "decode pool")
without copying pixels between processes. ``ImageStream`` hands images out a chunk at a time, so an
evaluation pass holds a few chunks of pixels whatever the number of images.
"""

from __future__ import annotations

import collections
import hashlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from resnet_deploy.calibration.images import UnreadableImage
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sources import ImageSource
from resnet_deploy.errors import DataError
from resnet_deploy.host import usable_cores

# Share of unreadable images tolerated (skipped and counted) before a data set is refused.
MAX_BAD_FRACTION = 0.05
CHUNK = 32  # images per chunk: a ResNet-50 batch of 32 at 224 px stays well under 1 GB of activations


@dataclass(frozen=True)
class ImageBatch:
    """Decoded images: ``pixels`` uint8 (N, H, W, C) at the model's size, labels, identities."""

    pixels: np.ndarray
    labels: np.ndarray
    idents: tuple[str, ...]
    skipped: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, prep: Preprocessing) -> np.ndarray:
        """float32 NCHW, normalised."""
        return prep.normalize(self.pixels)

    def digest(self) -> str:
        """sha256 of the sorted identities: names the exact image set in the manifest."""
        return hashlib.sha256("\n".join(sorted(self.idents)).encode()).hexdigest()


@dataclass(frozen=True)
class EvalSet:
    """Evaluation images by reference, never their pixels: which images of ``source``, their labels and
    identities. Each pass streams them again (``stream``); after the first, ``readable`` keeps the images
    it could read and ``skipped`` says which it could not."""

    source: ImageSource
    indices: np.ndarray
    labels: np.ndarray
    idents: tuple[str, ...]
    skipped: tuple[str, ...] = ()

    @classmethod
    def of(cls, source: ImageSource, indices: np.ndarray) -> EvalSet:
        return cls(source, indices, source.labels[indices], tuple(source.ident(int(i)) for i in indices))

    def __len__(self) -> int:
        return len(self.indices)

    def stream(self, prep: Preprocessing, *, flag: str, strict: bool = False, chunk: int = CHUNK) -> ImageStream:
        return ImageStream(self.source, self.indices, prep, flag=flag, chunk=chunk, strict=strict)

    def readable(self, kept: np.ndarray, skipped: tuple[str, ...]) -> EvalSet:
        """The images a pass read (``kept``: a mask over this set), and the ones it could not."""
        keep = np.flatnonzero(kept)
        return EvalSet(self.source, self.indices[keep], self.labels[keep], tuple(self.idents[i] for i in keep),
                       self.skipped + skipped)

    def positions(self, idents: tuple[str, ...]) -> np.ndarray:
        """Where the images named ``idents`` sit in this set."""
        where = {ident: i for i, ident in enumerate(self.idents)}
        return np.asarray([where[i] for i in idents], dtype=np.int64)


def choose(n_total: int, count: int | None, *, seed: int, exclude: np.ndarray | None = None,
           shuffled: bool = False) -> np.ndarray:
    """``count`` indices of ``range(n_total)`` (all when None), drawn from ``seed``, minus ``exclude``.

    Sorted by default: the order of the source, for images that are streamed. ``shuffled``: in the order drawn
    (the same set), for images held in memory whose first few stand for all of them (the sensitivity analysis's
    128, ``auto``'s scoring half). A folder source lists its images class by class, so a sorted prefix is a few
    classes: the first 1,000 of 2,000 held-out CIFAR-10 images were airplane to dog, the rest dog to truck."""
    pool = np.arange(n_total)
    if exclude is not None and len(exclude):
        pool = np.setdiff1d(pool, exclude, assume_unique=False)
    rng = np.random.default_rng(seed)
    if count is None or count >= len(pool):
        return rng.permutation(pool) if shuffled else pool
    drawn = rng.choice(pool, size=count, replace=False)
    return drawn if shuffled else np.sort(drawn)


def same_images(a: ImageSource, b: ImageSource) -> bool:
    return a.name == b.name and len(a) == len(b)


def decode(
    source: ImageSource,
    indices: np.ndarray,
    prep: Preprocessing,
    *,
    flag: str,
    progress: Callable[[], object] | None = None,
    workers: int | None = None,
) -> ImageBatch:
    """Read and resize ``indices`` into memory (calibration images, the carried sample); unreadable images
    are skipped and counted, too many is an error. For many images, iterate an ``ImageStream`` instead."""
    images = ImageStream(source, indices, prep, flag=flag, workers=workers)
    h, w = prep.input_size
    out = np.empty((len(indices), h, w, prep.channels), dtype=np.uint8)
    kept = np.zeros(len(indices), dtype=bool)
    for chunk in images:
        out[chunk.positions] = chunk.pixels
        kept[chunk.positions] = True
        if progress is not None:
            for _ in range(chunk.covered):
                progress()
    keep = np.flatnonzero(kept)
    return ImageBatch(out[keep] if len(keep) < len(indices) else out, source.labels[indices[keep]],
                      tuple(source.ident(int(indices[p])) for p in keep), images.skipped)


@dataclass(frozen=True)
class Chunk:
    """Consecutive images of a stream: uint8 ``pixels`` (N, H, W, C) at the model's size, their ``labels`` and
    their ``positions`` in the stream's indices; ``covered`` counts the indices it spans, unreadable ones too."""

    pixels: np.ndarray
    labels: np.ndarray
    positions: np.ndarray
    covered: int


class ImageStream:
    """``indices`` of ``source`` decoded ``chunk`` images at a time by a thread pool, in order, at most two
    chunks per worker ahead of the consumer: memory stays flat however many images there are. Each pass
    decodes again. Unreadable images are skipped and listed in ``skipped`` (a pass that finds too many
    raises DataError naming ``flag``); ``strict`` passes refuse any (a later pass over images an earlier
    one read)."""

    def __init__(self, source: ImageSource, indices: np.ndarray, prep: Preprocessing, *, flag: str,
                 chunk: int = CHUNK, workers: int | None = None, strict: bool = False) -> None:
        self.source, self.indices, self.prep, self.flag = source, np.asarray(indices), prep, flag
        self.chunk, self.workers, self.strict = max(1, chunk), workers or usable_cores(), strict
        self.skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Chunk]:
        skipped: list[str] = []
        limit = max(1, MAX_BAD_FRACTION * len(self.indices))
        starts = range(0, len(self.indices), self.chunk)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            ahead: collections.deque[Future] = collections.deque()
            pending = iter(starts)
            for start in pending:
                ahead.append(pool.submit(self._decode, start))
                if len(ahead) >= 2 * self.workers:
                    break
            tried = 0
            try:
                while ahead:
                    chunk, bad = ahead.popleft().result()
                    following = next(pending, None)
                    if following is not None:
                        ahead.append(pool.submit(self._decode, following))
                    skipped += bad
                    tried += chunk.covered
                    if bad and self.strict:
                        raise DataError(f"{self.flag}: {bad[0]} could not be read although an earlier pass of this "
                                        f"build read it. Do not change {self.source.name} while a build runs.")
                    if len(skipped) > limit:  # said as soon as it is certain, not after decoding the rest
                        raise DataError(
                            f"{self.flag}: {len(skipped)} of {len(self.indices)} images in {self.source.name} could "
                            f"not be read (counted after {tried}; first: {skipped[0]}). Remove or re-encode the "
                            "broken files.")
                    yield chunk
            finally:
                for future in ahead:
                    future.cancel()
        if len(skipped) == len(self.indices):
            raise DataError(f"{self.flag}: no readable images in {self.source.name}.")
        self.skipped = tuple(skipped)

    def _decode(self, start: int) -> tuple[Chunk, list[str]]:
        """One chunk, on a pool thread."""
        indices = self.indices[start : start + self.chunk]
        prep = self.prep
        h, w = prep.input_size
        images = getattr(self.source, "images", None)
        if images is not None and prep.unchanged(images.shape[1:]):
            # Already decoded at the model's size (IDX data): no per-image work.
            pixels = images[indices].reshape(len(indices), h, w, prep.channels)
            positions = np.arange(start, start + len(indices))
            return Chunk(pixels, self.source.labels[indices], positions, len(indices)), []
        out = np.empty((len(indices), h, w, prep.channels), dtype=np.uint8)
        keep: list[int] = []
        bad: list[str] = []
        for offset, i in enumerate(indices):
            try:
                out[len(keep)] = prep.to_uint8(self.source.read(int(i), min_side=prep.resize_side))
            except UnreadableImage as err:
                bad.append(f"{self.source.ident(int(i))}: {err}")
                continue
            except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three for broken files
                bad.append(f"{self.source.ident(int(i))}: {err.__class__.__name__}")
                continue
            keep.append(offset)
        kept = np.asarray(keep, dtype=np.int64)
        return Chunk(out[: len(keep)], self.source.labels[indices[kept]], start + kept, len(indices)), bad
