"""OpenVINO on CPU: the ONNX converted to IR, and INT8 by NNCF post-training quantization.

NNCF is OpenVINO's own quantizer: it inserts FakeQuantize nodes the CPU plugin turns into VNNI/AMX
int8 kernels, and applies bias correction, so it is what the field uses for OpenVINO INT8.

Settings chosen by measurement (benchmarks/int8_variants.py, ResNet-50 224x224 batch 1 on a 2-core
AMD EPYC with AVX512-VNNI and AVX512-BF16, a host shared with a training job; medians of 5 and of 9
interleaved rounds; only figures from the same run are compared):

- ``INFERENCE_PRECISION_HINT=f32`` for FP32 *and* INT8. On CPUs with AVX512-BF16 or AMX, OpenVINO
  otherwise runs "FP32" models in bfloat16 (that changed 6% of the top-1 predictions of a ResNet-50
  whose logits are close), and for INT8 the layers left in float gained nothing from bf16: p50
  12.0 ms with f32 vs 12.6 ms with bf16 (17.3 vs 19.1 ms in a noisier run), same agreement with FP32.
- ``ENABLE_CPU_PINNING=False``. Pinned threads cannot move off a core that another process is
  using; on the shared host INT8 p50 went 12.6 -> 10.3 ms and 19.1 -> 14.6 ms (as fast as one
  thread, without giving up the second core where it is free). OpenVINO's docs advise the same
  whenever other workloads share the CPU, as they do on a build host.
- Static input shape: the IR keeps a free batch dimension on disk (one portable bundle), and the
  runner reshapes it to the batch it is called with before compiling, caching one compiled model per
  batch size. Shape-agnostic kernels cost up to 1 ms per ResNet-50 call (13.6 vs 12.6 ms; 13.0 vs
  12.0 ms for NNCF's own default recipe; a tie, 17.6 vs 17.6 ms, in the noisier run).
- NNCF: preset performance (symmetric activations), fast bias correction, target CPU: NNCF's own
  defaults. "mixed" was no faster (12.0 vs 12.6 ms, within noise) and no more accurate (trained
  ResNet-20 on Fashion-MNIST: -0.37 vs -0.27 points). Full bias correction took 2.4x longer to
  calibrate a ResNet-50 (131 s vs 55 s); it gained 0.57 points on ResNet-20 but lowered ResNet-50
  agreement (0.88 vs 0.90), so the default stays fast bias correction, well inside the 1-point gate.
- Threads: all cores (the plugin's default) unless ``threads`` says otherwise.

Result (`make bench`: benchmarks/bench_cpu.py, 5 interleaved rounds, runtime-default threads, the
same host when quiet): ResNet-50 224x224 batch 1 INT8 p50 5.12 ms: 0.28x ONNX Runtime FP32 (17.82 ms;
median of per-round ratios) and 0.97x NNCF's default recipe compiled with OpenVINO's defaults
(5.28 ms); batch 16 0.98x of it; ResNet-18 batch 1 0.96x, batch 16 0.98x. On the busy host the same
run gave 0.20x and 0.78x. The embedded ResNet-20 (Fashion-MNIST, 10,000 test images) lost 0.17
points of top-1 (93.44% vs 93.61%, agreement 98.87%).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.errors import DependencyError
from resnet_deploy.targets.base import Artifact, CompileInput, Runner, Target

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

    def __init__(self, path: Path, *, precision: str, threads: int | None = None, hint: str = "LATENCY") -> None:
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


class OpenVINOTarget(Target):
    name = "openvino"
    aliases = ("cpu", "ov")
    summary = "OpenVINO CPU: FP32 IR and NNCF post-training INT8 IR"
    requires = {"openvino": "openvino", "nncf": "nncf"}

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
            Artifact(self.name, "fp32", str(fp32.relative_to(bundle)), "openvino",
                     extra={"files": [str(fp32.with_suffix(".bin").relative_to(bundle))]}),
            Artifact(self.name, "int8", str(int8.relative_to(bundle)), "openvino",
                     extra={"files": [str(int8.with_suffix(".bin").relative_to(bundle))], "quantization": settings}),
        ]

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        # Loading needs the runtime only: a device has openvino but not nncf, which only compile uses.
        if importlib.util.find_spec("openvino") is None:
            raise DependencyError(
                f"--target {self.name} needs openvino to run {artifact.path}, which is not installed. "
                "Install it with `pip install openvino` and run again."
            )
        return OvRunner(bundle / artifact.path, precision=artifact.precision, threads=threads,
                        hint=(hint or "latency").upper())
