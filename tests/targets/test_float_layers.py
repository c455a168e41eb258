"""Layers kept in float, per target: the ONNX layer names map onto each target's own graph (ORT's
pre-processed ONNX, the OpenVINO IR, TensorRT's network), and a kept layer really runs in float there."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import outlier_onnx as tiny
import pytest
from strict_trt import make_tensorrt

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.qdq import quantizable_layers
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.errors import VerificationError
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.targets import CompileInput, get_target

pytestmark = pytest.mark.usefixtures("torch_one_thread")
BLOCK = "/layer2/layer2.1"  # a block whose second conv reads a tensor only it uses
ADD = f"{BLOCK}/Add"  # its residual join


@pytest.fixture(scope="module")
def resnet20_onnx(shared_bundle) -> Path:
    """The embedded model BN-folded and exported by the build (the names every target must map)."""
    return shared_bundle / bundle_io.MODEL_ONNX


@pytest.fixture(scope="module")
def model(fashion_mnist, tmp_path_factory) -> tuple[Path, np.ndarray]:
    x, y = tiny.images(96)
    return tiny.write(tmp_path_factory.mktemp("tiny") / bundle_io.MODEL_ONNX, x, y), x


@pytest.fixture(scope="module")
def resnet20(resnet20_onnx, fashion_mnist) -> tuple[Path, np.ndarray, Preprocessing]:
    """The embedded model's ONNX with 32 real calibration images: a network with residual Adds."""
    prep = Preprocessing.from_dict(json.loads((resnet20_onnx.parent / bundle_io.PREPROCESSING).read_text()))
    source = open_source("fashion-mnist", "train", flag="--calib-data")
    return resnet20_onnx, decode(source, choose(len(source), 32, seed=0), prep, flag="--calib-data").inputs(prep), prep


def _compile(name: str, model, folder: Path, float_layers=(), **flags):
    target = get_target(name)
    if target.missing():
        pytest.skip(f"--target {name} needs {', '.join(target.missing())}")
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = Path(shutil.copyfile(model[0], folder / bundle_io.MODEL_ONNX))
    prep = model[2] if len(model) > 2 else tiny.PREP
    inp = CompileInput(fp32, model[1], prep, target.parse_options(flags), float_layers=tuple(float_layers))
    return target.compile(inp, folder)


