"""The ImageNet preset gives torchvision's pixels, on every path an image takes (build, stream, infer).

The reference is torchvision's ``ResNet50_Weights.IMAGENET1K_V1.transforms()`` (resize 256, centre crop 224,
bilinear with antialias, ImageNet mean/std) on real JPEGs, recorded by scripts/make_preprocess_fixture.py
in tests/fixtures/imagenet_preset/ (torchvision does not import beside this project's torch build).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_deploy.calibration.images import open_image
from resnet_deploy.calibration.preprocess import Preprocessing, imagenet_preset
from resnet_deploy.calibration.sampling import ImageStream
from resnet_deploy.calibration.sources import ImageFolderSource
from resnet_deploy.pipeline.device import read_image

FIXTURE = Path(__file__).parent / "fixtures" / "imagenet_preset"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())["images"]
PRESET = imagenet_preset(224)


def _sha(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


@pytest.mark.parametrize("case", EXPECTED, ids=[c["file"] for c in EXPECTED])
def test_pixels_and_normalised_values_match_torchvision(case):
    with open_image(FIXTURE / case["file"], min_side=PRESET.resize_side) as img:
        assert list(img.size) == case["size"]
        pixels = PRESET.to_uint8(img)
    x = PRESET.normalize(pixels)
    got = [float(x[tuple(p)]) for p in case["positions"]]
    np.testing.assert_allclose(got, case["values"], atol=1e-6)
    # float32 means of 50,176 values: summation order alone moves them by ~1e-5
    np.testing.assert_allclose(x.astype(np.float64).mean(axis=(1, 2)), case["channel_means"], atol=1e-4)
    assert _sha(pixels) == case["sha256_uint8_hwc"], "not byte-identical to torchvision's PIL path"


def test_the_fixture_spans_the_rounding_cases():
    """Portrait and landscape, odd sides (the crop offset's rounding), and an image already at 256."""
    sizes = [tuple(c["size"]) for c in EXPECTED]
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes) and (256, 256) in sizes
    assert any((int(256 * max(w, h) / min(w, h)) - 224) % 2 for w, h in sizes)


def test_streamed_and_infer_paths_give_the_same_inputs(tmp_path):
    """The build's evaluation stream (a thread pool) and `infer`'s reader apply the same record."""
    folder = tmp_path / "val" / "n00000001"
    folder.mkdir(parents=True)
    for case in EXPECTED:
        shutil.copy(FIXTURE / case["file"], folder / case["file"])
    source = ImageFolderSource.open(tmp_path / "val")
    chunks = list(ImageStream(source, np.arange(len(source)), PRESET, flag="--eval-data", chunk=3, workers=2))
    assert [len(c.positions) for c in chunks] == [3, 1]
    pixels = np.concatenate([c.pixels for c in chunks])
    by_name = {c["file"]: c["sha256_uint8_hwc"] for c in EXPECTED}
    for i in range(len(source)):
        assert _sha(pixels[i]) == by_name[source.files[i].name]
        np.testing.assert_array_equal(read_image(source.files[i], PRESET), PRESET.normalize(pixels[i]))


def test_bgr_reverses_the_channels_everywhere():
    case = EXPECTED[0]
    bgr = Preprocessing((224, 224), 3, PRESET.mean[::-1], PRESET.std[::-1], crop_ratio=0.875, channel_order="BGR")
    with Image.open(FIXTURE / case["file"]) as img:
        rgb_pixels, bgr_pixels = PRESET.to_uint8(img), bgr.to_uint8(img)
    np.testing.assert_array_equal(bgr_pixels, rgb_pixels[:, :, ::-1])
    np.testing.assert_allclose(bgr.normalize(bgr_pixels), PRESET.normalize(rgb_pixels)[::-1], atol=1e-6)
    np.testing.assert_array_equal(read_image(FIXTURE / case["file"], bgr), bgr.normalize(bgr_pixels))
