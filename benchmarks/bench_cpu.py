"""CPU latency and throughput of this tool's INT8 outputs against the baselines a user would otherwise run.

In ONE process, round-robin (the order reversed every other round) so that machine drift and
co-tenants hit every engine alike, each timed by the project's shared harness
(``resnet_deploy.pipeline.latency.measure``):

- PyTorch eager FP32, ONNX Runtime FP32 (a default ``InferenceSession``), OpenVINO FP32;
- NNCF's default INT8, written as a user would by hand: ``nncf.quantize(ov.convert_model(onnx),
  nncf.Dataset(...))`` compiled with OpenVINO's defaults;
- this tool's INT8 outputs, built by the library: ``get_target("openvino" | "onnxruntime").compile``
  on the BN-folded, exported ONNX, loaded with ``Target.load``.

Weights are random-init (fine for speed) with BN statistics re-estimated and a class-centroid head
built from the calibration images, so logits have real class structure; calibration uses real images
(CIFAR-10 train, upsampled to the input size by the project's preprocessing; Fashion-MNIST when
CIFAR-10 is absent). Each cell is the median over rounds; ratios are medians of per-round ratios
(both engines timed minutes apart at most). "agree" is top-1 agreement with PyTorch FP32 on real
test images. ``--threads N`` gives every engine N threads; the default leaves each runtime its own
default, as a user would run it. On a host shared with other jobs, multi-threaded runtimes whose
threads spin or barrier-wait (PyTorch's OpenMP, ONNX Runtime's default session) can be many times
slower than one thread, so read those rows with the thread count in mind.

    python benchmarks/bench_cpu.py --out results/bench_cpu     # writes .json and .md
    python benchmarks/bench_cpu.py --quick --models resnet18   # a one-minute smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from _common import CIFAR10, export_model, ort_session, ov_runner, quiet, real_images, torch_runner

from resnet_deploy.host import cpu_name, isa_summary
from resnet_deploy.pipeline.evaluate import predict
from resnet_deploy.pipeline.latency import LatencySettings, LatencyStats, measure
from resnet_deploy.targets import CompileInput, get_target

BASELINE = "onnxruntime fp32"
AGREE_BATCH = 25  # agreement in batches: single-image calls would cost more than the timing itself
NNCF_DEFAULT = "nncf default int8"


@dataclass
class Case:
    """One (model, batch) cell of the table: engines and the per-round stats measured for each."""

    model: str
    batch: np.ndarray  # the input every engine is timed on: real images, float32 NCHW
    engines: dict[str, Callable[[np.ndarray], np.ndarray]]
    stats: dict[str, list[LatencyStats]] = field(default_factory=dict)


def build_engines(arch: str, size: int, work: Path, *, calib: int, evals: int, data: Path, threads: int | None
                  ) -> tuple[dict[str, Callable], dict[str, float], np.ndarray, str]:
    """Every engine for one model, and each one's top-1 agreement with PyTorch FP32 on real images."""
    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.ERROR)  # after nncf's import set it: "subset < 300" is expected
    t0 = time.perf_counter()
    lap = _Lap(arch)
    imgs = real_images(size, calib=calib, evals=evals, data=data)
    model, onnx_path = export_model(arch, size, work, imgs.calibration, bn_data=imgs.calibration[:64],
                                    probe=(imgs.calibration, imgs.calibration_labels))
    inp = CompileInput(onnx_path, imgs.calibration, imgs.prep, {})
    lap("images, BN statistics, centroid head, export")
    engines: dict[str, Callable] = {
        "pytorch fp32": torch_runner(model, threads=threads),
        BASELINE: ort_session(onnx_path, threads=threads),  # what `ort.InferenceSession(path)` gives a user
    }
    bundle = work / f"{arch}_bundle"
    for name in ("onnxruntime", "openvino"):
        target = get_target(name)
        with quiet():
            artifacts = target.compile(inp, bundle)
        for a in artifacts:
            label = f"resnet-deploy {name} {a.precision}"
            if name == "onnxruntime" and a.precision == "fp32":
                label = "onnxruntime fp32 (tool session)"  # same file as the baseline, the tool's session options
            engines[label] = target.load(a, bundle, threads=threads).run
        lap(f"resnet-deploy {name} compile")
    with quiet():
        user_q = nncf.quantize(ov.convert_model(str(onnx_path)),
                               nncf.Dataset([imgs.calibration[i : i + 1] for i in range(len(imgs.calibration))]))
    # core.compile_model(model, "CPU") with defaults (only the thread count when --threads asks for one)
    engines[NNCF_DEFAULT] = ov_runner(user_q, {"INFERENCE_NUM_THREADS": threads} if threads else {})
    lap("nncf default by hand")
    order = ["pytorch fp32", BASELINE, "onnxruntime fp32 (tool session)", "resnet-deploy openvino fp32",
             NNCF_DEFAULT, "resnet-deploy onnxruntime int8", "resnet-deploy openvino int8"]
    engines = {k: engines[k] for k in order if k in engines}

    agree: dict[str, float] = {}
    if len(imgs.evaluation):
        ref = predict(engines["pytorch fp32"], imgs.evaluation, batch=AGREE_BATCH)
        for name, run in engines.items():
            agree[name] = float((predict(run, imgs.evaluation, batch=AGREE_BATCH) == ref).mean())
        lap(f"agreement on {len(imgs.evaluation)} images")
    print(f"  {arch}: built {len(engines)} engines in {time.perf_counter() - t0:.0f} s "
          f"(calibration: {len(imgs.calibration)} images of {imgs.source})", file=sys.stderr)
    return engines, agree, imgs.calibration, imgs.source


