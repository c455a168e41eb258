"""Shared fixtures: real data sets when this machine has them, and tiny synthetic stand-ins."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from resnet_deploy.calibration.sources import fashion_mnist_dir

# The project's root is parents[1]; the shared data sets live beside it, never inside the package.
SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
CIFAR10_DIR = SHARED_DATASETS / "cifar10"


@pytest.fixture(scope="session")
def cifar10_dir() -> Path:
    if not (CIFAR10_DIR / "train").is_dir() or not (CIFAR10_DIR / "test").is_dir():
        pytest.skip(f"CIFAR-10 ImageFolder not present at {CIFAR10_DIR} (see ../shared/datasets/README.md)")
    return CIFAR10_DIR


@pytest.fixture(scope="session")
def fashion_mnist() -> Path:
    folder = fashion_mnist_dir()
    if folder is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    return folder


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread: on a shared, busy 2-core machine the small tensors of these tests run
    10-100x faster than with a contended pool. Restored afterwards for modules that measure speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """An unsigned-byte IDX file, the format of (Fashion-)MNIST; gzipped when the name ends in .gz."""
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_idx_split(folder: Path, stem: str, images: np.ndarray, labels: np.ndarray, *, gz: bool = False) -> None:
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", labels)


def randomize_bn(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Give every batch-norm non-trivial statistics and affine terms, so folding is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
    return model
