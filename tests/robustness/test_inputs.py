"""Hostile but fair inputs (issue 7, cases 4 and 11-15): every one gets a clear paragraph naming where
the bad value came from, a non-zero exit before any work, and never a traceback or a bundle."""

from __future__ import annotations

import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import write_idx_split
from PIL import Image

from resnet_deploy.calibration import images as image_io
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.cli import main
from resnet_deploy.models import build_model
from resnet_deploy.pipeline.checkpoint import META_KEY, load_model, save_checkpoint, save_safetensors


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_user_error(result, *needles: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    for needle in needles:
        assert needle in result.output, result.output


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width`` x ``height``: Pillow reads the size without decoding pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture()
def out(tmp_path) -> Path:
    path = tmp_path / "bundle"
    yield path
    assert not path.exists(), "a refused build left a bundle folder"


@pytest.fixture()
def image_folder(tmp_path) -> Path:
    """Two classes of small real-looking images (gradients), plus room for bad files."""
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


# --- case 4: --max-drop nan ------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "-1", "101"])
def test_max_drop_must_be_finite_and_in_range(out, value):
    started = time.perf_counter()
    result = run("build", "--max-drop", value, "--out", str(out))
    assert_user_error(result, "--max-drop")
    assert time.perf_counter() - started < 10  # refused before the load stage, not after a build


def test_report_json_is_strict_json(tmp_path):
    """json.dumps(..., allow_nan=False): no NaN/Infinity can reach report.json or the manifest."""
    from resnet_deploy.pipeline.bundle import write_json

    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"drop": float("nan")})


# --- case 13: numeric flags ------------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (("--input-size", "100000"), "--input-size"),
    (("--threads", "-4"), "--threads"),
    (("--threads", "0"), "--threads"),
    (("--seed", "-1"), "--seed"),
    (("--seed", str(2**40)), "--seed"),
    (("--std", "1e-30"), "--std"),
    (("--std", "nan"), "--std"),
    (("--mean", "inf"), "--mean"),
    (("--mean", "300"), "--mean"),
    (("--calib-samples", "0"), "--calib-samples"),
    (("--eval-samples", "-5"), "--eval-samples"),
    (("--num-classes", "0"), "--num-classes"),
])
def test_build_numeric_flags_refused_before_any_work(out, args, needle):
    started = time.perf_counter()
    result = run("build", *args, "--out", str(out))
    assert_user_error(result, needle)
    assert "model:" not in result.output  # refused before the checkpoint was even read
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("args, needle", [
    (("--threads", "-4"), "--threads"), (("--seed", "-1"), "--seed"), (("--epochs", "0"), "--epochs"),
    (("--lr", "nan"), "--lr"), (("--lr", "0"), "--lr"), (("--momentum", "2"), "--momentum"),
    (("--batch-size", "0"), "--batch-size"), (("--weight-decay", "inf"), "--weight-decay"),
    (("--input-size", "100000"), "--input-size"),
])
def test_train_numeric_flags_refused_before_any_work(tmp_path, args, needle):
    assert_user_error(run("train", *args, "--out", str(tmp_path / "run")), needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, needle", [
    (("--threads", "-4"), "--threads"), (("--seconds", "nan"), "--seconds"), (("--seconds", "inf"), "--seconds"),
    (("--batch", "100000"), "--batch"), (("--iterations", "0"), "--iterations"),
])
def test_bench_numeric_flags_refused(tmp_path, args, needle):
    assert_user_error(run("bench", str(tmp_path), *args), needle)


# --- case 14: checkpoint metadata ------------------------------------------------------------------

@pytest.fixture()
def r20():
    return build_model("resnet20", num_classes=10, in_channels=1)


