"""calibration/channel_spread.py: how unevenly each activation's channels run, and what one INT8 scale loses."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_deploy.calibration.channel_spread import UNEVEN, ActivationSpread, activation_spread, diagnosis
from resnet_deploy.targets import onnx_session


def _conv_reading_x():
    """A 1x1 conv reading the 4-channel input ``x``: ``x`` is a quantized activation of the Q/DQ plan."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 4, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 2, 2])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_loud_channel_rounds_the_quiet_ones_away_or_is_clipped():
    """Channel 0 carries values 100x the others'. A range that holds it rounds the quiet channels' values to 0
    (below half a step); a range for the quiet ones clips it. The spread is the same either way. Six images:
    two runs of four, counted together."""
    x = np.full((6, 4, 2, 2), 0.3, np.float32)
    x[:, 0] = 100.0  # one step of a 100 range is 0.79: the others' 0.3 is below half of it
    x[0, 1, 0, 0] = 0.0  # a zero is neither rounded nor clipped
    quiet, loud = 6 * 3 * 4 - 1, 6 * 4  # non-zero values of channels 1-3, and of channel 0
    [wide] = activation_spread(_conv_reading_x(), {"x": 100.0}, x, session=onnx_session)
    assert (wide.tensor, wide.amax, wide.clipped) == ("x", 100.0, 0.0)
    assert wide.rounded_to_zero == pytest.approx(quiet / (quiet + loud), abs=1e-4)
    assert wide.median_channel_range == pytest.approx(0.003)  # median of (100, 0.3, 0.3, 0.3) over 100
    [narrow] = activation_spread(_conv_reading_x(), {"x": 0.3}, x, session=onnx_session)
    assert narrow.rounded_to_zero == 0.0 and narrow.clipped == pytest.approx(loud / (quiet + loud), abs=1e-4)
    assert narrow.median_channel_range == wide.median_channel_range
    [even] = activation_spread(_conv_reading_x(), {"x": 0.3}, np.full((3, 4, 2, 2), 0.3, np.float32),
                               session=onnx_session)
    assert (even.rounded_to_zero, even.clipped, even.median_channel_range) == (0.0, 0.0, 1.0)


def test_the_diagnosis_names_the_most_uneven_tensor_only_when_one_scale_explains_the_miss():
    rows = [ActivationSpread("/layer4/relu", 60.0, 0.004, 0.38, 0.01),
            ActivationSpread("/layer3/relu", 9.0, 0.4, 0.2, 0.0)]
    said = diagnosis(rows)
    assert said.startswith("1 activation tensor(s) have channels 30x or more apart")
    assert "/layer4/relu: median channel at 0.004" in said and "38 % of its non-zero values round to 0" in said
    assert "1 % are clipped" in said and "quantization-aware fine-tuning" in said and "--int8-aware" in said
    even = diagnosis([ActivationSpread("/layer3/relu", 9.0, UNEVEN + 0.01, 0.6, 0.0)])
    assert even.startswith("Every activation's channels are within 30x") and "quantization-aware" not in even
    assert diagnosis([]) == ""
