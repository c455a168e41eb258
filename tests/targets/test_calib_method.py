"""--calib-method, one flag shared by the targets: each lists its own methods and defines ``auto``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import outlier_onnx as tiny
import pytest
from click.testing import CliRunner

from resnet_deploy.errors import ConfigError
from resnet_deploy.targets import CompileInput, get_target, option_owners

TARGETS = ("openvino", "onnxruntime", "tensorrt", "jetson")


def _method(name: str, value) -> str:
    return get_target(name).parse_options({"calib_method": value}).calib_method


def test_every_builtin_target_takes_the_one_flag():
    field, owners = option_owners()["calib_method"]
    assert set(TARGETS) <= set(owners) and field.metadata["type"] is str
    from resnet_deploy.cli import main

    out = CliRunner().invoke(main, ["build", "--help"]).output
    assert "--calib-method" in out


def test_defaults_are_each_targets_own():
    # auto everywhere: on CIFAR, no single range rule suited both a ResNet-20 and an SE-ResNeXt on any target
    # (benchmarks/results/int8_agreement_cifar.md)
    assert [_method(n, None) for n in TARGETS] == ["auto", "auto", "auto", "auto"]


def test_one_value_for_all_or_one_per_target():
    assert [_method(n, "max") for n in TARGETS] == ["max"] * 4  # a method every target has
    assert [_method(n, "AUTO") for n in TARGETS] == ["auto"] * 4
    per_target = "openvino=histogram, onnxruntime=entropy,jetson=percentile"
    assert [_method(n, per_target) for n in TARGETS] == ["histogram", "entropy", "auto", "percentile"]


@pytest.mark.parametrize("value, target, words", [
    ("entropy", "openvino", ["openvino", "mean_max", "histogram"]),  # NNCF has no entropy rule
    ("mean_max", "jetson", ["jetson", "percentile", "entropy"]),
    ("openvino=", "openvino", ["TARGET=METHOD"]),
])
def test_a_method_the_target_lacks_is_refused_with_its_list(value, target, words):
    with pytest.raises(ConfigError) as err:
        _method(target, value)
    assert all(w in str(err.value) for w in ["--calib-method", *words])


# Each target's candidates, the key its record keeps their scores under, and the files its folder holds after.
AUTO = {
    "onnxruntime": ("calibrate_method_candidates", {"max", "mean_max", "percentile", "entropy", "qdq"},
                    ["model_int8.onnx"]),
    # the contract test compiles openvino with one rule (four NNCF runs cost it 15 s): auto is checked here
    "openvino": ("calib_method_candidates", {"mean_max", "max", "quantile", "histogram", "qdq"},
                 ["model_fp32.bin", "model_fp32.xml", "model_int8.bin", "model_int8.xml"]),
}


@pytest.mark.parametrize("name", list(AUTO))
def test_auto_keeps_the_method_that_agrees_best(name, fashion_mnist, tmp_path):
    target = get_target(name)
    if target.missing():
        pytest.skip(f"--target {name} needs {', '.join(target.missing())} to build")
    key, methods, files = AUTO[name]
    x, y = tiny.images(96)
    fp32 = tiny.write(tmp_path / "model_fp32.onnx", x, y)
    int8 = target.compile(CompileInput(fp32, x, tiny.PREP, target.parse_options({"calib_method": "auto"})),
                          tmp_path)[1]
    q = int8.details["quantization"]
    scores = q[key]
    assert set(scores) == methods and q["calib_method"] == "auto"
    chosen = q["calib_method_chosen"]
    assert scores[chosen] == max(scores.values())
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == files  # candidates gone
    if name == "onnxruntime" and chosen != "qdq":  # the record names what ORT was told
        ort_name = {"max": ("MinMax", False), "mean_max": ("MinMax", True), "percentile": ("Percentile", False),
                    "entropy": ("Entropy", False)}[chosen]
        assert (q["calibrate_method"], q["calib_moving_average"]) == ort_name


@pytest.mark.parametrize("name", list(AUTO))
def test_auto_is_scored_on_the_held_out_images_when_given(name, fashion_mnist, tmp_path):
    """``CompileInput.check`` (the build's held-out split): every candidate's score is a count out of those 7
    images, not out of the 96 calibration images its ranges came from, and the record says so."""
    target = get_target(name)
    if target.missing():
        pytest.skip(f"--target {name} needs {', '.join(target.missing())} to build")
    key = AUTO[name][0]
    x, y = tiny.images(103)
    fp32 = tiny.write(tmp_path / "model_fp32.onnx", x[:96], y[:96])
    inp = CompileInput(fp32, x[:96], tiny.PREP, target.parse_options({"calib_method": "auto"}), check=x[96:])
    q = target.compile(inp, tmp_path)[1].details["quantization"]
    assert all(abs(s * 7 - round(s * 7)) < 1e-3 for s in q[key].values()), q[key]
    assert q["candidates_scored_on"] == "7 held-out calibration-source images"


def _weight_codes(path: Path) -> dict[str, int]:
    """Largest |int8 code| of each quantized weight in a QDQ model, by the Conv/Gemm node that reads it."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for n in graph.node:
        if n.op_type in ("Conv", "Gemm") and n.input[1] in producer:
            codes = inits[producer[n.input[1]].input[0]]
            out[n.name] = int(np.abs(codes.astype(np.int32)).max())
    return out


@pytest.mark.parametrize("vnni", [False, True])
def test_onnxruntime_gives_7_bit_weights_only_to_layers_reading_a_signed_input(fashion_mnist, tmp_path, monkeypatch,
                                                                              vnni):
    from resnet_deploy.targets import onnxruntime as ort_target

    monkeypatch.setattr(ort_target, "has_vnni", lambda: vnni)
    x, y = tiny.images(64)
    fp32 = tiny.write(tmp_path / "model_fp32.onnx", x, y)
    target = get_target("onnxruntime")
    int8 = target.compile(CompileInput(fp32, x, tiny.PREP, target.parse_options({"calib_method": "max"})), tmp_path)[1]
    q = int8.details["quantization"]
    codes = _weight_codes(tmp_path / int8.path)
    if vnni:  # no saturation to avoid: 8-bit weights everywhere
        assert q["reduce_range"] is False and "reduce_range_layers" not in q and codes["/a/Conv"] == 127
    else:  # /a/Conv reads the normalised image (signed); the others read a ReLU's output
        assert q["reduce_range"] is True and q["reduce_range_layers"] == ["/a/Conv"]
        assert codes["/a/Conv"] <= 64 and codes["/b/Conv"] == codes["/c/Conv"] == 127


def test_onnxruntime_leaves_the_logits_unquantized(fashion_mnist, tmp_path):
    import onnx

    x, y = tiny.images(64)
    fp32 = tiny.write(tmp_path / "model_fp32.onnx", x, y)
    target = get_target("onnxruntime")
    int8 = target.compile(CompileInput(fp32, x, tiny.PREP, target.parse_options({"calib_method": "max"})), tmp_path)[1]
    assert int8.details["quantization"]["float_output_head"] == ["/fc/Gemm"]
    graph = onnx.load(str(tmp_path / int8.path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    assert producer["logits"].name == "/fc/Gemm" and producer["logits"].input[1] == "fc.w"  # float weights, float out
    conv = next(n for n in graph.node if n.name == "/c/Conv")
    assert [producer[t].op_type for t in conv.input[:2]] == ["DequantizeLinear"] * 2  # the rest stays INT8


def test_onnxruntime_mean_max_averages_each_images_range(fashion_mnist, tmp_path):
    import onnx
    from onnx import numpy_helper

    x, y = tiny.images(64)
    fp32 = tiny.write(tmp_path / "model_fp32.onnx", x, y)
    target = get_target("onnxruntime")
    scales = {}
    for method in ("max", "mean_max"):
        folder = tmp_path / method
        folder.mkdir()
        int8 = target.compile(CompileInput(fp32, x, tiny.PREP, target.parse_options({"calib_method": method})),
                              folder)[1]
        assert int8.details["quantization"]["calib_moving_average"] is (method == "mean_max")
        graph = onnx.load(str(folder / int8.path)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        q_input = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
        scales[method] = float(inits[q_input.input[1]])
    assert scales["mean_max"] < scales["max"]  # the mean of each image's range is inside the range of all


def test_tensorrt_records_the_method_it_was_given(fashion_mnist, tmp_path):
    x, y = tiny.images(64)
    fp32 = Path(shutil.copyfile(tiny.write(tmp_path / "src.onnx", x, y), tmp_path / "model_fp32.onnx"))
    target = get_target("tensorrt")
    sim = target.compile(CompileInput(fp32, x, tiny.PREP, target.parse_options({"calib_method": "percentile"})),
                         tmp_path)[0]
    assert sim.details["quantization"]["amax_method"] == "percentile"
    assert "amax_candidates" not in sim.details["quantization"] and np.isfinite(
        sim.details["quantization"]["calibration_agreement"])


def test_histogram_rules_see_only_the_images_their_memory_budget_holds(tmp_path, monkeypatch):
    """ORT's Percentile/Entropy keep every intermediate tensor of every image: a budget caps their images."""
    from resnet_deploy.targets import onnxruntime as ort_target

    x, y = tiny.images(32)
    model = tiny.write(tmp_path / "model_fp32.onnx", x, y)
    per_image = ort_target.activation_bytes(model)
    assert per_image > 0
    monkeypatch.setattr(ort_target, "HISTOGRAM_BUDGET_BYTES", per_image * 20)
    assert ort_target.histogram_images(model, 300) == 20
    assert ort_target.histogram_images(model, 10) == 10
    monkeypatch.setattr(ort_target, "HISTOGRAM_BUDGET_BYTES", 1)
    assert ort_target.histogram_images(model, 300) == ort_target.MIN_HISTOGRAM_IMAGES


def test_openvino_qdq_reads_the_explicit_qdq_graph_with_int8_weights(fashion_mnist, tmp_path):
    """--calib-method openvino=qdq: the TensorRT target's Q/DQ ONNX, converted to an IR whose weights are INT8 and
    whose activations pass FakeQuantize; a float layer the Q/DQ plan does not quantize is simply skipped."""
    target = get_target("openvino")
    if target.missing():
        pytest.skip(f"--target openvino needs {', '.join(target.missing())} to build")
    import openvino as ov

    x, y = tiny.images(96)
    fp32 = tiny.write(tmp_path / "model_fp32.onnx", x, y)
    arts = target.compile(CompileInput(fp32, x, tiny.PREP, target.parse_options({"calib_method": "qdq"})), tmp_path)
    q = arts[1].details["quantization"]
    assert q["calib_method"] == "qdq" and q["quantized_weights"] > 0 and "amax_method" in q
    ir = ov.Core().read_model(str(tmp_path / arts[1].path))
    ops = [op.get_type_name() for op in ir.get_ordered_ops()]
    assert "FakeQuantize" in ops
    consts = [op for op in ir.get_ordered_ops() if op.get_type_name() == "Constant"]
    assert any(c.get_element_type() == ov.Type.i8 for c in consts), "weights stored as INT8"
    runner = target.load(arts[1], tmp_path)
    fp32_top1 = target.load(arts[0], tmp_path).run(x).argmax(1)
    assert (runner.run(x).argmax(1) == fp32_top1).mean() >= 0.9
    from resnet_deploy.targets.openvino import qdq_quantize

    again = qdq_quantize(fp32, tmp_path / "again.xml", x, float_layers=["no/such/layer"])
    assert "float_layers" not in again
