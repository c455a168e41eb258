"""An example resnet-deploy target shipped as its own package: the ONNX reference evaluator.

``onnx.reference.ReferenceEvaluator`` is the onnx package's pure-Python reading of the operator
specification: slow, but independent of every optimising runtime, so its rows say what the graph
means. The target brings a runtime of its own and is found through the entry point group
``resnet_deploy.targets``; nothing in resnet-deploy names it. onnx, onnxruntime (the INT8 quantizer)
and threadpoolctl are imported only when a model is compiled or loaded.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from resnet_deploy.errors import ConfigError, DependencyError
from resnet_deploy.targets import Artifact, CompileInput, Runner, Runtime, Target

__version__ = "0.1.0"

# Low preference: `infer`/`bench` pick it on their own only when no faster runtime can load the bundle.
# No ``packages``: every build records the onnx version already.
RUNTIME = Runtime("onnx-reference", "onnx.reference", "pip install onnx", preference=10)

# The reference evaluator (onnx 1.23) has no QuantizeLinear/DequantizeLinear for the exported model's
# opset 17, so the Q/DQ model is converted to 19 (which only adds float8 types to those two operators).
QDQ_OPSET = 19


class ReferenceRunner:
    """``run(batch) -> logits`` with the ONNX reference evaluator.

    Its convolutions are numpy matrix products; they run on ``threads`` BLAS threads, one by default:
    on a shared CPU a BLAS pool made these small products several times slower, never faster. Without
    threadpoolctl (a device that installed only the runtime) numpy keeps its own thread count.
    """

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(str(path))
        self.input_name = self.evaluator.input_names[0]
        self.threads = threads or 1
        try:
            from threadpoolctl import ThreadpoolController

            self.blas: Any = ThreadpoolController()
        except ImportError:
            self.blas = None
        blas = f"{self.threads} BLAS thread(s)" if self.blas is not None else "numpy's BLAS threads"
        self.description = f"onnx {onnx.__version__} ReferenceEvaluator (pure Python, {blas})"

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        limit = contextlib.nullcontext() if self.blas is None else self.blas.limit(limits=self.threads, user_api="blas")
        with limit:
            (logits,) = self.evaluator.run(None, {self.input_name: x})  # a list: one model output
        return np.asarray(logits, dtype=np.float32)


def quantize_qdq(fp32: Path, out: Path, calibration: np.ndarray) -> dict[str, Any]:
    """Static INT8 Q/DQ by ONNX Runtime's quantizer (its defaults: MinMax, uint8 activations, int8
    per-channel weights), converted to an opset the reference evaluator reads. Returns the settings."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = onnx.load(str(fp32), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    input_name = next(i.name for i in graph.input if i.name not in weights)

    class Images(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.left, None)
            return None if i is None else {input_name: calibration[i : i + 1]}

    prepared = out.with_name(out.stem + ".pre.onnx")  # shape inference and graph clean-up, as ORT advises
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        quantize_static(str(prepared), str(out), Images(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        prepared.unlink(missing_ok=True)
    onnx.save(version_converter.convert_version(onnx.load(str(out)), QDQ_OPSET), str(out))
    return {"format": "QDQ", "quantizer": "onnxruntime.quantization.quantize_static", "activations": "uint8",
            "weights": "int8 per-channel", "calibrate_method": "MinMax", "calibration_images": len(calibration),
            "opset": QDQ_OPSET}


class OnnxReferenceTarget(Target):
    """FP32 and INT8 (Q/DQ) ONNX models, run by the ONNX reference evaluator."""

    name = "onnx-reference"
    summary = "ONNX reference evaluator (onnx.reference, pure Python): FP32 and INT8 Q/DQ, slow, runtime-independent"
    runtimes = (RUNTIME,)
    # onnxruntime: the INT8 quantizer
    build_requires: ClassVar[Mapping[str, str]] = {"onnx": "onnx", "onnxruntime": "onnxruntime"}

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        self.ensure_available()
        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = Path(shutil.copyfile(inp.fp32_onnx, folder / "model_fp32.onnx"))
        int8 = folder / "model_int8.onnx"
        settings = quantize_qdq(fp32, int8, inp.calibration)
        note = ("INT8 Q/DQ graph evaluated operator by operator in float on dequantized values: the "
                "quantized model's meaning, not integer kernels; its latency says nothing about a device.")
        return [
            Artifact(self.name, "fp32", str(fp32.relative_to(bundle)), RUNTIME.name),
            Artifact(self.name, "int8", str(int8.relative_to(bundle)), RUNTIME.name, note=note,
                     details={"quantization": settings}),
        ]

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        if artifact.runtime != RUNTIME.name:
            raise ConfigError(f"--target {self.name} cannot load a {artifact.runtime} artifact ({artifact.path}).")
        if not RUNTIME.present():
            raise DependencyError(f"{artifact.path} needs the onnx package, which is not installed: {RUNTIME.install}.")
        return ReferenceRunner(bundle / artifact.path, threads=threads)  # no multi-stream mode: ``hint`` is moot
