"""pipeline.train: a short real run writes loadable artifacts, resumes exactly, and runs under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_idx_split

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sources import FASHION_MNIST_CLASSES, ArraySource, fashion_mnist_dir, open_idx
from resnet_deploy.errors import CheckpointError, ConfigError
from resnet_deploy.pipeline.checkpoint import load_model
from resnet_deploy.pipeline.train import TrainSettings, start_from, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PREP = Preprocessing((28, 28), 1, (0.286,), (0.353,), class_names=FASHION_MNIST_CLASSES)
# 128 images in batches of 32: 4 steps an epoch, the count at which OneCycleLR's one-step warm-up
# used to divide by zero.
SETTINGS = TrainSettings(arch="resnet20", epochs=1, batch_size=32, seed=0)


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 grayscale images whose class is a bright horizontal band: learnable, not just noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
    for i, y in enumerate(labels):
        images[i, 2 + 2 * y : 5 + 2 * y] = 220
    return images, labels.astype(np.int64)


@pytest.fixture(scope="module")
def tiny() -> tuple[ArraySource, ArraySource]:
    """128 training and 32 test images: Fashion-MNIST's test split when installed, else synthetic."""
    folder = fashion_mnist_dir()
    if folder is not None:
        fm = open_idx(folder, "test", flag="--data")
        images, labels = fm.images[:160].copy(), fm.labels[:160].copy()
    else:
        images, labels = synthetic(160, seed=0)
    return (ArraySource("tiny/train", images[:128], labels[:128], FASHION_MNIST_CLASSES),
            ArraySource("tiny/test", images[128:], labels[128:], FASHION_MNIST_CLASSES))


@pytest.fixture(scope="module")
def one_epoch(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, train(SETTINGS, tiny[0], PREP, out, test_source=tiny[1])


class Interrupted(Exception):
    pass


def stop_after_first_epoch(kind, epoch, step, row):
    if kind == "epoch" and epoch == 0:
        raise Interrupted


@pytest.fixture(scope="module")
def interrupted(tiny, tmp_path_factory) -> Path:
    """A 2-epoch run stopped (as by Ctrl-C) once epoch 1's checkpoint is written."""
    out = tmp_path_factory.mktemp("interrupted")
    with pytest.raises(Interrupted):
        train(TrainSettings(epochs=2, batch_size=32), tiny[0], PREP, out, on_progress=stop_after_first_epoch)
    return out


class TestOneEpoch:
    def test_writes_checkpoint_and_weights(self, one_epoch):
        out, result = one_epoch
        assert result.checkpoint == out / "last.pt" and result.checkpoint.is_file()
        assert result.weights == out / "model.safetensors" and result.weights.is_file()
        assert not list(out.glob("*.tmp"))
        assert result.epochs_run == 1 and len(result.history) == 1
        row = result.history[0]
        assert row["epoch"] == 1 and np.isfinite(row["loss"]) and 0 <= row["train_top1"] <= 1
        assert result.test_top1 == row["test_top1"] and 0 <= result.test_top1 <= 1

    @pytest.mark.parametrize("name", ["last.pt", "model.safetensors"])
    def test_artifacts_load_with_load_model(self, one_epoch, name):
        out, _ = one_epoch
        loaded = load_model(out / name)  # torch.load(weights_only=True) or safetensors: no pickled code
        assert (loaded.arch, loaded.num_classes, loaded.in_channels, loaded.shortcut) == ("resnet20", 10, 1, "A")
        assert Preprocessing.from_dict(loaded.meta["preprocessing"]) == PREP
        assert loaded.meta["train"]["epochs"] == 1

    def test_both_artifacts_hold_the_same_model(self, one_epoch):
        out, _ = one_epoch
        x = torch.randn(3, 1, 28, 28)
        with torch.inference_mode():
            a = load_model(out / "last.pt").model(x)
            b = load_model(out / "model.safetensors").model(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    def test_checkpoint_holds_what_resume_needs(self, one_epoch):
        state = torch.load(one_epoch[0] / "last.pt", map_location="cpu", weights_only=True)
        assert state["epoch"] == 1 and len(state["history"]) == 1
        assert {"optimizer", "scheduler", "state_dict"} <= set(state)


class TestResume:
    def test_without_a_checkpoint(self, tiny, tmp_path):
        with pytest.raises(CheckpointError, match=r"^--resume: no .*last\.pt"):
            train(SETTINGS, tiny[0], PREP, tmp_path, resume=True)

    @pytest.mark.parametrize("change", [{"epochs": 3}, {"epochs": 1}, {"arch": "resnet32"}])
    def test_mismatched_run_is_refused(self, tiny, interrupted, tmp_path, change):
        out = tmp_path / "run"
        shutil.copytree(interrupted, out)
        settings = TrainSettings(**{"epochs": 2, "batch_size": 32, **change})
        with pytest.raises(ConfigError) as err:
            train(settings, tiny[0], PREP, out, resume=True)
        msg = str(err.value)
        assert msg.startswith("--resume:") and "--arch and --epochs" in msg and "resnet20 for 2 epochs" in msg

    def test_resumed_run_equals_an_uninterrupted_one(self, tiny, interrupted, tmp_path):
        state = torch.load(interrupted / "last.pt", map_location="cpu", weights_only=True)
        assert state["epoch"] == 1 and not (interrupted / "model.safetensors").exists()
        resumed_dir = tmp_path / "resumed"
        shutil.copytree(interrupted, resumed_dir)
        settings = TrainSettings(epochs=2, batch_size=32)
        resumed = train(settings, tiny[0], PREP, resumed_dir, resume=True)
        assert resumed.epochs_run == 1 and [r["epoch"] for r in resumed.history] == [1, 2]
        straight = train(settings, tiny[0], PREP, tmp_path / "straight")
        a = load_model(resumed.weights).model.state_dict()
        b = load_model(straight.weights).model.state_dict()
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6, msg=k)


class TestInitFrom:
    """--init-from: fine-tune from a checkpoint's weights instead of a fresh initialisation."""

    def test_starts_from_the_checkpoint_weights(self, one_epoch):
        weights = one_epoch[1].weights
        model = start_from(str(weights), "resnet20", num_classes=10, in_channels=1)
        assert model.training
        expected = load_model(weights).model.state_dict()
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, expected[k], rtol=0, atol=0, msg=k)

    def test_a_classifier_for_other_classes_starts_fresh(self, one_epoch):
        weights = one_epoch[1].weights
        model = start_from(str(weights), "resnet20", num_classes=3, in_channels=1)
        expected = load_model(weights).model.state_dict()
        got = model.state_dict()
        assert got["fc.weight"].shape == (3, 64) and got["fc.bias"].shape == (3,)
        for k in expected:
            if not k.startswith("fc."):
                torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0, msg=k)
        with torch.inference_mode():
            assert model.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 3)

    def test_another_architecture_is_refused_by_its_flag(self, one_epoch):
        with pytest.raises(CheckpointError) as err:
            start_from(str(one_epoch[1].weights), "resnet32", num_classes=10, in_channels=1)
        msg = str(err.value)
        assert msg.startswith("--init-from:") and "resnet32" in msg and "--checkpoint" not in msg
        assert "looks like --arch resnet20" in msg and "--num-classes" not in msg  # train has no such flag

    def test_a_missing_file_is_refused_before_training(self, tmp_path):
        with pytest.raises(CheckpointError, match=r"^--init-from: .*nothing\.pt does not exist"):
            TrainSettings(init_from=str(tmp_path / "nothing.pt"))

    def test_a_run_started_from_a_checkpoint_records_it(self, tiny, one_epoch, tmp_path):
        weights = str(one_epoch[1].weights)
        result = train(TrainSettings(arch="resnet20", epochs=1, batch_size=32, init_from=weights),
                       tiny[0], PREP, tmp_path, test_source=tiny[1])
        loaded = load_model(result.weights)
        assert loaded.meta["train"]["init_from"] == weights
        assert (loaded.arch, loaded.num_classes, loaded.shortcut) == ("resnet20", 10, "A")


