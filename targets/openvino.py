"""OpenVINO on CPU: ONNX converted to IR; INT8 by NNCF, OpenVINO's own post-training quantizer.

Settings chosen by measurement (figures: benchmarks/results/README.md, "targets/openvino.py"):
- ``INFERENCE_PRECISION_HINT=f32`` (FP32 and INT8): else bf16 on AVX512-BF16/AMX changed predictions.
- ``ENABLE_CPU_PINNING=False``: pinned threads stall behind other processes on a shared CPU.
- One static-shape model compiled per batch size (the IR keeps a free batch): dynamic was never faster.
- NNCF's defaults (performance preset, fast bias correction): "mixed" or full correction was no better.
- Threads: all cores (the plugin's default) unless ``threads`` says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import DependencyError
from resnet_deploy.targets.base import Artifact, CompileInput, Runner, Runtime, Target

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


def nncf_quantize(fp32_xml: Path, out: Path, calibration: np.ndarray, *, preset: str = "performance",
                  fast_bias_correction: bool = True) -> dict[str, Any]:
    """NNCF PTQ of an OpenVINO IR with our calibration images; writes ``out`` (.xml + .bin)."""
    import nncf
    import openvino as ov

    model = shared_core().read_model(str(fp32_xml))
    dataset = nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))])
    quantized = nncf.quantize(
        model, dataset, subset_size=len(calibration), target_device=nncf.TargetDevice.CPU,
        preset=nncf.QuantizationPreset(preset), fast_bias_correction=fast_bias_correction,
    )
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return {"tool": f"nncf {nncf.__version__}", "preset": preset, "fast_bias_correction": fast_bias_correction,
            "calibration_images": len(calibration)}


RUNTIME = Runtime("openvino", "openvino", "pip install openvino", preference=200, packages=("openvino", "nncf"),
                  loggers=("openvino", "nncf"))


class OpenVINOTarget(Target):
    name = "openvino"
    aliases = ("cpu", "ov")
    summary = "OpenVINO CPU: FP32 IR and NNCF post-training INT8 IR"
    runtimes = (RUNTIME,)
    build_requires: ClassVar[Mapping[str, str]] = {"openvino": "openvino", "nncf": "nncf"}

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        self.ensure_available()
        import openvino as ov

        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = folder / "model_fp32.xml"
        ov.save_model(ov.convert_model(str(inp.fp32_onnx)), str(fp32), compress_to_fp16=False)
        int8 = folder / "model_int8.xml"
        settings = nncf_quantize(fp32, int8, inp.calibration)
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

    def serving_configs(self, bundle: Path, artifacts: Sequence[Artifact], prep: Preprocessing,
                        num_classes: int) -> list[Path]:
        """Triton's OpenVINO backend serves the INT8 IR (f32 inference precision, as the runner pins)."""
        from resnet_deploy.targets.serving import triton_model

        int8 = next(a for a in artifacts if a.precision == "int8")
        return triton_model(bundle, f"{self.name}_int8", prep=prep, num_classes=num_classes, backend="openvino",
                            sources={"1/model.xml": int8.path, "1/model.bin": int8.files[0]},
                            parameters={"INFERENCE_PRECISION_HINT": "f32"})
