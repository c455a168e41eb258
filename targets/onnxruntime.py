"""ONNX Runtime on CPU: the FP32 ONNX as is, and INT8 by ONNX Runtime's static quantization.

Settings chosen by measurement (figures: benchmarks/results/README.md, "targets/onnxruntime.py"):
- QDQ U8S8 (uint8 activations, int8 per-channel weights): fastest on x86, where s8 x s8 has no fast path.
- ``reduce_range`` (7-bit weights) only without VNNI, where u8 x s8 products can saturate the 16-bit
  intermediate (ONNX Runtime's docs); with VNNI it loses a bit of precision and gains nothing.
- MinMax calibration: Percentile and Entropy were no more accurate, and MinMax is the cheapest.
- Intra-op spinning off: spinning idle threads fight other processes for the cores, much slower on a
  shared CPU and barely faster on an idle one; builds and edge devices share their CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import DependencyError
from resnet_deploy.host import has_vnni
from resnet_deploy.targets.base import Artifact, CompileInput, Runner, Runtime, Target

RUNTIME = Runtime("onnxruntime", "onnxruntime", "pip install onnxruntime  (or resnet-deploy[device])",
                  preference=100, packages=("onnxruntime",), loggers=("onnxruntime",))


def ort_session(model: Path | bytes, *, threads: int | None = None):
    """An ONNX Runtime CPU session with this project's settings: the one factory behind every ORT-backed
    row, the export check, calibration and the simulated TensorRT rows, so they are timed alike."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module docstring
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


class OrtRunner:
    """``run(batch) -> logits`` on an ONNX model; ``label`` says what the row stands for (a simulation)."""

    def __init__(self, path: Path, *, threads: int | None = None, label: str = "") -> None:
        import onnxruntime as ort

        self.session = ort_session(path, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self.description = f"onnxruntime {ort.__version__} CPUExecutionProvider" + (f" ({label})" if label else "")

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
    runtimes = (RUNTIME,)
    build_requires: ClassVar[Mapping[str, str]] = {"onnxruntime": "onnxruntime"}

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        self.ensure_available()
        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = Path(inp.fp32_onnx)
        if bundle.resolve() not in fp32.resolve().parents:  # not in the bundle yet: carry a copy
            fp32 = Path(shutil.copyfile(fp32, folder / "model_fp32.onnx"))
        # else the FP32 row is the bundle's own model_fp32.onnx: the same bytes are not stored twice
        int8 = folder / "model_int8.onnx"
        settings = quantize_static_qdq(fp32, int8, inp.calibration)
        return [
            Artifact(self.name, "fp32", str(fp32.resolve().relative_to(bundle.resolve())), RUNTIME.name),
            Artifact(self.name, "int8", str(int8.relative_to(bundle)), RUNTIME.name,
                     details={"quantization": settings}),
        ]

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        if not RUNTIME.present():
            raise DependencyError(f"{artifact.path} needs ONNX Runtime, which is not installed: {RUNTIME.install}.")
        return OrtRunner(bundle / artifact.path, threads=threads)

    def serving_configs(self, bundle: Path, artifacts: Sequence[Artifact], prep: Preprocessing,
                        num_classes: int) -> list[Path]:
        """Triton's ONNX Runtime backend serves the INT8 model as it is."""
        from resnet_deploy.targets.serving import triton_model

        int8 = next(a for a in artifacts if a.precision == "int8")
        return triton_model(bundle, f"{self.name}_int8", prep=prep, num_classes=num_classes,
                            platform="onnxruntime_onnx", sources={"1/model.onnx": int8.path})
