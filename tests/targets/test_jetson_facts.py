"""The device report's Jetson facts, from outputs of JetPack's files and tools in the formats NVIDIA
documents (fixtures written after those formats: no Jetson is reachable from the test machines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet_deploy.targets.tensorrt.jetson_facts import clocks_pinned, jetson_facts, l4t_release, power_mode

FIXTURES = Path(__file__).parent / "fixtures" / "jetson"


@pytest.mark.parametrize("jetpack, l4t", [("4.6.1", "32.7.1"), ("5.1.2", "35.4.1"), ("6.1", "36.4.0")])
def test_release_and_jetpack_from_nv_tegra_release(jetpack, l4t):
    text = (FIXTURES / f"jetpack-{jetpack}_nv_tegra_release").read_text()
    assert l4t_release(text) == l4t
    outputs = {("nvpmodel", "-q"): (FIXTURES / "nvpmodel_q_maxn").read_text(),
               ("jetson_clocks", "--show"): (FIXTURES / "jetson_clocks_show_on").read_text()}
    facts = jetson_facts(read=lambda path: text, run=lambda cmd: outputs.get(tuple(cmd)))
    assert facts == {"l4t": l4t, "jetpack": jetpack, "power_mode": "MAXN (mode 0)", "jetson_clocks": True}


def test_power_mode_and_clocks():
    assert power_mode((FIXTURES / "nvpmodel_q_15w").read_text()) == "15W (mode 2)"
    assert clocks_pinned((FIXTURES / "jetson_clocks_show_on").read_text()) is True
    assert clocks_pinned((FIXTURES / "jetson_clocks_show_off").read_text()) is False
    assert clocks_pinned("nothing here") is None


def test_off_a_jetson_there_are_no_facts():
    assert jetson_facts(read=lambda path: None) == {}


def test_tools_missing_leave_their_facts_out():
    text = (FIXTURES / "jetpack-6.1_nv_tegra_release").read_text()
    assert jetson_facts(read=lambda path: text, run=lambda cmd: None) == {"l4t": "36.4.0", "jetpack": "6.1"}
