"""The hard model: FP32 unchanged by its outlier channel, failing the gate without fallback and passing with it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.pipeline.checkpoint import load_model
from resnet_deploy.pipeline.settings import EMBEDDED_MODEL

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TARGETS = ("openvino", "onnxruntime", "tensorrt", "jetson")
CAP = 2  # --max-float-layers for the hard model: it needs one layer on every target
CPU_TARGETS = ("openvino", "onnxruntime")  # measured rows: INT8 must stay faster than FP32


@pytest.fixture(scope="module")
def images(fashion_mnist) -> np.ndarray:
    prep = Preprocessing.from_dict(load_model(EMBEDDED_MODEL).meta["preprocessing"])
    source = open_source("fashion-mnist", "test", flag="--eval-data")
    return decode(source, choose(len(source), 256, seed=0), prep, flag="--eval-data").inputs(prep)


def test_the_outlier_channel_leaves_fp32_unchanged(hard_checkpoint, images):
    original, hard = load_model(EMBEDDED_MODEL).model, load_model(hard_checkpoint).model
    seen = {}
    hook = hard.get_submodule("layer2.1.bn1").register_forward_hook(lambda m, i, o: seen.update(bn1=o))
    x = torch.from_numpy(images)
    with torch.inference_mode():
        a, b = original(x), hard(x)
    hook.remove()
    assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max())  # the export check's tolerance
    assert torch.equal(a.argmax(1), b.argmax(1))
    peak = seen["bn1"].clamp_min(0).amax(dim=(0, 2, 3))  # what the next convolution reads, per channel
    assert float(peak[0]) > 100 * float(peak[1:].max())  # one channel dwarfs the rest: per-tensor INT8 loses them


def _build(hard: Path, out: Path, *flags: str) -> tuple[int, dict]:
    from resnet_deploy.cli import main

    args = ["build", "--checkpoint", str(hard), *(a for t in TARGETS for a in ("--target", t)),
            "--eval-samples", "2000", "--out", str(out), "-q", *flags]
    result = CliRunner().invoke(main, args)
    return result.exit_code, json.loads((out / "report.json").read_text())


@pytest.mark.slow
def test_fails_without_fallback_and_passes_with_it_on_every_target(hard_checkpoint, fashion_mnist, tmp_path):
    code, report = _build(hard_checkpoint, tmp_path / "off", "--fallback", "off")
    int8 = [r for r in report["results"] if r["precision"] == "int8"]
    assert code == 4 and report["status"] == "failed"
    assert {r["target"] for r in int8} == set(TARGETS) and all(r["agreement"] < 0.98 for r in int8)

    code, report = _build(hard_checkpoint, tmp_path / "auto", "--fallback", "auto", "--max-float-layers", str(CAP))
    assert code == 0 and report["status"] == "passed", report["gate"]
    rows = {(r["target"], r["precision"]): r for r in report["results"]}
    for target in TARGETS:
        row = rows[(target, "int8")]
        kept = row["details"]["fallback"]["float_layers"]
        assert 1 <= len(kept) <= CAP and kept[0] == "/layer2/layer2.1/conv2/Conv"
        assert row["agreement"] >= 0.98
    for target in CPU_TARGETS:  # the fastest call of each: p50 moved with the load of a shared 2-core machine
        assert rows[(target, "int8")]["latency_ms"]["min"] < rows[(target, "fp32")]["latency_ms"]["min"]
    assert report["sensitivity"]["layers"][0]["layer"] == "/layer2/layer2.1/conv2/Conv"
    worst = report["sensitivity"]["spread"][0]  # why: one channel of conv2's input dwarfs the rest
    assert worst["tensor"].startswith("/layer2/layer2.1/") and worst["median_channel_range"] < 0.01
