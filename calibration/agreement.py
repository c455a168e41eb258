"""Top-1 agreement of a quantized model with its FP32 original, on images from the calibration source.

How every target's ``auto`` calibration method chooses among its rules: by what a user sees (changed
predictions), never on the evaluation images that give the verdict. The images are the held-out ones
(``CompileInput.check``) where the build drew them: ranges scored on the very images they were computed
from favour the rules that fit those images tightest (NNCF's max kept 99.0 % there and 97.4 % on test
images, against 98.3 % and 99.1 % for the Q/DQ graph). Without them, the first calibration images.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

AGREEMENT_IMAGES = 300  # calibration images an ``auto`` choice is scored on when no held-out images are given
_CHUNK = 64


def scoring_images(calibration: np.ndarray, check: np.ndarray | None) -> np.ndarray:
    """The images an ``auto`` choice is scored on: ``check`` (held-out) when given, else calibration images."""
    return check if check is not None and len(check) else calibration[:AGREEMENT_IMAGES]


def scored_on(calibration: np.ndarray, check: np.ndarray | None) -> str:
    """What ``scoring_images`` chose, in words, for the reports."""
    if check is not None and len(check):
        return f"{len(check)} held-out calibration-source images"
    return f"{min(len(calibration), AGREEMENT_IMAGES)} calibration images"


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
