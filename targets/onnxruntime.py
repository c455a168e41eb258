"""ONNX Runtime on CPU: the FP32 ONNX as is, and INT8 by ONNX Runtime's static quantization.

Settings chosen by measurement (figures: benchmarks/results/README.md, "targets/onnxruntime.py"):
- QDQ U8S8 (uint8 activations, int8 per-channel weights): fastest on x86 (s8 x s8 has no fast path; U8U8 1.4x slower).
- Without VNNI, 7-bit weights only on layers reading a signed input (stem, SE squeeze): only there u8 x s8 saturates.
- Logits (output head) left float; ``--calib-method auto``, MinMax or per-image mean per model: int8_agreement_cifar.md.
- ``qdq``, the fifth ``auto`` candidate: the TensorRT target's Q/DQ placement (conv inputs and shortcuts, not the SE
  block's Sigmoid/Mul nor the residual Add) in uint8, with Q/DQ on conv outputs so ORT fuses QLinearConv
  (calibration/qdq_uint8.py); on a CIFAR SE-ResNeXt-50 it held where ORT's own placement did not.
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

from resnet_deploy.calibration.agreement import agreement, best, predictions, scored_on, scoring_images
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


# --calib-method: our names for ONNX Runtime's calibrators (MinMax is the same rule as TensorRT's "max"; "mean_max"
# is MinMax with CalibMovingAverage, which over one pass averages each image's min/max: NNCF's default rule).
# Their order is the preference among equal scores under "auto".
CALIB_METHODS = {"max": "MinMax", "percentile": "Percentile", "mean_max": "MinMax", "entropy": "Entropy"}
_CALIB_EXTRA: dict[str, dict[str, Any]] = {"mean_max": {"CalibMovingAverage": True}}
# "qdq": not ONNX Runtime's quantizer but the TensorRT target's explicit Q/DQ graph, in uint8 for ORT's kernels
# (``qdq_quantize``). Last among equals: ORT's own quantizer is what its users expect.
QDQ_METHOD = "qdq"
METHODS = (*CALIB_METHODS, QDQ_METHOD)
DEFAULT_CALIB_METHOD = AUTO_METHOD  # see the module docstring


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
        # A residual Add: itself, so its sum is not quantized again; its inputs stay quantized (ORT hands an
        # excluded node the dequantized tensor that its other readers take).
        if nodes[name].op_type == "Add":
            continue
        tensor = nodes[name].input[0]
        while uses.get(tensor, 0) == 1 and tensor in producer:
            feed = producer[tensor]
            out.append(feed.name)
            if feed.op_type not in _PASS_THROUGH or not feed.input:
                break
            tensor = feed.input[0]
    return list(dict.fromkeys(out))


# A layer reading a non-negative tensor (a Relu or Sigmoid output, through ops that keep the sign) gets uint8 codes
# with zero point 0, mostly small; a signed input has its zero point mid-range and every code large, so u8 x s8 pairs
# overflow the 16-bit sums of AVX2 without VNNI there (ONNX Runtime's docs name the saturation, not where it hits).
_NON_NEGATIVE = ("Relu", "Sigmoid")
_SIGN_KEEPING = ("MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Transpose",
                 "Squeeze", "Unsqueeze", "Slice")


def signed_input_layers(graph) -> list[str]:
    """The Conv/Gemm nodes of ``graph`` whose data input can be negative: the stem reading the normalised image, an
    SE block's squeeze reading the pooled block output."""
    from onnx import numpy_helper

    producer = {o: n for n in graph.node for o in n.output}
    consts = {i.name: i for i in graph.initializer}

    def non_negative(node) -> bool:
        if node.op_type in _NON_NEGATIVE:
            return True
        if node.op_type != "Clip":
            return False
        low = next((a.f for a in node.attribute if a.name == "min"), None)  # opset < 11
        if len(node.input) > 1 and node.input[1] in consts:
            low = float(numpy_helper.to_array(consts[node.input[1]]).min())
        return low is not None and low >= 0.0

    out = []
    for n in graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2 or n.input[1] not in consts:
            continue
        tensor = n.input[0]
        while tensor in producer and producer[tensor].op_type in _SIGN_KEEPING and producer[tensor].input:
            tensor = producer[tensor].input[0]
        if not (tensor in producer and non_negative(producer[tensor])):
            out.append(n.name)
    return out


# Ops between the last weighted layer and the model's output that a classifier head may have.
_HEAD_OPS = (*_PASS_THROUGH, "Softmax", "LogSoftmax", "Identity", "Cast")


