"""The preprocessing record: how an image becomes the model's input tensor.

One record travels with the model: it is written into the bundle and the ONNX metadata, and the
on-device runtime applies it, so training, calibration, evaluation and inference agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from resnet_deploy.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_INPUT_SIZE = 8


@dataclass(frozen=True)
class Preprocessing:
    """Input size (H, W), channels, mean/std on [0, 1] pixels, resize policy and class names.

    ``crop_ratio`` < 1 means "resize the shorter side to size/crop_ratio, then centre-crop", the
    ImageNet evaluation recipe (224 from 256 is 0.875); 1.0 resizes straight to the input size.
    """

    input_size: tuple[int, int]
    channels: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_ratio: float = 1.0
    channel_order: str = "RGB"
    class_names: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        h, w = self.input_size
        if min(h, w) < MIN_INPUT_SIZE:
            raise ConfigError(
                f"--input-size {h}x{w} is too small: a ResNet needs at least {MIN_INPUT_SIZE} pixels a side."
            )
        if self.channels not in (1, 3):
            raise ConfigError(f"Input channels must be 1 (grayscale) or 3 (RGB), got {self.channels}.")
        for flag, values in (("--mean", self.mean), ("--std", self.std)):
            if len(values) != self.channels:
                raise ConfigError(
                    f"{flag} has {len(values)} values but the model takes {self.channels} channel(s): "
                    f"give {self.channels} comma-separated number(s)."
                )
            if not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{flag} must hold finite numbers, got {values}.")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"--std values must be positive, got {self.std}.")
        if not 0.1 <= self.crop_ratio <= 1.0:
            raise ConfigError(f"crop ratio must lie in [0.1, 1], got {self.crop_ratio}.")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.input_size)

    def with_classes(self, names: tuple[str, ...] | list[str]) -> "Preprocessing":
        return replace(self, class_names=tuple(names))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"], d["class_names"] = list(self.mean), list(self.std), list(self.class_names)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        return cls(
            input_size=tuple(int(v) for v in d["input_size"]),  # type: ignore[arg-type]
            channels=int(d.get("channels", 3)),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            crop_ratio=float(d.get("crop_ratio", 1.0)),
            channel_order=str(d.get("channel_order", "RGB")),
            class_names=tuple(str(v) for v in d.get("class_names", ())),
        )

    # --- applying it -------------------------------------------------------------------------

    def to_uint8(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Resize/crop and convert channels: uint8 array (H, W, C) ready to normalise."""
        img = to_pil(image)
        img = img.convert("L" if self.channels == 1 else "RGB")
        h, w = self.input_size
        if img.size != (w, h):
            if self.crop_ratio < 1.0:
                scale = max(h, w) / self.crop_ratio / min(img.size)
                new = (max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale)))
                img = img.resize(new, Image.BILINEAR)
                left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
                img = img.crop((left, top, left + w, top + h))
            else:
                img = img.resize((w, h), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr

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
    return size  # type: ignore[return-value]
