"""benchmarks/int8_range_rules.py's --tensors: which activation tensors INT8 rounds away, and how spiky they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import script_module

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def rules():
    with script_module(BENCHMARKS / "int8_range_rules.py") as module:
        yield module


def test_a_spiky_channel_rounds_the_others_away(rules) -> None:
    """Two 1x1 convs reading the input: channel 0 of it carries values 100x the others'. Under a max range, the
    quiet channels' values fall below half a step and become 0; the median channel range says why."""
    from onnx import TensorProto, helper, numpy_helper

    from resnet_deploy.calibration.qdq import plan_qdq

    weight = numpy_helper.from_array(np.ones((2, 4, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 2, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.full((3, 4, 2, 2), 0.3, np.float32)
    x[:, 0] = 100.0  # one step of a 100 range is 0.79: the others' 0.3 is below half of it
    x[0, 1, 0, 0] = 0.0  # a zero is not counted as lost
    plan = plan_qdq(model.graph)
    [row] = rules.rounding_loss(model, plan, {"x": 100.0}, x)
    assert row["tensor"] == "x" and row["amax"] == 100.0
    quiet = 3 * 3 * 4 - 1  # the non-zero values of channels 1-3
    assert row["nonzero_to_zero"] == pytest.approx(quiet / (quiet + 3 * 4), abs=1e-4)
    assert row["median_channel_range"] == pytest.approx(0.003)  # median of (100, 0.3, 0.3, 0.3) over 100
    [even] = rules.rounding_loss(model, plan, {"x": 0.3}, np.full((3, 4, 2, 2), 0.3, np.float32))
    assert even["nonzero_to_zero"] == 0.0 and even["median_channel_range"] == 1.0