def test_settings_are_validated():
    with pytest.raises(ConfigError, match="--arch"):
        TrainSettings(arch="resnet7")
    with pytest.raises(ConfigError, match="--epochs"):
        TrainSettings(epochs=0)
    with pytest.raises(ConfigError, match="--schedule"):
        TrainSettings(schedule="step")


@pytest.mark.slow  # two processes each importing torch and training: 12-30 s here
def test_distributed_data_parallel_under_torchrun(tmp_path):
    """Two gloo ranks on CPU through the real CLI; rank 0 alone writes and prints."""
    cli = shutil.which("resnet-deploy", path=str(Path(sys.executable).parent)) or shutil.which("resnet-deploy")
    if cli is None:
        pytest.skip("the resnet-deploy console script is not installed (pip install -e .)")
    data = tmp_path / "idx"
    data.mkdir()
    images, labels = synthetic(192, seed=1)
    write_idx_split(data, "train", images[:128], labels[:128].astype(np.uint8))
    write_idx_split(data, "t10k", images[128:], labels[128:].astype(np.uint8))
    out = tmp_path / "ddp"
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher_vars}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           cli, "train", "--data", str(data), "--epochs", "1", "--batch-size", "32", "--threads", "1",
           "--out", str(out), "--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1, proc.stdout  # rank 0 only
    assert printed[0]["epochs"] == 1 and Path(printed[0]["weights"]) == out / "model.safetensors"
    assert (out / "last.pt").is_file() and (out / "model.safetensors").is_file()
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    # 128 images over 2 ranks in batches of 32: 2 steps; one process alone would have taken 4.
    assert state["scheduler"]["total_steps"] == 2
    assert load_model(out / "model.safetensors").in_channels == 1
