"""A tiny ONNX classifier with one heavy outlier channel, for fast tests of float layers and the fallback.

Three 3x3 convolutions (8 channels) and a 10-class Gemm fitted to real labels, on 8x8 single-channel
images (real Fashion-MNIST pixels). Channel 0 of ``/a/Conv`` is scaled by ``FACTOR`` and ``/b/Conv``'s
weights for it divided by it, so FP32 is unchanged but per-tensor INT8 of ``/b/Conv``'s input loses the
other channels: keeping ``/b/Conv`` in float recovers it, the hard model's story in miniature. Names
follow ``torch.onnx``'s (``/<module>/Conv``) so each target's name mapping is exercised as on an export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resnet_deploy.calibration.preprocess import Preprocessing

LAYERS = ("/a/Conv", "/b/Conv", "/c/Conv")
SENSITIVE = "/b/Conv"
FACTOR = 1000.0
PREP = Preprocessing((8, 8), 1, (0.5,), (0.5,))


def write(path: Path, inputs: np.ndarray, labels: np.ndarray, *, factor: float = FACTOR, seed: int = 0) -> Path:
    """Write the model (opset 17, dynamic batch) to ``path``: random convolutions (He init), the classifier fitted
    by ridge regression to ``labels`` on the features of ``inputs``, so its predictions vary as a trained one's."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from resnet_deploy.targets import onnx_session

    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5).astype(np.float32)

    wa, ba = weights(8, 1, 3, 3), np.full(8, 0.1, np.float32)
    wb, bb = weights(8, 8, 3, 3), np.zeros(8, np.float32)
    wc, bc = weights(8, 8, 3, 3), np.zeros(8, np.float32)
    wa[0] *= factor
    ba[0] *= factor
    wb[:, 0] /= factor
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    body = [
        helper.make_node("Conv", ["input", "a.w", "a.b"], ["/a/Conv_output_0"], name="/a/Conv", **conv),
        helper.make_node("Relu", ["/a/Conv_output_0"], ["/a/Relu_output_0"], name="/a/Relu"),
        helper.make_node("Conv", ["/a/Relu_output_0", "b.w", "b.b"], ["/b/Conv_output_0"], name="/b/Conv", **conv),
        helper.make_node("Relu", ["/b/Conv_output_0"], ["/b/Relu_output_0"], name="/b/Relu"),
        helper.make_node("Conv", ["/b/Relu_output_0", "c.w", "c.b"], ["/c/Conv_output_0"], name="/c/Conv", **conv),
        helper.make_node("Relu", ["/c/Conv_output_0"], ["/c/Relu_output_0"], name="/c/Relu"),
        helper.make_node("MaxPool", ["/c/Relu_output_0"], ["/pool_output_0"], name="/pool/MaxPool",
                         kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["/pool_output_0"], ["/Flatten_output_0"], name="/Flatten"),
    ]
    inputs_info = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])]

    def model(nodes: list, output: str, width: int, inits: list) -> onnx.ModelProto:
        graph = helper.make_graph(nodes, "outlier", inputs_info,
                                  [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", width])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    convs = [numpy_helper.from_array(v, n) for n, v in
             (("a.w", wa), ("a.b", ba), ("b.w", wb), ("b.b", bb), ("c.w", wc), ("c.b", bc))]
    features = onnx_session(model(body, "/Flatten_output_0", 128, convs).SerializeToString())
    f = features.run(None, {"input": inputs})[0].astype(np.float64)
    f = np.hstack([f, np.ones((len(f), 1))])
    target = np.eye(10)[labels] - 0.1
    fit = np.linalg.solve(f.T @ f + 1e-1 * np.eye(f.shape[1]), f.T @ target)
    wf, bf = fit[:-1].T.astype(np.float32), fit[-1].astype(np.float32)
    head = helper.make_node("Gemm", ["/Flatten_output_0", "fc.w", "fc.b"], ["logits"], name="/fc/Gemm", transB=1)
    final = model([*body, head], "logits", 10,
                  [*convs, numpy_helper.from_array(wf, "fc.w"), numpy_helper.from_array(bf, "fc.b")])
    onnx.checker.check_model(final, full_check=True)
    onnx.save(final, str(path))
    return path


def images(count: int, *, split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` real Fashion-MNIST images at 8x8 (normalised NCHW) and their labels."""
    from resnet_deploy.calibration.sampling import choose, decode
    from resnet_deploy.calibration.sources import open_source

    source = open_source("fashion-mnist", split, flag="--calib-data")
    batch = decode(source, choose(len(source), count, seed=seed), PREP, flag="--calib-data")
    return batch.inputs(PREP), batch.labels
