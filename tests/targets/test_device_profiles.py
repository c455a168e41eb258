"""Device profiles and the validation of the TensorRT/Jetson target flags."""

from __future__ import annotations

import pytest

from resnet_deploy.errors import ConfigError
from resnet_deploy.targets import get_target
from resnet_deploy.targets.tensorrt.config import JETSON
from resnet_deploy.targets.tensorrt.profiles import PROFILES, DeviceProfile, get_profile, has_fast_int8


@pytest.mark.parametrize("name, cc, dla, trt", [
    ("orin-nano", (8, 7), 0, "10.3.0"), ("orin-nx-8gb", (8, 7), 1, "10.3.0"), ("orin-nx-16gb", (8, 7), 2, "10.3.0"),
    ("agx-orin", (8, 7), 2, "10.3.0"),
    ("xavier-nx", (7, 2), 2, "8.5.2"), ("agx-xavier", (7, 2), 2, "8.5.2"),
    ("nano", (5, 3), 0, "8.2.1"), ("tx2", (6, 2), 0, "8.2.1"),
])
def test_jetson_profiles(name, cc, dla, trt):
    p = get_profile(name)
    assert (p.compute_capability, p.dla_cores, p.tensorrt) == (cc, dla, trt)
    assert p.is_jetson


def test_orin_is_jetpack_6_xavier_5_nano_4():
    assert get_profile("agx-orin").jetpack.startswith("6.")
    assert get_profile("xavier-nx").jetpack.startswith("5.1")
    assert get_profile("nano").jetpack.startswith("4.6")


@pytest.mark.parametrize("name", ["nano", "tx2"])
def test_devices_without_fast_int8_build_fp16(name):
    p = get_profile(name)
    assert not p.fast_int8 and p.precision == "fp16"


def test_desktop_profile_has_no_dla_and_tensorrt_10():
    p = get_profile("desktop")
    assert p.dla_cores == 0 and not p.is_jetson and p.tensorrt.startswith("10.") and p.precision == "int8"


def test_fast_int8_flag_agrees_with_the_architecture_rule():
    for p in PROFILES.values():
        assert p.fast_int8 == has_fast_int8(p.compute_capability), p.name
    assert not has_fast_int8((6, 0)) and has_fast_int8((6, 1)) and has_fast_int8((9, 0))


def test_unknown_device_lists_known_ones():
    with pytest.raises(ConfigError, match="--device") as err:
        get_profile("jetson-tk1")
    for name in ("orin-nano", "agx-orin", "nano", "desktop"):
        assert name in str(err.value)


def test_profile_lookup_ignores_case_and_round_trips():
    p = get_profile("AGX-Orin")
    assert DeviceProfile.from_dict(p.to_dict()) == p


def test_profile_validates_its_fields():
    with pytest.raises(ConfigError):
        DeviceProfile("x", "gpu", (8, 7), -1, True, "6.1", "10.3.0")
    with pytest.raises(ConfigError):
        DeviceProfile("x", "gpu", (8, 7), 0, True, "6.1", "10.3")


# --- target flags -----------------------------------------------------------------------------------

def test_jetson_defaults():
    o = get_target("jetson").parse_options({})
    assert o.profile.name == "orin-nano" and o.dla_core is None and o.opt_batch == 1 and o.max_batch == 8


def test_desktop_defaults_optimise_for_throughput():
    o = get_target("tensorrt").parse_options({})
    assert o.profile.name == "desktop" and o.opt_batch == o.max_batch == 32


def test_none_means_not_given_and_numbers_may_be_text():
    o = get_target("jetson").parse_options({"device": "agx-orin", "dla_core": "1", "max_batch": "4",
                                            "workspace_mb": None})
    assert (o.profile.name, o.dla_core, o.max_batch, o.workspace_mb) == ("agx-orin", 1, 4, JETSON.workspace_mb)


@pytest.mark.parametrize("options, flag", [
    ({"dla_core": 0}, "--dla-core"),  # orin-nano has no DLA
    ({"device": "agx-orin", "dla_core": 2}, "--dla-core"),
    ({"device": "agx-orin", "dla_core": True}, "--dla-core"),
    ({"max_batch": 0}, "--max-batch"),
    ({"max_batch": "eight"}, "--max-batch"),
    ({"max_batch": 5000}, "--max-batch"),
    ({"workspace_mb": 1}, "--workspace-mb"),
    ({"device": "desktop"}, "--device"),
    ({"device": "tk1"}, "--device"),
])
def test_bad_jetson_flags_name_the_flag(options, flag):
    with pytest.raises(ConfigError, match=flag):
        get_target("jetson").parse_options(options)


def test_tensorrt_target_ignores_jetson_only_flags():
    # `--target all --device agx-orin --dla-core 1` reaches the desktop target too
    o = get_target("tensorrt").parse_options({"device": "agx-orin", "dla_core": 1, "max_batch": 16})
    assert o.profile.name == "desktop" and o.dla_core is None and o.max_batch == 16


def test_orin_nx_is_split_by_memory_size_because_the_dla_count_differs():
    with pytest.raises(ConfigError, match=r"orin-nx-8gb \(1 DLA core\) or orin-nx-16gb \(2 DLA cores\)"):
        get_profile("orin-nx")
    assert get_profile("orin-nano-4gb").dla_cores == get_profile("orin-nano-8gb").dla_cores == 0


def test_dla_core_beyond_the_modules_cores_is_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"Jetson Orin NX 8 GB .* has 1 DLA core, so --dla-core must be 0\."):
        get_target("jetson").parse_options({"device": "orin-nx-8gb", "dla_core": 1})
    assert get_target("jetson").parse_options({"device": "orin-nx-16gb", "dla_core": 1}).dla_core == 1