class _Lap:
    """Prints how long each build step took (stderr), so a slow benchmark says where its time went."""

    def __init__(self, arch: str) -> None:
        self.arch, self.t = arch, time.perf_counter()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        print(f"  {self.arch}: {what}: {now - self.t:.0f} s", file=sys.stderr)
        self.t = now


def run_rounds(cases: list[Case], rounds: int, settings: dict[int, LatencySettings]) -> None:
    """Every engine of every case once per round; odd rounds run everything in reverse order."""
    for r in range(rounds):
        t0 = time.perf_counter()
        for case in (cases if r % 2 == 0 else cases[::-1]):
            names = list(case.engines) if r % 2 == 0 else list(case.engines)[::-1]
            for name in names:
                stats = measure(case.engines[name], case.batch, settings[len(case.batch)])
                case.stats.setdefault(name, []).append(stats)
        print(f"  round {r + 1}/{rounds}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def summarise(model: str, batch: int, stats: dict[str, list[LatencyStats]], agree: dict[str, float]) -> list[dict]:
    """Table rows: medians over rounds of p50/p90/p99/img/s; ratios as medians of per-round p50 ratios."""
    rows = []
    rounds = min(len(v) for v in stats.values())
    for name, per_round in stats.items():
        row = {
            "model": model, "batch": batch, "engine": name, "rounds": len(per_round),
            "p50_ms": statistics.median(s.p50 for s in per_round),
            "p90_ms": statistics.median(s.p90 for s in per_round),
            "p99_ms": statistics.median(s.p99 for s in per_round),
            "img_per_s": statistics.median(s.throughput_ips for s in per_round),
            "agreement": agree.get(name),
        }
        for key, ref in (("x_ort_fp32", BASELINE), ("x_nncf_default", NNCF_DEFAULT)):
            if ref in stats:
                row[key] = statistics.median(stats[name][i].p50 / stats[ref][i].p50 for i in range(rounds))
        rows.append(row)
    return rows


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"# CPU benchmark: {meta['cpu']} ({meta['cores']} logical cores; {meta['isa']})",
        "",
        f"{meta['size']}x{meta['size']}, threads: {meta['threads']}, {meta['rounds']} interleaved rounds, "
        f"calibration on {meta['calibration']}; "
        f"cells are medians over rounds, ratios are medians of per-round p50 ratios (< 1 is faster).",
        f"Command: `{meta['command']}`",
        "",
        "| model | batch | engine | p50 ms | p90 ms | p99 ms | img/s | x ORT FP32 | x NNCF default | agree |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['engine']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['img_per_s']:.1f} | {_fmt(r.get('x_ort_fp32'), '.3f')} | "
            f"{_fmt(r.get('x_nncf_default'), '.3f')} | {_fmt(r.get('agreement'), '.3f')} |"
        )
    return "\n".join(lines) + "\n"


