"""ONNX Runtime on CPU: the FP32 ONNX as is, and INT8 by ONNX Runtime's static quantization.

Settings chosen by measurement (figures: benchmarks/results/README.md, "targets/onnxruntime.py"):
- QDQ U8S8 (uint8 activations, int8 per-channel weights): fastest on x86, where s8 x s8 has no fast path.
- ``reduce_range`` (7-bit weights) only without VNNI, where u8 x s8 products can saturate the 16-bit
  intermediate (ONNX Runtime's docs); with VNNI it loses a bit of precision and gains nothing.
- MinMax calibration: Percentile and Entropy were no more accurate, and MinMax is the cheapest.
- Intra-op spinning off: spinning idle threads fight other processes for the cores, much slower on a
  shared CPU and barely faster on an idle one; builds and edge devices share their CPU.
- Throughput (validation passes, ``bench --hint throughput``): one session run concurrently from one thread
  per core, each run on one intra-op thread, as ``onnxruntime_perf_test -c`` does.
"""

from __future__ import annotations

import itertools
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from resnet_deploy.calibration.agreement import AGREEMENT_IMAGES, agreement, best, predictions
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import DependencyError, VerificationError
from resnet_deploy.host import has_vnni, usable_cores
from resnet_deploy.targets.base import (
    AUTO_METHOD,
    Artifact,
    CompileInput,
    Runner,
    Runtime,
    Target,
    ThroughputRunner,
    calib_method,
    calib_method_flag,
)

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


class OrtThroughputRunner:
    """ONNX Runtime's throughput mode as its perf tool runs it (``onnxruntime_perf_test -c N``): ``requests``
    concurrent runs of one session, each on its own thread with one intra-op thread (no thread pool to
    synchronise), one image per run; ``threads`` sets how many run at once (default: one per usable core)."""

    def __init__(self, path: Path, *, threads: int | None = None, label: str = "") -> None:
        import onnxruntime as ort

        self.requests = threads or usable_cores()
        self.session = ort_session(path, threads=1)
        self.input_name = self.session.get_inputs()[0].name
        self.pool = ThreadPoolExecutor(self.requests, thread_name_prefix="ort-request")
        self.description = (f"onnxruntime {ort.__version__} CPUExecutionProvider ({self.requests} concurrent runs"
                            + (f", {label})" if label else ")"))

    def run_many(self, batch: np.ndarray) -> np.ndarray:
        out: list[Any] = [None] * len(batch)
        claim = itertools.count()  # next() on one count is atomic under the GIL: each image is run once

        def work() -> None:
            i = next(claim)
            while i < len(batch):
                out[i] = self.session.run(None, {self.input_name: batch[i : i + 1]})[0][0]
                i = next(claim)

        for done in [self.pool.submit(work) for _ in range(self.requests)]:
            done.result()
        return np.stack(out)


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


