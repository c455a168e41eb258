"""pipeline.fold: the folding math is exact, folding never touches the caller's model, and the check bites."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize_bn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from resnet_deploy.errors import VerificationError
from resnet_deploy.models import build_model
from resnet_deploy.pipeline.fold import FOLD_RTOL, fold_batchnorm, fuse_conv_bn, fuse_conv_bn_weights, verify_fold

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@st.composite
def conv_bn_cases(draw):
    groups = draw(st.integers(1, 3))
    in_ch = groups * draw(st.integers(1, 3))
    out_ch = groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    dilation = draw(st.integers(1, 3))
    padding = draw(st.integers(0, 2))
    stride = draw(st.integers(1, 3))
    reach = [dilation * (k - 1) + 1 for k in kernel]
    size = [max(1, r - 2 * padding) + draw(st.integers(0, 5)) for r in reach]
    return {
        "groups": groups, "in_ch": in_ch, "out_ch": out_ch, "kernel": kernel, "stride": stride,
        "padding": padding, "dilation": dilation, "size": size,
        "bias": draw(st.booleans()),
        "affine": draw(st.booleans()),
        "eps": draw(st.sampled_from([1e-5, 1e-3, 0.1]) | st.floats(1e-8, 1.0)),
        # Variances from nearly-dead channels (1e-8) to huge activations (1e12).
        "log_var": (draw(st.floats(-8.0, 8.0)), draw(st.floats(0.0, 4.0))),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }


@settings(max_examples=120, deadline=None)
@given(conv_bn_cases())
def test_fused_weights_equal_bn_of_conv_in_float64(case):
    gen = torch.Generator().manual_seed(case["seed"])
    conv = nn.Conv2d(case["in_ch"], case["out_ch"], case["kernel"], stride=case["stride"], padding=case["padding"],
                     dilation=case["dilation"], groups=case["groups"], bias=case["bias"], dtype=torch.float64)
    bn = nn.BatchNorm2d(case["out_ch"], eps=case["eps"], affine=case["affine"], dtype=torch.float64)
    c = case["out_ch"]
    low, spread = case["log_var"]
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=torch.float64))
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=torch.float64) * 3)
        bn.running_var.copy_(10 ** (low + spread * torch.rand(c, generator=gen, dtype=torch.float64)))
        if case["affine"]:
            bn.weight.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
            bn.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
    conv.eval(), bn.eval()
    x = torch.randn(2, case["in_ch"], *case["size"], generator=gen, dtype=torch.float64)

    with torch.no_grad():
        expected = bn(conv(x))
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps,
                                    bn.weight, bn.bias)
        got = F.conv2d(x, w, b, stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
        fused = fuse_conv_bn(conv, bn)(x)

    assert w.dtype == b.dtype == torch.float64
    assert w.shape == conv.weight.shape and b.shape == (c,)
    scale = float(expected.abs().max()) + 1e-300
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11 * scale)
    torch.testing.assert_close(fused, expected, rtol=1e-9, atol=1e-11 * scale)


def test_fuse_conv_bn_refuses_training_mode():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    with pytest.raises(ValueError, match="eval mode"):
        fuse_conv_bn(conv, bn)


def test_fuse_conv_bn_returns_a_new_module():
    conv, bn = nn.Conv2d(3, 4, 3).eval(), randomize_bn(nn.Sequential(nn.BatchNorm2d(4)))[0].eval()
    before = conv.weight.detach().clone()
    fused = fuse_conv_bn(conv, bn)
    assert fused is not conv and fused.bias is not None
    torch.testing.assert_close(conv.weight, before, rtol=0, atol=0)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "resnet20": randomize_bn(build_model("resnet20", num_classes=10), seed=1),
        "resnet20-B": randomize_bn(build_model("resnet20", num_classes=10, shortcut="B"), seed=2),
        "resnet18": randomize_bn(build_model("resnet18", num_classes=1000), seed=3),
    }


# conv1/bn1 stem + two per basic block (+ one per projection shortcut).
FOLDED = {"resnet20": 1 + 18, "resnet20-B": 1 + 18 + 2, "resnet18": 1 + 16 + 3}
SIZES = {"resnet20": 32, "resnet20-B": 32, "resnet18": 64}


@pytest.mark.parametrize("name", list(FOLDED))
def test_fold_returns_a_new_model_and_leaves_the_original_alone(models, name):
    model = models[name].train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, count = fold_batchnorm(model)
    assert count == FOLDED[name]
    assert folded is not model
    assert model.training, "the caller's model must keep its mode"
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert not folded.training
    after = model.state_dict()
    assert list(after) == list(before)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name", list(FOLDED))
def test_verify_fold_passes_with_randomized_statistics(models, name):
    model = models[name].eval()
    folded, count = fold_batchnorm(model)
    x = torch.randn(4, 3, SIZES[name], SIZES[name], generator=torch.Generator().manual_seed(4))
    check = verify_fold(model, folded, x, count)
    assert check.passed and check.top1_equal
    assert check.relative <= FOLD_RTOL
    assert check.folded_layers == count
    assert check.to_dict()["passed"] is True and check.to_dict()["tolerance"] == FOLD_RTOL


def test_a_broken_fold_raises(models):
    model = models["resnet20"].eval()
    folded, count = fold_batchnorm(model)
    with torch.no_grad():
        folded.layer2[1].conv1.bias[0] += 0.5  # what a fold that forgot one channel's mean shift looks like
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with pytest.raises(VerificationError, match="BN folding changed the outputs"):
        verify_fold(model, folded, x, count)


def test_a_fold_that_ignores_eps_raises(models):
    model = models["resnet20"].eval()
    folded, count = fold_batchnorm(model)
    bn, conv = model.layer1[0].bn1, model.layer1[0].conv1
    with torch.no_grad():
        w, b = fuse_conv_bn_weights(conv.weight, None, bn.running_mean, bn.running_var, 0.5, bn.weight, bn.bias)
        folded.layer1[0].conv1.weight.copy_(w)
        folded.layer1[0].conv1.bias.copy_(b)
    with pytest.raises(VerificationError):
        verify_fold(model, folded, torch.randn(4, 3, 32, 32), count)


def test_batchnorm_without_a_preceding_conv_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(VerificationError, match="not preceded by a convolution"):
        fold_batchnorm(model)


def test_constant_folding_leaves_what_it_cannot_evaluate():
    """A node the reference evaluator cannot run stays in the graph instead of failing the export."""
    import onnx
    from onnx import TensorProto, helper

    from resnet_deploy.pipeline.onnx_fold import fold_constants

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [2.0])),
         helper.make_node("Mul", ["c", "c"], ["c2"]),  # foldable
         helper.make_node("NoSuchOp", ["c"], ["u"]),  # constant inputs, but nothing can evaluate it
         helper.make_node("Add", ["x", "c2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("u", TensorProto.FLOAT, [1])])
    folded, removed = fold_constants(helper.make_model(graph))
    assert removed == 2 and [n.op_type for n in folded.graph.node] == ["NoSuchOp", "Add"]
    values = {t.name: onnx.numpy_helper.to_array(t).tolist() for t in folded.graph.initializer}
    assert values == {"c": [2.0], "c2": [4.0]}  # c2 evaluated once; c kept for the node left in place
