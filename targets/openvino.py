"""OpenVINO on CPU: ONNX converted to IR; INT8 by NNCF, OpenVINO's own post-training quantizer, or read from the
TensorRT target's Q/DQ graph ("qdq").

Settings chosen by measurement (figures: benchmarks/results/README.md, "targets/openvino.py"):
- ``INFERENCE_PRECISION_HINT=f32`` (FP32 and INT8): else bf16 on AVX512-BF16/AMX changed predictions.
- ``ENABLE_CPU_PINNING=False``: pinned threads stall behind other processes on a shared CPU.
- One static-shape model compiled per batch size (the IR keeps a free batch): dynamic was never faster.
- NNCF's performance preset and first-layer overflow fix, bias correction off (the fast one cost ResNet-20 2.4 points
  of agreement), ``--calib-method auto``: ResNet-20 needs "max"/"histogram", an SE-ResNeXt with rare outlier images
  NNCF's "mean_max", the CIFAR SE-ResNeXt-50 after ``train --int8-aware`` "qdq", the TensorRT target's explicit
  Q/DQ graph read by OpenVINO, which it must name: "auto", scoring on the calibration images themselves, keeps
  "max" there (figures: benchmarks/results/int8_agreement_cifar.md).
- Threads: all cores (the plugin's default) unless ``threads`` says otherwise.
- Throughput (validation passes, ``bench --hint throughput``): as ``benchmark_app -hint throughput`` runs it,
  the hint's streams and its optimal number of requests in an ``AsyncInferQueue``, one image each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from resnet_deploy.calibration.agreement import agreement, best, predictions, scored_on, scoring_images
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import DependencyError, VerificationError
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

# Distinct batch sizes compiled with a static shape; beyond this, one shape-agnostic compile serves the rest.
_MAX_STATIC_BATCHES = 4


_CORE = None


def shared_core():
    """The process's one ``ov.Core``: OpenVINO advises one per process, and the CPU plugin needs it.

    Each Core loads its own CPU plugin, and each plugin, when created, installs an alternate signal
    stack on the calling thread and puts the previous one back when destroyed. Two Cores whose
    models are freed first-in-first-out leave the main thread's alternate stack pointing at unmapped
    memory, so the next SIGINT (Python's handler runs on that stack) killed the process with SIGSEGV
    instead of raising KeyboardInterrupt (a build's validate stage does exactly that: FP32 runner,
    then INT8 runner). One Core means one plugin, created once and destroyed at exit.
    """
    global _CORE
    if _CORE is None:
        import openvino as ov

        _CORE = ov.Core()
    return _CORE


class OvRunner:
    """Synchronous ``run(batch) -> logits``; compiles a static-shape model per batch size on first use."""

    def __init__(self, path: Path, *, threads: int | None = None, hint: str = "LATENCY") -> None:
        import openvino as ov

        self.core = shared_core()
        self.model = self.core.read_model(str(path))
        self.config: dict[str, Any] = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32",
                                       "ENABLE_CPU_PINNING": False}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self._compiled: dict[int | None, tuple[Any, Any]] = {}
        self._request(1)  # compile the batch-1 model now, so load errors surface here and not on first call
        self.description = f"openvino {ov.get_version().split('-')[0]} CPU ({hint.lower()} hint, static batch)"

    def _request(self, batch: int):
        key: int | None = batch
        if batch not in self._compiled:
            dims = list(self.model.input(0).get_partial_shape())
            static = all(d.is_static for d in dims[1:]) and len(self._compiled) < _MAX_STATIC_BATCHES
            if static:
                model = self.model.clone()
                model.reshape([batch, *(d.get_length() for d in dims[1:])])
            else:
                key, model = None, self.model
            if key not in self._compiled:
                compiled = self.core.compile_model(model, "CPU", self.config)
                self._compiled[key] = (compiled, compiled.create_infer_request())
        return self._compiled[key]

    def run(self, batch: np.ndarray) -> np.ndarray:
        compiled, request = self._request(len(batch))
        result = request.infer({0: batch})
        return np.asarray(result[compiled.output(0)])


class OvThroughputRunner:
    """OpenVINO's throughput mode as ``benchmark_app -hint throughput`` runs it: the THROUGHPUT hint picks the
    streams, an ``AsyncInferQueue`` keeps the plugin's optimal number of requests in flight, one image each
    on a batch-1 model (f32 inference precision and no pinning, as ``OvRunner``)."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import openvino as ov

        core = shared_core()
        model = core.read_model(str(path))
        dims = list(model.input(0).get_partial_shape())
        if all(d.is_static for d in dims[1:]):
            model.reshape([1, *(d.get_length() for d in dims[1:])])
        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32",
                                  "ENABLE_CPU_PINNING": False}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.queue = ov.AsyncInferQueue(self.compiled, self.requests)
        self.queue.set_callback(self._done)
        self._out: list[Any] = []
        streams = self.compiled.get_property("NUM_STREAMS")
        self.description = (f"openvino {ov.get_version().split('-')[0]} CPU (throughput hint: {streams} streams, "
                            f"{self.requests} requests in flight)")

    def _done(self, request: Any, index: int) -> None:
        self._out[index] = request.get_output_tensor(0).data[0].copy()  # the request's buffer is reused

    def run_many(self, batch: np.ndarray) -> np.ndarray:
        self._out = [None] * len(batch)
        for i in range(len(batch)):
            self.queue.start_async({0: batch[i : i + 1]}, i)  # waits while every request is busy
        self.queue.wait_all()
        return np.stack(self._out)


