"""ONNX Runtime on CPU: the FP32 ONNX as is, and INT8 by ONNX Runtime's static quantization.

INT8 format: QDQ with uint8 activations and int8 per-channel weights (U8S8), MinMax calibration. On
CPUs with VNNI this runs on the VNNI int8 kernels at full range; on AVX2 without VNNI, u8 x s8
products can saturate the 16-bit intermediate, so weights use 7 bits (``reduce_range``), as ONNX
Runtime's docs advise.

Chosen by measurement (benchmarks/int8_variants.py, ResNet-50 224x224 batch 1 on a 2-core AMD EPYC
with AVX512-VNNI, shared with a training job; one interleaved run, p50 medians):
QDQ U8S8 per-channel 18.3 ms; S8S8 47.6 ms (no fast s8 x s8 path on x86); QOperator 22.4 ms;
per-tensor 22.5 ms (not faster than per-channel here, and less accurate); reduce_range 22.8 ms (no
gain on VNNI, one bit of weight precision lost). Calibration: MinMax, Percentile and Entropy all kept
a trained ResNet-20 (Fashion-MNIST) within 0.2 points of FP32 (agreement 99.5% each), so the cheapest.

Sessions turn intra-op spinning off: idle worker threads otherwise spin-wait for work and fight
whatever else runs on the CPU for the cores. On the shared host FP32 p50 went 99 -> 51 ms and INT8
25 -> 16 ms (the same as one thread); in benchmarks/bench_cpu.py the FP32 session is 0.68x a default
``InferenceSession`` (39.8 vs 62.3 ms). On an idle machine the cost is one wake-up per parallel
region, which ONNX Runtime's docs call a slight latency increase. Measured later on the same host when
it was quiet (`make bench`, 5 interleaved rounds): the no-spin session was 1.03-1.04x a default one at
batch 1 (ResNet-50 18.7 vs 17.8 ms) and 1.01x at batch 16. A few per cent when idle against 2x when
shared: builds and edge devices share their CPU, so spinning stays off.

Result (quiet host, `make bench`): ResNet-50 batch 1 INT8 p50 6.8 ms, 0.38x a default FP32 session
(17.8 ms); a trained ResNet-20 (Fashion-MNIST, 10,000 test images) lost 0.05 points of top-1
(93.56% vs 93.61%, agreement 99.66%).
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
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module docstring
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

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        self.ensure_available()
        return OrtRunner(bundle / artifact.path, threads=threads)
