"""Accuracy of a runner on labelled images: top-1, agreement with a reference, per-class accuracy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Accuracy:
    top1: float
    per_class: list[float]
    agreement: float | None  # share of images whose prediction equals the reference prediction

    def to_dict(self) -> dict:
        d = {"top1": round(self.top1, 6), "per_class_top1": [round(v, 6) for v in self.per_class]}
        if self.agreement is not None:
            d["agreement"] = round(self.agreement, 6)
        return d


def predict(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, *, batch: int = 64,
            progress: Callable[[int], None] | None = None) -> np.ndarray:
    preds = np.empty(len(inputs), dtype=np.int64)
    for i in range(0, len(inputs), batch):
        logits = np.asarray(run(np.ascontiguousarray(inputs[i : i + batch])))
        preds[i : i + len(logits)] = logits.argmax(1)
        if progress:
            progress(len(logits))
    return preds


def score(preds: np.ndarray, labels: np.ndarray, num_classes: int, *,
          reference: np.ndarray | None = None) -> Accuracy:
    correct = preds == labels
    per_class = [float(correct[labels == c].mean()) if (labels == c).any() else float("nan")
                 for c in range(num_classes)]
    agreement = float((preds == reference).mean()) if reference is not None else None
    return Accuracy(float(correct.mean()), per_class, agreement)
