"""FP32 top-1 of a trained state_dict under torchvision's or timm's own model code, to compare with the FP32
row of `resnet-deploy build` on the same images (issue 11's Done-when).

The weights are the `model.safetensors` that `resnet-deploy train` writes: it is loaded into the reference
implementation with ``strict=True``, so its keys must be exactly torchvision's or timm's names. The
preprocessing is the build's, read from the same file's metadata (input size, mean/std, crop ratio, class
order): bilinear resize (after a centre crop when the ratio is below 1), then (x/255 - mean) / std.

``--onnx-out`` also exports the reference model as someone else would hand it over for `build --onnx`: torch's
TorchScript exporter, opset 17, dynamic batch, batch-norm kept (TrainingMode.PRESERVE), their own tensor names
and no metadata. Run it in the reference venv of scripts/make_reference_fixtures.py (plus ``pip install onnx``
for ``--onnx-out``), from the project's root:

    /tmp/refvenv/bin/python scripts/reference_top1.py runs/cifar-resnext50_32x4d/model.safetensors \
        --images ../shared/datasets/cifar10/test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_reference_fixtures import REFERENCES, build_reference  # beside this script

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("resnet_deploy", "{}"))
        return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118  (safe_open is not a dict)


def prepare(path: Path, prep: dict) -> np.ndarray:
    """One image as the build makes it (calibration/preprocess.py: to_uint8, then normalize)."""
    h, w = prep["input_size"]
    img = Image.open(path).convert("RGB")
    if img.size != (w, h):
        ratio = float(prep.get("crop_ratio", 1.0))
        if ratio < 1.0:
            scale = max(h, w) / ratio / min(img.size)
            img = img.resize((max(w, round(img.size[0] * scale)), max(h, round(img.size[1] * scale))),
                             Image.Resampling.BILINEAR)
            left, top = (img.size[0] - w) // 2, (img.size[1] - h) // 2
            img = img.crop((left, top, left + w, top + h))
        else:
            img = img.resize((w, h), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / 255.0
    x = (x - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def export(model: torch.nn.Module, path: Path, prep: dict) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 3, *prep["input_size"]),), str(path), opset_version=17,
                          input_names=["image"], output_names=["scores"], dynamo=False,
                          dynamic_axes={"image": {0: "n"}, "scores": {0: "n"}},
                          training=torch.onnx.TrainingMode.PRESERVE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="model.safetensors written by `resnet-deploy train`")
    parser.add_argument("--images", type=Path, required=True, help="an ImageFolder (class folders of images)")
    parser.add_argument("--arch", default=None, help="default: the weights' metadata")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--onnx-out", type=Path, default=None, help="also export the reference model to this ONNX")
    args = parser.parse_args(argv)
    state, meta = read_weights(args.weights)
    arch = args.arch or meta["arch"]
    prep = meta["preprocessing"]
    classes = list(prep["class_names"])
    model = build_reference(arch, len(classes)).eval()
    missing = sorted(set(model.state_dict()) ^ set(state))
    if missing:
        raise SystemExit(f"{args.weights}: keys differ from {REFERENCES[arch]}'s {arch}: {missing[:8]}")
    model.load_state_dict(state, strict=True)
    if args.onnx_out is not None:
        export(model, args.onnx_out, prep)
    files = [(p, classes.index(c.name)) for c in sorted(args.images.iterdir()) if c.is_dir()
             for p in sorted(c.iterdir()) if p.suffix.lower() in SUFFIXES]
    correct, per_class = 0, np.zeros((len(classes), 2), dtype=np.int64)
    with torch.inference_mode():
        for i in range(0, len(files), args.batch):
            chunk = files[i:i + args.batch]
            x = torch.from_numpy(np.stack([prepare(p, prep) for p, _ in chunk]))
            pred = model(x).argmax(1).numpy()
            labels = np.array([y for _, y in chunk])
            correct += int((pred == labels).sum())
            np.add.at(per_class, (labels, 0), pred == labels)
            np.add.at(per_class, (labels, 1), 1)
    library = REFERENCES[arch]
    version = __import__(library).__version__
    print(json.dumps({"arch": arch, "reference": f"{library} {version}", "torch": torch.__version__,
                      "weights": str(args.weights), "keys": len(state), "images": len(files),
                      "top1": round(correct / max(1, len(files)), 6),
                      "per_class_top1": [round(int(c) / max(1, int(n)), 4) for c, n in per_class],
                      "preprocessing": {k: prep[k] for k in ("input_size", "mean", "std", "crop_ratio")},
                      "parameters": sum(p.numel() for p in model.parameters())}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
