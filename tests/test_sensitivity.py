"""Per-layer sensitivity on the reference Q/DQ simulation, and layers kept in float by the Q/DQ writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import outlier_onnx as tiny
import pytest

from resnet_deploy.calibration import qdq
from resnet_deploy.calibration.channel_spread import UNEVEN
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sensitivity import (
    MAX_IMAGES,
    MAX_SQNR_DB,
    SHORTCUTS,
    Sensitivity,
    analyse,
    sqnr_db,
)
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.errors import ConfigError
from resnet_deploy.pipeline.records import to_json
from resnet_deploy.targets import onnx_session


@pytest.fixture(scope="module")
def model(fashion_mnist, tmp_path_factory) -> tuple[Path, np.ndarray]:
    x, y = tiny.images(160)
    return tiny.write(tmp_path_factory.mktemp("tiny") / "fp32.onnx", x, y), x


def _producers(path: Path) -> tuple[dict, dict]:
    graph = onnx.load(str(path)).graph
    return {o: n for n in graph.node for o in n.output}, {n.name: n for n in graph.node}


def test_the_outlier_layer_ranks_first_by_a_wide_margin(model):
    fp32, x = model
    s = analyse(fp32, x, session=onnx_session)
    assert sorted(s.ranked()) == sorted((n,) for n in tiny.LAYERS)  # the classifier (K=8) is not quantized
    first, *rest = s.layers
    assert first.layer == tiny.SENSITIVE
    assert first.gain_db > 10 and all(first.gain_db > r.gain_db + 10 for r in rest)
    assert first.agreement > s.int8_agreement  # keeping it in float also brings predictions back
    assert s.images == min(len(x), MAX_IMAGES) and s.method in ("max", "percentile", "entropy", "mse")
    # why: the outlier channel sets the one scale of /b/Conv's input, and its other channels round to 0
    spiky, *others = s.spread
    assert spiky.tensor == "/a/Relu_output_0" and spiky.median_channel_range < UNEVEN and spiky.rounded_to_zero > 0.4
    assert {r.tensor for r in others} == {"/b/Relu_output_0", "input"}
    assert all(r.median_channel_range > 0.3 and r.rounded_to_zero < 0.1 for r in others)


def test_the_analysis_round_trips_through_report_json(model):
    fp32, x = model
    s = analyse(fp32, x[:32], session=onnx_session, method="max")
    assert Sensitivity.from_json(to_json(s)) == s


def test_the_residual_shortcuts_are_one_entry_kept_in_float_together(shared_bundle):
    """The embedded ResNet-20 (the shared bundle's ONNX): its 9 residual Adds are one entry, no Add stands alone."""
    fp32 = shared_bundle / "model_fp32.onnx"
    prep = Preprocessing.from_dict(json.loads((shared_bundle / "preprocessing.json").read_text()))
    source = open_source("fashion-mnist", "train", flag="--calib-data")
    x = decode(source, choose(len(source), 16, seed=0), prep, flag="--calib-data").inputs(prep)
    s = analyse(fp32, x, session=onnx_session, method="max")
    group = [e for e in s.layers if e.members]
    assert [(e.layer, e.op, len(e.members)) for e in group] == [(SHORTCUTS, "Add", 9)]
    assert all(e.op == "Conv" for e in s.layers if not e.members) and len(s.layers) == 19 + 1
    assert group[0].names in s.ranked() and all(name.endswith("/Add") for name in group[0].names)
    assert Sensitivity.from_json(to_json(s)) == s  # the group's members survive report.json


def test_sqnr():
    ref = np.array([[3.0, 4.0]])
    assert sqnr_db(ref, ref) == MAX_SQNR_DB
    assert sqnr_db(ref, ref * 1.1) == pytest.approx(20.0, abs=1e-3)  # error power: 1 % of the signal
    assert sqnr_db(ref, -ref) == pytest.approx(10 * np.log10(25 / 100), abs=1e-3)  # rounded to 1e-3 dB


def test_a_float_layer_has_no_qdq_on_its_input_or_weight(model, tmp_path):
    fp32, x = model
    result = qdq.make_qdq_onnx(fp32, tmp_path / "q.onnx", x[:32], session=onnx_session, method="max",
                               float_layers=[tiny.SENSITIVE])
    producer, node = _producers(result.path)
    b, c = node[tiny.SENSITIVE], node["/c/Conv"]
    assert b.input[0] == "/a/Relu_output_0" and b.input[1] == "b.w"  # the float tensors themselves
    assert producer[c.input[0]].op_type == producer[c.input[1]].op_type == "DequantizeLinear"
    assert result.float_layers == (tiny.SENSITIVE,) and result.to_dict()["float_layers"] == [tiny.SENSITIVE]


def test_an_unknown_layer_is_refused_by_name(model, tmp_path):
    fp32, x = model
    with pytest.raises(ConfigError, match="/nope/Conv"):
        qdq.make_qdq_onnx(fp32, tmp_path / "q.onnx", x[:8], session=onnx_session, method="max",
                          float_layers=["/nope/Conv"])
