"""ONNX Runtime on CPU: the FP32 ONNX as is, and INT8 by ONNX Runtime's static quantization.

INT8 format: QDQ with uint8 activations and int8 per-channel weights (U8S8). On CPUs with VNNI this
runs on the VNNI int8 kernels at full range; on AVX2 without VNNI, u8 x s8 products can saturate
the 16-bit intermediate, so weights use 7 bits (``reduce_range``), as ONNX Runtime's docs advise.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.targets._cpu import has_vnni
from resnet_deploy.targets.base import Artifact, CompileInput, Runner, Target


class OrtRunner:
    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.description = f"onnxruntime {ort.__version__} CPUExecutionProvider"

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


class _Reader:
    """ONNX Runtime's CalibrationDataReader over our calibration array, one image at a time."""

    def __init__(self, input_name: str, data: np.ndarray) -> None:
        self.input_name, self.data, self.i = input_name, data, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.data):
            return None
        self.i += 1
        return {self.input_name: self.data[self.i - 1 : self.i]}

    def rewind(self) -> None:
        self.i = 0


def quantize_static_qdq(fp32: Path, out: Path, calibration: np.ndarray, *, reduce_range: bool | None = None,
                        calibrate_method: str = "MinMax", per_channel: bool = True) -> dict[str, Any]:
    """Static INT8 quantization of ``fp32`` into ``out``; returns the settings used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reduce = (not has_vnni()) if reduce_range is None else reduce_range
    prepared = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(prepared), str(out), _Reader("input", calibration),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=per_channel, reduce_range=reduce, calibrate_method=getattr(CalibrationMethod, calibrate_method),
        )
    finally:
        prepared.unlink(missing_ok=True)
    return {"format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": per_channel,
            "reduce_range": reduce, "calibrate_method": calibrate_method, "calibration_images": len(calibration)}


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    aliases = ("ort",)
    summary = "ONNX Runtime CPU: FP32 ONNX and static INT8 (QDQ, U8S8, per-channel weights)"
    requires = {"onnxruntime": "onnxruntime"}

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        self.ensure_available()
        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = folder / "model_fp32.onnx"
        shutil.copyfile(inp.fp32_onnx, fp32)
        int8 = folder / "model_int8.onnx"
        settings = quantize_static_qdq(fp32, int8, inp.calibration)
        return [
            Artifact(self.name, "fp32", str(fp32.relative_to(bundle)), "onnxruntime"),
            Artifact(self.name, "int8", str(int8.relative_to(bundle)), "onnxruntime", extra={"quantization": settings}),
        ]

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None) -> Runner:
        self.ensure_available()
        return OrtRunner(bundle / artifact.path, threads=threads)
