"""Issue 13, the Python API: `from resnet_deploy import build, load_bundle`, the objects the CLI uses."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import resnet_deploy
from resnet_deploy import build, load_bundle
from resnet_deploy.errors import BundleError, ConfigError
from resnet_deploy.pipeline.latency import LatencySettings
from resnet_deploy.pipeline.records import Report
from resnet_deploy.pipeline.settings import BuildSettings


def test_importing_the_package_imports_neither_torch_nor_numpy():
    code = "import sys, resnet_deploy; print(sorted({'torch', 'numpy', 'onnx'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
    assert {"build", "load_bundle", "Bundle"} <= set(resnet_deploy.__all__)


def test_a_loaded_bundle_predicts_what_the_build_measured(shared_bundle):
    bundle = load_bundle(shared_bundle)
    assert isinstance(bundle.report, Report) and bundle.report.status == "passed"
    assert len(bundle.class_names) == 10
    with np.load(shared_bundle / "eval_sample.npz") as data:
        pixels, labels = data["pixels"], data["labels"]
    logits = bundle.predict(list(pixels[:200]), precision="int8")
    assert logits.shape == (200, 10)
    top1 = float((logits.argmax(1) == labels[:200]).mean())
    assert top1 > 0.8  # the embedded model's INT8, through the API's own preprocessing of raw pixels


def test_image_files_and_arrays_are_preprocessed_alike(shared_bundle, tmp_path):
    from PIL import Image

    bundle = load_bundle(shared_bundle)
    with np.load(shared_bundle / "eval_sample.npz") as data:
        pixel = data["pixels"][0]
    path = tmp_path / "x.png"
    Image.fromarray(pixel[:, :, 0]).save(path)
    np.testing.assert_array_equal(bundle.preprocess([path]), bundle.preprocess([pixel]))


def test_a_damaged_bundle_is_a_bundle_error(bundle_copy):
    (bundle_copy / "report.md").write_text("changed")
    with pytest.raises(BundleError, match=r"report\.md"):
        load_bundle(bundle_copy)


def test_build_takes_the_cli_settings_and_returns_the_report(tmp_path, fashion_mnist):
    settings = BuildSettings(targets=("onnxruntime",), eval_samples=200, calib_samples=32, max_drop=100.0,
                             fallback="off", target_options={"calib_method": "max"},
                             latency=LatencySettings(min_seconds=0.0))
    result = build(settings, out=tmp_path / "b")
    assert result.out == tmp_path / "b" and result.report.status == "passed"
    assert {(r.target, r.precision) for r in result.report.results} == {("onnxruntime", "fp32"),
                                                                         ("onnxruntime", "int8")}
    assert load_bundle(result.out).report.to_json() == result.report.to_json()


def test_bad_settings_raise_the_cli_message():
    with pytest.raises(ConfigError, match="--calib-samples"):
        build(targets=("onnxruntime",), calib_samples=0)
