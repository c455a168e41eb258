"""Export to ONNX (opset >= 17, dynamic batch) and prove parity with PyTorch.

The exported file carries the preprocessing record and class names in ``metadata_props`` so the
model explains its own input wherever it goes.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resnet_deploy.errors import VerificationError
from resnet_deploy.pipeline.onnx_fold import fold_constants

if TYPE_CHECKING:  # torch is imported by the functions that run a module: build --onnx needs none of it
    from torch import nn

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# Field tolerances for FP32 ONNX vs PyTorch (timm / optimum use the same order).
ATOL, RTOL = 1e-4, 1e-3


@dataclass(frozen=True)
class ExportCheck:
    max_abs_diff: float
    top1_equal: bool
    samples: int
    opset: int

    def to_dict(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "atol": ATOL, "rtol": RTOL, "top1_equal": self.top1_equal,
                "samples": self.samples, "opset": self.opset, "checker": "onnx.checker (full_check)", "passed": True}


def export_onnx(model: nn.Module, path: Path, *, sample: np.ndarray, metadata: dict[str, Any],
                opset: int = OPSET) -> ExportCheck:
    """Write ``model`` to ``path``, check it with ``onnx.checker`` and against PyTorch on ``sample``."""
    import onnx
    import torch

    model = model.eval()
    dummy = torch.from_numpy(sample[:2].copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter gives a plain, stable graph (Conv/Add/Relu/Pad/Slice) that every
        # runtime and the Q/DQ pass read alike; dynamic_axes gives a free batch dimension.
        torch.onnx.export(
            model, (dummy,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    finish_onnx(onnx.load(str(path)), path, metadata=metadata)
    return check_parity(model, path, sample)


def finish_onnx(proto: Any, path: Path, *, metadata: dict[str, Any]) -> None:
    """Fold constant subgraphs, record ``metadata`` (replacing entries of the same key), write ``proto`` to
    ``path`` and run ``onnx.checker`` on it: the last steps of every FP32 ONNX the bundle carries."""
    import onnx

    proto, _ = fold_constants(proto)  # a static graph: no shape arithmetic left at run time
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    proto.producer_name = "resnet-deploy"
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise VerificationError(f"The exported ONNX model failed onnx.checker: {err}") from None


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    from resnet_deploy.targets import onnx_session

    sess = onnx_session(path)
    return sess.run(None, {sess.get_inputs()[0].name: batch})[0]


def check_parity(model: nn.Module, path: Path, sample: np.ndarray) -> ExportCheck:
    import torch

    with torch.inference_mode():
        ref = model(torch.from_numpy(sample)).numpy()
    return compare_outputs(ref, run_onnx(path, sample), against="PyTorch")


def compare_outputs(ref: np.ndarray, out: np.ndarray, *, against: str, opset: int = OPSET) -> ExportCheck:
    """The written ONNX's logits ``out`` against the model it came from (``ref``); raise when they differ."""
    diff = float(np.abs(ref - out).max())
    same_top1 = bool((ref.argmax(1) == out.argmax(1)).all())
    if not (np.allclose(out, ref, atol=ATOL, rtol=RTOL) and same_top1):
        raise VerificationError(
            f"ONNX export does not match {against}: max |diff| {diff:.3g} (atol {ATOL}, rtol {RTOL}), "
            f"identical top-1: {same_top1}. Try another --opset or report the architecture."
        )
    return ExportCheck(diff, same_top1, len(ref), opset)


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
