"""calibration.preprocess: every common image mode becomes the model's input, and bad flags say which."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from resnet_deploy.calibration.preprocess import (
    IMAGENET_MEAN,
    MIN_INPUT_SIZE,
    Preprocessing,
    parse_floats,
    parse_size,
    to_pil,
)
from resnet_deploy.errors import ConfigError

GRAY = Preprocessing((8, 8), 1, (0.0,), (1.0,))
RGB = Preprocessing((8, 8), 3, (0.0,) * 3, (1.0,) * 3)


def solid(mode: str, value, size=(8, 8)) -> Image.Image:
    return Image.new(mode, size, value)


class TestModes:
    def test_grayscale_to_rgb_replicates_the_channel(self):
        out = RGB.to_uint8(solid("L", 77))
        assert out.shape == (8, 8, 3) and (out == 77).all()

    def test_rgb_to_grayscale_uses_luma(self):
        out = GRAY.to_uint8(solid("RGB", (255, 0, 0)))
        assert out.shape == (8, 8, 1)
        assert int(out[0, 0, 0]) == round(0.299 * 255)  # ITU-R 601-2, what PIL and torchvision use

    def test_rgb_stays_rgb(self):
        out = RGB.to_uint8(solid("RGB", (10, 20, 30)))
        assert out[3, 4].tolist() == [10, 20, 30]

    def test_rgba_composites_on_black(self):
        img = Image.new("RGBA", (8, 8), (200, 100, 50, 255))
        img.putpixel((0, 0), (200, 100, 50, 0))  # fully transparent
        img.putpixel((1, 0), (200, 100, 50, 128))  # half
        out = RGB.to_uint8(img)
        assert out[0, 0].tolist() == [0, 0, 0]
        assert out[0, 1].tolist() == pytest.approx([100, 50, 25], abs=1)
        assert out[5, 5].tolist() == [200, 100, 50]

    def test_la_to_grayscale(self):
        img = Image.new("LA", (8, 8), (180, 255))
        img.putpixel((0, 0), (180, 0))
        out = GRAY.to_uint8(img)
        assert out[0, 0, 0] == 0 and out[4, 4, 0] == 180

    def test_palette(self):
        img = Image.new("P", (8, 8), 1)
        img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
        assert RGB.to_uint8(img)[2, 2].tolist() == [10, 200, 30]

    def test_palette_with_transparency(self):
        img = Image.new("P", (8, 8), 1)
        img.putpalette([0, 0, 0, 10, 200, 30, 90, 90, 90] + [0] * (256 * 3 - 9))
        img.putpixel((0, 0), 2)
        img.info["transparency"] = 2
        out = RGB.to_uint8(img)
        assert out[0, 0].tolist() == [0, 0, 0]
        assert out[1, 1].tolist() == [10, 200, 30]

    @pytest.mark.parametrize("value, expected", [(0, 0), (65535, 255), (128 * 257, 128), (1000, 4)])
    def test_16_bit_pil(self, value, expected):
        img = Image.fromarray(np.full((8, 8), value, dtype=np.uint16))
        assert img.mode == "I;16"
        assert int(GRAY.to_uint8(img)[0, 0, 0]) == expected

    @pytest.mark.parametrize("value, expected", [(0, 0), (65535, 255), (128 * 257, 128)])
    def test_16_bit_array(self, value, expected):
        assert int(GRAY.to_uint8(np.full((8, 8), value, dtype=np.uint16))[0, 0, 0]) == expected

    def test_16_bit_png_file(self, tmp_path):
        ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1024).astype(np.uint16)
        Image.fromarray(ramp).save(tmp_path / "deep.png")
        with Image.open(tmp_path / "deep.png") as img:
            out = GRAY.to_uint8(img)[:, :, 0].astype(int)
        np.testing.assert_allclose(out, ramp / 65535 * 255, atol=1)
        rgb = RGB.to_uint8(Image.open(tmp_path / "deep.png"))
        assert rgb.shape == (8, 8, 3) and (rgb[:, :, 0] == rgb[:, :, 2]).all()

    @pytest.mark.parametrize("unit, value", [(1.0, 0.5), (255.0, 127.5)])
    def test_float_pil_image_on_either_scale(self, unit, value):
        img = Image.fromarray(np.full((8, 8), value, dtype=np.float32))
        assert img.mode == "F"
        assert int(GRAY.to_uint8(img)[0, 0, 0]) == 128

    @pytest.mark.parametrize("shape", [(8, 8), (8, 8, 1), (8, 8, 3)])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_float_arrays_on_unit_scale_match_mode_f(self, shape, dtype):
        # A float image on [0, 1] (skimage, torchvision's ToTensor) must not turn black.
        arr = np.full(shape, 0.5, dtype=dtype)
        prep = RGB if len(shape) == 3 and shape[2] == 3 else GRAY
        assert (prep.to_uint8(arr) == 128).all()

    def test_float_arrays_on_byte_scale(self):
        assert (RGB.to_uint8(np.full((8, 8, 3), 200.0)) == 200).all()

    def test_uint8_arrays(self):
        arr = np.zeros((8, 8, 3), dtype=np.uint8)
        arr[..., 1] = 255
        assert RGB.to_uint8(arr)[0, 0].tolist() == [0, 255, 0]
        assert GRAY.to_uint8(np.full((8, 8, 1), 9, dtype=np.uint8))[0, 0, 0] == 9

    @pytest.mark.parametrize("mode, value", [("1", 1), ("CMYK", (0, 0, 0, 0)), ("I", 200), ("YCbCr", (128, 128, 128))])
    def test_other_modes_become_l_or_rgb(self, mode, value):
        assert to_pil(solid(mode, value)).mode in ("L", "RGB")
        assert RGB.to_uint8(solid(mode, value)).shape == (8, 8, 3)


class TestResizeAndCrop:
    @pytest.mark.parametrize("size", [(32, 32), (40, 24), (5, 300)])
    def test_stretch_to_the_input_size(self, size):
        prep = Preprocessing((16, 24), 3, (0.0,) * 3, (1.0,) * 3)
        assert prep.to_uint8(solid("RGB", (1, 2, 3), size)).shape == (16, 24, 3)

    def test_image_at_input_size_is_untouched(self):
        arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        np.testing.assert_array_equal(RGB.to_uint8(arr), arr)

    def test_centre_crop_keeps_the_middle(self):
        # 64x64: a white 32x32 centre on black. Shorter side to 16 / 0.5 = 32, then the middle 16x16:
        # exactly the white block, as torchvision's Resize(32) + CenterCrop(16) would give.
        arr = np.zeros((64, 64), dtype=np.uint8)
        arr[16:48, 16:48] = 255
        cropped = Preprocessing((16, 16), 1, (0.0,), (1.0,), crop_ratio=0.5).to_uint8(arr)[:, :, 0]
        assert cropped.shape == (16, 16) and cropped[1:-1, 1:-1].min() == 255
        whole = Preprocessing((16, 16), 1, (0.0,), (1.0,)).to_uint8(arr)[:, :, 0]
        assert whole[0, 0] == 0 and whole[8, 8] == 255

    def test_centre_crop_of_a_wide_image_keeps_the_aspect(self):
        # 200x100 (W x H), input 16, ratio 0.8: shorter side -> 20, so 40x20, then the middle 16x16.
        arr = np.zeros((100, 200), dtype=np.uint8)
        arr[:, :80] = 255  # the left 40%: columns 0-15 of 40; the crop keeps 12-27, so 4 white columns
        out = Preprocessing((16, 16), 1, (0.0,), (1.0,), crop_ratio=0.8).to_uint8(arr)[:, :, 0]
        assert out.shape == (16, 16)
        white = (out > 127).sum(axis=1)
        assert (white == white[0]).all() and 3 <= white[0] <= 5

    def test_imagenet_recipe_shape(self):
        prep = Preprocessing((224, 224), crop_ratio=0.875)
        assert prep.to_uint8(solid("RGB", (9, 9, 9), (500, 375))).shape == (224, 224, 3)


class TestNormalize:
    def test_values_and_layout(self):
        prep = Preprocessing((8, 8), 3, (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
        x = prep(solid("RGB", (255, 0, 51)))
        assert x.dtype == np.float32 and x.shape == (3, 8, 8)
        np.testing.assert_allclose(x[:, 0, 0], [1.0, -1.0, 0.2], rtol=1e-6)

    def test_batches_are_nchw(self):
        batch = np.zeros((5, 8, 8, 3), dtype=np.uint8)
        assert Preprocessing((8, 8)).normalize(batch).shape == (5, 3, 8, 8)
        assert Preprocessing((8, 8)).shape == (3, 8, 8)


class TestRecord:
    def test_dict_and_json_round_trip(self):
        prep = Preprocessing((28, 24), 1, (0.2860,), (0.3530,), crop_ratio=0.875, class_names=("a", "b"))
        assert Preprocessing.from_dict(prep.to_dict()) == prep
        assert Preprocessing.from_dict(json.loads(prep.to_json())) == prep
        d = prep.to_dict()
        assert d["input_size"] == [28, 24] and d["class_names"] == ["a", "b"]

    def test_defaults_fill_missing_keys(self):
        prep = Preprocessing.from_dict({"input_size": [32, 32], "mean": IMAGENET_MEAN, "std": [0.2, 0.2, 0.2]})
        assert prep.channels == 3 and prep.crop_ratio == 1.0 and prep.class_names == ()


class TestValidation:
    @pytest.mark.parametrize("flag", ["--mean", "--std"])
    @pytest.mark.parametrize("channels, values", [(3, (0.5,)), (3, (0.5, 0.5)), (1, (0.5, 0.5, 0.5))])
    def test_wrong_length_names_the_flag(self, flag, channels, values):
        ok = (0.5,) * channels
        kwargs = {"mean": values, "std": ok} if flag == "--mean" else {"mean": ok, "std": values}
        with pytest.raises(ConfigError) as err:
            Preprocessing((32, 32), channels, **kwargs)
        assert str(err.value).startswith(flag) and f"{channels} channel" in str(err.value)

    @pytest.mark.parametrize("size", [(4, 32), (32, 7), (0, 0)])
    def test_too_small_input(self, size):
        with pytest.raises(ConfigError, match=r"--input-size .*too small"):
            Preprocessing(size)

    def test_minimum_input_size_is_accepted(self):
        assert Preprocessing((MIN_INPUT_SIZE, MIN_INPUT_SIZE)).input_size == (8, 8)

    @pytest.mark.parametrize("std", [(0.0, 1.0, 1.0), (-1.0, 1.0, 1.0)])
    def test_non_positive_std(self, std):
        with pytest.raises(ConfigError, match="--std"):
            Preprocessing((32, 32), std=std)

    @pytest.mark.parametrize("flag", ["--mean", "--std"])
    def test_non_finite_values(self, flag):
        bad = (float("nan"), 0.5, 0.5)
        with pytest.raises(ConfigError, match=flag):
            Preprocessing((32, 32), **{flag.strip("-"): bad})

    def test_channels(self):
        with pytest.raises(ConfigError, match="channels"):
            Preprocessing((32, 32), 2, (0.5, 0.5), (0.5, 0.5))

    @pytest.mark.parametrize("ratio", [0.0, 0.05, 1.5])
    def test_crop_ratio(self, ratio):
        with pytest.raises(ConfigError, match="crop ratio"):
            Preprocessing((32, 32), crop_ratio=ratio)


class TestParsing:
    @pytest.mark.parametrize("text, expected", [
        ("0.5", (0.5,)),
        ("0.485,0.456,0.406", IMAGENET_MEAN),
        (" 1, 2 ,3 ", (1.0, 2.0, 3.0)),
        ("0.5,", (0.5,)),
        ("1e-1,-2", (0.1, -2.0)),
    ])
    def test_parse_floats(self, text, expected):
        assert parse_floats(text, "--mean") == pytest.approx(expected)

    @pytest.mark.parametrize("text", ["a,b", "0.5;0.5", "", " , "])
    def test_parse_floats_names_the_flag(self, text):
        with pytest.raises(ConfigError, match=r"^--std"):
            parse_floats(text, "--std")

    @pytest.mark.parametrize("text, expected", [
        ("224", (224, 224)), ("224x192", (224, 192)), ("224X192", (224, 192)), ("32,28", (32, 28)), ("8", (8, 8)),
    ])
    def test_parse_size(self, text, expected):
        assert parse_size(text) == expected

    @pytest.mark.parametrize("text", ["abc", "224x", "1x2x3", "32x32x3", "7", "224x4", ""])
    def test_parse_size_errors_name_the_flag(self, text):
        with pytest.raises(ConfigError, match="--input-size"):
            parse_size(text)
