"""End to end on real images: the embedded default through both CPU targets, and the bundle it writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from resnet_deploy.cli import main
from resnet_deploy.pipeline.bundle import sha256_file, verify_bundle
from resnet_deploy.pipeline.export import read_metadata
from resnet_deploy.pipeline.settings import EMBEDDED_MODEL


@pytest.fixture(scope="module")
def cpu_bundle(shared_bundle) -> Path:
    """The session's shared build (tests/conftest.py SHARED_BUILD): 500 test images, 100 calibration images."""
    return shared_bundle


def test_embedded_model_ships_inside_the_package():
    assert EMBEDDED_MODEL.is_file()
    assert EMBEDDED_MODEL.stat().st_size < 5_000_000


def test_report_has_the_documented_fields(cpu_bundle):
    report = json.loads((cpu_bundle / "report.json").read_text())
    assert report["model"] == {**report["model"], "arch": "resnet20", "num_classes": 10, "input_shape": [1, 28, 28]}
    assert report["reference"]["framework"] == "pytorch" and report["reference"]["precision"] == "fp32"
    assert 0.85 < report["reference"]["top1"] <= 1.0
    rows = {(r["target"], r["precision"]): r for r in report["results"]}
    assert {("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
            ("jetson", "int8")} <= set(rows)
    for row in rows.values():
        assert 0 <= row["top1"] <= 1 and 0 <= row["agreement"] <= 1
        assert (cpu_bundle / row["artifact"]).is_file() and row["bytes"] > 0
        if not row["simulated"]:  # a CPU simulation is an accuracy row: its speed is not the device's
            lat = row["latency_ms"]
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
            assert row["throughput_ips"] > 0
    assert report["status"] == "passed"
    assert [s["name"] for s in report["stages"]][:4] == ["load", "data", "fold", "export"]


def test_int8_stays_within_a_point_of_fp32_on_real_images(cpu_bundle):
    report = json.loads((cpu_bundle / "report.json").read_text())
    ref = report["reference"]["top1"]
    for row in report["results"]:
        if row["precision"] == "fp32":
            assert row["top1"] == pytest.approx(ref, abs=0.002)  # same FP32 model in another runtime
            assert row["agreement"] >= 0.995
        else:
            assert ref - row["top1"] <= 0.01
            assert row["agreement"] >= 0.97


def test_int8_models_are_smaller_than_fp32(cpu_bundle):
    report = json.loads((cpu_bundle / "report.json").read_text())
    size = {(r["target"], r["precision"]): r["bytes"] for r in report["results"]}
    for target in ("openvino", "onnxruntime"):
        assert size[(target, "int8")] < size[(target, "fp32")]


def test_manifest_lists_every_file_with_its_hash(cpu_bundle):
    manifest = verify_bundle(cpu_bundle)
    files = {str(p.relative_to(cpu_bundle)) for p in cpu_bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    for rel, info in manifest["files"].items():
        assert info["sha256"] == sha256_file(cpu_bundle / rel)
    assert {"torch", "onnx", "onnxruntime", "openvino", "nncf", "python"} <= set(manifest["versions"])
    assert manifest["calibration"]["count"] == 100 and len(manifest["calibration"]["sha256"]) == 64
    assert manifest["seed"] == 0 and manifest["args"]["targets"] == ["openvino", "onnxruntime", "jetson"]


def test_onnx_carries_its_preprocessing(cpu_bundle):
    meta = read_metadata(cpu_bundle / "model_fp32.onnx")
    prep = json.loads(meta["resnet_deploy.preprocessing"])
    assert prep["input_size"] == [28, 28] and prep["channels"] == 1 and len(prep["class_names"]) == 10
    assert json.loads((cpu_bundle / "preprocessing.json").read_text()) == prep


def test_infer_prints_top5_for_any_image(cpu_bundle, tmp_path, fashion_mnist):
    from PIL import Image

    from resnet_deploy.calibration.sources import open_source

    src = open_source(None, "test", flag="x")
    boot = tmp_path / "boot.png"
    Image.fromarray(src.images[0]).resize((200, 120)).convert("RGBA").save(boot)  # other size, RGBA
    result = CliRunner().invoke(main, ["infer", str(cpu_bundle), str(boot), "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.output)["results"][0]["top"]
    assert len(top) == 5 and sum(t["probability"] for t in top) <= 1.0 + 1e-6
    assert top[0]["index"] == int(src.labels[0])  # an ankle boot, seen through a resize


def test_bench_reproduces_the_build_accuracy_on_the_bundled_sample(cpu_bundle, tmp_path):
    out = tmp_path / "device.json"
    result = CliRunner().invoke(main, ["bench", str(cpu_bundle), "--runtime", "onnxruntime", "--precision", "int8",
                                       "--batch", "1,4", "--iterations", "5", "--seconds", "0.05",
                                       "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert [r["batch"] for r in report["latency"]] == [1, 4]
    acc = report["accuracy"]
    assert acc["images"] == 500
    assert acc["top1"] == pytest.approx(acc["build_top1_same_images"], abs=1e-9)


def test_rebuilding_replaces_the_bundle_whole(bundle_copy, stub_target):
    """A build into an existing bundle folder swaps it; a file the old one did not write needs --force,
    then nothing of the old one lingers."""
    out = bundle_copy  # the shared bundle's openvino, onnxruntime and jetson rows
    fp32 = shutil.copy(out / "model_fp32.onnx", out.parent / "given.onnx")  # from ONNX: no PyTorch stages
    args = ["build", "--target", stub_target, "--onnx", str(fp32), "--out", str(out), "--eval-samples", "200",
            "--max-drop", "100", "--fallback", "off", "--calib-samples", "20", "--latency-seconds", "0", "-q"]
    assert CliRunner().invoke(main, args).exit_code == 0  # a bundle of ours alone is replaced without --force
    assert not (out / "openvino").exists() and (out / stub_target).is_dir()
    (out / "stale.txt").write_text("old")
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "stale.txt" in refused.output and (out / "stale.txt").exists()
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0
    assert not (out / "stale.txt").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_eval_sample_is_compact_and_labelled(cpu_bundle):
    with np.load(cpu_bundle / "eval_sample.npz") as data:
        assert data["pixels"].dtype == np.uint8 and data["pixels"].shape == (500, 28, 28, 1)
        assert data["labels"].shape == (500,)


def test_device_path_runs_without_torch(cpu_bundle, tmp_path):
    """infer and bench import and run with torch (and onnx, nncf) made unimportable."""
    import subprocess
    import sys

    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (50, 40), (200, 10, 10)).save(img)
    code = (
        "import sys\n"
        "for name in ('torch', 'onnx', 'nncf', 'matplotlib'): sys.modules[name] = None\n"
        "from resnet_deploy.cli import main\n"
        f"sys.argv = ['resnet-deploy', '-q', 'infer', {str(cpu_bundle)!r}, {str(img)!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"sys.argv = ['resnet-deploy', '-q', 'bench', {str(cpu_bundle)!r}, '--iterations', '3', '--seconds', '0.01',"
        f" '--out', {str(tmp_path / 'd.json')!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "%" in proc.stdout and "top-1 on 500 bundled images" in proc.stdout


def test_bundled_sample_spans_the_classes(cpu_bundle):
    """The evaluation set can be sorted by class (ImageFolder); the carried sample must not be."""
    with np.load(cpu_bundle / "eval_sample.npz") as data:
        assert len(np.unique(data["labels"])) == 10


def test_damaged_bundle_file_is_named_not_a_crash(cpu_bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(cpu_bundle, copy)
    (copy / "onnxruntime" / "model_int8.onnx").write_bytes(b"junk")
    result = CliRunner().invoke(main, ["infer", str(copy), "x.png"])
    assert result.exit_code == 2 and "model_int8.onnx" in result.output and "sha256" in result.output


def test_published_bundle_is_readable_by_others(cpu_bundle):
    assert cpu_bundle.stat().st_mode & 0o005 == 0o005