@pytest.mark.parametrize("meta, needle", [
    ({"preprocessing": "28x28"}, "preprocessing must be a JSON object"),
    ({"preprocessing": {"input_size": [28, 28], "channels": 1, "mean": [0.5], "std": [0.0]}}, "preprocessing.std"),
    ({"preprocessing": {"input_size": [100000, 100000], "channels": 1, "mean": [0.5], "std": [0.3]}},
     "preprocessing.input_size"),
    ({"preprocessing": {"input_size": "big", "channels": 1, "mean": [0.5], "std": [0.3]}},
     "preprocessing.input_size is malformed"),
    ({"preprocessing": {"input_size": [28, 28], "channels": 1, "mean": ["x"], "std": [0.3]}},
     "preprocessing.mean is malformed"),
    ({"arch": "resnet9000"}, "resnet9000"),
    ({"arch": ["resnet20"]}, "architecture"),
    ({"shortcut": "C"}, "shortcut"),
])
def test_bad_checkpoint_metadata_blames_the_checkpoint(tmp_path, out, r20, meta, needle):
    path = tmp_path / "m.pt"
    save_checkpoint(path, r20, meta)
    result = run("build", "--checkpoint", str(path), "--out", str(out))
    assert_user_error(result, "m.pt", needle, "metadata")
    # the user never passed these flags: the message must not tell them their flag is wrong
    assert "--std values" not in result.output and "(--arch)" not in result.output


def test_metadata_that_is_not_an_object(tmp_path, out, r20):
    """safetensors metadata is a JSON string: a list there used to be an internal error."""
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in r20.state_dict().items()}, str(path), metadata={META_KEY: "[1, 2]"})
    assert_user_error(run("build", "--checkpoint", str(path), "--out", str(out)), "m.safetensors", "list")
    pt = tmp_path / "m.pt"
    torch.save({"state_dict": r20.state_dict(), META_KEY: [1, 2]}, pt)
    assert_user_error(run("build", "--checkpoint", str(pt), "--out", str(out)), "m.pt", "list")


def test_good_metadata_still_loads(tmp_path, r20):
    meta = {"arch": "resnet20", "shortcut": "A",
            "preprocessing": Preprocessing((28, 28), 1, (0.5,), (0.25,), class_names=("a", "b")).to_dict()}
    save_safetensors(tmp_path / "ok.safetensors", r20, meta)
    assert load_model(tmp_path / "ok.safetensors").meta == meta


# --- case 15: IDX labels outside the class range ---------------------------------------------------

def test_idx_labels_outside_the_classes_are_refused(tmp_path):
    images = np.zeros((20, 28, 28), np.uint8)
    labels = np.arange(20, dtype=np.uint8)  # 10..19 do not exist among Fashion-MNIST's 10 classes
    data = tmp_path / "data"
    data.mkdir()
    write_idx_split(data, "t10k", images, labels)
    with pytest.raises(Exception) as err:
        open_source(data, "test", flag="--eval-data")
    assert "--eval-data" in str(err.value) and "outside 0..9" in str(err.value) and "10 label(s)" in str(err.value)
    result = run("build", "--eval-data", str(data), "--calib-data", "fashion-mnist", "--out", str(tmp_path / "o"))
    assert_user_error(result, "--eval-data", "outside 0..9")


# --- cases 11 and 12: huge, unreadable and non-regular image files ---------------------------------

PREP = Preprocessing((32, 32), 3, (0.5,) * 3, (0.25,) * 3)


def test_pixel_bomb_in_data_is_skipped_and_named(image_folder):
    png_header_only(image_folder / "a" / "bomb.png", 20000, 20000)
    src = open_source(image_folder, "test", flag="--eval-data")
    batch = decode(src, choose(len(src), None, seed=0), PREP, flag="--eval-data")
    assert len(batch) == 24
    assert len(batch.skipped) == 1 and "bomb.png" in batch.skipped[0] and "pixel limit" in batch.skipped[0]


def test_image_just_over_the_limit_is_refused_without_decoding(tmp_path):
    side = int(image_io.MAX_PIXELS ** 0.5) + 1
    path = png_header_only(tmp_path / "big.png", side, side)
    with pytest.raises(image_io.UnreadableImage, match="pixel limit"):
        image_io.open_image(path)


