"""Issue 13, one command from images to bundle: `build --train-data` trains first, then builds the weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from resnet_deploy.calibration.sources import open_source
from resnet_deploy.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def images(tmp_path_factory, fashion_mnist) -> Path:
    """Real Fashion-MNIST images as a folder with train/ and test/ (10 per class each)."""
    root = tmp_path_factory.mktemp("imgs")
    for split, source_split, per_class in (("train", "train", 10), ("test", "test", 10)):
        src = open_source(None, source_split, flag="x")
        counts = dict.fromkeys(range(10), 0)
        for image, label in zip(src.images, src.labels):
            label = int(label)
            if counts[label] < per_class:
                folder = root / split / src.class_names[label]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(folder / f"{counts[label]}.png")
                counts[label] += 1
            if all(v >= per_class for v in counts.values()):
                break
    return root


def test_build_trains_then_builds_what_it_trained(images, tmp_path):
    out, run_dir = tmp_path / "bundle", tmp_path / "run"
    result = run("build", "--train-data", images, "--epochs", "1", "--batch-size", "32", "--train-out", run_dir,
                 "--target", "onnxruntime", "--calib-samples", "32", "--calib-method", "max", "--fallback", "off",
                 "--latency-seconds", "0", "--out", out, "-q")
    assert result.exit_code in (0, 4, 5), result.output  # one epoch on 100 images: any verdict, a bundle always
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]][:2] == ["train", "load"]
    assert report["model"]["source"] == str(run_dir / "model.safetensors")
    assert report["data"]["evaluation"]["count"] == 100  # the training folder's own test split
    assert (run_dir / "last.pt").is_file()
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe["train-data"] == str(images.resolve()) and recipe["epochs"] == 1


@pytest.mark.parametrize("args, needles", [
    (["--epochs", "3"], ["--epochs", "training flag", "--train-data"]),
    (["--train-data", "fashion-mnist", "--checkpoint", "x.pt"], ["--train-data", "--checkpoint"]),
])
def test_training_flags_without_training_are_user_errors(args, needles, tmp_path):
    result = run("build", *args, "--out", tmp_path / "b")
    assert result.exit_code == 2, result.output
    for needle in needles:
        assert needle in " ".join(result.output.split())
