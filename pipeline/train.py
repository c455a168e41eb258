"""A real training loop: SGD + momentum + weight decay, cosine or one-cycle LR, crops and flips.

Runs unchanged under ``torchrun`` (DistributedDataParallel: NCCL on GPUs, gloo on CPUs); rank 0
alone writes checkpoints and prints. ``resume`` continues from the last epoch's checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from resnet_deploy import interrupts
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import decode
from resnet_deploy.calibration.sources import ImageSource
from resnet_deploy.errors import CheckpointError, ConfigError
from resnet_deploy.models import build_model, get_arch
from resnet_deploy.pipeline import checkpoint as ckpt
from resnet_deploy.pipeline.int8_aware import FakeInt8, consistency_loss, freeze_bn
from resnet_deploy.ranges import SEED_MAX, THREADS_MAX, check_float, check_int


@dataclass(frozen=True)
class TrainSettings:
    arch: str = "resnet20"
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # "cosine" | "onecycle"
    label_smoothing: float = 0.0
    flip: bool = True
    pad_crop: int | None = None  # pixels of padding for random crops; None = input size / 8
    zero_init_residual: bool = True  # each residual branch's last BN starts at 0 (ResNet.zero_init_residual)
    init_from: str | None = None  # a checkpoint to start from (fine-tuning) instead of a fresh initialisation
    int8_aware: float = 0.0  # weight of the fake-INT8 consistency term (pipeline/int8_aware.py); 0: off
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        get_arch(self.arch)
        check_int(self.epochs, "--epochs", lo=1, hi=100_000)
        check_int(self.batch_size, "--batch-size", lo=1, hi=65_536)
        check_float(self.lr, "--lr", lo=0.0, hi=100.0, lo_open=True)
        check_float(self.momentum, "--momentum", lo=0.0, hi=0.999)
        check_float(self.weight_decay, "--weight-decay", lo=0.0, hi=1.0)
        check_float(self.int8_aware, "--int8-aware", lo=0.0, hi=100.0)
        check_float(self.label_smoothing, "label_smoothing", lo=0.0, hi=0.999)
        check_int(self.pad_crop, "pad_crop", lo=0, hi=1024, optional=True)
        check_int(self.seed, "--seed", lo=0, hi=SEED_MAX)
        check_int(self.threads, "--threads", lo=1, hi=THREADS_MAX, optional=True)
        if self.init_from is not None and not Path(self.init_from).is_file():
            raise CheckpointError(f"--init-from: {self.init_from} does not exist or is not a file. Check the path.")
        if self.int8_aware and not self.init_from:
            raise ConfigError("--int8-aware fine-tunes a trained model (its batch-norm statistics stay as they are): "
                              "give the model's weights with --init-from.")
        if self.schedule not in ("cosine", "onecycle"):
            raise ConfigError(f"--schedule must be cosine or onecycle, got {self.schedule!r}.")


@dataclass
class TrainResult:
    checkpoint: Path
    weights: Path
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    test_top1: float | None = None


def _dist_info() -> tuple[int, int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def augment(x: torch.Tensor, *, pad: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random crops from a zero-padded batch and horizontal flips, on uint8 NCHW."""
    n, _, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
        x = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


