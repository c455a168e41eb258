"""The TensorRT calibration cache: header per release, float32 scales, exact round trip."""

from __future__ import annotations

import string
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_deploy.errors import BundleError, ConfigError
from resnet_deploy.targets.tensorrt.calibration_cache import (
    cache_header,
    hex_to_scale,
    read_cache,
    retarget_cache,
    scale_to_hex,
    version_code,
    write_cache,
)
from resnet_deploy.targets.tensorrt.profiles import get_profile


@pytest.mark.parametrize("version, code", [
    ("7.2.2", 7202),  # headers seen in published caches: TRT-7202-, TRT-8203-, TRT-8502-, TRT-8600-
    ("8.2.3", 8203), ("8.5.2", 8502), ("8.6.0", 8600), ("8.2.1", 8201),
    ("10.3.0", 100300),  # NVIDIA's TAO models ship TRT-100300-EntropyCalibration2 caches for TensorRT 10.3
    ("10.3.0.30", 100300), ("10.12.1", 101201),
])
def test_version_code_is_nv_tensorrt_version(version, code):
    assert version_code(version) == code


@pytest.mark.parametrize("device, header", [
    ("agx-orin", "TRT-100300-EntropyCalibration2"), ("xavier-nx", "TRT-8502-EntropyCalibration2"),
    ("nano", "TRT-8201-EntropyCalibration2"), ("desktop", "TRT-100300-EntropyCalibration2"),
])
def test_header_follows_the_device_tensorrt(device, header):
    assert cache_header(get_profile(device).tensorrt) == header


def test_bad_version_is_a_config_error():
    with pytest.raises(ConfigError):
        version_code("ten")


def test_scale_hex_is_big_endian_float32_bits():
    assert scale_to_hex(1.0) == "3f800000"
    assert scale_to_hex(2.0) == "40000000"
    assert scale_to_hex(1 / 128) == "3c000000"
    assert hex_to_scale("3c000000") == 1 / 128


def test_written_file_has_tensorrts_layout(tmp_path):
    path = write_cache(tmp_path / "c.cache", {"input": 127.0, "/conv1/Conv_output_0": 2.54}, trt_version="8.5.2")
    lines = path.read_text().splitlines()
    assert lines[0] == "TRT-8502-EntropyCalibration2"
    assert lines[1] == "input: 3f800000"
    name, value = lines[2].split(": ")
    assert name == "/conv1/Conv_output_0"
    assert struct.unpack(">f", bytes.fromhex(value))[0] == np.float32(2.54 / 127)


names = st.text(alphabet=string.ascii_letters + string.digits + "/_.:-", min_size=1, max_size=40)
amaxes = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(names, amaxes, min_size=1, max_size=20), st.sampled_from(["8.2.1", "8.5.2", "10.3.0"]))
def test_round_trip_scales_equal_amax_over_127_in_float32(tmp_path_factory, amax, version):
    path = write_cache(tmp_path_factory.mktemp("c") / "cal.cache", amax, trt_version=version)
    header, scales = read_cache(path)
    assert header == cache_header(version)
    assert list(scales) == list(amax)
    for name, value in amax.items():
        assert np.float32(scales[name]) == np.float32(value / 127.0)


def test_retarget_keeps_every_scale_bit_for_bit(tmp_path):
    src = write_cache(tmp_path / "a.cache", {"x": 3.0, "y": 0.5}, trt_version="10.3.0")
    dst = retarget_cache(src, tmp_path / "b.cache", trt_version="8.6.2")
    assert dst.read_text().splitlines()[0] == "TRT-8602-EntropyCalibration2"
    assert dst.read_text().splitlines()[1:] == src.read_text().splitlines()[1:]


@pytest.mark.parametrize("text", ["", "hello\n", "TRT-8502-EntropyCalibration2\nx 3f800000\n",
                                  "TRT-8502-EntropyCalibration2\nx: zz\n"])
def test_damaged_caches_are_bundle_errors(tmp_path, text):
    path = tmp_path / "bad.cache"
    path.write_text(text)
    with pytest.raises(BundleError):
        read_cache(path)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_unusable_ranges_are_refused(tmp_path, value):
    with pytest.raises(ConfigError):
        write_cache(tmp_path / "c.cache", {"x": value}, trt_version="10.3.0")