def _onnx_inputs(path: Path, layer: str) -> list[str]:
    """The op types feeding ``layer``'s data and weight inputs ("initializer" for a stored tensor)."""
    graph = onnx.load(str(path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    node = next(n for n in graph.node if n.name == layer)
    return [producer.get(t, "initializer" if t in {i.name for i in graph.initializer} else "input")
            for t in node.input[:2]]


def test_every_builtin_target_declares_float_layers():
    assert all(get_target(n).float_layers for n in ("openvino", "onnxruntime", "tensorrt", "jetson"))


def test_the_layers_that_can_stay_float_are_the_weighted_ones_and_the_residual_adds(resnet20_onnx):
    graph = onnx.load(str(resnet20_onnx)).graph
    ops = {n.name: n.op_type for n in graph.node}
    layers = quantizable_layers(graph)
    assert [ops[name] for name in layers].count("Add") == 9 and ADD in layers  # one per block
    assert {ops[name] for name in layers} == {"Conv", "Add"}  # the 10-class Gemm stays float anyway


def test_a_residual_add_kept_in_float_reads_its_shortcut_unquantized(resnet20, tmp_path):
    """TensorRT's Q/DQ graph and OpenVINO: no quantizer on the Add's inputs, while the block's first conv still
    reads the block input quantized; ONNX Runtime (which hands an excluded node the tensor others read
    quantized): the Add's sum is not quantized again."""
    sim = _compile("jetson", resnet20, tmp_path / "trt", [ADD], calib_method="max")[0]
    graph = onnx.load(str(tmp_path / "trt" / sim.path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    add = next(n for n in graph.node if n.name == ADD)
    assert "DequantizeLinear" not in [producer.get(t) for t in add.input]
    assert _onnx_inputs(tmp_path / "trt" / sim.path, f"{BLOCK}/conv1/Conv") == ["DequantizeLinear"] * 2

    import openvino as ov

    mixed = _compile("openvino", resnet20, tmp_path / "ov", [ADD], calib_method="max")[1]
    assert mixed.details["quantization"]["ignored_scope"] == [ADD]
    op = next(o for o in ov.Core().read_model(str(tmp_path / "ov" / mixed.path)).get_ordered_ops()
              if o.get_friendly_name() == ADD)
    assert "FakeQuantize" not in [i.get_source_output().get_node().get_type_name() for i in op.inputs()]

    kept = _compile("onnxruntime", resnet20, tmp_path / "ort", [ADD], calib_method="max")[1]
    assert kept.details["quantization"]["nodes_to_exclude"] == [ADD]
    graph = onnx.load(str(tmp_path / "ort" / kept.path)).graph
    add = next(n for n in graph.node if n.name == ADD)
    assert [n.op_type for n in graph.node if add.output[0] in n.input] == ["Relu"]


# --- ONNX Runtime: nodes_to_exclude on its pre-processed graph ----------------------------------------

def test_onnxruntime_names_map_onto_its_preprocessed_graph(resnet20_onnx, tmp_path):
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from resnet_deploy.targets.onnxruntime import excluded_nodes

    quant_pre_process(str(resnet20_onnx), str(tmp_path / "pre.onnx"), skip_symbolic_shape=True)
    graph = onnx.load(str(tmp_path / "pre.onnx")).graph
    layers = quantizable_layers(onnx.load(str(resnet20_onnx)).graph)
    assert len(layers) == 28 and set(layers) <= {n.name for n in graph.node}  # 19 convolutions, 9 residual Adds
    # conv2 reads conv1's output through a ReLU nothing else reads: ORT would quantize it at conv1's output
    assert excluded_nodes(graph, [f"{BLOCK}/conv2/Conv"]) == [f"{BLOCK}/conv2/Conv", f"{BLOCK}/relu/Relu",
                                                               f"{BLOCK}/conv1/Conv"]
    assert excluded_nodes(graph, [f"{BLOCK}/conv1/Conv"]) == [f"{BLOCK}/conv1/Conv"]  # input shared with the Add
    with pytest.raises(VerificationError, match="/nope"):
        excluded_nodes(graph, ["/nope"])


def test_onnxruntime_runs_a_kept_layer_in_float(model, tmp_path):
    # ONNX Runtime's own quantizer (its "qdq" method keeps layers in float as the TensorRT plan does, tested there)
    all_int8 = _compile("onnxruntime", model, tmp_path / "a", calib_method="max")[1]
    mixed = _compile("onnxruntime", model, tmp_path / "b", [tiny.SENSITIVE], calib_method="max")[1]
    assert _onnx_inputs(tmp_path / "a" / all_int8.path, tiny.SENSITIVE) == ["DequantizeLinear"] * 2
    assert _onnx_inputs(tmp_path / "b" / mixed.path, tiny.SENSITIVE) == ["Relu", "initializer"]
    assert _onnx_inputs(tmp_path / "b" / mixed.path, "/c/Conv") == ["DequantizeLinear"] * 2
    q = mixed.details["quantization"]
    assert q["float_layers"] == [tiny.SENSITIVE] and q["nodes_to_exclude"] == [tiny.SENSITIVE, "/a/Relu", "/a/Conv"]


# --- OpenVINO: NNCF's ignored scope on the IR -----------------------------------------------------------

def test_openvino_names_map_onto_the_ir(resnet20_onnx):
    ov = pytest.importorskip("openvino")
    from resnet_deploy.targets.openvino import ir_layer_names

    layers = quantizable_layers(onnx.load(str(resnet20_onnx)).graph)
    ir = ov.convert_model(str(resnet20_onnx))
    names = ir_layer_names(ir, layers)
    assert len(names) == len(layers) and all(n.startswith(layer) for n, layer in zip(names, layers))
    with pytest.raises(VerificationError, match="/nope"):
        ir_layer_names(ir, ["/nope"])


def _ir_inputs(xml: Path, layer: str) -> list[str]:
    """What feeds the IR's Convolution made from ``layer`` (data, weights), through Convert/Multiply/Subtract:
    the op type, and for a stored tensor its element type ("Constant f32" float, "Constant i8" INT8)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    op = next(o for o in model.get_ordered_ops() if o.get_type_name() == "Convolution"
              and o.get_friendly_name() in (layer, f"{layer}/WithoutBiases"))
    out = []
    for value in op.inputs():
        node = value.get_source_output().get_node()
        while node.get_type_name() in ("Convert", "Multiply", "Subtract"):
            node = node.input(0).get_source_output().get_node()
        kind = node.get_type_name()
        out.append(f"{kind} {node.get_output_element_type(0).get_type_name()}" if kind == "Constant" else kind)
    return out


def test_openvino_runs_a_kept_layer_in_float(model, tmp_path):
    mixed = _compile("openvino", model, tmp_path, [tiny.SENSITIVE], calib_method="mean_max")[1]  # one NNCF run
    assert mixed.details["quantization"]["ignored_scope"] == [f"{tiny.SENSITIVE}/WithoutBiases"]
    assert _ir_inputs(tmp_path / mixed.path, tiny.SENSITIVE) == ["Relu", "Constant f32"]
    assert _ir_inputs(tmp_path / mixed.path, "/c/Conv") == ["FakeQuantize", "Constant i8"]


# --- TensorRT: no Q/DQ around the layer (explicit), FP32 precision constraints (implicit) ---------------

def test_tensorrt_explicit_leaves_the_qdq_out(model, tmp_path):
    sim = _compile("jetson", model, tmp_path, [tiny.SENSITIVE])[0]
    assert _onnx_inputs(tmp_path / sim.path, tiny.SENSITIVE) == ["Relu", "initializer"]
    assert _onnx_inputs(tmp_path / sim.path, "/c/Conv") == ["DequantizeLinear"] * 2
    config = json.loads((tmp_path / "jetson" / "build_config.json").read_text())
    assert config["float_layers"] == [tiny.SENSITIVE] and config["quantization"] == "explicit"
    assert sim.details["quantization"]["float_layers_by"] == "no Q/DQ around them"


def test_tensorrt_implicit_constrains_the_layer_to_fp32(model, tmp_path, monkeypatch):
    from resnet_deploy.targets.tensorrt import engine as trt_engine

    _compile("jetson", model, tmp_path, [tiny.SENSITIVE], device="xavier-nx")  # TensorRT 8.5: implicit INT8
    script = (tmp_path / "jetson" / "trtexec.sh").read_text()
    assert "--precisionConstraints=obey" in script and f"--layerPrecisions={tiny.SENSITIVE}:fp32" in script
    log: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("8.5.2", log=log))
    monkeypatch.setattr(trt_engine, "gpu_info", lambda: trt_engine.GpuInfo("Xavier", (7, 2)))
    trt_engine.build_engine(tmp_path / "jetson")
    assert ("parse", "model_fp32.onnx") in log
    constrained = [e for e in log if e[0] in ("precision", "output_type")]
    assert constrained == [("precision", tiny.SENSITIVE, "FLOAT"), ("output_type", tiny.SENSITIVE, 0, "FLOAT")]
    assert "OBEY_PRECISION_CONSTRAINTS" in next(e for e in log if e[0] == "build")[1]


def test_tensorrt_implicit_refuses_a_layer_its_network_lacks(model, tmp_path, monkeypatch):
    from resnet_deploy.targets.tensorrt import engine as trt_engine
    from resnet_deploy.targets.tensorrt.config import TrtBuildConfig

    _compile("jetson", model, tmp_path, [tiny.SENSITIVE], device="xavier-nx")
    folder = tmp_path / "jetson"
    cfg = TrtBuildConfig.read(folder)
    (folder / "build_config.json").write_text(json.dumps({**cfg.to_dict(), "float_layers": ["/gone/Conv"]}))
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("8.5.2"))
    monkeypatch.setattr(trt_engine, "gpu_info", lambda: trt_engine.GpuInfo("Xavier", (7, 2)))
    with pytest.raises(VerificationError, match="/gone/Conv"):
        trt_engine.build_engine(folder)
