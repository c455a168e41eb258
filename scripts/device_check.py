#!/usr/bin/env python3
"""Device check: build (or reuse) a bundle's TensorRT engine here, check its accuracy, benchmark it.

    python scripts/device_check.py BUNDLE [--dla-core N] [--force] [--batch 1,8] [--max-drop 2.0]

One short run on a machine with TensorRT and an NVIDIA GPU (a Jetson, or a desktop GPU): the engine's
top-1 on the bundle's evaluation sample is compared with the simulated INT8 row the build measured on
the same images, then latency is measured with the project's shared harness. Exit status: 0 passed,
1 accuracy check failed, 2 (or the error's own code) when it cannot run here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--dla-core", type=int, default=None, help="DLA core (default: the bundle's choice)")
    p.add_argument("--force", action="store_true", help="rebuild even when a valid cached engine exists")
    p.add_argument("--batch", default=None, help="batch sizes to time, e.g. 1,8 (default: 1 and the max batch)")
    p.add_argument("--max-drop", type=float, default=2.0,
                   help="most top-1 points the engine may lose against the simulated INT8 row (default 2)")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum timed seconds per batch size")
    p.add_argument("--out", type=Path, default=None, help="report path (default: BUNDLE/device_check.json)")
    return p.parse_args(argv)


def check(args: argparse.Namespace) -> tuple[dict, bool]:
    from resnet_deploy.errors import DependencyError
    from resnet_deploy.pipeline import device
    from resnet_deploy.pipeline.latency import LatencySettings
    from resnet_deploy.targets.tensorrt import engine as _trt_engine
    from resnet_deploy.targets.tensorrt.config import TrtBuildConfig

    _trt_engine.import_tensorrt()  # a clear DependencyError before anything else
    gpu = _trt_engine.gpu_info()
    if gpu is None:
        raise DependencyError("No NVIDIA GPU is visible (or cuda-python is missing): run the device check on the "
                              "Jetson or GPU machine, with `pip install cuda-python` if needed.")
    folder = _trt_engine.find_target_folder(args.bundle)
    cfg = TrtBuildConfig.read(folder)
    built = device.device_build(args.bundle, {"dla_core": args.dla_core}, force=args.force)
    b = device.open_bundle(args.bundle)
    artifact = next(a for a in b.artifacts if a.runtime == "tensorrt" and a.target == cfg.target)
    engine = artifact.path if Path(artifact.path).is_absolute() else args.bundle / artifact.path
    runner = device.load_runner(b, artifact)
    batches = tuple(int(v) for v in args.batch.split(",")) if args.batch else tuple(sorted({1, cfg.max_batch}))
    latency = LatencySettings(warmup=5, min_iterations=20, max_iterations=2000, min_seconds=args.seconds)
    result = device.bench(b, runner, artifact, batches=batches, latency=latency)

    simulated = next((r for r in b.report.results if r.target == cfg.target and r.simulated), None)
    top1 = result["accuracy"]["top1"]
    reference = simulated.sample_top1 if simulated else None
    drop = None if reference is None else round((reference - top1) * 100, 3)
    passed = drop is None or drop <= args.max_drop
    result.update({"gpu": {"name": gpu.name, "compute_capability": list(gpu.compute_capability)},
                   "engine": str(engine), "engine_key": artifact.details.get("engine_key"), "device_build": built,
                   "check": {"simulated_int8_top1": reference, "engine_top1": top1, "drop_points": drop,
                             "max_drop": args.max_drop, "passed": passed}})
    return result, passed


def main(argv: list[str] | None = None) -> int:
    from resnet_deploy.errors import ResnetDeployError

    args = _args(argv)
    try:
        result, passed = check(args)
    except ResnetDeployError as err:
        print(f"device-check: {err}", file=sys.stderr)
        return max(2, err.exit_code)
    out = args.out or args.bundle / "device_check.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"engine: {result['engine']} on {result['gpu']['name']} ({result['runner']})")
    for row in result["latency"]:
        lat = row["latency_ms"]
        print(f"batch {row['batch']:4d}: p50 {lat['p50']:.3f} ms  p99 {lat['p99']:.3f} ms  "
              f"{row['throughput_ips']:.0f} img/s")
    c = result["check"]
    ref = "n/a" if c["simulated_int8_top1"] is None else f"{c['simulated_int8_top1'] * 100:.2f}%"
    print(f"top-1 on {result['accuracy']['images']} bundled images: engine {c['engine_top1'] * 100:.2f}%, "
          f"simulated INT8 at build {ref} -> {'passed' if passed else 'FAILED'} (report: {out})")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
