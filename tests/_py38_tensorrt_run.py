"""Run by tests/test_device_python38.py under Python 3.8: device-build and bench a bundle as on JetPack 5.1.

TensorRT is the strict stand-in of tests/targets/strict_trt.py for one release; its "engine" runs the
bundle's Q/DQ ONNX under ONNX Runtime (the [device] extra), and ONNX Runtime also reads the model's
input and output names in place of the stand-in's onnx parser (onnx is not a device dependency). The
CUDA runtime is tests/fixtures/host_cudart.c, found through LD_LIBRARY_PATH as the real libcudart.so
would be. Nothing of resnet-deploy is patched: the product code runs as installed.

    python _py38_tensorrt_run.py BUNDLE STRICT_TRT_DIR TRT_VERSION REPORT_JSON

Besides bench's REPORT_JSON it writes REPORT_JSON.expected.json: the top-1 of the same Q/DQ graph run
directly under this ONNX Runtime on the bundle's images, which the engine's figure must equal.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(bundle: Path, strict_dir: Path, version: str, report: Path) -> int:
    sys.path.insert(0, str(strict_dir))
    import strict_trt

    def io_names(model):
        session = ort.InferenceSession(model if isinstance(model, str) else bytes(model))
        i, o = session.get_inputs()[0], session.get_outputs()[0]
        return i.name, tuple(-1 for _ in i.shape[:1]) + tuple(i.shape[1:]), o.name, (-1, *o.shape[1:])

    qdq = ort.InferenceSession(str(bundle / "jetson" / "model_qdq.onnx"))

    def compute(batch: np.ndarray, out_features: int) -> np.ndarray:
        return qdq.run(None, {qdq.get_inputs()[0].name: batch})[0]

    strict_trt._onnx_shapes = io_names
    sys.modules["tensorrt"] = strict_trt.make_tensorrt(version, compute=compute)

    from resnet_deploy.cli import main as cli
    from resnet_deploy.pipeline import bundle as bundle_io
    from resnet_deploy.pipeline import device

    pixels, labels, _ = bundle_io.load_eval_sample(bundle / bundle_io.EVAL_SAMPLE)
    logits = compute(device.open_bundle(bundle).prep.normalize(pixels), 0)
    expected = {"top1": float((logits.argmax(1) == labels).mean())}
    report.with_name(report.name + ".expected.json").write_text(json.dumps(expected))

    for args in (["device-build", str(bundle)],
                 ["bench", str(bundle), "--iterations", "5", "--seconds", "0", "--batch", "1,8", "--out", str(report)]):
        try:
            cli(args, prog_name="resnet-deploy")
        except SystemExit as done:
            if done.code:
                return int(done.code)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])))
