"""The example plug-in package, installed by pip and used through the real command line.

examples/resnet-deploy-onnx-reference is installed into a temporary folder; the CLI runs in a
subprocess with that folder on PYTHONPATH, so ``importlib.metadata`` finds its entry point exactly as
it would in site-packages: nothing is patched in, and resnet-deploy's own code is not touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_TORCH
from PIL import Image

from resnet_deploy.calibration.sources import open_source

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "resnet-deploy-onnx-reference"
NAME = "onnx-reference"  # the example's target and runtime


def cli(*args: str | Path, site: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m resnet_deploy ARGS``; the plug-in is visible only when ``site`` is given."""
    return run([sys.executable, "-m", "resnet_deploy", *map(str, args)], site=site, cwd=cwd)


def run(command: list[str], *, site: Path | None, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(command, check=False, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example installed by pip (no network, no build isolation: setuptools comes from this venv)."""
    pytest.importorskip("setuptools", reason="pip --no-build-isolation builds the example with this venv's setuptools")
    work = tmp_path_factory.mktemp("plugin")
    # pip builds in the source folder (build/, *.egg-info): build a copy, keep the checkout clean.
    source = shutil.copytree(EXAMPLE, work / "source", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                       "__pycache__"))
    target = work / "site"
    ok(run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
            "--disable-pip-version-check", "--target", str(target), str(source)], site=None, cwd=work))
    return target


@pytest.fixture(scope="module")
def built(site, fashion_mnist, shared_bundle, tmp_path_factory) -> Path:
    """``build --target onnx-reference`` on real images, from the embedded default model as the shared bundle
    exported it (``--onnx``: the build imports no PyTorch, nor does this plug-in)."""
    work = tmp_path_factory.mktemp("built")
    # 60 images cannot verify a 1-point gate (exit 5, UNVERIFIED); this test is about the plug-in, not the verdict.
    # Its pure-Python evaluator takes ~45 ms a call: time 5 calls per row, not the default 50.
    done = run([sys.executable, "-c", NO_TORCH, "build", "--target", NAME, "--onnx",
                str(shared_bundle / "model_fp32.onnx"), "--eval-samples", "60", "--calib-samples", "16",
                "--latency-seconds", "0", "--latency-iterations", "5", "--max-drop", "100", "--min-agreement", "0",
                "--out", "bundle", "-q"], site=site, cwd=work)
    ok(done)
    # The whole chain from an ONNX file, in its own process, never imported PyTorch (the README's claim).
    assert "torch imported: False" in done.stderr, done.stderr
    return work / "bundle"


@pytest.fixture(scope="module")
def image(fashion_mnist, tmp_path_factory) -> tuple[Path, str]:
    """A Fashion-MNIST test image as a PNG file, and its class name."""
    source = open_source("fashion-mnist", "test", flag="--eval-data")
    path = tmp_path_factory.mktemp("image") / "first.png"
    Image.fromarray(np.asarray(source.read(0), dtype=np.uint8)).save(path)
    return path, source.class_names[int(source.labels[0])]


def test_targets_lists_the_installed_plugin(site, tmp_path):
    lines = ok(cli("targets", site=site, cwd=tmp_path)).splitlines()
    line = next((entry for entry in lines if entry.split()[:1] == [NAME]), None)
    assert line is not None, lines
    assert "builds here" in line and f"runtime present: {NAME}" in line, line


def test_build_writes_both_rows_under_the_targets_folder(built):
    report = json.loads((built / "report.json").read_text())
    rows = {(r["target"], r["precision"]): r for r in report["results"]}
    assert set(rows) == {(NAME, "fp32"), (NAME, "int8")}
    for row in rows.values():
        assert row["runtime"] == NAME and row["artifact"].startswith(f"{NAME}/"), row
        assert "ReferenceEvaluator" in row["runner"] and row["iterations"] == 5, row  # --latency-iterations 5
        assert row["agreement"] >= 0.97, row  # FP32 is the ONNX graph given; INT8 keeps its answers
    assert report["gate"]["passed"], report["gate"]


def test_infer_runs_on_the_plugins_runtime(built, site, image, tmp_path):
    path, label = image
    out = json.loads(ok(cli("infer", built, path, "--runtime", NAME, "--json", site=site, cwd=tmp_path)))
    assert out["artifact"].startswith(f"{NAME}/") and "ReferenceEvaluator" in out["runner"], out
    top = out["results"][0]["top"]
    assert top[0]["class"] == label and 0 < top[0]["probability"] <= 1, top


def test_bench_runs_on_the_plugins_runtime(built, site, tmp_path):
    out = json.loads(ok(cli("bench", built, "--runtime", NAME, "--iterations", "5", "--seconds", "0",
                            "--out", tmp_path / "device_report.json", "--json", site=site, cwd=tmp_path)))
    assert out["artifact"]["runtime"] == NAME and out["latency"][0]["iterations"] >= 5, out
    accuracy = out["accuracy"]  # the same model on the same images as in the build: the same answers
    assert accuracy["top1"] == accuracy["build_top1_same_images"], accuracy


def test_plugin_is_invisible_without_the_package(built, site, image, tmp_path):
    """The tests above are not vacuous: without PYTHONPATH the plug-in and its runtime are unknown."""
    assert NAME not in ok(cli("targets", site=None, cwd=tmp_path)).split()
    refused = cli("infer", built, image[0], site=None, cwd=tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    flat = " ".join(refused.stderr.split())  # rich wraps long lines
    assert NAME in flat and "plug-in" in flat, flat


@pytest.mark.slow  # the ONNX reference evaluator is pure Python: the contract takes seconds per call
def test_the_installed_plugin_passes_the_target_contract(site, fashion_mnist):
    """tests/targets/test_contract.py collects every installed target: with the package installed, this one."""
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/targets/test_contract.py",
                  "-k", NAME], site=site, cwd=ROOT)
    summary = ok(result).strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 8 and "skipped" not in summary, summary
