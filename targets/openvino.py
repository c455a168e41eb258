"""OpenVINO on CPU: the ONNX converted to IR, and INT8 by NNCF post-training quantization.

NNCF is OpenVINO's own quantizer: it inserts FakeQuantize nodes the CPU plugin turns into VNNI/AMX
int8 kernels, and applies bias correction, so it is what the field uses for OpenVINO INT8.
FP32 rows pin ``INFERENCE_PRECISION_HINT=f32``: on CPUs with AVX512-BF16 or AMX, OpenVINO would
otherwise silently run "FP32" models in bfloat16.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.targets.base import Artifact, CompileInput, Runner, Target


class OvRunner:
    def __init__(self, path: Path, *, precision: str, threads: int | None = None, hint: str = "LATENCY") -> None:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint}
        if precision == "fp32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.description = f"openvino {ov.get_version().split('-')[0]} CPU ({hint.lower()} hint)"

    def run(self, batch: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: batch})
        return np.asarray(result[self.compiled.output(0)])


def nncf_quantize(fp32_xml: Path, out: Path, calibration: np.ndarray, *, preset: str = "performance",
                  fast_bias_correction: bool = True) -> dict[str, Any]:
    """NNCF PTQ of an OpenVINO IR with our calibration images; writes ``out`` (.xml + .bin)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_xml))
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

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None) -> Runner:
        self.ensure_available()
        return OvRunner(bundle / artifact.path, precision=artifact.precision, threads=threads)
