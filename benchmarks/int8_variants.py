"""Which CPU INT8 settings are fastest and still correct? The measurement behind targets/*.py's choices.

Builds one model (random-init, BN statistics re-estimated on real images so logits vary), quantizes it
with each ONNX Runtime and OpenVINO/NNCF variant, checks top-1 agreement with FP32 on real images,
then times every variant round-robin in this one process (shared harness, batch 1) so machine drift
hits all alike. Prints the median of the per-round p50s and the ratio to ONNX Runtime FP32.

    python benchmarks/int8_variants.py --arch resnet50 --size 224 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _common import export_model, ort_session, ov_runner, quiet, real_images

from resnet_deploy.host import cpu_name
from resnet_deploy.pipeline.latency import LatencySettings, measure


def ort_variants(fp32: Path, work: Path, calib: np.ndarray) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from resnet_deploy.targets.onnxruntime import _Reader, _seven_bit_overrides, signed_input_layers

    def Reader():
        return _Reader("input", calib)

    pre = work / "ort_pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    cache = work / "ort_calib_cache.json"  # one calibration pass shared by every MinMax variant
    graph = onnx.load(str(pre), load_external_data=False).graph
    # the target's default without VNNI: 7-bit weights only on the layers that read a signed input
    signed_7bit = {"TensorQuantOverrides": _seven_bit_overrides(graph, signed_input_layers(graph))}
    U8, S8 = QuantType.QUInt8, QuantType.QInt8
    specs = {
        "ort qdq u8s8 pc": dict(quant_format=QuantFormat.QDQ, activation_type=U8, per_channel=True),
        "ort qdq s8s8 pc": dict(quant_format=QuantFormat.QDQ, activation_type=S8, per_channel=True),
        "ort qdq u8s8 pt": dict(quant_format=QuantFormat.QDQ, activation_type=U8, per_channel=False),
        "ort qdq u8s8 pc rr": dict(quant_format=QuantFormat.QDQ, activation_type=U8, per_channel=True,
                                   reduce_range=True),
        "ort qop u8s8 pc": dict(quant_format=QuantFormat.QOperator, activation_type=U8, per_channel=True),
        "ort qdq u8s8 pc rr-signed": dict(quant_format=QuantFormat.QDQ, activation_type=U8, per_channel=True,
                                          extra_options=signed_7bit),
        "ort qdq u8u8 pc": dict(quant_format=QuantFormat.QDQ, activation_type=U8, per_channel=True, weight_type=U8),
        # the cache key is the calibrator, not CalibMovingAverage: this one keeps its own cache
        "ort qdq u8s8 pc mean_max": dict(quant_format=QuantFormat.QDQ, activation_type=U8, per_channel=True,
                                         extra_options={"CalibMovingAverage": True},
                                         calibration_cache_path=str(work / "ort_calib_cache_mean_max.json")),
    }
    out = {}
    for name, kw in specs.items():
        path = work / (name.replace(" ", "_") + ".onnx")
        if not path.exists():
            t0 = time.perf_counter()
            with quiet():
                kw = {"weight_type": S8, "calibration_cache_path": str(cache), **kw}
                quantize_static(str(pre), str(path), Reader(), **kw)
            print(f"  quantized {name} in {time.perf_counter() - t0:.1f} s")
        out[name] = path
    return out


def nncf_variants(fp32: Path, work: Path, calib: np.ndarray) -> dict[str, Path]:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    items = [calib[i : i + 1] for i in range(len(calib))]
    specs = {
        # What a user writes by hand from NNCF's docs: every argument at its default.
        "nncf default": dict(),
        "nncf perf cpu": dict(preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU),
        "nncf mixed cpu": dict(preset=nncf.QuantizationPreset.MIXED, target_device=nncf.TargetDevice.CPU),
        "nncf perf cpu bc": dict(preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                                 fast_bias_correction=False),
        # the target's default since bias correction cost ResNet-20 agreement (results/int8_agreement_cifar.md)
        "nncf perf cpu nobc": dict(preset=nncf.QuantizationPreset.PERFORMANCE, target_device=nncf.TargetDevice.CPU,
                                   advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True)),
    }
    out = {}
    for name, kw in specs.items():
        path = work / (name.replace(" ", "_") + ".xml")
        if not path.exists():
            t0 = time.perf_counter()
            with quiet():
                q = nncf.quantize(ov.convert_model(str(fp32)), nncf.Dataset(items), subset_size=len(items), **kw)
            ov.save_model(q, str(path), compress_to_fp16=False)
            print(f"  quantized {name} in {time.perf_counter() - t0:.1f} s")
        out[name] = path
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=300)
    ap.add_argument("--evals", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.6, help="minimum timed seconds per variant per round")
    ap.add_argument("--work", type=Path, default=Path("/tmp/int8_variants"))
    ap.add_argument("--only", default="", help="comma-separated substrings: time only matching variants")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import openvino as ov

    imgs = real_images(args.size, calib=args.calib, evals=args.evals)
    work = args.work / f"{args.arch}_{args.size}"
    onnx_path = work / f"{args.arch}_{args.size}.onnx"
    if not onnx_path.exists():
        export_model(args.arch, args.size, work, imgs.calibration, bn_data=imgs.calibration[:256])
    ort_q = ort_variants(onnx_path, work, imgs.calibration)
    ov_q = nncf_variants(onnx_path, work, imgs.calibration)
    fp32_ir = ov.convert_model(str(onnx_path))

    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    lat = {"PERFORMANCE_HINT": "LATENCY"}
    variants = {
        "ort fp32": lambda: ort_session(onnx_path),
        "ort fp32 1thr": lambda: ort_session(onnx_path, threads=1),
        "ort fp32 nospin": lambda: ort_session(onnx_path, spin=False),
        "ov fp32 (f32)": lambda: ov_runner(fp32_ir, f32),
        "ov fp32 (defaults=bf16)": lambda: ov_runner(fp32_ir),
        **{name: (lambda p=p: ort_session(p)) for name, p in ort_q.items()},
        "ort qdq u8s8 pc 1thr": lambda: ort_session(ort_q["ort qdq u8s8 pc"], threads=1),
        "ort qdq u8s8 pc nospin": lambda: ort_session(ort_q["ort qdq u8s8 pc"], spin=False),
        "nncf default + defaults": lambda: ov_runner(ov_q["nncf default"]),
        "nncf default static1": lambda: ov_runner(ov_q["nncf default"], static_batch=1),
        "nncf perf cpu dyn": lambda: ov_runner(ov_q["nncf perf cpu"], lat),
        "nncf perf cpu static1": lambda: ov_runner(ov_q["nncf perf cpu"], lat, static_batch=1),
        "nncf perf cpu static1 f32": lambda: ov_runner(ov_q["nncf perf cpu"], {**lat, **f32}, static_batch=1),
        "nncf perf cpu static1 thr1": lambda: ov_runner(ov_q["nncf perf cpu"], {**lat, "INFERENCE_NUM_THREADS": 1},
                                                        static_batch=1),
        "nncf perf cpu static1 nopin": lambda: ov_runner(ov_q["nncf perf cpu"], {**lat, "ENABLE_CPU_PINNING": False},
                                                         static_batch=1),
        "nncf perf cpu static1 nopin f32": lambda: ov_runner(
            ov_q["nncf perf cpu"], {**lat, **f32, "ENABLE_CPU_PINNING": False}, static_batch=1),
        "nncf perf cpu static1 thr1 nopin": lambda: ov_runner(
            ov_q["nncf perf cpu"], {**lat, "INFERENCE_NUM_THREADS": 1, "ENABLE_CPU_PINNING": False}, static_batch=1),
        "nncf mixed cpu static1": lambda: ov_runner(ov_q["nncf mixed cpu"], lat, static_batch=1),
        "nncf perf cpu bc static1": lambda: ov_runner(ov_q["nncf perf cpu bc"], lat, static_batch=1),
        "nncf perf cpu nobc static1": lambda: ov_runner(ov_q["nncf perf cpu nobc"], lat, static_batch=1),
    }
    only = [s for s in args.only.split(",") if s]
    if only:
        variants = {k: v for k, v in variants.items() if k == "ort fp32" or any(s in k for s in only)}

    runners = {name: make() for name, make in variants.items()}

    # Agreement with FP32 on real images (batch-1 calls so static batch-1 runners work too).
    quality = {name: {"agreement": float("nan"), "cosine": float("nan")} for name in runners}
    ref_logits = np.concatenate([runners["ort fp32"](x[None]) for x in imgs.evaluation]) if args.evals else None
    if args.evals:
        ref = ref_logits.argmax(1)
        print(f"FP32 predictions on {len(ref)} real images use {len(np.unique(ref))} distinct classes")
    for name, run in runners.items() if args.evals else ():
        logits = np.concatenate([run(x[None]) for x in imgs.evaluation])
        cos = float(np.mean(np.sum(logits * ref_logits, 1) /
                            (np.linalg.norm(logits, axis=1) * np.linalg.norm(ref_logits, axis=1))))
        quality[name] = {"agreement": float((logits.argmax(1) == ref).mean()), "cosine": cos}

    one = np.ascontiguousarray(imgs.calibration[:1])
    settings = LatencySettings(warmup=3, min_iterations=15, max_iterations=500, min_seconds=args.seconds)
    p50s: dict[str, list[float]] = {n: [] for n in runners}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))  # no variant always runs first
        for name in order:
            p50s[name].append(measure(runners[name], one, settings).p50)
        print(f"  round {r + 1}/{args.rounds} done")

    base = float(np.median(p50s["ort fp32"]))
    rows = []
    print(f"\n{args.arch} {args.size}x{args.size} batch 1 on {cpu_name()}; median of {args.rounds} per-round p50s")
    print(f"{'variant':32s} {'p50 ms':>8s} {'min-p50':>8s} {'x ORT FP32':>10s} {'agree':>7s} {'cosine':>8s}")
    for name in runners:
        med = float(np.median(p50s[name]))
        rows.append({"variant": name, "p50_ms": med, "p50_rounds": p50s[name], "ratio_vs_ort_fp32": med / base,
                     **quality[name]})
        print(f"{name:32s} {med:8.2f} {min(p50s[name]):8.2f} {med / base:10.3f} "
              f"{quality[name]['agreement']:7.3f} {quality[name]['cosine']:8.4f}")
    if args.out:
        args.out.write_text(json.dumps({"arch": args.arch, "size": args.size, "cpu": cpu_name(), "rows": rows},
                                       indent=1))


if __name__ == "__main__":
    main()
