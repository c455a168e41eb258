"""Deterministic, disjoint selection of calibration and evaluation images, and decoding them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from resnet_deploy.calibration.images import UnreadableImage
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sources import ImageSource
from resnet_deploy.errors import DataError

# Share of unreadable images tolerated (skipped and counted) before a data set is refused.
MAX_BAD_FRACTION = 0.05


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


def choose(n_total: int, count: int | None, *, seed: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """``count`` indices of ``range(n_total)`` (all when None), drawn from ``seed``, minus ``exclude``."""
    pool = np.arange(n_total)
    if exclude is not None and len(exclude):
        pool = np.setdiff1d(pool, exclude, assume_unique=False)
    if count is None or count >= len(pool):
        return pool
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(pool, size=count, replace=False))


def same_images(a: ImageSource, b: ImageSource) -> bool:
    return a.name == b.name and len(a) == len(b)


def decode(
    source: ImageSource,
    indices: np.ndarray,
    prep: Preprocessing,
    *,
    flag: str,
    progress=None,
) -> ImageBatch:
    """Read and resize ``indices``; unreadable images are skipped and counted, too many is an error."""
    h, w = prep.input_size
    images = getattr(source, "images", None)
    if images is not None and images.shape[1:3] == (h, w) and (images.ndim == 3) == (prep.channels == 1):
        # Already decoded at the model's size (IDX data): no per-image work.
        pixels = images[indices].reshape(len(indices), h, w, prep.channels)
        if progress is not None:
            for _ in indices:
                progress()
        known = tuple(source.ident(int(i)) for i in indices)
        return ImageBatch(np.ascontiguousarray(pixels), source.labels[indices], known, ())
    out = np.empty((len(indices), h, w, prep.channels), dtype=np.uint8)
    keep: list[int] = []
    idents: list[str] = []
    skipped: list[str] = []
    for i in indices:
        ident = source.ident(int(i))
        try:
            out[len(keep)] = prep.to_uint8(source.read(int(i), min_side=prep.resize_side))
        except UnreadableImage as err:
            skipped.append(f"{ident}: {err}")
            continue
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises all three for broken files
            skipped.append(f"{ident}: {err.__class__.__name__}")
            continue
        finally:
            if progress is not None:
                progress()
        keep.append(int(i))
        idents.append(ident)
    if len(skipped) > max(1, MAX_BAD_FRACTION * len(indices)):
        raise DataError(
            f"{flag}: {len(skipped)} of {len(indices)} images in {source.name} could not be read "
            f"(first: {skipped[0]}). Remove or re-encode the broken files."
        )
    if not keep:
        raise DataError(f"{flag}: no readable images in {source.name}.")
    return ImageBatch(out[: len(keep)], source.labels[np.asarray(keep)], tuple(idents), tuple(skipped))
