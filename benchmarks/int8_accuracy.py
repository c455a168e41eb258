"""Which INT8 recipe keeps a real trained model's accuracy? Top-1 of each recipe on real test images.

Speed is measured on random-init ResNet-50 (int8_variants.py); accuracy needs trained weights, so
this script quantizes a real checkpoint with each ONNX Runtime and NNCF recipe and scores it on the
held-out split against the FP32 model.

    python benchmarks/int8_accuracy.py --checkpoint runs/fmnist-resnet20/last.pt --data fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import ort_session, ov_runner, quiet

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.pipeline import checkpoint as ckpt
from resnet_deploy.pipeline.evaluate import predict
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import fold_batchnorm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--calib", type=int, default=300)
    ap.add_argument("--evals", type=int, default=3000)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import nncf
    import openvino as ov
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    loaded = ckpt.load_model(args.checkpoint)
    prep = Preprocessing.from_dict(loaded.meta["preprocessing"]) if loaded.meta.get("preprocessing") else None
    train, test = open_source(args.data, "train", flag="--data"), open_source(args.data, "test", flag="--data")
    prep = prep or Preprocessing((32, 32), loaded.in_channels)
    calib = decode(train, choose(len(train), args.calib, seed=1), prep, flag="--data").inputs(prep)
    evals = decode(test, choose(len(test), args.evals, seed=0), prep, flag="--data")
    x, labels = evals.inputs(prep), evals.labels

    work = Path(tempfile.mkdtemp(prefix="int8_accuracy_"))
    folded, _ = fold_batchnorm(loaded.model)
    fp32 = work / "fp32.onnx"
    export_onnx(folded, fp32, sample=x[:8], metadata={})
    name = ort_session(fp32)
    ref = predict(name, x)

    from resnet_deploy.targets.onnxruntime import _Reader

    def Reader():
        return _Reader("input", calib)

    pre = work / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    runners = {"ort fp32": ort_session(fp32)}
    for method in ("MinMax", "Percentile", "Entropy"):
        out = work / f"ort_{method}.onnx"
        t0 = time.perf_counter()
        with quiet():
            quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=getattr(CalibrationMethod, method))
        print(f"  ort {method}: {time.perf_counter() - t0:.1f} s")
        runners[f"ort qdq u8s8 pc {method}"] = ort_session(out)

    items = [calib[i : i + 1] for i in range(len(calib))]
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    specs = {
        "nncf default": {},
        "nncf perf cpu": dict(preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU),
        "nncf mixed cpu": dict(preset=nncf.QuantizationPreset.MIXED, target_device=nncf.TargetDevice.CPU),
        "nncf perf cpu bc": dict(preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                                 fast_bias_correction=False),
    }
    for label, kw in specs.items():
        t0 = time.perf_counter()
        with quiet():
            q = nncf.quantize(ov.convert_model(str(fp32)), nncf.Dataset(items), subset_size=len(items), **kw)
        print(f"  {label}: {time.perf_counter() - t0:.1f} s")
        runners[f"{label} (bf16 rest)"] = ov_runner(q)
        runners[f"{label} (f32 rest)"] = ov_runner(q, f32)
    runners["ov fp32 (f32)"] = ov_runner(ov.convert_model(str(fp32)), f32)

    ref_top1 = float((ref == labels).mean())
    rows = []
    print(f"\n{loaded.arch} from {args.checkpoint} on {len(x)} images of {test.name}; "
          f"FP32 (ONNX Runtime) top-1 {ref_top1:.4f}")
    print(f"{'recipe':36s} {'top-1':>7s} {'drop pts':>9s} {'agree':>7s}")
    for label, run in runners.items():
        preds = predict(run, x)
        top1 = float((preds == labels).mean())
        agree = float((preds == ref).mean())
        rows.append({"recipe": label, "top1": top1, "drop_points": (ref_top1 - top1) * 100, "agreement": agree})
        print(f"{label:36s} {top1:7.4f} {(ref_top1 - top1) * 100:9.2f} {agree:7.4f}")
    if args.out:
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "images": len(x), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
