"""Bad input through the CLI: one clear paragraph naming the file or flag, a non-zero exit, no
traceback, and never a bundle folder left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from resnet_deploy.cli import main
from resnet_deploy.models import build_model
from resnet_deploy.pipeline.records import Gate


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_clean_failure(result, *needles: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture()
def out(tmp_path) -> Path:
    path = tmp_path / "bundle"
    yield path
    assert not path.exists(), "a failed build left a bundle folder"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")], "staging folder left behind"


@pytest.fixture()
def fmnist_checkpoint(tmp_path) -> Path:
    path = tmp_path / "r20.pt"
    torch.save(build_model("resnet20", num_classes=10, in_channels=1).state_dict(), path)
    return path


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/resnet_deploy_pwned",))


def test_missing_checkpoint(out):
    assert_clean_failure(run("build", "--checkpoint", "nope.pt", "--out", str(out)), "--checkpoint", "nope.pt")


def test_corrupt_checkpoint(tmp_path, out):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    assert_clean_failure(run("build", "--checkpoint", str(bad), "--out", str(out)), "bad.pth", "corrupt")


def test_checkpoint_with_pickled_code_is_refused_and_never_runs(tmp_path, out):
    marker = Path("/tmp/resnet_deploy_pwned")
    marker.unlink(missing_ok=True)
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": Evil()}, evil)
    result = run("build", "--checkpoint", str(evil), "--out", str(out))
    assert_clean_failure(result, "evil.pt", "never unpickles")
    assert not marker.exists()


def test_checkpoint_of_another_architecture(tmp_path, out):
    path = tmp_path / "r32.pt"
    torch.save(build_model("resnet32", num_classes=10, in_channels=1).state_dict(), path)
    result = run("build", "--checkpoint", str(path), "--arch", "resnet20", "--out", str(out))
    assert_clean_failure(result, "does not fit resnet20", "--arch resnet32")


def test_checkpoint_with_another_class_count(tmp_path, out):
    path = tmp_path / "r20c100.pt"
    torch.save(build_model("resnet20", num_classes=100, in_channels=1).state_dict(), path)
    result = run("build", "--checkpoint", str(path), "--num-classes", "10", "--out", str(out))
    assert_clean_failure(result, "fc.weight", "--num-classes 100")


def test_checkpoint_with_nan_weights(tmp_path, out):
    sd = build_model("resnet20", num_classes=10, in_channels=1).state_dict()
    sd["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(sd, path)
    assert_clean_failure(run("build", "--checkpoint", str(path), "--out", str(out)), "NaN or Inf",
                         "layer2.0.conv1.weight")


def test_checkpoint_whose_classes_do_not_match_the_data(tmp_path, out, fashion_mnist):
    path = tmp_path / "r20c5.pt"
    torch.save(build_model("resnet20", num_classes=5, in_channels=1).state_dict(), path)
    assert_clean_failure(run("build", "--checkpoint", str(path), "--out", str(out)), "--eval-data", "10 classes",
                         "predicts 5")


def test_unknown_arch_lists_the_known_ones(out):
    assert_clean_failure(run("build", "--arch", "resnet19", "--out", str(out)), "resnet19", "resnet18", "resnet110")


def test_unknown_target_lists_the_known_ones(out):
    assert_clean_failure(run("build", "--target", "tpu", "--out", str(out)), "tpu", "openvino", "onnxruntime", "jetson")


def test_mean_of_the_wrong_length(fmnist_checkpoint, out, fashion_mnist):
    result = run("build", "--checkpoint", str(fmnist_checkpoint), "--mean", "0.5,0.5,0.5", "--out", str(out))
    assert_clean_failure(result, "--mean", "1 channel")


def test_unparsable_std():
    assert_clean_failure(run("build", "--std", "a,b"), "--std")


def test_input_size_too_small():
    assert_clean_failure(run("build", "--input-size", "4"), "--input-size", "too small")


def test_missing_data_folder(fmnist_checkpoint, out):
    result = run("build", "--checkpoint", str(fmnist_checkpoint), "--eval-data", "/nonexistent/images",
                 "--out", str(out))
    assert_clean_failure(result, "--eval-data", "/nonexistent/images")


def test_empty_data_folder(fmnist_checkpoint, tmp_path, out):
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    result = run("build", "--checkpoint", str(fmnist_checkpoint), "--eval-data", str(empty), "--out", str(out))
    assert_clean_failure(result, "--eval-data", "no images")


def _image_folder(root: Path, *, classes: int, per_class: int, size=(28, 28), mode="L") -> Path:
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new(mode, size, color=(i * 7) % 255 if mode == "L" else ((i * 7) % 255,) * len(mode)).save(
                root / f"c{c}" / f"{i}.png")
    return root


def test_fewer_calibration_images_than_asked(fmnist_checkpoint, tmp_path, out, fashion_mnist):
    calib = _image_folder(tmp_path / "calib", classes=10, per_class=2)
    result = run("build", "--checkpoint", str(fmnist_checkpoint), "--calib-data", str(calib), "--calib-samples", "50",
                 "--out", str(out))
    assert_clean_failure(result, "--calib-samples", "20 images")


def test_too_many_corrupt_images(fmnist_checkpoint, tmp_path, out, fashion_mnist):
    calib = _image_folder(tmp_path / "calib", classes=10, per_class=3)
    for f in list(calib.rglob("*.png"))[:10]:
        f.write_bytes(b"\x89PNG broken")
    result = run("build", "--checkpoint", str(fmnist_checkpoint), "--calib-data", str(calib), "--calib-samples", "30",
                 "--out", str(out))
    assert_clean_failure(result, "--calib-data", "could not be read")


def test_missing_runtime_names_the_package(monkeypatch, out):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    assert_clean_failure(run("build", "--target", "openvino", "--out", str(out)), "pip install nncf")


def test_gate_failure_writes_a_failed_report_and_exits_non_zero(monkeypatch, tmp_path, fashion_mnist, stub_target):
    from resnet_deploy.pipeline import build as build_mod

    monkeypatch.setattr(build_mod, "gate", lambda rows, preds, *, max_drop, **_: Gate(max_drop, False,
                                                                                        ("onnxruntime int8: forced",)))
    out = tmp_path / "failed"
    result = run("build", "--target", stub_target, "--out", str(out), "--eval-samples", "50", "--calib-samples", "10",
                 "--fallback", "off", "--latency-seconds", "0")
    assert_clean_failure(result, "gate failed", "forced", "more representative --calib-samples", code=4)
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["gate"]["passed"] is False
    assert "FAILED" in (out / "report.md").read_text()


def test_a_failed_gate_with_uneven_activation_channels_says_so_instead_of_more_images():
    from resnet_deploy.calibration.channel_spread import ActivationSpread
    from resnet_deploy.calibration.sensitivity import Sensitivity
    from resnet_deploy.pipeline.build import gate_failed_advice

    def analysis(spread: float) -> Sensitivity:  # what the fallback's sensitivity analysis records
        return Sensitivity("ref", "mse", 128, 0.9, 16.0, (), 1.0, (ActivationSpread("/layer4/x", 60.0, spread, 0.86,
                                                                                     0.0),))

    spiky = gate_failed_advice(analysis(0.003))
    assert "/layer4/x: median channel at 0.003" in spiky and "86 % of its non-zero values round to 0" in spiky
    assert "--int8-aware" in spiky and "--calib-samples" not in spiky
    assert spiky.endswith("relax --max-drop / --min-agreement if the loss is acceptable.")
    for calm in (gate_failed_advice(analysis(0.4)), gate_failed_advice(None)):
        assert calm.startswith("try more or more representative --calib-samples")


def test_interrupted_build_leaves_nothing(monkeypatch, out, fashion_mnist, stub_target):
    from resnet_deploy.pipeline import build as build_mod

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "validate_stage", interrupt)
    result = run("build", "--target", stub_target, "--out", str(out), "--eval-samples", "50", "--calib-samples", "10",
                 "--latency-seconds", "0")
    assert_clean_failure(result, "interrupted", code=130)


def test_infer_on_a_folder_that_is_not_a_bundle(tmp_path):
    assert_clean_failure(run("infer", str(tmp_path), "x.png"), "manifest.json", "resnet-deploy build")


def test_help_works():
    result = run("--help")
    assert result.exit_code == 0 and "build" in result.output and "infer" in result.output


def test_gate_failure_with_json_prints_the_failed_report(monkeypatch, tmp_path, fashion_mnist, stub_target):
    from resnet_deploy.pipeline import build as build_mod

    monkeypatch.chdir(tmp_path)  # default --out (build/<arch>-<target>) lands here
    monkeypatch.setattr(build_mod, "gate", lambda rows, preds, *, max_drop, **_: Gate(max_drop, False, ("forced",)))
    result = CliRunner().invoke(main, ["build", "--target", stub_target, "--eval-samples", "50", "--fallback", "off",
                                                       "--calib-samples", "10", "--latency-seconds", "0", "--json"])
    assert result.exit_code == 4
    assert json.loads(result.stdout)["status"] == "failed"


def test_bad_jetson_options_fail_before_any_stage(monkeypatch, out):
    from resnet_deploy.pipeline import build as build_mod

    def never(*a, **k):
        raise AssertionError("a stage ran before the options were checked")

    monkeypatch.setattr(build_mod, "load_model_stage", never)
    assert_clean_failure(run("build", "--target", "jetson", "--device", "foo", "--out", str(out)), "foo", "orin-nano")
    assert_clean_failure(run("build", "--target", "jetson", "--device", "orin-nano", "--dla-core", "1",
                             "--out", str(out)), "--dla-core")


def test_out_that_is_a_file(tmp_path):
    f = tmp_path / "x.png"
    f.write_bytes(b"not a folder")
    assert_clean_failure(run("build", "--target", "onnxruntime", "--out", str(f)), "--out", "is a file")


def test_num_classes_that_does_not_fit_the_embedded_model(out):
    assert_clean_failure(run("build", "--num-classes", "5", "--out", str(out)), "--num-classes 10")


def test_bench_refuses_zero_iterations(tmp_path):
    result = run("bench", str(tmp_path), "--iterations", "0")
    assert result.exit_code == 2 and "--iterations" in result.output and "Traceback" not in result.output


def test_command_summaries_fit_the_help_listing():
    """`resnet-deploy --help` shows every command's summary whole, never cut with '...'."""
    result = run("--help")
    commands = result.output.split("Commands:")[1]
    assert result.exit_code == 0 and "..." not in commands
    assert all(name in commands for name in ("build", "infer", "bench", "device-build", "devices", "targets"))


def test_infer_takes_quiet_like_the_other_commands(tmp_path):
    result = run("infer", str(tmp_path), "x.png", "-q")
    assert result.exit_code == 2 and "No such option" not in result.output