def text_table(rows: list[dict]) -> str:
    head = f"{'model':9s} {'b':>3s} {'engine':34s} {'p50 ms':>8s} {'p90 ms':>8s} {'p99 ms':>8s} {'img/s':>8s} " \
           f"{'xORTfp32':>8s} {'xNNCFdef':>8s} {'agree':>6s}"
    out = [head, "-" * len(head)]
    for r in rows:
        out.append(f"{r['model']:9s} {r['batch']:3d} {r['engine']:34s} {r['p50_ms']:8.2f} {r['p90_ms']:8.2f} "
                   f"{r['p99_ms']:8.2f} {r['img_per_s']:8.1f} {_fmt(r.get('x_ort_fp32'), '8.3f')} "
                   f"{_fmt(r.get('x_nncf_default'), '8.3f')} {_fmt(r.get('agreement'), '6.3f')}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,resnet50", help="comma-separated architectures")
    ap.add_argument("--size", type=int, default=224, help="input height and width")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; 2 with --quick)")
    ap.add_argument("--throughput-batch", type=int, default=16, help="batch of the throughput case; 0 skips it")
    ap.add_argument("--calib", type=int, default=128, help="calibration images (default 128; 32 with --quick)")
    ap.add_argument("--evals", type=int, default=100, help="real test images for agreement (default 100)")
    ap.add_argument("--data", type=Path, default=CIFAR10, help="ImageFolder root with train/ and test/")
    ap.add_argument("--threads", type=int, help="threads for every engine (default: each runtime's own default)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer rounds, images and iterations")
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md (the suffix, if any, is replaced)")
    ap.add_argument("--work", type=Path, help="keep models here (default: a temporary folder, removed)")
    args = ap.parse_args(argv)

    args.rounds = args.rounds or (2 if args.quick else 5)
    if args.quick:
        args.calib, args.evals = min(args.calib, 32), min(args.evals, 20)
    # Few minimum calls, so one pathological engine (PyTorch's OpenMP threads on a busy host: seconds per
    # call) cannot blow the ~10-minute budget; the fast engines are bounded by min_seconds instead.
    b1 = LatencySettings(warmup=3, min_iterations=5, max_iterations=1000, min_seconds=0.3 if args.quick else 0.6)
    bn = LatencySettings(warmup=1, min_iterations=3, max_iterations=100, min_seconds=0.3 if args.quick else 0.6)
    settings = {1: b1, args.throughput_batch: bn}

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_cpu_"))
    print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores; {isa_summary()})", file=sys.stderr)
    cases: list[Case] = []
    agreements: dict[str, dict[str, float]] = {}
    source = ""
    try:
        for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
            engines, agreements[arch], images, source = build_engines(
                arch, args.size, work / arch, calib=args.calib, evals=args.evals, data=args.data,
                threads=args.threads)
            cases.append(Case(arch, np.ascontiguousarray(images[:1]), engines))
            if args.throughput_batch > 1:
                tiled = np.resize(images, (args.throughput_batch, *images.shape[1:]))  # repeats if too few
                cases.append(Case(arch, np.ascontiguousarray(tiled), engines))
        run_rounds(cases, args.rounds, settings)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)

    rows = [row for c in cases for row in summarise(c.model, len(c.batch), c.stats, agreements[c.model])]
    meta = {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": isa_summary(), "size": args.size,
            "rounds": args.rounds, "calibration": source,
            "threads": args.threads or "runtime defaults",
            "command": " ".join(["python", "benchmarks/bench_cpu.py", *(argv if argv is not None else sys.argv[1:])]),
            "seconds": round(time.perf_counter() - started, 1), "versions": _versions()}
    print(f"\nCPU: {meta['cpu']} ({meta['cores']} logical cores; {meta['isa']}); {args.size}x{args.size}; "
          f"threads: {meta['threads']}; "
          f"medians of {args.rounds} interleaved rounds; "
          f"ratios: median per-round p50 ratio (< 1 is faster)")
    print(text_table(rows))
    print(f"\n{meta['seconds']:.0f} s in all", file=sys.stderr)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        stem = args.out.with_suffix("") if args.out.suffix in (".json", ".md") else args.out
        stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
        stem.with_suffix(".md").write_text(markdown(rows, meta))
        print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}", file=sys.stderr)
    return 0


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "onnxruntime", "openvino", "nncf", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


if __name__ == "__main__":
    sys.exit(main())
