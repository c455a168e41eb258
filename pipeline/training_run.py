"""The `train` command's library side: resolve data and preprocessing, train, report progress."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from resnet_deploy import interrupts
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import ImageSource, has_split, open_source
from resnet_deploy.console import Ui
from resnet_deploy.errors import CheckpointError, ConfigError, DataError, ResnetDeployError
from resnet_deploy.pipeline import checkpoint as ckpt
from resnet_deploy.pipeline import out_lock
from resnet_deploy.pipeline.train import TrainResult, TrainSettings, channel_stats, train


def native_size(source: ImageSource) -> tuple[tuple[int, int], int]:
    """(H, W) and channel count of the first readable image: the default input record for training."""
    images = getattr(source, "images", None)
    if images is not None:
        return tuple(images.shape[1:3]), 1 if images.ndim == 3 else images.shape[3]
    first_error = ""
    for index in range(min(len(source), 20)):
        try:
            img = source.read(index)
        except (OSError, ValueError) as err:
            first_error = f"{source.ident(index)}: {err}"
            continue
        return (img.size[1], img.size[0]), 1 if img.mode in ("L", "I;16", "I", "F", "1") else 3
    raise DataError(f"--data: none of the first images of {source.name} could be read (first: {first_error}). "
                    "Remove or re-encode the broken files, or pass --input-size and --channels.")


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


RUN_MARKER = "run.json"  # written into every run folder: how a later `train --out` knows a run of ours
_RUN_FILES = ("last.pt", "model.safetensors")


def is_training_run(out: Path) -> bool:
    """A folder a `resnet-deploy train` wrote: our run.json, or (runs before run.json) a checkpoint of ours."""
    try:
        marker = json.loads((out / RUN_MARKER).read_text())
        if isinstance(marker, dict) and marker.get("tool") == "resnet-deploy":
            return True
    except (OSError, ValueError):
        pass
    for name in _RUN_FILES:
        if (out / name).is_file():
            try:
                meta = ckpt.read_checkpoint(out / name)[1]
            except (ResnetDeployError, OSError, ValueError):  # unreadable: not recognisably ours
                meta = None
            if isinstance(meta, dict) and "train" in meta:
                return True
    return False


def check_run_folder(out: Path, *, resume: bool) -> None:
    """Before any data is read: --out is new or empty, or a run of ours (which only --resume continues)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the training run.")
    last = out / "last.pt"
    if out.is_dir() and any(out.iterdir()):
        if not is_training_run(out):
            raise ConfigError(f"--out {out} is not empty and is not a resnet-deploy training run (no {RUN_MARKER}); "
                              "training would overwrite files in it. Choose an empty or new folder for --out.")
        if not resume and any((out / name).is_file() for name in _RUN_FILES):
            held = ", ".join(n for n in _RUN_FILES if (out / n).is_file())
            raise ConfigError(f"--out {out} already holds a training run ({held}); "
                              "pass --resume to continue it, or choose another --out.")
    if resume and not last.is_file():
        raise CheckpointError(f"--resume: no {last} to resume from. Run without --resume first.")


def run_training(settings: TrainSettings, *, data: str, test_data: str | None, out: Path, input_size=None,
                 channels=None, mean=None, std=None, resume: bool = False, ui: Ui) -> TrainResult | None:
    """Check --out, hold its lock (rank 0: the one that writes), mark it as a run, then train."""
    check_run_folder(out, resume=resume)
    rank = int(os.environ.get("RANK", "0"))
    with out_lock.hold(out, what="train") if rank == 0 else contextlib.nullcontext():
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / RUN_MARKER).write_text(json.dumps({"tool": "resnet-deploy", "kind": "train", "arch": settings.arch,
                                                      "epochs": settings.epochs, "seed": settings.seed}) + "\n")
        return _run_training(settings, data=data, test_data=test_data, out=out, input_size=input_size,
                             channels=channels, mean=mean, std=std, resume=resume, ui=ui)


def _no_epoch_finished(out: Path) -> str:
    last = out / "last.pt"
    if last.is_file():
        return f"no epoch finished in this run; {last} is as it was (continue with --resume)."
    return f"no epoch finished, so {out} holds no checkpoint yet."


def _run_training(settings: TrainSettings, *, data: str, test_data: str | None, out: Path, input_size=None,
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

        with interrupts.saying(_no_epoch_finished(out)):  # after an epoch, its checkpoint's own sentence holds
            result = train(settings, train_source, prep, out, test_source=test_source, resume=resume,
                           on_progress=progress)
    return result if rank == 0 else None


