"""Per-image predictions kept in the bundle, so a later tool can pair two builds image by image.

``predictions.npz`` holds no pickles (``np.load(allow_pickle=False)``): the evaluation images' identities
as their source names them (a path relative to an image folder, ``file#index`` for IDX files), labels,
PyTorch FP32's predicted class, and one row of predicted classes per validated artifact. It is listed in
the manifest like every other file, and ``load`` reads it only when it matches its manifest entry.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_deploy.errors import BundleError
from resnet_deploy.files import sha256_file
from resnet_deploy.pipeline import bundle as bundle_io

FILE = "predictions.npz"
_KEYS = ("image_ids", "labels", "reference", "row_target", "row_precision", "row_simulated", "row_predictions")


@dataclass(frozen=True)
class RowPredictions:
    """One validated artifact's predicted class for every evaluation image (aligned with the image ids)."""

    target: str
    precision: str
    simulated: bool
    classes: np.ndarray


@dataclass(frozen=True)
class Predictions:
    """The evaluation images (ids, labels), PyTorch FP32's predicted classes, and every row's."""

    image_ids: np.ndarray  # fixed-width unicode
    labels: np.ndarray
    reference: np.ndarray
    rows: tuple[RowPredictions, ...]

    def row(self, target: str, precision: str, simulated: bool = False) -> RowPredictions | None:
        return next((r for r in self.rows if (r.target, r.precision, r.simulated) == (target, precision, simulated)),
                    None)


def save(path: Path, predictions: Predictions) -> None:
    p = predictions
    matrix = np.stack([r.classes for r in p.rows]) if p.rows else np.empty((0, len(p.labels)))
    np.savez_compressed(
        path, image_ids=np.asarray(p.image_ids, dtype=str), labels=np.asarray(p.labels, dtype=np.int32),
        reference=np.asarray(p.reference, dtype=np.int32),
        row_target=np.asarray([r.target for r in p.rows], dtype=str),
        row_precision=np.asarray([r.precision for r in p.rows], dtype=str),
        row_simulated=np.asarray([r.simulated for r in p.rows], dtype=bool),
        row_predictions=matrix.astype(np.int32))


def load(bundle: Path) -> Predictions:
    """The predictions of the bundle at ``bundle``, after checking the file against its manifest entry."""
    manifest = bundle_io.read_manifest(bundle)
    if manifest is None or not bundle_io.is_bundle(bundle):
        raise BundleError(f"{bundle} is not a resnet-deploy bundle ({bundle_io.MANIFEST} is missing or not ours). "
                          "Give the folder a `resnet-deploy build` wrote.")
    entry = manifest["files"].get(FILE)
    if not isinstance(entry, dict):
        raise BundleError(f"{bundle}: {FILE} is not listed in {bundle_io.MANIFEST}; bundles built before per-image "
                          "predictions were stored lack it. Rebuild the bundle with `resnet-deploy build`.")
    path = bundle_io.listed_file(bundle, FILE)
    if not path.is_file() or path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        raise BundleError(f"{bundle}: {FILE} is missing or does not match its sha256 in {bundle_io.MANIFEST}: it "
                          "was changed or damaged. Copy the bundle again.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in _KEYS}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise BundleError(f"{bundle}: {FILE} is not a predictions file of ours ({err}). Rebuild the bundle.") from None
    n, matrix = len(arrays["labels"]), arrays["row_predictions"]
    if (len(arrays["image_ids"]) != n or len(arrays["reference"]) != n or matrix.ndim != 2
            or matrix.shape != (len(arrays["row_target"]), n)):
        raise BundleError(f"{bundle}: {FILE} holds arrays of inconsistent lengths. Rebuild the bundle.")
    rows = tuple(RowPredictions(str(t), str(p), bool(s), matrix[i].astype(np.int64)) for i, (t, p, s) in
                 enumerate(zip(arrays["row_target"], arrays["row_precision"], arrays["row_simulated"])))
    return Predictions(arrays["image_ids"], arrays["labels"].astype(np.int64), arrays["reference"].astype(np.int64),
                       rows)
