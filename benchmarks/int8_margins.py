"""Why does an INT8 row disagree with FP32: quantization noise, or a model with small margins?

Runs a bundle's FP32 ONNX and one of its INT8 ONNX graphs (the simulated TensorRT Q/DQ graph by default)
under ONNX Runtime on labelled test images, and prints agreement per decile of the FP32 top-2 margin
(logit of the first class minus the second's) beside the noise INT8 adds to that difference. A row whose
disagreements sit in the low-margin deciles while its noise is as small as a passing model's is limited by
the model, not by the quantizer.

    python benchmarks/int8_margins.py runs/bundle-seresnext50_32x4d --data ../shared/datasets/cifar10 -n 2000
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.targets import onnx_session


def logits(path: Path, images: np.ndarray, batch: int = 50) -> np.ndarray:
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + batch]})[0] for i in range(0, len(images), batch)])


def analyse(fp32: np.ndarray, int8: np.ndarray, labels: np.ndarray) -> dict:
    top = fp32.argmax(1)
    agree = int8.argmax(1) == top
    second = np.argsort(fp32, 1)[:, -2]
    rows = np.arange(len(fp32))
    margin = fp32[rows, top] - fp32[rows, second]
    # the noise that decides a flip: INT8's change to (first - second) of FP32's top two classes
    deciding = (int8[rows, top] - int8[rows, second]) - margin
    centred = (int8 - fp32) - (int8 - fp32).mean(1, keepdims=True)  # a shift of all logits changes no label
    edges = np.quantile(margin, np.linspace(0, 1, 11))
    deciles = []
    for i in range(10):
        upper = margin <= edges[i + 1] if i == 9 else margin < edges[i + 1]
        m = (margin >= edges[i]) & upper
        deciles.append({"margin_low": round(float(edges[i]), 4), "margin_high": round(float(edges[i + 1]), 4),
                        "images": int(m.sum()), "agreement": round(float(agree[m].mean()), 4)})
    per_image = np.sqrt((centred ** 2).mean(1))
    return {
        "images": len(fp32), "fp32_top1": round(float((top == labels).mean()), 4),
        "int8_top1": round(float((int8.argmax(1) == labels).mean()), 4), "agreement": round(float(agree.mean()), 4),
        "median_margin": round(float(np.median(margin)), 4),
        "deciding_noise_median_abs": round(float(np.median(np.abs(deciding))), 4),
        "per_image_noise_rms_p50_p99": [round(float(v), 4) for v in np.quantile(per_image, [0.5, 0.99])],
        "margin_over_noise_median": round(float(np.median(margin) / np.median(np.abs(deciding))), 2),
        "deciles": deciles,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", required=True, help="labelled images: a folder with test/, or an ImageFolder")
    parser.add_argument("--int8", default=None, help="INT8 ONNX in the bundle (default: tensorrt/model_qdq.onnx, "
                                                     "else onnxruntime/model_int8.onnx)")
    parser.add_argument("-n", type=int, default=2000, help="test images (a seeded draw)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    b = args.bundle
    int8 = b / args.int8 if args.int8 else next(
        (b / p for p in ("tensorrt/model_qdq.onnx", "onnxruntime/model_int8.onnx") if (b / p).is_file()), None)
    if int8 is None or not int8.is_file():
        raise SystemExit(f"{b}: no INT8 ONNX graph (give --int8 PATH inside the bundle)")
    prep = Preprocessing.from_dict(json.loads((b / "preprocessing.json").read_text()))
    source = open_source(args.data, "test", flag="--data")
    chosen = decode(source, choose(len(source), min(args.n, len(source)), seed=0), prep, flag="--data")
    images = chosen.inputs(prep)
    out = {"bundle": str(b), "int8": str(int8.relative_to(b)),
           **analyse(logits(b / "model_fp32.onnx", images), logits(int8, images), np.asarray(chosen.labels))}
    print(f"{b.name} ({out['int8']}), {out['images']} images: FP32 top-1 {out['fp32_top1']:.2%}, INT8 "
          f"{out['int8_top1']:.2%}, agreement {out['agreement']:.2%}")
    print(f"  median FP32 top-2 margin {out['median_margin']:.3f}; median |INT8 change of that difference| "
          f"{out['deciding_noise_median_abs']:.4f} (ratio {out['margin_over_noise_median']}); per-image logit "
          f"noise rms p50/p99 {out['per_image_noise_rms_p50_p99']}")
    for d in out["deciles"]:
        print(f"  margin {d['margin_low']:8.3f} to {d['margin_high']:8.3f}: agreement {d['agreement']:.2%} "
              f"({d['images']} images)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
