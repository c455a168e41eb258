"""The bundle speaks Triton and DeepStream: files parsed with the real formats (Triton's ModelConfig
protobuf, GLib's key-file), the repository filled by its script, and nvinfer's documented normalisation
applied to the bundled images predicting what the bundle predicts."""

from __future__ import annotations

import configparser
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.models import build_model
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import fold_batchnorm
from resnet_deploy.targets import onnx_session
from resnet_deploy.targets.serving import nvinfer_normalisation, with_normalisation

SYSTEM_PYTHON = Path("/usr/bin/python3")  # Debian's python3-gi: GLib's own key-file parser


@pytest.fixture(scope="module")
def bundle(shared_bundle) -> Path:
    return shared_bundle  # openvino, onnxruntime and jetson (xavier-nx): tests/conftest.py


def _model_config():
    if importlib.util.find_spec("tritonclient") is None:
        pytest.skip("tritonclient is not installed (pip install tritonclient): Triton's ModelConfig protobuf")
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"  # needs protobuf only, not grpc
    spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ModelConfig


def test_triton_configs_parse_as_triton_model_configs(bundle):
    from google.protobuf import text_format

    model_config = _model_config()
    prep = json.loads((bundle / "preprocessing.json").read_text())
    seen = {}
    for path in sorted((bundle / "triton").glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config())
        seen[config.name] = config.platform or config.backend
        assert config.name == path.parent.name and config.HasField("dynamic_batching") and config.max_batch_size >= 1
        assert list(config.input[0].dims) == [prep["channels"], *prep["input_size"]]
        assert list(config.output[0].dims) == [10]
        labels = (path.parent / config.output[0].label_filename).read_text().splitlines()
        assert labels == prep["class_names"]
    assert seen == {"onnxruntime_int8": "onnxruntime_onnx", "openvino_int8": "openvino", "jetson_int8": "tensorrt_plan"}


def test_fill_script_builds_a_repository(bundle, tmp_path):
    work = tmp_path / "b"
    shutil.copytree(bundle, work)
    repo = tmp_path / "models"
    done = subprocess.run(["sh", str(work / "triton" / "fill.sh"), str(repo)], capture_output=True, text=True)
    assert done.returncode == 2 and "device-build" in done.stderr  # no engine yet: says what to do
    engines = work / "jetson" / "engines"
    engines.mkdir()
    (engines / "model_int8_xavier_trt8.5.2_abc.engine").write_bytes(b"plan")
    done = subprocess.run(["sh", str(work / "triton" / "fill.sh"), str(repo)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (repo / "jetson_int8" / "1" / "model.plan").read_bytes() == b"plan"
    assert (repo / "onnxruntime_int8" / "1" / "model.onnx").read_bytes() == \
        (work / "onnxruntime" / "model_int8.onnx").read_bytes()
    assert (repo / "openvino_int8" / "1" / "model.bin").is_file()
    assert (repo / "openvino_int8" / "config.pbtxt").is_file()


def _key_file(path: Path) -> dict[str, str]:
    """[property] of an nvinfer config, read by GLib's own parser where the system has it."""
    if SYSTEM_PYTHON.exists() and subprocess.run([str(SYSTEM_PYTHON), "-c", "import gi"]).returncode == 0:
        code = ("import sys, json, gi; gi.require_version('GLib', '2.0'); from gi.repository import GLib\n"
                "k = GLib.KeyFile(); k.load_from_file(sys.argv[1], GLib.KeyFileFlags.NONE)\n"
                "print(json.dumps({key: k.get_value('property', key) for key in k.get_keys('property')[0]}))")
        done = subprocess.run([str(SYSTEM_PYTHON), "-c", code, str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr  # GLib refuses a malformed key file
        return json.loads(done.stdout)
    parser = configparser.ConfigParser(comment_prefixes=("#",), interpolation=None)
    parser.read(path)
    return dict(parser["property"])


def test_deepstream_config_predicts_what_the_bundle_predicts(bundle):
    config_path = bundle / "deepstream" / "config_infer_jetson.txt"
    props = _key_file(config_path)
    assert props["network-type"] == "1" and props["network-mode"] == "1"  # classifier, INT8
    assert props["model-color-format"] == "2" and props["infer-dims"] == "1;28;28"  # grayscale 28x28
    labels = (config_path.parent / props["labelfile-path"]).read_text().strip().split(";")
    prep = Preprocessing.from_dict(json.loads((bundle / "preprocessing.json").read_text()))
    assert labels == list(prep.class_names)
    onnx_file = (config_path.parent / props["onnx-file"]).resolve()
    assert onnx_file.is_file() and (config_path.parent / props["int8-calib-file"]).is_file()
    # nvinfer's formula, y = net-scale-factor * (x - offsets), on the bundled images (already at infer-dims)
    pixels, _, _ = bundle_io.load_eval_sample(bundle / bundle_io.EVAL_SAMPLE)
    x = np.moveaxis(pixels.astype(np.float32), -1, 1)
    offsets = np.asarray([float(v) for v in props["offsets"].split(";")], np.float32).reshape(1, -1, 1, 1)
    deepstream = np.float32(float(props["net-scale-factor"])) * (x - offsets)
    session = onnx_session(onnx_file)
    name = session.get_inputs()[0].name
    ours = session.run(None, {name: prep.normalize(pixels)})[0].argmax(1)
    theirs = session.run(None, {name: deepstream.astype(np.float32)})[0].argmax(1)
    assert (ours == theirs).mean() >= 0.998, "DeepStream's normalisation must be the bundle's"


def test_per_channel_std_is_normalised_in_the_graph(tmp_path):
    """nvinfer has one scale for all channels: with ImageNet's per-channel std the DeepStream model takes
    raw pixels (scale 1, no offsets) and its logits equal the original model's on normalised input."""
    prep = Preprocessing((32, 32), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    scale, offsets, exact = nvinfer_normalisation(prep)
    assert (scale, offsets, exact) == (1.0, (0.0, 0.0, 0.0), False)
    model = build_model("resnet20", num_classes=10).eval()
    folded, _ = fold_batchnorm(model)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    export_onnx(folded, tmp_path / "m.onnx", sample=prep.normalize(pixels), metadata={})
    with_normalisation(tmp_path / "m.onnx", tmp_path / "px.onnx", prep)
    a = onnx_session(tmp_path / "m.onnx")
    b = onnx_session(tmp_path / "px.onnx")
    ref = a.run(None, {a.get_inputs()[0].name: prep.normalize(pixels)})[0]
    raw = b.run(None, {b.get_inputs()[0].name: np.moveaxis(pixels.astype(np.float32), -1, 1).copy()})[0]
    np.testing.assert_allclose(raw, ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
    with torch.no_grad():
        assert (torch.from_numpy(raw).argmax(1) == torch.from_numpy(ref).argmax(1)).all()


def test_serving_files_are_listed_in_the_manifest(bundle):
    files = bundle_io.verify_bundle(bundle)["files"]
    assert "deepstream/config_infer_jetson.txt" in files and "triton/fill.sh" in files
