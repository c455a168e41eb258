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
    assert [_method(n, None) for n in TARGETS] == ["mean_max", "max", "auto", "auto"]


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


def test_auto_keeps_the_method_that_agrees_best(fashion_mnist, tmp_path):
    x, y = tiny.images(96)
    fp32 = tiny.write(tmp_path / "model_fp32.onnx", x, y)
    target = get_target("onnxruntime")
    int8 = target.compile(CompileInput(fp32, x, tiny.PREP, target.parse_options({"calib_method": "auto"})),
                          tmp_path)[1]
    q = int8.details["quantization"]
    scores = q["calibrate_method_candidates"]
    assert set(scores) == {"max", "percentile", "entropy"} and q["calib_method"] == "auto"
    chosen = {"MinMax": "max", "Percentile": "percentile", "Entropy": "entropy"}[q["calibrate_method"]]
    assert scores[chosen] == max(scores.values())
    assert sorted(p.name for p in (tmp_path / "onnxruntime").iterdir()) == ["model_int8.onnx"]  # candidates gone


def test_tensorrt_records_the_method_it_was_given(fashion_mnist, tmp_path):
    x, y = tiny.images(64)
    fp32 = Path(shutil.copyfile(tiny.write(tmp_path / "src.onnx", x, y), tmp_path / "model_fp32.onnx"))
    target = get_target("tensorrt")
    sim = target.compile(CompileInput(fp32, x, tiny.PREP, target.parse_options({"calib_method": "percentile"})),
                         tmp_path)[0]
    assert sim.details["quantization"]["amax_method"] == "percentile"
    assert "amax_candidates" not in sim.details["quantization"] and np.isfinite(
        sim.details["quantization"]["calibration_agreement"])
