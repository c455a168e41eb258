"""Issue 13, recipes: every flag of `build` in a YAML file, flags winning over it, and a bundle's own
recipe.yaml building the same bundle again (same settings, calibration images, cache and predictions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from resnet_deploy import recipes
from resnet_deploy.cli import build as build_command
from resnet_deploy.cli import main
from resnet_deploy.pipeline.device import choose_artifact, load_runner, open_bundle

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "recipes"
FLAGS = ["--target", "onnxruntime", "--target", "jetson", "--eval-samples", "300", "--calib-samples", "64",
         "--max-drop", "100", "--fallback", "off", "--latency-seconds", "0", "-q"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def flat(text: str) -> str:
    return " ".join(text.split())


def sample_predictions(bundle: Path) -> dict[str, np.ndarray]:
    """Every INT8 artifact's predictions on the images the bundle carries."""
    b = open_bundle(bundle)
    with np.load(bundle / "eval_sample.npz") as data:
        pixels = data["pixels"]
    out = {}
    for artifact in b.artifacts:
        if artifact.precision == "int8" and artifact.target == "onnxruntime":
            runner = load_runner(b, choose_artifact(b, runtime=artifact.runtime, precision="int8"))
            out[artifact.path] = runner.run(b.prep.normalize(pixels)).argmax(1)
    return out


@pytest.fixture(scope="module")
def from_flags(tmp_path_factory, fashion_mnist) -> Path:
    out = tmp_path_factory.mktemp("flags") / "a"
    result = run("build", *FLAGS, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow  # two real builds (onnxruntime + jetson): make test-slow
def test_the_bundle_keeps_its_recipe_and_it_builds_the_same_bundle(from_flags, tmp_path):
    recipe = yaml.safe_load((from_flags / recipes.RECIPE).read_text())
    assert recipe["target"] == ["onnxruntime", "jetson"] and recipe["calib-samples"] == 64
    assert "out" not in recipe  # where the bundle goes is the caller's choice
    again = tmp_path / "b"
    result = run("build", "--recipe", from_flags / recipes.RECIPE, "--out", again, "-q")
    assert result.exit_code == 0, result.output
    first, second = (json.loads((b / "manifest.json").read_text()) for b in (from_flags, again))
    assert {**first["args"], "out": None} == {**second["args"], "out": None}
    assert first["calibration"] == second["calibration"]  # the same images, by their hash
    caches = sorted(p.relative_to(from_flags) for p in from_flags.rglob("*.cache"))
    assert caches, "the jetson target writes a TensorRT calibration cache"
    for rel in caches:
        assert (again / rel).read_bytes() == (from_flags / rel).read_bytes()
    preds_a, preds_b = sample_predictions(from_flags), sample_predictions(again)
    assert preds_a and preds_a.keys() == preds_b.keys()
    for key in preds_a:
        np.testing.assert_array_equal(preds_a[key], preds_b[key])
    assert (again / recipes.RECIPE).read_text() == (from_flags / recipes.RECIPE).read_text()
    result = run("compare", from_flags, again)  # and `compare` finds the two builds alike
    assert result.exit_code == 0 and "settings: the same" in result.output, result.output


def test_flags_win_over_the_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("target: [onnxruntime]\ncalib-samples: 64\nmax-drop: 0.5\n")
    ctx = build_command.make_context("build", ["--recipe", str(path), "--calib-samples", "80"])
    assert ctx.params["calib_samples"] == 80 and ctx.params["max_drop"] == 0.5
    assert ctx.params["targets"] == ("onnxruntime",)


def test_lists_and_underscores_read_as_the_flags_do(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("input_size: [32, 32]\nmean: [0.5, 0.25, 0.125]\neval-samples: 100\n")
    ctx = build_command.make_context("build", ["--recipe", str(path)])
    assert ctx.params["input_size"] == (32, 32) and ctx.params["mean"] == (0.5, 0.25, 0.125)
    assert ctx.params["eval_samples"] == 100


@pytest.mark.parametrize("text, needles", [
    ("calib-samples: 64\ntypo-flag: 3\n", ["typo-flag", "not a flag of `resnet-deploy build`", "calib-samples"]),
    ("calib-samples: lots\n", ["calib-samples", "lots"]),
    ("fallback: sometimes\n", ["fallback", "sometimes"]),
    ("- a\n- b\n", ["must map flag names to values"]),
    ("calib-samples: [1\n", ["not valid YAML"]),
    ("x: !!python/object/apply:os.system ['true']\n", ["not valid YAML"]),  # never an object, never run
    ("recipe_version: 7\n", ["recipe_version 7"]),
])
def test_a_bad_recipe_is_a_user_error_naming_the_file(tmp_path, text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = run("build", "--recipe", path, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    for needle in [str(path), *needles]:
        assert needle in flat(result.output), result.output
    assert not (tmp_path / "out").exists()


def test_a_missing_recipe_is_named(tmp_path):
    result = run("build", "--recipe", tmp_path / "nope.yaml")
    assert result.exit_code == 2 and "nope.yaml" in result.output and "no such file" in result.output


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_the_example_recipes_are_valid(path):
    ctx = build_command.make_context("build", ["--recipe", str(path)])
    assert ctx.params["targets"]


def test_train_takes_a_recipe_too(tmp_path):
    from resnet_deploy.cli import train as train_command

    path = tmp_path / "t.yaml"
    path.write_text("arch: resnet56\nepochs: 3\nschedule: cosine\n")
    ctx = train_command.make_context("train", ["--recipe", str(path), "--epochs", "5"])
    assert (ctx.params["arch"], ctx.params["epochs"], ctx.params["schedule"]) == ("resnet56", 5, "cosine")


def test_a_bundles_recipe_gives_the_settings_it_was_built_with(shared_bundle, shared_build_flags):
    """The cheap half of the round trip (the rebuild itself is in the slow suite): recipe.yaml parses back into
    the flags the bundle was built with."""
    def params(args: list[str]) -> dict:
        ctx = build_command.make_context("build", args)
        return {k: v for k, v in ctx.params.items() if k not in ("recipe", "out", "quiet")}

    assert params(["--recipe", str(shared_bundle / recipes.RECIPE)]) == params(list(shared_build_flags))
