"""Top-1 agreement of a quantized model with its FP32 original on calibration images.

How every target's ``auto`` calibration method chooses among its rules: by what a user sees (changed
predictions), on calibration images only, never on the evaluation images that give the verdict.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

AGREEMENT_IMAGES = 300  # calibration images an ``auto`` choice is scored on
_CHUNK = 64


def predictions(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> np.ndarray:
    """Top-1 class of every image, ``run`` called on chunks of ``_CHUNK`` images."""
    return np.concatenate([np.asarray(run(np.ascontiguousarray(images[i:i + _CHUNK]))).argmax(1)
                           for i in range(0, len(images), _CHUNK)]) if len(images) else np.zeros(0, np.int64)


def agreement(reference: np.ndarray, candidate: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> float:
    """Share of ``images`` whose top-1 under ``candidate`` equals ``reference`` (their FP32 top-1)."""
    if not len(images):
        return float("nan")
    return round(float((predictions(candidate, images) == reference).mean()), 4)


def best(scores: Mapping[str, float], order: Sequence[str]) -> str:
    """The highest-scoring rule; among equals, the one first in ``order`` (the target's preference)."""
    rank = {name: i for i, name in enumerate(order)}
    return max(scores, key=lambda n: (scores[n] if scores[n] == scores[n] else -1.0, -rank.get(n, len(rank))))
