"""Write tests/fixtures/imagenet_preset/: a few real JPEGs and what torchvision's ImageNet transform makes of
them, so tests/test_imagenet_preset.py checks the ImageNet preset's parity without torchvision installed.

The JPEGs are CIFAR-10 test images upscaled to photo-like sizes (odd ones too, for the rounding of the
resize and the crop offsets). For each, ``expected.json`` holds the sha256 of the uint8 pixels torchvision's
``ResNet50_Weights.IMAGENET1K_V1.transforms()`` (``ImageClassification``: resize 256, centre crop 224,
bilinear, antialias, ImageNet mean/std) gives on the PIL image (its float output mapped back to bytes:
exact, as it is bytes / 255 normalised), per-channel means of the float output, and float values at fixed
positions. ``tensor_path_max_abs`` records how far torchvision's tensor path (the same decoded bytes as a
uint8 tensor, resized by torch's antialiased bilinear kernel) is from its PIL path: what a different resize
kernel alone changes (torchvision's JPEG decoder does not load beside this torch build).

Run it where torchvision imports (see scripts/make_reference_fixtures.py for the /tmp/refvenv recipe):

    /tmp/refvenv/bin/python scripts/make_preprocess_fixture.py      # from the project's root
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "imagenet_preset"
CIFAR10_TEST = ROOT.parent / "shared" / "datasets" / "cifar10" / "test"
# (source image, width, height): landscape, portrait with odd sides, square at the resize size, a large one.
IMAGES = (("cat/0000.jpg", 500, 375), ("ship/0001.jpg", 333, 501), ("dog/0002.jpg", 256, 256),
          ("truck/0003.jpg", 641, 427))
SAMPLES = 64  # float values checked per image, at positions drawn from a fixed seed


def main() -> None:
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
    import torch
    import torchvision
    from torchvision.models import ResNet50_Weights
    from torchvision.transforms.functional import pil_to_tensor

    transform = ResNet50_Weights.IMAGENET1K_V1.transforms()
    mean = np.asarray(transform.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(transform.std, dtype=np.float32)[:, None, None]
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for source, w, h in IMAGES:
        name = f"{Path(source).parent.name}_{w}x{h}.jpg"
        with Image.open(CIFAR10_TEST / source) as img:
            img.convert("RGB").resize((w, h), Image.Resampling.BICUBIC).save(OUT / name, quality=90)
        with Image.open(OUT / name) as img:
            out = transform(img.convert("RGB")).numpy()  # float32 (3, 224, 224)
            tensor = transform(pil_to_tensor(img.convert("RGB"))).numpy()
        pixels = np.rint((out * std + mean) * 255.0).astype(np.uint8).transpose(1, 2, 0)  # HWC bytes
        positions = np.stack([rng.integers(0, n, SAMPLES) for n in out.shape], axis=1)
        records.append({
            "file": name, "size": [w, h], "sha256_uint8_hwc": hashlib.sha256(pixels.tobytes()).hexdigest(),
            "channel_means": [float(v) for v in out.mean(axis=(1, 2))],
            "positions": positions.tolist(), "values": [float(out[tuple(p)]) for p in positions],
            "tensor_path_max_abs": float(np.abs(tensor - out).max()),
        })
    meta = {"transform": repr(transform).replace("\n", " "), "torchvision": torchvision.__version__,
            "torch": torch.__version__, "pillow": Image.__version__, "images": records}
    (OUT / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {OUT} ({len(records)} images)")


if __name__ == "__main__":
    main()