def output_head(graph) -> list[str]:
    """The nodes that make the model's outputs, back to and including the last weighted layer (through
    ``_HEAD_OPS`` and a bias Add): kept in float so that the logits are never quantized.

    ONNX Runtime puts Q/DQ on the output of every node it quantizes, the model's output included; uint8 logits
    round close scores together and flip predictions, which neither NNCF nor TensorRT's Q/DQ placement does."""
    producer = {o: n for n in graph.node for o in n.output}
    consts = {i.name for i in graph.initializer}
    out: list[str] = []
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None and node.name not in out:
            out.append(node.name)
            data = [t for t in node.input if t and t not in consts]
            bias_add = node.op_type in ("Add", "Sub") and len(data) == 1
            if not data or not (node.op_type in _HEAD_OPS or bias_add):
                break
            node = producer.get(data[0])
    return out


def _seven_bit_overrides(graph, layers: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """``TensorQuantOverrides`` giving ``layers``' weights 7 bits: one entry per channel along ORT's own channel axis
    (the per-channel form every ORT release with overrides reads)."""
    nodes = {n.name: n for n in graph.node}
    dims = {i.name: list(i.dims) for i in graph.initializer}
    out: dict[str, list[dict[str, Any]]] = {}
    for name in layers:
        node = nodes[name]
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        axis = 0 if node.op_type == "Conv" or trans_b else 1
        out[node.input[1]] = [{"axis": axis, "reduce_range": True} for _ in range(dims[node.input[1]][axis])]
    return out


def quantize_static_qdq(fp32: Path, out: Path, calibration: np.ndarray, *, reduce_range: bool | None = None,
                        method: str = "max", per_channel: bool = True,
                        float_layers: Sequence[str] = ()) -> dict[str, Any]:
    """Static INT8 quantization of ``fp32`` into ``out`` with the range rule ``method`` (one of ``CALIB_METHODS``),
    ``float_layers`` (ONNX node names) kept in float; returns the settings used.

    ``reduce_range``: True or False as ONNX Runtime's flag (7-bit weights everywhere or nowhere); None (default):
    without VNNI, 7-bit weights on ``signed_input_layers`` only, with VNNI nowhere (see the module docstring)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibrate_method = CALIB_METHODS[method]
    prepared = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    try:
        graph = onnx.load(str(prepared), load_external_data=False).graph
        excluded = excluded_nodes(graph, float_layers)
        head = [n for n in output_head(graph) if n not in excluded]
        extra = dict(_CALIB_EXTRA.get(method, {}))
        seven_bit: list[str] = []
        if reduce_range is None and not has_vnni():
            seven_bit = [n for n in signed_input_layers(graph) if n not in excluded and n not in head]
            if seven_bit:
                extra["TensorQuantOverrides"] = _seven_bit_overrides(graph, seven_bit)
        quantize_static(
            str(prepared), str(out), _Reader("input", calibration),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=per_channel, reduce_range=bool(reduce_range),
            calibrate_method=getattr(CalibrationMethod, calibrate_method), nodes_to_exclude=excluded + head,
            extra_options=extra,
        )
    finally:
        prepared.unlink(missing_ok=True)
    return {"format": "QDQ", "activations": "uint8", "weights": "int8", "per_channel": per_channel,
            "reduce_range": bool(reduce_range or seven_bit),
            **({"reduce_range_layers": seven_bit} if seven_bit else {}),
            "calib_method": method, "calibrate_method": calibrate_method,
            "calib_moving_average": bool(_CALIB_EXTRA.get(method, {}).get("CalibMovingAverage")),
            "calibration_images": len(calibration), "float_output_head": head,
            **({"float_layers": list(float_layers), "nodes_to_exclude": excluded} if float_layers else {})}


# ONNX Runtime's histogram calibrators (Percentile, Entropy) keep every intermediate tensor of every calibration
# image until the pass ends: a ResNet-18 at 224 px peaked at 9.3 GB on 300 images (MinMax: 0.5 GB). Those two
# rules see at most as many images as fit this budget of activations (estimated by ONNX shape inference):
# 46 images and a 1.9 GB peak for that ResNet-18.
HISTOGRAM_METHODS = ("percentile", "entropy")
HISTOGRAM_BUDGET_BYTES = 1 << 30  # 1 GiB: the CIFAR models measured in int8_agreement_cifar.md keep all 300
MIN_HISTOGRAM_IMAGES = 16


def activation_bytes(fp32: Path) -> int:
    """Bytes of the float tensors one image makes flow through ``fp32`` (free dimensions taken as 1)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32), load_external_data=False))
    total = 0
    for info in (*model.graph.value_info, *model.graph.output):
        tensor = info.type.tensor_type
        if tensor.elem_type == onnx.TensorProto.FLOAT:
            total += 4 * int(np.prod([d.dim_value if d.dim_value > 0 else 1 for d in tensor.shape.dim]))
    return max(total, 1)


