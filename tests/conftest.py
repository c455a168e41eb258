"""Shared fixtures: real data sets when this machine has them, and tiny synthetic stand-ins."""

from __future__ import annotations

import contextlib
import gc
import gzip
import importlib.util
import os
import shutil
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pytest
from click.testing import CliRunner
from filelock import FileLock

from resnet_deploy.calibration.sources import fashion_mnist_dir

if TYPE_CHECKING:
    from torch import nn

# pytest-xdist runs one worker per core: a worker's PyTorch (and the CLIs it starts) on one intra-op thread.
# Two OpenMP pools of two threads on two cores spin at each other's barriers: measured 5.6x slower here.
# The xdist controller never imports torch (it runs no test): it starts the workers 2 s sooner.
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

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


# The one real bundle most tests read: the embedded default for both CPU targets and the simulated Jetson
# (xavier-nx, for its DLA), on 500 evaluation and 100 calibration images, with short latency runs and no
# mixed-precision fallback (tests/test_fallback.py and the slow hard-model checks cover it), and one range rule
# per target where the default `auto` quantizes with each (tests/targets/test_calib_method.py and
# test_tensorrt_qdq.py cover it).
# `python -c NO_TORCH ARGS`: the CLI with ARGS, then whether anything imported torch (on stderr). A build from
# --onnx must not (the README says so, and the fault and plug-in tests' speed rests on it).
NO_TORCH = ("import runpy, sys\n"
            "sys.argv[0] = 'resnet-deploy'\n"
            "try:\n    runpy.run_module('resnet_deploy', run_name='__main__')\n"
            "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")

# Its gate is 2 points, not the default 1: on 500 images Newcombe's interval of a 0.6-point drop made of 3 changed
# answers is +-1.03 points, and the integer kernels of a host with VNNI (AVX-512) and of one without change one or
# two answers: at 1 point the same code built PASSED on one host and UNVERIFIED on the other.
SHARED_BUILD = ("--target", "openvino", "--target", "onnxruntime", "--target", "jetson", "--device", "xavier-nx",
                "--eval-samples", "500", "--calib-samples", "100", "--latency-seconds", "0.05", "--fallback", "off",
                "--calib-method", "openvino=mean_max,onnxruntime=max,jetson=max", "--max-drop", "2")


@pytest.fixture(scope="session")
def shared_bundle(tmp_path_factory, fashion_mnist) -> Iterator[Path]:
    """``SHARED_BUILD``, made once per test session by whichever pytest-xdist worker asks first, then read by
    all: a test that changes a bundle takes ``bundle_copy``. Checked against its manifest at the end, so a
    test that wrote into it fails the session."""
    from resnet_deploy.cli import main
    from resnet_deploy.pipeline.bundle import verify_bundle

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    out = root / "shared-bundle"
    with FileLock(str(root / "shared-bundle.lock")):
        if not (out / "manifest.json").is_file():
            result = CliRunner().invoke(main, ["build", *SHARED_BUILD, "--out", str(out), "-q"])
            assert result.exit_code == 0, result.output
    yield out
    verify_bundle(out)


# The files that keep one worker busiest (seconds, `make test` on 2 cores, 2026-11-29). Under --dist loadfile a file
# is one indivisible unit: started last, a long one leaves the other workers idle at the end.
LONG_FILES = {"robustness/test_faults.py": 32, "test_example_plugin.py": 19, "test_models_family.py": 18,
              "targets/test_float_layers.py": 15, "targets/test_contract.py": 14, "test_train.py": 11,
              "test_build.py": 10, "robustness/test_inputs.py": 9, "test_checkpoint.py": 9, "test_models.py": 8,
              "targets/test_calib_method.py": 8}


def pytest_collection_modifyitems(config, items):
    """The order pytest-xdist hands out files in (`make test` runs --dist loadfile --no-loadscope-reorder): first
    the first file that reads the shared bundle, so that one worker builds it while the others run, then the
    long files first (longest processing time first: the short ones fill the end). A worker waiting on the
    bundle's lock costs no CPU: there are more workers than cores."""
    tests = Path(__file__).parent
    first = next((str(item.path) for item in items if "shared_bundle" in item.fixturenames), None)

    def order(item) -> tuple[bool, int]:
        path = Path(item.path)
        relative = path.relative_to(tests).as_posix() if path.is_relative_to(tests) else path.name
        return str(path) != first, -LONG_FILES.get(relative, 0)

    items.sort(key=order)


def pytest_collection_finish(session):
    """Everything imported and collected so far lives for the whole session: out of the cyclic garbage
    collector's reach (``gc.freeze``), its full collections stop walking torch's, NNCF's and OpenVINO's
    module objects again and again (measured: full collections took 3.6 s of CPU over `make test`, 2.9 s after)."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def shared_build_flags() -> tuple[str, ...]:
    return SHARED_BUILD


@pytest.fixture()
def bundle_copy(shared_bundle, tmp_path) -> Path:
    """A private copy of the shared bundle, to change."""
    return Path(shutil.copytree(shared_bundle, tmp_path / "bundle", symlinks=True))


@pytest.fixture()
def stub_target() -> Iterator[str]:
    """``--target contract-stub`` (tests/stub_target.py) registered for one test: a build through it costs the
    shared stages only, for tests of error paths and of the build chain rather than of a quantizer."""
    from stub_target import StubTarget

    from resnet_deploy.targets import register, unregister

    register(StubTarget)
    yield StubTarget.name
    unregister(StubTarget.name)


@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread: on a shared, busy 2-core machine the small tensors of these tests run
    10-100x faster than with a contended pool. Restored afterwards for modules that measure speed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def script_module(path: Path) -> Iterator[ModuleType]:
    """A script of benchmarks/ or scripts/ imported as a module, registered in ``sys.modules`` while in use
    (dataclasses look their module up while the class is built)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(path.stem, None)


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
    import torch
    from torch import nn

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


@pytest.fixture(scope="session")
def hard_checkpoint(tmp_path_factory) -> Path:
    """scripts/make_hard_model.py's model, made from the embedded checkpoint: one outlier channel in layer2.1,
    compensated in the next convolution so FP32 is unchanged (tests/test_hard_model.py checks that)."""
    from resnet_deploy.pipeline.checkpoint import load_model, save_safetensors
    from resnet_deploy.pipeline.settings import EMBEDDED_MODEL

    loaded = load_model(EMBEDDED_MODEL)
    path = tmp_path_factory.mktemp("hard") / "hard.safetensors"
    with script_module(Path(__file__).resolve().parents[1] / "scripts" / "make_hard_model.py") as module:
        save_safetensors(path, module.make_hard(loaded.model), {**loaded.meta, "hard_model": {
            "block": module.BLOCK, "channel": module.CHANNEL, "factor": module.FACTOR}})
    return path
