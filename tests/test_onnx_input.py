"""`build --onnx`: an FP32 ONNX classifier exported elsewhere goes through the chain without its torch stages.

Batch-norm left in the graph is folded there and checked on real images; bad files are one paragraph
naming --onnx; the embedded model's ONNX export builds end to end with the same FP32 top-1 as PyTorch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import NO_TORCH, randomize_bn
from torch import nn

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.cli import main
from resnet_deploy.errors import CheckpointError
from resnet_deploy.pipeline.bundle import load_eval_sample
from resnet_deploy.pipeline.checkpoint import load_model
from resnet_deploy.pipeline.export import read_metadata
from resnet_deploy.pipeline.fold import FOLD_RTOL, fold_batchnorm
from resnet_deploy.pipeline.onnx_batchnorm import fold_batchnorm_graph
from resnet_deploy.pipeline.onnx_input import fold_onnx, load_onnx
from resnet_deploy.pipeline.settings import EMBEDDED_MODEL
from resnet_deploy.targets import onnx_session


def export(model: nn.Module, path: Path, shape: tuple[int, ...], *, free_size: bool = False) -> Path:
    """As someone else would export it: BN kept (TrainingMode.PRESERVE), their own tensor names, no metadata."""
    axes = {0: "n", 2: "h", 3: "w"} if free_size else {0: "n"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(2, *shape),), str(path), input_names=["pixels"],
                          output_names=["scores"], dynamic_axes={"pixels": axes, "scores": {0: "n"}},
                          opset_version=17, training=torch.onnx.TrainingMode.PRESERVE, dynamo=False)
    return path


@pytest.fixture(scope="module")
def embedded():
    return load_model(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def embedded_onnx(embedded, tmp_path_factory) -> Path:
    return export(embedded.model, tmp_path_factory.mktemp("onnx") / "r20.onnx", (1, 28, 28))


@pytest.fixture(scope="module")
def real_images(embedded, fashion_mnist) -> np.ndarray:
    """64 Fashion-MNIST test images, normalised as the embedded model was trained."""
    prep = Preprocessing.from_dict(embedded.meta["preprocessing"])
    src = open_source("fashion-mnist", "test", flag="--eval-data")
    return decode(src, choose(len(src), 64, seed=0), prep, flag="--eval-data").inputs(prep)


def logits(model, batch: np.ndarray) -> np.ndarray:
    session = onnx_session(model.SerializeToString())
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def test_batchnorm_is_folded_in_the_graph_as_pytorch_folds_it(embedded, embedded_onnx, real_images):
    graph = onnx.load(str(embedded_onnx))
    bns = sum(n.op_type == "BatchNormalization" for n in graph.graph.node)
    result = fold_batchnorm_graph(graph)
    assert result.folded == bns > 0 and not result.leftover
    assert not any(n.op_type == "BatchNormalization" for n in result.model.graph.node)
    assert sum(n.op_type == "BatchNormalization" for n in graph.graph.node) == bns  # the caller's is untouched
    onnx.checker.check_model(result.model, full_check=True)
    ref, out = logits(graph, real_images), logits(result.model, real_images)
    assert np.abs(ref - out).max() <= FOLD_RTOL * np.abs(ref).max()
    assert (ref.argmax(1) == out.argmax(1)).all()
    torch_folded, count = fold_batchnorm(embedded.model)
    assert count == bns
    with torch.inference_mode():
        torch_out = torch_folded(torch.from_numpy(real_images)).numpy()
    np.testing.assert_allclose(out, torch_out, atol=1e-4 * np.abs(torch_out).max())


def test_grouped_convolutions_with_bias_fold_too(tmp_path, real_images):
    """ResNeXt's grouped 3x3 and a conv that has its own bias: per-output-channel math either way."""
    model = randomize_bn(nn.Sequential(nn.Conv2d(1, 8, 3, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
                                       nn.Conv2d(8, 8, 3, groups=4, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                       nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)), seed=1)
    graph = onnx.load(str(export(model, tmp_path / "grouped.onnx", (1, 28, 28))))
    result = fold_batchnorm_graph(graph)
    assert result.folded == 2 and not result.leftover
    ref, out = logits(graph, real_images), logits(result.model, real_images)
    assert np.abs(ref - out).max() <= FOLD_RTOL * np.abs(ref).max()
    with torch.inference_mode():
        torch_out = model.eval()(torch.from_numpy(real_images)).numpy()
    np.testing.assert_allclose(out, torch_out, atol=1e-4 * np.abs(torch_out).max())


def test_load_reads_the_graph_and_counts_parameters_as_pytorch(embedded, embedded_onnx):
    loaded = load_onnx(embedded_onnx, mean=(0.3,), std=(0.35,))
    assert (loaded.num_classes, loaded.in_channels) == (10, 1)
    assert Preprocessing.from_dict(loaded.meta["preprocessing"]).input_size == (28, 28)  # from the graph's fixed size
    assert loaded.parameter_count == embedded.parameter_count == sum(p.numel() for p in embedded.model.parameters())
    graph = loaded.graph.graph
    assert [i.name for i in graph.input] == ["input"] and [o.name for o in graph.output] == ["logits"]


def test_the_tools_own_metadata_gives_the_preprocessing_when_no_flag_does(embedded, embedded_onnx, tmp_path):
    proto = onnx.load(str(embedded_onnx))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "resnet_deploy.preprocessing", json.dumps(embedded.meta["preprocessing"])
    entry = proto.metadata_props.add()
    entry.key, entry.value = "resnet_deploy.arch", "resnet20"
    onnx.save(proto, str(tmp_path / "with_meta.onnx"))
    loaded = load_onnx(tmp_path / "with_meta.onnx")
    assert loaded.arch == "resnet20"
    assert Preprocessing.from_dict(loaded.meta["preprocessing"]) == Preprocessing.from_dict(
        embedded.meta["preprocessing"])


def test_a_batchnorm_after_an_activation_is_refused_naming_the_flag(tmp_path, real_images):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    loaded = load_onnx(export(model, tmp_path / "bn_after_relu.onnx", (1, 28, 28)), mean=(0.5,), std=(0.5,))
    with pytest.raises(CheckpointError, match=r"--onnx .*BatchNormalization"):
        fold_onnx(loaded, real_images)


def _cli(*args: str):
    return CliRunner().invoke(main, ["build", "--target", "onnxruntime", *args])


def _bad_onnx(kind: str, folder: Path) -> Path:
    tiny = [nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)]
    if kind == "not onnx":
        path = folder / "model.onnx"
        path.write_text("this is a README, not a model\n" * 20)
        return path
    if kind == "input rank 2":
        return export(nn.Linear(12, 3), folder / "mlp.onnx", (12,))
    if kind == "free size":
        return export(nn.Sequential(*tiny), folder / "free.onnx", (3, 32, 32), free_size=True)
    if kind == "unknown op":
        return export(nn.Sequential(tiny[0], nn.Softplus(), *tiny[2:]), folder / "softplus.onnx", (3, 32, 32))
    raise AssertionError(kind)