def histogram_images(fp32: Path, available: int) -> int:
    """How many calibration images a histogram rule sees: all, or as many as ``HISTOGRAM_BUDGET_BYTES`` holds."""
    fits = HISTOGRAM_BUDGET_BYTES // activation_bytes(fp32)
    return min(available, max(MIN_HISTOGRAM_IMAGES, fits))


def qdq_quantize(fp32: Path, out: Path, calibration: np.ndarray, *, float_layers: Sequence[str] = (),
                 check: np.ndarray | None = None, seven_bit: bool | None = None) -> dict[str, Any]:
    """The TensorRT target's explicit Q/DQ graph of ``fp32`` (ranges by its "auto" rule, scored on ``check``) with
    uint8 activations and quantized conv outputs, so that ONNX Runtime fuses QLinearConv
    (``calibration/qdq_uint8.py``), INT8 weights folded. ``seven_bit``: None, as ``quantize_static_qdq``
    (7-bit weights on signed-input layers without VNNI). ``float_layers`` the plan does not quantize are
    float there already."""
    import onnx

    from resnet_deploy.calibration.qdq import int8_weights, qdq_in_memory
    from resnet_deploy.calibration.qdq_uint8 import qlinear_form
    from resnet_deploy.targets import onnx_session

    model, qdq, float_layers = qdq_in_memory(fp32, calibration, session=onnx_session, float_layers=float_layers,
                                             check=check)
    narrow = not has_vnni() if seven_bit is None else seven_bit
    changed = qlinear_form(model, qdq.amax, seven_bit=narrow)
    int8_weights(model)
    onnx.save(model, str(out))
    return {"format": "QDQ (TensorRT's placement, uint8 activations, quantized conv outputs)",
            "activations": "uint8 per-tensor (zero point 0 after a Relu, 128 elsewhere)", "weights": "int8",
            "per_channel": True, "reduce_range": bool(changed["seven_bit_weights"]), "calib_method": QDQ_METHOD,
            "amax_method": qdq.method, **({"amax_candidates": qdq.candidates} if qdq.candidates else {}),
            "quantized_activations": len(qdq.activations) + changed["conv_outputs_quantized"],
            "quantized_weights": len(qdq.weights), **changed, "calibration_images": len(calibration),
            **({"float_layers": list(float_layers)} if float_layers else {})}


def _quantize_one(fp32: Path, out: Path, calibration: np.ndarray, *, method: str, float_layers: Sequence[str],
                  check: np.ndarray | None) -> dict[str, Any]:
    if method == QDQ_METHOD:
        return qdq_quantize(fp32, out, calibration, float_layers=float_layers, check=check)
    if method in HISTOGRAM_METHODS:
        calibration = calibration[:histogram_images(fp32, len(calibration))]
    return quantize_static_qdq(fp32, out, calibration, method=method, float_layers=float_layers)


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, *, method: str,
                  float_layers: Sequence[str] = (), check: np.ndarray | None = None) -> dict[str, Any]:
    """``quantize_static_qdq`` with one of ``CALIB_METHODS`` (or ``qdq_quantize``), or with each ("auto"), keeping
    the one whose model agrees best with FP32 on ``check`` (held-out images; None: the calibration images)."""
    if method != AUTO_METHOD:
        return _quantize_one(fp32, out, calibration, method=method, float_layers=float_layers, check=check)
    scoring = scoring_images(calibration, check)
    reference = predictions(OrtRunner(fp32, threads=None).run, scoring)
    scores: dict[str, float] = {}
    settings: dict[str, dict[str, Any]] = {}
    for name in METHODS:
        candidate = out.with_name(f"{out.stem}.{name}{out.suffix}")
        settings[name] = _quantize_one(fp32, candidate, calibration, method=name, float_layers=float_layers,
                                       check=check)
        scores[name] = agreement(reference, OrtRunner(candidate).run, scoring)
    chosen = best(scores, METHODS)
    for name in METHODS:
        candidate = out.with_name(f"{out.stem}.{name}{out.suffix}")
        if name == chosen:
            candidate.replace(out)
        else:
            candidate.unlink(missing_ok=True)
    return {**settings[chosen], "calib_method": AUTO_METHOD, "calib_method_chosen": chosen,
            "calibrate_method_candidates": scores, "candidates_scored_on": scored_on(calibration, check)}


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    aliases = ("ort",)
    summary = "ONNX Runtime CPU: FP32 ONNX and static INT8 (QDQ, U8S8, per-channel weights)"
    runtimes = (RUNTIME,)
    build_requires: ClassVar[Mapping[str, str]] = {"onnxruntime": "onnxruntime"}
    options = OrtFlags
    float_layers = True  # nodes_to_exclude (see ``excluded_nodes``)

    def parse_options(self, raw: Mapping[str, Any]) -> OrtFlags:
        method = calib_method(raw.get("calib_method"), target=self.name, methods=METHODS,
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
                                 float_layers=inp.float_layers, check=inp.check)
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
