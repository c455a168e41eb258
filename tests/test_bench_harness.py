"""benchmarks/bench_cpu.py: the table's arithmetic (medians, per-round ratios) and a smoke run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from resnet_deploy.pipeline.latency import LatencyStats

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench(request):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import their shared helpers as a sibling module
    request.addfinalizer(lambda: sys.path.remove(str(BENCHMARKS)))
    spec = importlib.util.spec_from_file_location("bench_cpu", BENCHMARKS / "bench_cpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cpu"] = module  # dataclasses look their module up while the class is built
    request.addfinalizer(lambda: sys.modules.pop("bench_cpu", None))
    spec.loader.exec_module(module)
    return module


def _stats(ms: float, batch: int = 1) -> LatencyStats:
    return LatencyStats.from_times([ms / 1e3] * 9 + [2 * ms / 1e3], batch)


def test_medians_and_per_round_ratios(bench) -> None:
    # Round 2 ran while the machine was busy: everything twice as slow. Per-round ratios cancel it.
    stats = {
        bench.BASELINE: [_stats(40), _stats(80), _stats(44)],
        bench.NNCF_DEFAULT: [_stats(12), _stats(24), _stats(11)],
        "resnet-deploy openvino int8": [_stats(10), _stats(20), _stats(10)],
    }
    rows = {r["engine"]: r for r in bench.summarise("resnet50", 1, stats, {"resnet-deploy openvino int8": 0.99})}
    ours = rows["resnet-deploy openvino int8"]
    assert ours["p50_ms"] == pytest.approx(10)
    assert ours["x_ort_fp32"] == pytest.approx(10 / 40)  # median of 0.25, 0.25, 0.227
    assert ours["x_nncf_default"] == pytest.approx(10 / 12)  # median of 0.833, 0.833, 0.909
    assert ours["agreement"] == 0.99 and rows[bench.BASELINE]["agreement"] is None
    assert rows[bench.BASELINE]["x_ort_fp32"] == pytest.approx(1.0)
    assert ours["p99_ms"] > ours["p50_ms"] and ours["img_per_s"] > 0


def test_tables(bench) -> None:
    stats = {bench.BASELINE: [_stats(40)], "resnet-deploy openvino int8": [_stats(10)]}
    rows = bench.summarise("resnet18", 16, stats, {})
    md = bench.markdown(rows, {"cpu": "Test CPU", "cores": 2, "isa": "AVX2", "size": 224, "threads": 1,
                               "rounds": 1, "calibration": "cifar10/train", "command": "python bench_cpu.py"})
    assert "# CPU benchmark: Test CPU" in md
    table = [line for line in md.splitlines() if line.startswith("| resnet18")]
    assert len(table) == 2 and "| 0.250 |" in table[1] and table[1].endswith("| - | - |")
    text = bench.text_table(rows)
    assert "resnet-deploy openvino int8" in text and "0.250" in text


@pytest.mark.slow
@pytest.mark.openvino
def test_quick_run_writes_json_and_markdown(bench, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from resnet_deploy.calibration.sources import fashion_mnist_dir

    if not (bench.CIFAR10 / "train").is_dir() and fashion_mnist_dir() is None:
        pytest.skip("neither CIFAR-10 (../shared/datasets) nor Fashion-MNIST is present to calibrate on")
    out = tmp_path / "bench"
    assert bench.main(["--quick", "--models", "resnet18", "--size", "32", "--rounds", "1", "--threads", "1",
                       "--throughput-batch", "4", "--evals", "10", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    engines = {r["engine"] for r in data["rows"]}
    assert {"pytorch fp32", bench.BASELINE, bench.NNCF_DEFAULT, "resnet-deploy openvino int8",
            "resnet-deploy onnxruntime int8"} <= engines
    assert {r["batch"] for r in data["rows"]} == {1, 4}
    assert "| resnet18 | 1 | resnet-deploy openvino int8 |" in out.with_suffix(".md").read_text()