# --calib-method: our names for ONNX Runtime's calibrators (MinMax is the same rule as TensorRT's "max").
CALIB_METHODS = {"max": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
DEFAULT_CALIB_METHOD = "max"  # see the module docstring


@dataclass(frozen=True)
class OrtFlags:
    """``build`` flags of ``--target onnxruntime``."""

    calib_method: str | None = calib_method_flag()


# Ops a layer's input may pass through unchanged in scale (ONNX Runtime quantizes their output with their input's
# parameters): keeping the layer in float means keeping them, and the op that feeds them, in float too.
_PASS_THROUGH = ("Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose",
                 "Squeeze", "Unsqueeze", "Pad", "Slice")


def excluded_nodes(graph, layers: Sequence[str]) -> list[str]:
    """``nodes_to_exclude`` for keeping ``layers`` (ONNX node names) in float in ``graph`` (the pre-processed
    model that ``quantize_static`` reads): each layer, and the private chain that feeds its input.

    ONNX Runtime's QDQ quantizer puts a Q/DQ pair on the output of every node it quantizes, whoever consumes
    it, so excluding a Conv alone still hands it a quantized input: the producer of that input, back to the
    previous weighted layer, must be excluded too when this layer is its only consumer.
    """
    nodes = {n.name: n for n in graph.node if n.name}
    producer = {o: n for n in graph.node for o in n.output}
    uses: dict[str, int] = {}
    for n in graph.node:
        for t in n.input:
            uses[t] = uses.get(t, 0) + 1
    missing = [name for name in layers if name not in nodes]
    if missing:
        raise VerificationError(f"ONNX Runtime's pre-processed graph has no node {', '.join(missing[:3])}: the layer "
                                "names of the FP32 ONNX did not survive quant_pre_process.")
    out: list[str] = []
    for name in layers:
        out.append(name)
        tensor = nodes[name].input[0]
        while uses.get(tensor, 0) == 1 and tensor in producer:
            feed = producer[tensor]
            out.append(feed.name)
            if feed.op_type not in _PASS_THROUGH or not feed.input:
                break
            tensor = feed.input[0]
    return list(dict.fromkeys(out))


def quantize_static_qdq(fp32: Path, out: Path, calibration: np.ndarray, *, reduce_range: bool | None = None,
                        calibrate_method: str = "MinMax", per_channel: bool = True,
                        float_layers: Sequence[str] = ()) -> dict[str, Any]:
    """Static INT8 quantization of ``fp32`` into ``out``, ``float_layers`` (ONNX node names) kept in float;
    returns the settings used."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reduce = (not has_vnni()) if reduce_range is None else reduce_range
    prepared = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        excluded = excluded_nodes(onnx.load(str(prepared), load_external_data=False).graph, float_layers)
        quantize_static(
            str(prepared), str(out), _Reader("input", calibration),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=per_channel, reduce_range=reduce, calibrate_method=getattr(CalibrationMethod, calibrate_method),
            nodes_to_exclude=excluded,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return {"format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": per_channel,
            "reduce_range": reduce, "calibrate_method": calibrate_method, "calibration_images": len(calibration),
            **({"float_layers": list(float_layers), "nodes_to_exclude": excluded} if float_layers else {})}


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, *, method: str,
                  float_layers: Sequence[str] = ()) -> dict[str, Any]:
    """``quantize_static_qdq`` with one of ``CALIB_METHODS``, or with each ("auto"), keeping the one whose model
    agrees best with FP32 on the calibration images."""
    if method != AUTO_METHOD:
        return quantize_static_qdq(fp32, out, calibration, calibrate_method=CALIB_METHODS[method],
                                   float_layers=float_layers)
    check = calibration[:AGREEMENT_IMAGES]
    reference = predictions(OrtRunner(fp32, threads=None).run, check)
    scores: dict[str, float] = {}
    settings: dict[str, dict[str, Any]] = {}
    for name, calibrator in CALIB_METHODS.items():
        candidate = out.with_name(f"{out.stem}.{name}{out.suffix}")
        settings[name] = quantize_static_qdq(fp32, candidate, calibration, calibrate_method=calibrator,
                                             float_layers=float_layers)
        scores[name] = agreement(reference, OrtRunner(candidate).run, check)
    chosen = best(scores, tuple(CALIB_METHODS))
    for name in CALIB_METHODS:
        candidate = out.with_name(f"{out.stem}.{name}{out.suffix}")
        if name == chosen:
            candidate.replace(out)
        else:
            candidate.unlink(missing_ok=True)
    return {**settings[chosen], "calib_method": AUTO_METHOD, "calibrate_method_candidates": scores}


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    aliases = ("ort",)
    summary = "ONNX Runtime CPU: FP32 ONNX and static INT8 (QDQ, U8S8, per-channel weights)"
    runtimes = (RUNTIME,)
    build_requires: ClassVar[Mapping[str, str]] = {"onnxruntime": "onnxruntime"}
    options = OrtFlags
    float_layers = True  # nodes_to_exclude (see ``excluded_nodes``)

    def parse_options(self, raw: Mapping[str, Any]) -> OrtFlags:
        method = calib_method(raw.get("calib_method"), target=self.name, methods=tuple(CALIB_METHODS),
                              default=DEFAULT_CALIB_METHOD)
        return OrtFlags(calib_method=method)

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        self.ensure_available()
        opts = inp.options if isinstance(inp.options, OrtFlags) else self.parse_options({})
        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = Path(inp.fp32_onnx)
        if bundle.resolve() not in fp32.resolve().parents:  # not in the bundle yet: carry a copy
            fp32 = Path(shutil.copyfile(fp32, folder / "model_fp32.onnx"))
        # else the FP32 row is the bundle's own model_fp32.onnx: the same bytes are not stored twice
        int8 = folder / "model_int8.onnx"
        settings = quantize_int8(fp32, int8, inp.calibration, method=opts.calib_method or DEFAULT_CALIB_METHOD,
                                 float_layers=inp.float_layers)
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

    def load_throughput(self, artifact: Artifact, bundle: Path, *, threads: int | None = None) -> ThroughputRunner:
        if not RUNTIME.present():
            raise DependencyError(f"{artifact.path} needs ONNX Runtime, which is not installed: {RUNTIME.install}.")
        return OrtThroughputRunner(bundle / artifact.path, threads=threads)

    def serving_configs(self, bundle: Path, artifacts: Sequence[Artifact], prep: Preprocessing,
                        num_classes: int) -> list[Path]:
        """Triton's ONNX Runtime backend serves the INT8 model as it is."""
        from resnet_deploy.targets.serving import triton_model

        int8 = next(a for a in artifacts if a.precision == "int8")
        return triton_model(bundle, f"{self.name}_int8", prep=prep, num_classes=num_classes,
                            platform="onnxruntime_onnx", sources={"1/model.onnx": int8.path})