def _normalizer(prep: Preprocessing, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    mean = torch.tensor(prep.mean, device=device).view(1, -1, 1, 1) * 255
    std = torch.tensor(prep.std, device=device).view(1, -1, 1, 1) * 255
    return lambda x: (x.float() - mean) / std


def channel_stats(pixels: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 NHWC pixels on the [0, 1] scale."""
    x = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64) / 255.0
    return tuple(round(float(v), 4) for v in x.mean(0)), tuple(round(float(v), 4) for v in x.std(0))


def start_from(path: str, arch: str, *, num_classes: int, in_channels: int) -> nn.Module:
    """The weights of checkpoint ``path`` (read as `build --checkpoint` reads it: safely, by name) as a model of
    ``arch`` to fine-tune. A classifier for another number of classes is replaced by a fresh one, as in
    transfer learning; everything else must fit."""
    loaded = ckpt.load_model(path, arch=arch, in_channels=in_channels, flag="--init-from", fit_flags=("arch",))
    model = loaded.model
    if loaded.num_classes != num_classes:
        fc = model.fc
        model.fc = nn.Linear(fc.in_features, num_classes)
    return model.train()


def evaluate(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, norm, *, batch: int = 500) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(labels), batch):
            logits = model(norm(pixels[i : i + batch]))
            correct += int((logits.argmax(1) == labels[i : i + batch]).sum())
    return correct / max(1, len(labels))


def train(
    settings: TrainSettings,
    train_source: ImageSource,
    prep: Preprocessing,
    out_dir: Path,
    *,
    test_source: ImageSource | None = None,
    resume: bool = False,
    on_progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``settings.arch`` on ``train_source``; write ``last.pt`` each epoch and ``model.safetensors``
    at the end."""
    rank, world, local_rank = _dist_info()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    data = decode(train_source, np.arange(len(train_source)), prep, flag="--data")
    pixels = torch.from_numpy(data.pixels).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(data.labels)
    test = None
    if test_source is not None:
        t = decode(test_source, np.arange(len(test_source)), prep, flag="--test-data")
        test = (torch.from_numpy(t.pixels).permute(0, 3, 1, 2).contiguous().to(device),
                torch.from_numpy(t.labels).to(device))

    num_classes = len(prep.class_names)
    if settings.init_from:
        model = start_from(settings.init_from, settings.arch, num_classes=num_classes, in_channels=prep.channels)
    else:
        model = build_model(settings.arch, num_classes=num_classes, in_channels=prep.channels)
        if settings.zero_init_residual:
            model.zero_init_residual()
    model = model.to(device)
    meta = {"arch": get_arch(settings.arch).name, "shortcut": model.shortcut, "num_classes": num_classes,
            "in_channels": prep.channels, "preprocessing": prep.to_dict(), "train": asdict(settings)}
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=settings.lr, momentum=settings.momentum, nesterov=True,
    )
    per_rank = len(labels) // world
    steps_per_epoch = math.ceil(per_rank / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    sched: torch.optim.lr_scheduler.LRScheduler
    if settings.schedule == "onecycle":
        # Warm up for a quarter of the steps; OneCycleLR divides by zero when that is exactly one step.
        warm_up = 0.25 if total != 4 else 0.5
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=total, pct_start=warm_up)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)

    start_epoch, history = 0, []
    last = out_dir / "last.pt"
    if resume:
        if not last.is_file():
            raise CheckpointError(f"--resume: no {last} to resume from. Run without --resume first.")
        try:
            state = torch.load(last, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for damaged files
            raise CheckpointError(f"--resume: {last} cannot be read ({err.__class__.__name__}); it may be damaged. "
                                  "Delete it to start over.") from None
        saved = state.get(ckpt.META_KEY, {}).get("train", {})
        if saved.get("epochs") != settings.epochs or saved.get("arch") != settings.arch:
            raise ConfigError(
                f"--resume: {last} belongs to a run of {saved.get('arch')} for {saved.get('epochs')} epochs; "
                "resume it with the same --arch and --epochs (the LR schedule depends on them)."
            )
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, history = int(state["epoch"]), list(state.get("history", []))
    net: nn.Module = model
    fake = None
    if settings.int8_aware:
        if world > 1:
            raise ConfigError("--int8-aware runs in one process: start it without torchrun.")
        fake = FakeInt8(model, gen=torch.Generator().manual_seed(settings.seed))
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)

    norm = _normalizer(prep, device)
    pad = settings.pad_crop if settings.pad_crop is not None else max(1, min(prep.input_size) // 8)
    for epoch in range(start_epoch, settings.epochs):
        net.train()
        if fake is not None:
            freeze_bn(model)  # both passes normalise as the folded, deployed model does
        gen = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
        order = torch.randperm(len(labels), generator=gen)[rank::world][:per_rank]
        seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
        for step in range(steps_per_epoch):
            idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
            x = augment(pixels[idx], pad=pad, flip=settings.flip, gen=gen).to(device, non_blocking=True)
            y = labels[idx].to(device, non_blocking=True)
            x = norm(x)
            logits = net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=settings.label_smoothing)
            if fake is not None:
                loss = loss + settings.int8_aware * consistency_loss(model, fake, x, logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            if on_progress and rank == 0:
                on_progress("step", epoch, step + 1,
                            {"loss": loss_sum / seen, "acc": correct / seen, "steps": steps_per_epoch})
        row = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_top1": correct / seen,
               "lr": float(sched.get_last_lr()[0]), "seconds": time.perf_counter() - t0}
        if test is not None and rank == 0:
            row["test_top1"] = evaluate(model, *test, norm)
        history.append(row)
        if rank == 0:
            tmp = last.with_suffix(".tmp")
            with interrupts.critical(done=f"{last} holds epoch {epoch + 1} of {settings.epochs}; "
                                          "continue with the same command and --resume."):
                ckpt.save_checkpoint(tmp, model, meta, optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                     epoch=epoch + 1, history=history)
                tmp.replace(last)
            interrupts.test_point("epoch")
            if on_progress:
                on_progress("epoch", epoch, steps_per_epoch, row)
    if fake is not None:
        fake.remove()
    weights = out_dir / "model.safetensors"
    if rank == 0:
        meta["history"] = history
        with interrupts.critical(done=f"training finished: {weights} and {last} are complete."):
            ckpt.save_safetensors(weights, model.cpu(), meta)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    top1 = history[-1].get("test_top1") if history else None
    return TrainResult(last, weights, settings.epochs - start_epoch, history, top1)
