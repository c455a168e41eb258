"""Write tests/fixtures/reference/<arch>.npz: what torchvision's and timm's own code compute for each arch
of the wider ResNet family, so tests/test_models_family.py checks parity without either as a dependency.

Each fixture holds the reference's state-dict keys, shapes and dtypes (10 classes), its parameter count
at 1000 classes, 4 CIFAR-10 test images (64x64, ImageNet mean/std, stored as float16 and run as float32)
and the reference's eval-mode logits after ``deterministic_state_dict`` filled its weights. The test
imports ``deterministic_state_dict`` from this file and fills our model by the same key names.

torchvision and timm cannot import beside the project's CPU torch as they are, so run this in a separate
virtual environment (torch 2.13.0, torchvision and timm installed with --no-deps; the empty
``torchvision._meta_registrations`` below lets their Python model code import):

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 numpy pillow pyyaml
    /tmp/refvenv/bin/pip install --no-deps torchvision timm
    /tmp/refvenv/bin/python scripts/make_reference_fixtures.py      # from the project's root
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import types
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "reference"
CIFAR10_TEST = ROOT.parent / "shared" / "datasets" / "cifar10" / "test"

# arch -> the library whose code is the reference (its names and parameter layout are ours).
REFERENCES = {
    "resnext50_32x4d": "torchvision",
    "resnext101_32x8d": "torchvision",
    "resnext101_64x4d": "torchvision",
    "wide_resnet50_2": "torchvision",
    "wide_resnet101_2": "torchvision",
    "seresnet50": "timm",
    "seresnext50_32x4d": "timm",
    "seresnext26d_32x4d": "timm",
    "resnet50d": "timm",
    "resnet26d": "timm",
}
NUM_CLASSES = 10
IMAGE_SIZE = 64
IMAGES_PER_CLASS, CLASSES = 1, ("airplane", "automobile", "bird", "cat")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

FILL_RULE = (
    "per key: g = torch.Generator().manual_seed(zlib.crc32(key.encode())); num_batches_tracked = 0; "
    "running_mean = randn * 0.1; running_var = rand + 0.5; other 1-D '*.weight' (BN gamma) = rand * 0.5 + 0.75; "
    "other 1-D (biases) = randn * 0.1; >= 2-D weights = randn * sqrt(1 / fan_in), fan_in = prod(shape[1:])"
)


def fill_value(key: str, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The value ``FILL_RULE`` gives one state-dict entry: a function of its name and shape only."""
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("running_mean"):
        value = torch.randn(shape, generator=g) * 0.1
    elif key.endswith("running_var"):
        value = torch.rand(shape, generator=g) + 0.5
    elif len(shape) == 1 and key.endswith("weight"):
        value = torch.rand(shape, generator=g) * 0.5 + 0.75
    elif len(shape) == 1:
        value = torch.randn(shape, generator=g) * 0.1
    else:
        value = torch.randn(shape, generator=g) * math.sqrt(1.0 / math.prod(shape[1:]))
    return value.to(dtype)


def deterministic_state_dict(entries: Iterable[tuple[str, tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
    """A state dict, in sorted key order, of ``fill_value`` for each (key, shape, dtype)."""
    return {key: fill_value(key, tuple(shape), dtype) for key, shape, dtype in sorted(entries)}


def reference_input(folder: Path = CIFAR10_TEST) -> tuple[np.ndarray, list[str]]:
    """The first test image of four classes, 64x64 bilinear, ImageNet-normalised, rounded to float16."""
    from PIL import Image

    files = [sorted((folder / c).glob("*.jpg"))[:IMAGES_PER_CLASS] for c in CLASSES]
    paths = [p for group in files for p in group]
    if len(paths) != IMAGES_PER_CLASS * len(CLASSES):
        raise SystemExit(f"CIFAR-10 test images not found under {folder} (see ../shared/datasets/README.md)")
    batch = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        x = (np.asarray(img, dtype=np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
        batch.append(x.transpose(2, 0, 1))
    # float16 keeps each fixture small; the float16 values, widened to float32, are the input.
    return np.stack(batch).astype(np.float16), [str(p.relative_to(folder)) for p in paths]


def _import_references() -> tuple[types.ModuleType, types.ModuleType]:
    # torchvision's compiled ops do not load beside this torch; its model code needs only this module to exist.
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
    import timm
    import torchvision

    return torchvision, timm


def build_reference(arch: str, num_classes: int) -> torch.nn.Module:
    torchvision, timm = _import_references()
    if REFERENCES[arch] == "torchvision":
        return getattr(torchvision.models, arch)(num_classes=num_classes)
    return timm.create_model(arch, num_classes=num_classes, pretrained=False)


def make_fixture(arch: str, batch: np.ndarray, images: list[str], out: Path) -> dict:
    torchvision, timm = _import_references()
    with torch.device("meta"):
        params_1000 = sum(p.numel() for p in build_reference(arch, 1000).parameters())
    model = build_reference(arch, NUM_CLASSES).eval()
    entries = [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]
    model.load_state_dict(deterministic_state_dict(entries), strict=True)
    with torch.inference_mode():
        logits = model(torch.from_numpy(batch.astype(np.float32))).numpy()
    library = REFERENCES[arch]
    meta = {
        "arch": arch, "reference": f"{library} {(torchvision if library == 'torchvision' else timm).__version__}",
        "torch": torch.__version__, "num_classes": NUM_CLASSES, "params_1000_classes": params_1000,
        "images": images, "image_size": IMAGE_SIZE, "mean": MEAN, "std": STD, "fill_rule": FILL_RULE,
    }
    keys = [[k, list(shape), str(dtype).removeprefix("torch.")] for k, shape, dtype in entries]
    path = out / f"{arch}.npz"
    np.savez_compressed(path, input=batch, logits=logits.astype(np.float32),
                        keys=np.array(json.dumps(keys)), meta=np.array(json.dumps(meta)))
    return {"arch": arch, "params_1000": params_1000, "bytes": path.stat().st_size, "reference": meta["reference"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--images", type=Path, default=CIFAR10_TEST, help="CIFAR-10 test ImageFolder")
    parser.add_argument("--arch", action="append", choices=sorted(REFERENCES), help="default: all")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # results do not depend on it; a shared 2-core machine runs faster so
    args.out.mkdir(parents=True, exist_ok=True)
    batch, images = reference_input(args.images)
    for arch in args.arch or list(REFERENCES):
        print(json.dumps(make_fixture(arch, batch, images, args.out)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