# --calib-method: NNCF's activation range estimators by our names. NNCF's default for per-tensor activations is
# the mean over images of each image's min/max ("mean_max"), which clips an outlier that only some images reach.
# Their order is the preference among equal scores under "auto".
# "qdq" is not NNCF's: the explicit Q/DQ ONNX of the TensorRT target (``calibration.qdq``: symmetric INT8, per-tensor
# activations on conv inputs and residual shortcuts, the best of its max/percentile/entropy/mse ranges), which
# OpenVINO's ONNX frontend reads as FakeQuantize and its CPU plugin runs in INT8. Unlike NNCF it puts none on the SE
# block's Mul, and clips by squared error: on the CIFAR SE-ResNeXt-50 it agreed where NNCF's did not.
CALIB_METHODS = ("mean_max", "max", "quantile", "histogram", "qdq")
QDQ_METHOD = "qdq"
NNCF_DEFAULT_METHOD = "mean_max"
DEFAULT_CALIB_METHOD = AUTO_METHOD  # see the module docstring
BIAS_CORRECTIONS = ("none", "fast", "full")
_ESTIMATORS = {"mean_max": "MEAN_MINMAX", "max": "MINMAX", "quantile": "MEAN_QUANTILE", "histogram": "HISTOGRAM"}
_WEIGHTED_OPS = ("Convolution", "GroupConvolution", "MatMul")


@dataclass(frozen=True)
class OvFlags:
    """``build`` flags of ``--target openvino``."""

    calib_method: str | None = calib_method_flag()


def ir_layer_names(model, layers: Sequence[str]) -> list[str]:
    """NNCF ``ignored_scope`` names for ``layers`` (ONNX node names): the IR's Convolution/MatMul op of each,
    or for a residual Add its Add op (ignored, NNCF puts no quantizer on its inputs).

    The ONNX frontend names a layer's weighted op after the ONNX node, with ``/WithoutBiases`` when the
    bias became a separate Add (which then carries the plain name: weighted ops are matched first)."""
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() in _WEIGHTED_OPS]
    adds = {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "Add"}
    out = []
    for layer in layers:
        found = [op.get_friendly_name() for op in ops
                 if op.get_friendly_name() in (layer, f"{layer}/WithoutBiases")]
        if not found and layer in adds:
            found = [layer]
        if not found:
            raise VerificationError(f"The OpenVINO IR has no Convolution, MatMul or Add named after the ONNX layer "
                                    f"{layer!r}; it cannot be kept in float there.")
        out += found
    return out


