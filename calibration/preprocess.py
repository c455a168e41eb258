"""The preprocessing record: how an image becomes the model's input tensor.

One record travels with the model: it is written into the bundle and the ONNX metadata, and the
on-device runtime applies it, so training, calibration, evaluation and inference agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from resnet_deploy.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_INPUT_SIZE = 8
# 4096 a side is 50 MB per float32 RGB image: far beyond any classifier's input, small enough that a
# typo (100000) is an error and not a MemoryError halfway through a build.
MAX_INPUT_SIZE = 4096
STD_RANGE = (1e-3, 10.0)  # on [0, 1] pixels; 1e-30 would turn every input into inf
# How each field is named in messages by default: the build flag that sets it.
FLAGS = {"input_size": "--input-size", "channels": "input channels", "mean": "--mean", "std": "--std",
         "crop_ratio": "crop ratio", "resize": "--resize", "crop": "--crop", "interpolation": "--interpolation",
         "channel_order": "--channel-order"}
# Pillow's filters; all but nearest antialias when they shrink, as torchvision's antialias=True does.
INTERPOLATIONS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                  "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
CROPS = ("center", "none")  # center: shorter side to ``resize_side``, then the middle; none: stretch to the size
CHANNEL_ORDERS = ("RGB", "BGR")


def check_values(input_size: tuple[int, int], channels: int, mean: tuple[float, ...], std: tuple[float, ...],
                 crop_ratio: float, *, resize: int | None = None, crop: str = "none", interpolation: str = "bilinear",
                 channel_order: str = "RGB", names: dict[str, str] | None = None) -> None:
    """Range-check a preprocessing record. ``names`` says where each field came from (a flag, or a
    checkpoint's metadata), so the message blames the right place."""
    name = {**FLAGS, **(names or {})}
    h, w = input_size
    if min(h, w) < MIN_INPUT_SIZE:
        raise ConfigError(f"{name['input_size']} {h}x{w} is too small: a ResNet needs at least "
                          f"{MIN_INPUT_SIZE} pixels a side.")
    if max(h, w) > MAX_INPUT_SIZE:
        raise ConfigError(f"{name['input_size']} {h}x{w} is too large: at most {MAX_INPUT_SIZE} pixels a side.")
    if channels not in (1, 3):
        raise ConfigError(f"{name['channels']} must be 1 (grayscale) or 3 (RGB), got {channels}.")
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise ConfigError(
                f"{name[key]} has {len(values)} values but the model takes {channels} channel(s): "
                f"give {channels} comma-separated number(s)."
            )
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{name[key]} must hold finite numbers, got {tuple(values)}.")
    if not all(0.0 <= v <= 1.0 for v in mean):
        raise ConfigError(f"{name['mean']} values are on [0, 1] pixels (e.g. 0.485 for ImageNet's red), "
                          f"got {tuple(mean)}.")
    lo, hi = STD_RANGE
    if not all(lo <= v <= hi for v in std):
        raise ConfigError(f"{name['std']} values must lie in [{lo:g}, {hi:g}] on [0, 1] pixels (e.g. 0.229 for "
                          f"ImageNet's red), got {tuple(std)}.")
    if not (math.isfinite(crop_ratio) and 0.1 <= crop_ratio <= 1.0):
        raise ConfigError(f"{name['crop_ratio']} must lie in [0.1, 1], got {crop_ratio}.")
    if resize is not None and not max(h, w) <= resize <= 2 * MAX_INPUT_SIZE:
        raise ConfigError(f"{name['resize']} {resize} is the shorter side before the centre crop: give at least the "
                          f"input size ({max(h, w)}) and at most {2 * MAX_INPUT_SIZE} pixels, or a crop ratio such as "
                          "0.875.")
    for key, value, allowed in (("crop", crop, CROPS), ("interpolation", interpolation, tuple(INTERPOLATIONS)),
                                ("channel_order", channel_order, CHANNEL_ORDERS)):
        if value not in allowed:
            raise ConfigError(f"{name[key]} must be one of {', '.join(allowed)}, got {value!r}.")


@dataclass(frozen=True)
class Preprocessing:
    """Input size (H, W), channels, mean/std on [0, 1] pixels, resize policy, channel order and class names.

    ``crop`` "center" resizes the shorter side to ``resize`` pixels (or size/``crop_ratio``: 224 from 256 is
    0.875), then keeps the middle, as torchvision's ``Resize(int)`` + ``CenterCrop`` and timm's ``crop_pct``;
    "none" stretches the image to the input size. Left empty, it is "center" when a resize or a ratio
    below 1 asks for a crop. ``channel_order`` "BGR" reverses the channels after decoding (Caffe-style
    models); ``mean``/``std`` are in the model's order.
    """

    input_size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_ratio: float = 1.0
    channel_order: str = "RGB"
    class_names: tuple[str, ...] = field(default_factory=tuple)
    resize: int | None = None
    crop: str = ""
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not self.crop:
            object.__setattr__(self, "crop", "center" if self.resize or self.crop_ratio < 1.0 else "none")
        check_values(self.input_size, self.channels, self.mean, self.std, self.crop_ratio, resize=self.resize,
                     crop=self.crop, interpolation=self.interpolation, channel_order=self.channel_order)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.input_size)

    @property
    def resize_side(self) -> int:
        """The shorter side before the centre crop: ``resize``, else size/``crop_ratio`` rounded down (timm)."""
        return self.resize or math.floor(max(self.input_size) / self.crop_ratio + 1e-6)

    def unchanged(self, shape: tuple[int, ...]) -> bool:
        """Whether a uint8 image of ``shape`` (H, W) or (H, W, C) is already the model's input, pixel for pixel."""
        channels = shape[2] if len(shape) == 3 else 1
        same = tuple(shape[:2]) == self.input_size and channels == self.channels
        centred = self.crop == "center" and self.resize_side != max(self.input_size)
        return same and not centred and (self.channels == 1 or self.channel_order == "RGB")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"], d["class_names"] = list(self.mean), list(self.std), list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, *, origin: str = "preprocessing") -> Preprocessing:
        """The record from its JSON form. Malformed or out-of-range fields raise ConfigError naming
        ``origin`` and the field (e.g. "checkpoint x.pt metadata preprocessing.std")."""
        if not isinstance(d, dict):
            raise ConfigError(f"{origin} must be a JSON object, got {type(d).__name__}.")

        def field_of(key: str, convert, default: Any = None):
            if key not in d:
                if default is None:
                    raise ConfigError(f"{origin} has no {key!r}.")
                return default
            try:
                return convert(d[key])
            except (TypeError, ValueError):
                raise ConfigError(f"{origin}.{key} is malformed: {d[key]!r}.") from None

        def numbers(v: Any) -> tuple[float, ...]:
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                         for x in v):
                raise TypeError
            return tuple(float(x) for x in v)

        def size(v: Any) -> tuple[int, int]:
            if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise TypeError
            return (int(v[0]), int(v[1]))

        def integer(v: Any) -> int:
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError
            return v

        def names(v: Any) -> tuple[str, ...]:
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise TypeError
            return tuple(v)

        def text(v: Any) -> str:
            if not isinstance(v, str):
                raise TypeError
            return v

        values: dict[str, Any] = dict(
            input_size=field_of("input_size", size), channels=field_of("channels", integer, 3),
            mean=field_of("mean", numbers), std=field_of("std", numbers),
            crop_ratio=field_of("crop_ratio", lambda v: float(numbers([v])[0]), 1.0),
        )
        policy = dict(resize=field_of("resize", integer) if d.get("resize") is not None else None,
                      crop=field_of("crop", text, ""), interpolation=field_of("interpolation", text, "bilinear"),
                      channel_order=field_of("channel_order", text, "RGB"))
        if not policy["crop"]:  # a record written before the field: what the ratio meant then
            policy["crop"] = "center" if policy["resize"] or values["crop_ratio"] < 1.0 else "none"
        check_values(**values, **policy, names={k: f"{origin}.{k}" for k in [*values, *policy]})
        return cls(**values, **policy, class_names=field_of("class_names", names, ()))

    # --- applying it -------------------------------------------------------------------------

    def to_uint8(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Resize/crop and convert channels: uint8 array (H, W, C) in the model's channel order, ready to
        normalise. The centre crop computes sizes and offsets as torchvision's ``Resize(int)`` and
        ``CenterCrop`` do, so on a PIL image the ImageNet preset gives torchvision's pixels."""
        img = to_pil(image)
        img = img.convert("L" if self.channels == 1 else "RGB")
        h, w = self.input_size
        resample = INTERPOLATIONS[self.interpolation]
        if self.crop == "center":
            short, (iw, ih) = self.resize_side, img.size
            new = (short, int(short * ih / iw)) if iw <= ih else (int(short * iw / ih), short)
            new = (max(new[0], w), max(new[1], h))  # a crop wider than the resized image grows it (no padding)
            if new != img.size:
                img = img.resize(new, resample)
            left, top = round((new[0] - w) / 2.0), round((new[1] - h) / 2.0)  # torchvision's rounding
            img = img.crop((left, top, left + w, top + h))
        elif img.size != (w, h):
            img = img.resize((w, h), resample)
        arr = np.asarray(img, dtype=np.uint8)
        if arr.ndim == 2:
            return arr[:, :, None]
        return np.ascontiguousarray(arr[:, :, ::-1]) if self.channel_order == "BGR" else arr

    def normalize(self, batch_hwc: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) or (H, W, C) -> float32 NCHW/CHW, (x/255 - mean) / std."""
        x = batch_hwc.astype(np.float32) / 255.0
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        x = (x - mean) / std
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """One image (any size, mode or channel count) -> float32 (C, H, W)."""
        return self.normalize(self.to_uint8(image))


def imagenet_preset(size: int = 224, *, class_names: tuple[str, ...] = ()) -> Preprocessing:
    """The ImageNet evaluation recipe of torchvision's weights (``ImageClassification``) and timm's default
    ``crop_pct``: shorter side to size/0.875 (256 for 224) with bilinear antialiasing, centre crop, ImageNet
    mean/std, RGB. tests/test_imagenet_preset.py checks it against torchvision's own output."""
    return Preprocessing((size, size), 3, IMAGENET_MEAN, IMAGENET_STD, crop_ratio=0.875, crop="center",
                         interpolation="bilinear", class_names=class_names)


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image in mode L or RGB from any common input: 16-bit, float, palette, RGBA, arrays."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype == np.uint16:
            arr = (arr // 257).astype(np.uint8)
        elif arr.dtype.kind == "f":
            # The rule of mode "F" below: floats on [0, 1] are scaled up, larger ones read as 0..255.
            top = 1.0 if arr.size and arr.max() <= 1.0 else 255.0
            arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        elif arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        image = Image.fromarray(arr)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        top = 1.0 if arr.max() <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on black, what most training pipelines effectively saw.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")


def parse_floats(text: str, flag: str) -> tuple[float, ...]:
    """'0.5,0.5,0.5' -> (0.5, 0.5, 0.5) with a message naming the flag when it does not parse."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated numbers such as 0.5,0.5,0.5; got {text!r}.") from None
    if not values:
        raise ConfigError(f"{flag} is empty: give comma-separated numbers such as 0.5,0.5,0.5.")
    return values


def parse_size(text: str) -> tuple[int, int]:
    """'224' or '224x192' (height x width) -> (H, W)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--input-size must be N or HxW such as 224 or 224x192; got {text!r}.") from None
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2:
        raise ConfigError(f"--input-size must be N or HxW; got {text!r}.")
    if min(size) < MIN_INPUT_SIZE:
        raise ConfigError(f"--input-size {text} is too small: at least {MIN_INPUT_SIZE} pixels a side.")
    if max(size) > MAX_INPUT_SIZE:
        raise ConfigError(f"--input-size {text} is too large: at most {MAX_INPUT_SIZE} pixels a side.")
    return size