@pytest.mark.parametrize(("kind", "needle"), [("not onnx", "cannot be read as an ONNX model"),
                                              ("input rank 2", "rank 2, not 4"),
                                              ("free size", "Pass --input-size"),
                                              ("unknown op", "Softplus")])
def test_bad_files_are_one_paragraph_naming_the_flag(kind, needle, tmp_path):
    path = _bad_onnx(kind, tmp_path)
    result = _cli("--onnx", str(path), "--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--out",
                  str(tmp_path / "bundle"))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and f"--onnx {path}" in result.output and needle in result.output
    assert not (tmp_path / "bundle").exists()


def test_flag_conflicts_and_missing_normalisation_are_named(embedded_onnx, tmp_path):
    out = str(tmp_path / "bundle")
    both = _cli("--onnx", str(embedded_onnx), "--checkpoint", str(EMBEDDED_MODEL), "--out", out)
    assert both.exit_code == 2 and "--checkpoint" in both.output, both.output
    no_norm = _cli("--onnx", str(embedded_onnx), "--out", out)
    assert no_norm.exit_code == 2 and "--mean and --std" in no_norm.output, no_norm.output
    wrong_size = _cli("--onnx", str(embedded_onnx), "--input-size", "32", "--mean", "0.3", "--std", "0.35",
                      "--out", out)
    assert wrong_size.exit_code == 2 and "fixed at 28x28" in wrong_size.output, wrong_size.output
    assert "Traceback" not in both.output + no_norm.output + wrong_size.output


@pytest.mark.slow  # a full real build from an ONNX file: make test-slow
def test_end_to_end_the_fp32_reference_is_the_graph_and_equals_pytorch(embedded, embedded_onnx, fashion_mnist,
                                                                         tmp_path):
    """In its own process, to show that this path never imports PyTorch (a model given as ONNX needs none)."""
    prep = embedded.meta["preprocessing"]
    out = tmp_path / "bundle"
    done = subprocess.run([
        sys.executable, "-c", NO_TORCH, "build", "--onnx", str(embedded_onnx), "--target", "onnxruntime",
        "--mean", str(prep["mean"][0]), "--std", str(prep["std"][0]), "--eval-samples", "400", "--calib-samples",
        "64", "--calib-method", "max", "--fallback", "off", "--max-drop", "5", "--out", str(out), "-q"],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torch imported: False" in done.stderr, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["framework"] == "onnxruntime"
    assert report["model"]["source"] == f"onnx:{embedded_onnx}"
    assert report["checks"]["fold"]["folded_layers"] > 0 and report["checks"]["fold"]["passed"]
    # The bundle's model: BN folded, the bundle's names, the preprocessing record in its metadata.
    bundled = onnx.load(str(out / "model_fp32.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in bundled.graph.node)
    assert bundled.graph.input[0].name == "input"
    assert json.loads(read_metadata(out / "model_fp32.onnx")["resnet_deploy.preprocessing"])["mean"] == prep["mean"]
    # The FP32 reference (the graph as given) scores as the PyTorch model does on the same images.
    pixels, labels, _ = load_eval_sample(out / "eval_sample.npz")
    assert len(labels) == 400
    with torch.inference_mode():
        torch_top1 = float((embedded.model(torch.from_numpy(Preprocessing.from_dict(prep).normalize(pixels)))
                            .argmax(1).numpy() == labels).mean())
    assert report["reference"]["top1"] == pytest.approx(torch_top1, abs=1e-6)
    rows = {r["precision"]: r for r in report["results"]}
    assert rows["fp32"]["agreement"] == 1.0 and rows["fp32"]["top1"] == report["reference"]["top1"]
    assert rows["int8"]["agreement"] >= 0.97
