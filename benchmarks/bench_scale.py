"""ImageNet-scale validation on this machine: peak memory, images/s per stage, throughput vs benchmark_app.

1. Generates (once, cached under ``build/bench-scale/``) a synthetic ImageNet-sized set from the shared
   CIFAR-10 JPEGs: each image upscaled to a shorter side of ``--side`` pixels (a longer side up to
   ``--max-side``), re-encoded as JPEG, in class folders under ``test/`` and ``train/``.
2. Runs the build of issue 12 on it as a child process (``build --arch resnet18 --num-classes 10
   --input-size 224 --target openvino --target onnxruntime --max-drop 100``, exactly; on a random model the
   build skips ``--fallback auto`` by itself and says so) and samples the
   memory of its whole process tree (RSS every 0.1 s; its members and PSS every second); prints the peaks, every stage's
   seconds and images/s (from the bundle's ``report.json``).
3. Times the bundle's OpenVINO INT8 IR with ``resnet-deploy bench --hint throughput`` and with OpenVINO's own
   ``benchmark_app -hint throughput -infer_precision f32`` in the same run, interleaved round by round.

    python benchmarks/bench_scale.py                         # 20,000 test / 500 train images at 256 px
    python benchmarks/bench_scale.py --test 5000             # the same build on 5,000
    python benchmarks/bench_scale.py --test 400 --train 300 --bench-seconds 5   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ROOT.parent / "shared" / "datasets" / "cifar10"
VENV_BIN = Path(sys.executable).parent
CACHE = ROOT / "build" / "bench-scale"
BUILD_ARGS = ["--arch", "resnet18", "--num-classes", "10", "--input-size", "224", "--target", "openvino",
              "--target", "onnxruntime", "--max-drop", "100"]


# --- 1. the synthetic set ------------------------------------------------------------------------------

def generate(out: Path, *, test: int, train: int, side: int, max_side: int, seed: int = 0) -> Path:
    """``out/test/<class>/*.jpg`` and ``out/train/<class>/*.jpg`` from CIFAR-10's splits, reused cyclically
    (each reuse gets its own aspect ratio and flip, so no two files are the same). Cached: a folder whose
    ``done.json`` records the same request is returned as it is."""
    request = {"test": test, "train": train, "side": side, "max_side": max_side, "seed": seed}
    marker = out / "done.json"
    if marker.is_file() and json.loads(marker.read_text()) == request:
        return out
    if not (CIFAR10 / "test").is_dir():
        raise SystemExit(f"{CIFAR10} is absent: the synthetic set is made from the shared CIFAR-10 JPEGs.")
    shutil.rmtree(out, ignore_errors=True)
    for split, count in (("test", test), ("train", train)):
        # classes interleaved, so a small set holds every class
        sources = sorted((CIFAR10 / split).glob("*/*.jpg"), key=lambda p: (p.name, p.parent.name))
        rng = np.random.default_rng(seed + (split == "train"))
        longs = rng.integers(side, max_side + 1, size=count)
        portrait = rng.random(count) < 0.25
        jobs = [(sources[i % len(sources)], out / split / sources[i % len(sources)].parent.name / f"{i:06d}.jpg",
                 int(longs[i]), bool(portrait[i]), (i // len(sources)) % 2 == 1) for i in range(count)]
        for folder in {j[1].parent for j in jobs}:
            folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(lambda job: _write(*job, side=side), jobs))
        print(f"generated {count} {split} JPEGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    marker.write_text(json.dumps(request))
    return out


def _write(src: Path, dst: Path, long_side: int, portrait: bool, flip: bool, *, side: int) -> None:
    with Image.open(src) as img:
        size = (side, long_side) if portrait else (long_side, side)
        big = img.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        if flip:
            big = big.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        big.save(dst, quality=90)


# --- 2. the build, its memory and its stages -------------------------------------------------------------

def _tree(root: int) -> list[int]:
    import psutil

    try:
        proc = psutil.Process(root)
        return [root, *(c.pid for c in proc.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:  # the process ended
        return ""


def tree_rss(pids: list[int]) -> tuple[int, int]:
    """(the sum, the largest) of the resident bytes of ``pids``: cheap (/proc/PID/statm)."""
    page = os.sysconf("SC_PAGE_SIZE")
    rss = [int(text.split()[1]) * page for text in (_read(f"/proc/{pid}/statm") for pid in pids) if text]
    return sum(rss), max(rss, default=0)


def tree_pss(pids: list[int]) -> int:
    """The summed PSS of ``pids``: a page shared by processes (a library's fork + exec of the build) counts
    once, split among them. The kernel walks every page for it, so it is sampled less often."""
    total = 0
    for pid in pids:
        found = re.search(r"^Pss:\s+(\d+) kB", _read(f"/proc/{pid}/smaps_rollup"), re.M)
        total += int(found.group(1)) * 1024 if found else 0
    return total


def run_sampled(cmd: list[str], *, every: float = 0.1, slow_every: float = 1.0) -> tuple[int, dict[str, float], float]:
    """Run ``cmd``; (exit code, peaks in MB of its process tree's memory, wall seconds). RSS every ``every``
    seconds; the tree's members and their PSS every ``slow_every`` (both cost a scan of /proc)."""
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd)
    peaks = {"tree_pss_mb": 0, "largest_process_rss_mb": 0, "tree_rss_sum_mb": 0}
    stop = threading.Event()

    def sample() -> None:
        pids, last = [child.pid], 0.0
        while not stop.is_set():
            if time.perf_counter() - last >= slow_every:
                pids, last = _tree(child.pid) or [child.pid], time.perf_counter()
                peaks["tree_pss_mb"] = max(peaks["tree_pss_mb"], tree_pss(pids))
            summed, largest = tree_rss(pids)
            peaks["tree_rss_sum_mb"] = max(peaks["tree_rss_sum_mb"], summed)
            peaks["largest_process_rss_mb"] = max(peaks["largest_process_rss_mb"], largest)
            stop.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = child.wait()
    stop.set()
    sampler.join()
    return code, {k: round(v / 2**20, 1) for k, v in peaks.items()}, time.perf_counter() - t0


def stage_table(report: dict) -> list[dict]:
    """Seconds and images/s per stage: what each stage pushed through (evaluation images once per pass)."""
    evals = report["data"]["evaluation"]["count"]
    calib = report["data"]["calibration"]["count"]
    artifacts = len(report["results"])
    images = {"data": calib, "reference": evals, "validate": evals}
    rows = []
    for st in report["stages"]:
        n = images.get(st["name"], calib if st["name"].startswith("compile:") else 0)
        rows.append({"stage": st["name"], "seconds": st["seconds"], "images": n,
                     "images_per_s": round(n / st["seconds"], 1) if n and st["seconds"] else None,
                     "note": f"{evals} images through {artifacts} artifacts, then timing runs" if
                     st["name"] == "validate" else "calibration images" if st["name"].startswith("compile:") else ""})
    return rows


def projected_seconds(report: dict, images: int) -> float:
    """The build's wall time for ``images`` evaluation images: the passes over them scale, the rest does not."""
    evals = report["data"]["evaluation"]["count"]
    scaled = sum(st["seconds"] for st in report["stages"] if st["name"] in ("reference", "validate"))
    return report["wall_seconds"] - scaled + scaled * images / evals


# --- 3. throughput: resnet-deploy bench vs benchmark_app on the same IR ----------------------------------

def ours(bundle: Path, seconds: float) -> float:
    out = subprocess.run([str(VENV_BIN / "resnet-deploy"), "-q", "bench", str(bundle), "--runtime", "openvino",
                          "--precision", "int8", "--hint", "throughput", "--seconds", str(seconds), "--json",
                          "--out", str(bundle.parent / "bench_throughput.json")],
                         capture_output=True, text=True, check=True).stdout
    return float(json.loads(out)["throughput"]["throughput_ips"])


def benchmark_app(xml: Path, seconds: float, shape: str) -> float:
    tool = VENV_BIN / "benchmark_app"
    cmd = [str(tool)] if tool.exists() else [sys.executable, "-m", "openvino.tools.benchmark.main"]
    out = subprocess.run([*cmd, "-m", str(xml), "-d", "CPU", "-hint", "throughput", "-infer_precision", "f32",
                          "-t", str(int(seconds)), "-shape", shape], capture_output=True, text=True, check=True).stdout
    found = re.search(r"Throughput:\s+([\d.]+) FPS", out)
    if not found:
        raise SystemExit(f"benchmark_app printed no throughput:\n{out[-2000:]}")
    return float(found.group(1))


def compare_throughput(bundle: Path, *, seconds: float, rounds: int) -> dict:
    """Interleaved rounds (the order flips each round, so machine drift hits both alike); medians."""
    size = json.loads((bundle / "preprocessing.json").read_text())["input_size"]
    shape = f"[1,3,{size[0]},{size[1]}]"
    xml = bundle / "openvino" / "model_int8.xml"
    runs: dict[str, list[float]] = {"resnet-deploy bench": [], "benchmark_app": []}
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            runs[name].append(ours(bundle, seconds) if name == "resnet-deploy bench" else
                              benchmark_app(xml, seconds, shape))
        print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()), file=sys.stderr)
    medians = {k: float(np.median(v)) for k, v in runs.items()}
    ratios = [a / b for a, b in zip(runs["resnet-deploy bench"], runs["benchmark_app"])]
    return {"ir": str(xml), "seconds": seconds, "rounds": runs, "median_fps": medians,
            "median_ratio": float(np.median(ratios))}


# --- decode pool: threads or processes ------------------------------------------------------------------

def _decode_files(files: list[Path], size: int) -> int:
    from resnet_deploy.calibration.images import open_image
    from resnet_deploy.calibration.preprocess import imagenet_preset

    prep = imagenet_preset(size)
    for f in files:
        with open_image(f, min_side=prep.resize_side) as img:
            prep.to_uint8(img)
    return len(files)


def compare_pools(data: Path, *, images: int, size: int, rounds: int = 3) -> dict:
    """Images/s decoding ``images`` JPEGs serially, on a thread pool and on a process pool (one worker per
    core, chunks of 32), interleaved; what ``calibration/sampling.py``'s choice of threads rests on."""
    from concurrent.futures import ProcessPoolExecutor

    from resnet_deploy.host import usable_cores

    files = sorted((data / "test").glob("*/*.jpg"))[:images]
    chunks = [files[i : i + 32] for i in range(0, len(files), 32)]
    workers = usable_cores()
    results: dict[str, list[float]] = {"serial": [], "threads": [], "processes": []}
    with ThreadPoolExecutor(workers) as threads, ProcessPoolExecutor(workers) as procs:
        list(procs.map(_decode_files, chunks[:workers], [size] * workers))  # start the workers first
        for _ in range(rounds):
            for name in results:
                t0 = time.perf_counter()
                if name == "serial":
                    _decode_files(files, size)
                else:
                    pool = threads if name == "threads" else procs
                    list(pool.map(_decode_files, chunks, [size] * len(chunks)))
                results[name].append(len(files) / (time.perf_counter() - t0))
    return {"images": len(files), "workers": workers, "median_images_per_s": {k: round(float(np.median(v)), 1)
                                                                              for k, v in results.items()}}


# --- the run ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--test", type=int, default=20_000, help="evaluation JPEGs (default 20000)")
    ap.add_argument("--train", type=int, default=500, help="calibration-split JPEGs (default 500)")
    ap.add_argument("--side", type=int, default=256, help="shorter side of every JPEG (default 256)")
    ap.add_argument("--max-side", type=int, default=384, help="longest longer side (default 384; the issue: <= 500)")
    ap.add_argument("--cache", type=Path, default=CACHE, help=f"where sets and bundles go (default {CACHE})")
    ap.add_argument("--bench-seconds", type=float, default=15.0, help="seconds per throughput run (default 15)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds (default 3)")
    ap.add_argument("--skip-build", action="store_true", help="reuse the bundle of an earlier run")
    ap.add_argument("--skip-bench", action="store_true", help="no throughput comparison")
    ap.add_argument("--compare-pools", type=int, default=0, metavar="N",
                    help="also time decoding N JPEGs on threads vs processes")
    args = ap.parse_args(argv)

    data = generate(args.cache / f"data-{args.side}-{args.max_side}-{args.test}-{args.train}", test=args.test,
                    train=args.train, side=args.side, max_side=args.max_side)
    bundle = args.cache / f"bundle-{args.test}"
    result: dict = {"data": str(data), "test": args.test, "train": args.train, "side": args.side,
                    "max_side": args.max_side, "cores": os.cpu_count(), "load_before": os.getloadavg()}
    if args.compare_pools:
        result["decode_pools"] = compare_pools(data, images=args.compare_pools, size=224)
        print(f"decode pools: {result['decode_pools']}")
    if not args.skip_build:
        cmd = [str(VENV_BIN / "resnet-deploy"), "-q", "build", *BUILD_ARGS, "--eval-data", str(data),
               "--out", str(bundle), "--force"]
        print("$ " + " ".join(cmd), file=sys.stderr)
        code, peaks, wall = run_sampled(cmd)
        if code not in (0, 4, 5):  # 4, 5: the gate's verdict on a random model; any verdict will do here
            raise SystemExit(f"the build failed (exit {code})")
        result.update(build_exit=code, peak_memory=peaks, build_wall_s=round(wall, 1))
    report = json.loads((bundle / "report.json").read_text())
    result["stages"] = stage_table(report)
    result["projected_50000_s"] = round(projected_seconds(report, 50_000), 0)
    if not args.skip_bench:
        result["throughput"] = compare_throughput(bundle, seconds=args.bench_seconds, rounds=args.rounds)
    result["load_after"] = os.getloadavg()
    (args.cache / f"results-{args.test}.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{args.test} test / {args.train} train JPEGs at {args.side}-{args.max_side} px: {data}")
    if "peak_memory" in result:
        m = result["peak_memory"]
        print(f"peak memory of the build's process tree: {m['tree_pss_mb']:.0f} MB (sum of PSS), largest process "
              f"{m['largest_process_rss_mb']:.0f} MB RSS (summed RSS, counting forked children's shared pages "
              f"again: {m['tree_rss_sum_mb']:.0f} MB); wall {result['build_wall_s']:.0f} s; "
              f"exit {result['build_exit']}")
    print(f"{'stage':22s} {'seconds':>9s} {'images':>8s} {'img/s':>8s}")
    for row in result["stages"]:
        rate = f"{row['images_per_s']:.1f}" if row["images_per_s"] else "-"
        print(f"{row['stage']:22s} {row['seconds']:9.1f} {row['images'] or '-':>8} {rate:>8s}  {row['note']}")
    print(f"projected build wall time for 50,000 evaluation images: {result['projected_50000_s'] / 60:.0f} min")
    if "throughput" in result:
        t = result["throughput"]
        print(f"OpenVINO INT8 IR, throughput hint: resnet-deploy bench {t['median_fps']['resnet-deploy bench']:.1f} "
              f"img/s, benchmark_app {t['median_fps']['benchmark_app']:.1f} FPS; median ratio {t['median_ratio']:.2f}")
    print(f"load average before/after: {result['load_before'][0]:.1f} / {result['load_after'][0]:.1f} "
          f"on {result['cores']} cores (a shared machine: compare only figures from one run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
