"""The `train` command's library side: resolve data and preprocessing, train, report progress."""

from __future__ import annotations

import os
from pathlib import Path


from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import ImageSource, has_split, open_source
from resnet_deploy.console import Ui
from resnet_deploy.errors import DataError
from resnet_deploy.pipeline.train import TrainResult, TrainSettings, channel_stats, train


def native_size(source: ImageSource) -> tuple[tuple[int, int], int]:
    """(H, W) and channel count of the first readable image: the default input record for training."""
    images = getattr(source, "images", None)
    if images is not None:
        return tuple(images.shape[1:3]), 1 if images.ndim == 3 else images.shape[3]  # type: ignore[return-value]
    img = source.read(0)
    return (img.size[1], img.size[0]), 1 if img.mode in ("L", "I;16", "I", "F", "1") else 3


def training_preprocessing(source: ImageSource, *, input_size, channels, mean, std) -> Preprocessing:
    size, ch = native_size(source)
    size = input_size or size
    ch = channels or ch
    if mean is None or std is None:
        probe = Preprocessing(size, ch, (0.0,) * ch, (1.0,) * ch, class_names=source.class_names)
        sample = decode(source, choose(len(source), 2000, seed=0), probe, flag="--data")
        m, s = channel_stats(sample.pixels)
        mean, std = mean or m, std or s
    return Preprocessing(size, ch, tuple(mean), tuple(std), class_names=source.class_names)


def run_training(settings: TrainSettings, *, data: str, test_data: str | None, out: Path, input_size=None,
                 channels=None, mean=None, std=None, resume: bool = False, ui: Ui) -> TrainResult | None:
    train_source = open_source(data, "train", flag="--data")
    if len(train_source.class_names) < 2:
        raise DataError(f"--data: {train_source.name} has fewer than two classes; nothing to classify.")
    if test_data is not None:
        test_source = open_source(test_data, "test", flag="--test-data")
    elif has_split(data, "test"):
        test_source = open_source(data, "test", flag="--test-data")
    else:
        test_source = None  # a plain ImageFolder has no held-out split: no per-epoch top-1 rather than a false one
        ui.warn(f"--data {data} has no test split and no --test-data was given: no held-out top-1 per epoch.")
    prep = training_preprocessing(train_source, input_size=input_size, channels=channels, mean=mean, std=std)
    rank = int(os.environ.get("RANK", "0"))
    quiet_ui = ui if rank == 0 else Ui(quiet=True)
    quiet_ui.info(f"training {settings.arch} on {train_source.name} ({len(train_source)} images, "
                  f"{len(prep.class_names)} classes, input {prep.shape}, mean {prep.mean}, std {prep.std})")
    with quiet_ui.task("epoch 1", total=None) as bar:
        def progress(kind: str, epoch: int, step: int, row: dict) -> None:
            if kind == "step":
                bar.update(description=f"epoch {epoch + 1}/{settings.epochs}", completed=step, total=int(row["steps"]),
                           note=f"loss {row['loss']:.3f} acc {row['acc']:.3f}")
            else:
                test = f" test top-1 {row['test_top1']:.4f}" if "test_top1" in row else ""
                quiet_ui.info(f"epoch {row['epoch']}: loss {row['loss']:.4f} train top-1 {row['train_top1']:.4f}"
                              f"{test} ({row['seconds']:.0f}s)")

        result = train(settings, train_source, prep, out, test_source=test_source, resume=resume, on_progress=progress)
    return result if rank == 0 else None


