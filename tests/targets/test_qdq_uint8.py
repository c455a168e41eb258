"""calibration/qdq_uint8.py: the explicit Q/DQ graph in the form ONNX Runtime fuses, on a small SE-ResNeXt.

What is checked is what ONNX Runtime does with the graph (its optimised model holds QLinearConv nodes, not float
convolutions between Q/DQ pairs), the codes it is given, and that the outputs stay those of the Q/DQ graph.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from bn_stats import randomize_bn
from onnx import numpy_helper

from resnet_deploy.calibration.qdq import int8_weights, make_qdq_onnx
from resnet_deploy.calibration.qdq_uint8 import SIGNED_ZERO_POINT, qlinear_form
from resnet_deploy.models.resnet import Bottleneck, ResNet
from resnet_deploy.pipeline.export import export_onnx, run_onnx
from resnet_deploy.pipeline.fold import fold_batchnorm
from resnet_deploy.targets import onnx_session

pytest.importorskip("onnxruntime")


def _tiny_se_resnext() -> torch.nn.Module:
    """Two bottleneck stages with grouped 3x3 convs, SE blocks and a projection shortcut; batch-norm statistics
    randomised so that folding gives the convs uneven channels."""
    torch.manual_seed(0)
    model = ResNet(Bottleneck, [1, 1], widths=(16, 32), groups=4, width_per_group=4, se=True, num_classes=10)
    randomize_bn(model, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qdq_uint8")
    calib = np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)
    folded, _ = fold_batchnorm(_tiny_se_resnext())
    fp32 = folder / "fp32.onnx"
    export_onnx(folded, fp32, sample=calib[:2], metadata={"arch": "tiny-se-resnext"})
    result = make_qdq_onnx(fp32, folder / "qdq.onnx", calib, session=onnx_session, method="max")
    return fp32, result, calib, folder


def _converted(graphs, *, seven_bit: bool = False):
    _, result, _, folder = graphs
    model = onnx.load(str(result.path))
    counts = qlinear_form(model, result.amax, seven_bit=seven_bit)
    int8_weights(model)
    path = folder / f"uint8{'_7bit' if seven_bit else ''}.onnx"
    onnx.save(model, str(path))
    return model, counts, path


def _optimised_ops(path: Path, folder: Path) -> collections.Counter:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no NCHWc layout rewrites
    opts.optimized_model_filepath = str(folder / "optimised.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


def _convs(model) -> list:
    return [n for n in model.graph.node if n.op_type == "Conv"]


def test_onnx_runtime_fuses_every_quantized_conv_but_the_stem(graphs):
    """The stem's Relu feeds a max pool before its Q/DQ pair, so the stem alone stays a float conv; every other
    conv, the SE block's two 1x1 convs included, runs as QLinearConv. The int8 graph as TensorRT takes it fuses
    none."""
    _, result, _, folder = graphs
    model, counts, path = _converted(graphs)
    convs = len(_convs(model))
    assert counts["conv_outputs_quantized"] > 0
    ops = _optimised_ops(path, folder)
    assert ops["QLinearConv"] == convs, ops
    assert _optimised_ops(result.path, folder)["QLinearConv"] == 0


def test_relu_outputs_get_zero_point_0_and_twice_the_resolution(graphs):
    _, result, _, _ = graphs
    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(result.path)).graph.initializer}
    model, counts, _ = _converted(graphs)
    after = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    seen = {"relu": 0, "signed": 0}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[1] not in before:
            continue  # a conv output's new pair, checked below
        tensor, scale, zero = node.input[0], node.input[1], node.input[2]
        assert after[zero].dtype == np.uint8
        if tensor in producer and producer[tensor].op_type in ("Relu", "MaxPool"):
            assert after[zero] == 0 and np.isclose(after[scale], before[scale] * 127 / 255)
            seen["relu"] += 1
        else:
            assert after[zero] == SIGNED_ZERO_POINT and after[scale] == before[scale]
            seen["signed"] += 1
    assert seen["relu"] == counts["uint8_zero_point_0"] > 0 and seen["signed"] == counts["uint8_zero_point_128"] > 0
    added = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] not in before]
    assert len(added) == counts["conv_outputs_quantized"]
    for q in added:  # on a conv output, its calibrated range
        assert producer[q.input[0]].op_type == "Conv"
        assert np.isclose(after[q.input[1]], result.amax[q.input[0]] / 127) and after[q.input[2]] == 128


def test_the_outputs_stay_those_of_the_qdq_graph(graphs):
    """uint8 codes are the int8 grid moved by 128, or twice as fine after a Relu; the added conv-output pairs
    round once more. The logits stay close to the Q/DQ graph's and to FP32's."""
    fp32, result, calib, _ = graphs
    _, _, path = _converted(graphs)
    ref, qdq, uint8 = (run_onnx(p, calib) for p in (fp32, result.path, path))
    scale = np.abs(ref).max()
    assert np.abs(uint8 - qdq).max() < 0.1 * scale
    assert (uint8.argmax(1) == ref.argmax(1)).mean() >= 0.9


def test_seven_bit_weights_only_where_the_input_is_signed(graphs):
    """Without VNNI: weights of convs reading a zero-point-128 input (the stem, the SE squeeze) get codes within
    +-63; the others keep +-127."""
    model, counts, _ = _converted(graphs, seven_bit=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    narrowed = 0
    for conv in _convs(model):
        data, weight = producer.get(conv.input[0]), producer.get(conv.input[1])
        if weight is None or weight.op_type != "DequantizeLinear":
            continue
        codes = np.abs(inits[weight.input[0]].astype(np.int32)).max()
        signed = data is not None and data.op_type == "DequantizeLinear" and inits[data.input[2]] == SIGNED_ZERO_POINT
        assert codes <= (63 if signed else 127) and (signed or codes > 63)
        narrowed += signed
    assert narrowed == counts["seven_bit_weights"] >= 2  # the stem and at least one SE squeeze


def test_onnxruntime_qdq_method_builds_a_fused_int8_model(graphs, tmp_path):
    """--calib-method onnxruntime=qdq through the target: INT8 weights, QLinearConv under ONNX Runtime; a float
    layer the Q/DQ plan does not quantize is skipped."""
    from resnet_deploy.targets.onnxruntime import qdq_quantize

    fp32, _, calib, _ = graphs
    settings = qdq_quantize(fp32, tmp_path / "int8.onnx", calib, float_layers=["no/such/layer"], seven_bit=False)
    assert settings["calib_method"] == "qdq" and "float_layers" not in settings
    model = onnx.load(str(tmp_path / "int8.onnx"))
    assert not [n for n in model.graph.node if n.op_type == "QuantizeLinear" and
                n.input[0] in {t.name for t in model.graph.initializer}], "weights folded to INT8"
    assert _optimised_ops(tmp_path / "int8.onnx", tmp_path)["QLinearConv"] == len(_convs(model))
