"""The cheap in-process target for tests of error paths and of the build chain (plug-in API 1).

``StubTarget`` compiles the FP32 ONNX as is and its weight-only INT8 rounding, both run by the pipeline's
ONNX executor: a build through it costs the shared stages and milliseconds more, where a real target's
quantizer and runtime cost seconds. ``stub_target`` (tests/conftest.py) registers it for one test.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from resnet_deploy.targets import Artifact, CompileInput, Runner, Runtime, Target, onnx_session


class StubRunner:
    """The pipeline's own ONNX executor behind the ``Runner`` protocol."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        self.session = onnx_session(path, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self.description = "contract stub (the pipeline's ONNX executor)"

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def round_weights_to_int8(fp32: Path, out: Path) -> None:
    """Weight-only INT8: every Conv/Gemm weight rounded to 255 levels per output channel, kept in float.
    No calibration, so it costs milliseconds, yet it moves the logits as a real INT8 model does."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(fp32))
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    for i, tensor in enumerate(model.graph.initializer):
        if tensor.name in weights:
            w = numpy_helper.to_array(tensor)
            scale = np.abs(w).reshape(len(w), -1).max(axis=1).reshape(-1, *[1] * (w.ndim - 1)) / 127
            q = np.round(w / np.where(scale > 0, scale, 1)) * scale
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(q.astype(w.dtype), tensor.name))
    onnx.save(model, str(out))


class StubTarget(Target):
    """A cheap in-process target: the FP32 ONNX as is and its weight-only INT8 rounding, both run by the
    pipeline's ONNX executor. Register it with ``register(StubTarget)``; ``unregister`` it after."""

    name = "contract-stub"
    summary = "test stub: the FP32 ONNX and its INT8-rounded weights, run by the pipeline's ONNX executor"
    # A runtime of its own, present wherever resnet-deploy is; its names are no words of the package's code.
    runtimes = (Runtime("contract-stub", "resnet_deploy", "comes with resnet-deploy"),)

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = Path(shutil.copyfile(inp.fp32_onnx, folder / "model_fp32.onnx"))
        int8 = folder / "model_int8.onnx"
        round_weights_to_int8(fp32, int8)
        runtime = self.runtimes[0].name
        return [Artifact(self.name, "fp32", str(fp32.relative_to(bundle)), runtime),
                Artifact(self.name, "int8", str(int8.relative_to(bundle)), runtime,
                         note="weight-only rounding, activations in float", details={"weights": "int8 per-channel"})]

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        return StubRunner(bundle / artifact.path, threads=threads)