def nncf_quantize(fp32_xml: Path, out: Path, calibration: np.ndarray, *, preset: str = "performance",
                  bias_correction: str = "none", method: str = NNCF_DEFAULT_METHOD,
                  float_layers: Sequence[str] = ()) -> dict[str, Any]:
    """NNCF PTQ of an OpenVINO IR with our calibration images, ``float_layers`` (ONNX node names) left out by
    NNCF's ignored scope; writes ``out`` (.xml + .bin). ``bias_correction``: one of ``BIAS_CORRECTIONS``."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = shared_core().read_model(str(fp32_xml))
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    ignored = ir_layer_names(model, float_layers)
    if bias_correction not in BIAS_CORRECTIONS:
        raise ValueError(f"bias_correction {bias_correction!r} is not one of {', '.join(BIAS_CORRECTIONS)}")
    extra: dict[str, Any] = {}
    if ignored:
        extra["ignored_scope"] = nncf.IgnoredScope(names=ignored)
    advanced: dict[str, Any] = {}
    if method != NNCF_DEFAULT_METHOD:
        advanced["activations_range_estimator_params"] = getattr(RangeEstimatorParametersSet, _ESTIMATORS[method])
    if bias_correction == "none":
        advanced["disable_bias_correction"] = True
    if advanced:
        extra["advanced_parameters"] = AdvancedQuantizationParameters(**advanced)
    quantized = nncf.quantize(
        model, dataset, subset_size=len(calibration), target_device=nncf.TargetDevice.CPU,
        preset=nncf.QuantizationPreset(preset), fast_bias_correction=bias_correction != "full", **extra,
    )
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return {"tool": f"nncf {nncf.__version__}", "preset": preset, "bias_correction": bias_correction,
            "calib_method": method, "activations_range_estimator": _ESTIMATORS[method],
            "calibration_images": len(calibration),
            **({"float_layers": list(float_layers), "ignored_scope": ignored} if float_layers else {})}


def qdq_quantize(fp32_onnx: Path, out: Path, calibration: np.ndarray, *,
                 float_layers: Sequence[str] = (), check: np.ndarray | None = None) -> dict[str, Any]:
    """The TensorRT target's explicit Q/DQ ONNX of ``fp32_onnx`` (ranges by its "auto" rule, scored on ``check``),
    converted to an IR at ``out``: OpenVINO turns each Q/DQ pair into a FakeQuantize and runs the quantized
    convolutions in INT8.
    ``float_layers``: ONNX node names left without Q/DQ, as in ``calibration.qdq.keep_float``."""
    import tempfile

    import onnx
    import openvino as ov

    from resnet_deploy.calibration.qdq import int8_weights, qdq_in_memory
    from resnet_deploy.targets import onnx_session

    model, qdq, float_layers = qdq_in_memory(fp32_onnx, calibration, session=onnx_session,
                                             float_layers=float_layers, check=check)
    int8_weights(model)  # INT8 weights in the IR's .bin, not FP32 ones behind a FakeQuantize
    with tempfile.TemporaryDirectory(prefix="resnet-deploy-qdq-") as work:
        onnx.save(model, str(Path(work) / "model_qdq.onnx"))
        ov.save_model(ov.convert_model(str(Path(work) / "model_qdq.onnx")), str(out), compress_to_fp16=False)
    return {"tool": f"openvino {ov.get_version().split('-')[0]} (ONNX Q/DQ)",
            "format": "QDQ (TensorRT's placement), read as FakeQuantize", "calib_method": QDQ_METHOD,
            "activations": "int8 symmetric per-tensor", "weights": "int8 symmetric per-channel",
            "amax_method": qdq.method, **({"amax_candidates": qdq.candidates} if qdq.candidates else {}),
            "quantized_activations": len(qdq.activations), "quantized_weights": len(qdq.weights),
            "calibration_images": len(calibration),
            **({"float_layers": list(float_layers)} if float_layers else {})}


def _quantize_one(fp32_xml: Path, fp32_onnx: Path | None, out: Path, calibration: np.ndarray, *, method: str,
                  float_layers: Sequence[str], check: np.ndarray | None = None) -> dict[str, Any]:
    if method == QDQ_METHOD:
        if fp32_onnx is None:
            raise ValueError("the qdq method needs the FP32 ONNX the IR was converted from")
        return qdq_quantize(fp32_onnx, out, calibration, float_layers=float_layers, check=check)
    return nncf_quantize(fp32_xml, out, calibration, method=method, float_layers=float_layers)


def quantize_int8(fp32_xml: Path, out: Path, calibration: np.ndarray, *, method: str,
                  float_layers: Sequence[str] = (), fp32_onnx: Path | None = None,
                  check: np.ndarray | None = None) -> dict[str, Any]:
    """``nncf_quantize`` (or ``qdq_quantize`` of ``fp32_onnx``) with one of ``CALIB_METHODS``, or with each
    ("auto"; "qdq" only when ``fp32_onnx`` is given), keeping the IR that agrees best with FP32 on ``check``
    (held-out images; None: the calibration images)."""
    if method != AUTO_METHOD:
        return _quantize_one(fp32_xml, fp32_onnx, out, calibration, method=method, float_layers=float_layers,
                             check=check)
    methods = tuple(m for m in CALIB_METHODS if m != QDQ_METHOD or fp32_onnx is not None)
    scoring = scoring_images(calibration, check)
    reference = predictions(OvRunner(fp32_xml).run, scoring)
    scores: dict[str, float] = {}
    settings: dict[str, dict[str, Any]] = {}
    for name in methods:
        candidate = out.with_name(f"{out.stem}.{name}.xml")
        settings[name] = _quantize_one(fp32_xml, fp32_onnx, candidate, calibration, method=name,
                                       float_layers=float_layers, check=check)
        scores[name] = agreement(reference, OvRunner(candidate).run, scoring)
    chosen = best(scores, methods)
    for name in methods:
        for suffix in (".xml", ".bin"):
            candidate = out.with_name(f"{out.stem}.{name}{suffix}")
            if name == chosen:
                candidate.replace(out.with_suffix(suffix))
            else:
                candidate.unlink(missing_ok=True)
    return {**settings[chosen], "calib_method": AUTO_METHOD, "calib_method_chosen": chosen,
            "calib_method_candidates": scores, "candidates_scored_on": scored_on(calibration, check),
            **({"activations_range_estimator": _ESTIMATORS[chosen]} if chosen in _ESTIMATORS else {})}


RUNTIME = Runtime("openvino", "openvino", "pip install openvino", preference=200, packages=("openvino", "nncf"),
                  loggers=("openvino", "nncf"))


class OpenVINOTarget(Target):
    name = "openvino"
    aliases = ("cpu", "ov")
    summary = "OpenVINO CPU: FP32 IR and INT8 IR (NNCF post-training, or the explicit Q/DQ graph)"
    runtimes = (RUNTIME,)
    build_requires: ClassVar[Mapping[str, str]] = {"openvino": "openvino", "nncf": "nncf"}
    options = OvFlags
    float_layers = True  # NNCF's ignored scope (see ``ir_layer_names``)

    def parse_options(self, raw: Mapping[str, Any]) -> OvFlags:
        return OvFlags(calib_method=calib_method(raw.get("calib_method"), target=self.name, methods=CALIB_METHODS,
                                                 default=DEFAULT_CALIB_METHOD))

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        self.ensure_available()
        import openvino as ov

        opts = inp.options if isinstance(inp.options, OvFlags) else self.parse_options({})

        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = folder / "model_fp32.xml"
        ov.save_model(ov.convert_model(str(inp.fp32_onnx)), str(fp32), compress_to_fp16=False)
        int8 = folder / "model_int8.xml"
        settings = quantize_int8(fp32, int8, inp.calibration, method=opts.calib_method or DEFAULT_CALIB_METHOD,
                                 float_layers=inp.float_layers, fp32_onnx=inp.fp32_onnx, check=inp.check)
        return [
            Artifact(self.name, "fp32", str(fp32.relative_to(bundle)), RUNTIME.name,
                     files=(str(fp32.with_suffix(".bin").relative_to(bundle)),)),
            Artifact(self.name, "int8", str(int8.relative_to(bundle)), RUNTIME.name,
                     files=(str(int8.with_suffix(".bin").relative_to(bundle)),), details={"quantization": settings}),
        ]

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        # Loading needs the runtime only: a device has openvino but not nncf, which only compile uses.
        if not RUNTIME.present():
            raise DependencyError(f"{artifact.path} needs OpenVINO, which is not installed: {RUNTIME.install}.")
        return OvRunner(bundle / artifact.path, threads=threads, hint=(hint or "latency").upper())

    def load_throughput(self, artifact: Artifact, bundle: Path, *, threads: int | None = None) -> ThroughputRunner:
        if not RUNTIME.present():
            raise DependencyError(f"{artifact.path} needs OpenVINO, which is not installed: {RUNTIME.install}.")
        return OvThroughputRunner(bundle / artifact.path, threads=threads)

    def serving_configs(self, bundle: Path, artifacts: Sequence[Artifact], prep: Preprocessing,
                        num_classes: int) -> list[Path]:
        """Triton's OpenVINO backend serves the INT8 IR (f32 inference precision, as the runner pins)."""
        from resnet_deploy.targets.serving import triton_model

        int8 = next(a for a in artifacts if a.precision == "int8")
        return triton_model(bundle, f"{self.name}_int8", prep=prep, num_classes=num_classes, backend="openvino",
                            sources={"1/model.xml": int8.path, "1/model.bin": int8.files[0]},
                            parameters={"INFERENCE_PRECISION_HINT": "f32"})
