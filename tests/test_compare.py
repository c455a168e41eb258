"""Issue 13, `compare A B`: an identical rebuild compares clean, a build made worse on purpose fails it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from resnet_deploy.cli import main
from resnet_deploy.pipeline.compare import Tolerances, compare


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def badly_calibrated(tmp_path_factory, fashion_mnist, shared_bundle) -> Path:
    """The same model (the shared bundle's ONNX: no PyTorch stages) calibrated on 64 black images (one class
    folder each): INT8 ranges that fit nothing."""
    root = tmp_path_factory.mktemp("bad")
    for c in range(2):
        folder = root / "calib" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(32):
            Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / f"{i}.png")
    out = root / "b"
    result = run("build", "--onnx", shared_bundle / "model_fp32.onnx", "--target", "onnxruntime", "--eval-samples",
                 "500", "--calib-data", root / "calib",
                 "--calib-samples", "64", "--calib-method", "max", "--fallback", "off", "--latency-seconds", "0",
                 "--out", out, "-q")
    assert result.exit_code in (0, 4, 5), result.output  # the bundle is written whatever its own verdict
    return out


def test_an_identical_rebuild_compares_clean(shared_bundle, tmp_path):
    """A copy is the cheapest identical rebuild; tests/test_recipes.py compares a real one too."""
    import shutil

    copy = Path(shutil.copytree(shared_bundle, tmp_path / "copy"))
    page = tmp_path / "c.html"
    result = run("compare", shared_bundle, copy, "--html", page)
    assert result.exit_code == 0, result.output
    assert "settings: the same" in result.output and "B is not worse than A" in result.output
    assert "<table>" in page.read_text()
    c = compare(shared_bundle, copy)
    assert not c.worse and not c.missing and not c.settings
    for row in c.rows:
        assert row.paired_images == 500 and row.top1[0] == row.top1[1]


def test_a_badly_calibrated_build_fails_and_names_what_got_worse(shared_bundle, badly_calibrated):
    result = run("compare", shared_bundle, badly_calibrated, "--json")
    assert result.exit_code == 4, result.output
    payload = json.loads(result.output)
    assert payload["worse"] is True
    assert any("int8" in r and "top-1" in r for r in payload["regressions"]), payload["regressions"]
    assert "calib_data" in payload["settings"] and "targets" in payload["settings"]  # what differs, named
    assert payload["tolerances"] == Tolerances().to_json()
    assert {"openvino int8", "jetson int8 (sim)"} <= set(payload["missing_in_b"])  # B built fewer targets
    fp32 = [r for r in payload["rows"] if "fp32" in r["row"]]
    assert fp32 and all(not r["regressions"] for r in fp32)  # the FP32 rows did not change


def test_the_other_way_round_is_no_regression(shared_bundle, badly_calibrated):
    assert not [r for r in compare(badly_calibrated, shared_bundle).regressions if "top-1" in r]


def test_a_folder_that_is_not_a_bundle_is_a_user_error(shared_bundle, tmp_path):
    result = run("compare", shared_bundle, tmp_path)
    assert result.exit_code == 2 and str(tmp_path) in result.output and "Traceback" not in result.output