def test_huge_jpeg_is_decoded_reduced_and_normal_ones_exactly(tmp_path):
    big = tmp_path / "big.jpg"
    Image.fromarray(np.full((4800, 4800, 3), 128, np.uint8)).save(big, quality=80)  # 23 MP, under the limit
    with image_io.open_image(big, min_side=256) as img:
        assert img.size == (600, 600)  # 1/8 scale, the decoder's largest: still >= 2 x 256, 64x less memory
    with image_io.open_image(big) as img:  # no size hint: full decode
        assert img.size == (4800, 4800)
    small = tmp_path / "small.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(small)
    with image_io.open_image(small, min_side=32) as img, Image.open(small) as ref:
        assert np.array_equal(np.asarray(img), np.asarray(ref))


def test_fifo_named_jpg_does_not_hang(tmp_path):
    fifo = tmp_path / "cam.jpg"
    os.mkfifo(fifo)
    done = []

    def attempt() -> None:
        with pytest.raises(image_io.UnreadableImage) as info:
            image_io.open_image(fifo)
        done.append(info)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(5)
    assert done, "opening a FIFO blocked"
    assert "regular file" in str(done[0].value)


def _small_bundle(tmp_path_factory, target: str) -> Path:
    """The embedded model built for one target on 200 evaluation and 32 calibration images (a sure pass)."""
    out = tmp_path_factory.mktemp(target) / "b"
    result = CliRunner().invoke(main, ["build", "--target", target, "--eval-samples", "200", "--max-drop", "100",
                                       "--fallback", "off", "--calib-samples", "32", "--calib-method", "max",
                                       "--latency-seconds", "0", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def bundle(shared_bundle) -> Path:
    return shared_bundle


def test_infer_answers_the_good_images_and_names_the_bad(bundle, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    bomb = png_header_only(tmp_path / "bomb.png", 20000, 20000)
    fifo = tmp_path / "cam.jpg"
    os.mkfifo(fifo)
    result = run("infer", str(bundle), str(good), str(bad), str(bomb), str(fifo), str(tmp_path / "missing.png"))
    assert_user_error(result, "4 of 5 image(s)", "bad.png", "bomb.png", "pixel limit", "cam.jpg", "missing.png")
    assert result.output.startswith(str(good)) or f"\n{good}\n" in result.output  # the good one was answered
    assert "%" in result.output
    as_json = run("infer", str(bundle), str(good), str(bad), "--json")
    assert as_json.exit_code == 2
    payload = json.loads(as_json.output[: as_json.output.rindex("}") + 1])
    assert [("top" in r, "error" in r) for r in payload["results"]] == [(True, False), (False, True)]


# --- issue 9: bench never passes a simulation off as the device -----------------------------------

@pytest.fixture(scope="module")
def jetson_bundle(tmp_path_factory, fashion_mnist) -> Path:
    return _small_bundle(tmp_path_factory, "jetson")


def test_bench_refuses_to_time_a_simulation_as_the_device(jetson_bundle):
    result = run("bench", str(jetson_bundle), "--iterations", "3", "--seconds", "0")
    assert_user_error(result, "CPU simulation", "device-build", "--simulated", "TensorRT is not installed")


def test_bench_labels_a_simulation_it_was_asked_for_everywhere(jetson_bundle, tmp_path):
    report = tmp_path / "r.json"
    result = run("bench", str(jetson_bundle), "--simulated", "--iterations", "3", "--seconds", "0", "-q",
                 "--out", str(report))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and all(line.startswith("[CPU simulation, not the device]") for line in lines)
    data = json.loads(report.read_text())
    assert data["simulated"] is True and "not the device" in data["measured_on"]
    as_json = run("bench", str(jetson_bundle), "--simulated", "--iterations", "3", "--seconds", "0", "--json")
    assert json.loads(as_json.stdout)["simulated"] is True
