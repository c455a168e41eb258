"""What the CPU benchmarks share: real images at the model's size, a folded + exported model, runners.

Random-init weights are fine for speed, but quantizers must see real images, so calibration comes
from ``../shared/datasets/cifar10/train`` (upsampled to the model's size by the project's own
preprocessing) and falls back to Fashion-MNIST when CIFAR-10 is absent.
"""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import fashion_mnist_dir, open_source

CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10"


@dataclass(frozen=True)
class Images:
    calibration: np.ndarray  # float32 NCHW, normalised with ``prep``
    evaluation: np.ndarray
    prep: Preprocessing
    source: str


def real_images(size: int, *, calib: int, evals: int = 0, data: Path = CIFAR10, seed: int = 0) -> Images:
    """Calibration images from the training split and evaluation images from the test split."""
    if (data / "train").is_dir() and (data / "test").is_dir():
        spec = str(data)
    elif fashion_mnist_dir() is not None:
        print(f"note: {data} is absent; calibrating on Fashion-MNIST (grey, replicated to RGB) instead", file=sys.stderr)
        spec = "fashion-mnist"
    else:
        raise SystemExit(f"no real images: {data} is absent and Fashion-MNIST is not installed "
                         "(apt-get install dataset-fashion-mnist). Benchmarks calibrate on real images only.")
    train, test = open_source(spec, "train", flag="--data"), open_source(spec, "test", flag="--data")
    prep = Preprocessing((size, size), 3, class_names=train.class_names)
    cal = decode(train, choose(len(train), calib, seed=seed + 1), prep, flag="--data")
    out = decode(test, choose(len(test), evals, seed=seed), prep, flag="--data") if evals else None
    empty = np.empty((0, 3, size, size), np.float32)
    return Images(cal.inputs(prep), out.inputs(prep) if out is not None else empty, prep, train.name)


def export_model(arch: str, size: int, work: Path, sample: np.ndarray, *, num_classes: int = 1000,
                 bn_data: np.ndarray | None = None, seed: int = 0):
    """A random-init model, BN-folded and exported to ``work/<arch>.onnx``; returns (model, onnx path).

    ``bn_data``: re-estimate BN statistics on these real images first, so activations have the
    per-channel scale of a trained network and logits vary from image to image (agreement checks
    on a random net whose argmax is one class for every image would prove nothing).
    """
    import torch

    from resnet_deploy.models import build_model
    from resnet_deploy.pipeline.export import export_onnx
    from resnet_deploy.pipeline.fold import fold_batchnorm

    torch.manual_seed(seed)
    model = build_model(arch, num_classes=num_classes).eval()
    if bn_data is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average over all batches
        model.train()
        with torch.no_grad():
            for i in range(0, len(bn_data), 32):
                model(torch.from_numpy(bn_data[i : i + 32]))
        model.eval()
    folded, _ = fold_batchnorm(model)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{arch}_{size}.onnx"
    export_onnx(folded, path, sample=sample[:4], metadata={"resnet_deploy.arch": arch})
    return model, path


@contextlib.contextmanager
def quiet():
    """Quantizers draw progress bars on stdout; keep the benchmark's output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def ort_session(path: Path, *, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def ov_runner(model, config: dict | None = None, *, static_batch: int | None = None):
    """Compile an ``ov.Model`` (or IR path) for CPU; ``static_batch`` reshapes the input batch first."""
    import openvino as ov

    core = ov.Core()
    if not isinstance(model, ov.Model):
        model = core.read_model(str(model))
    if static_batch:
        model = model.clone()
        shape = list(model.input(0).get_partial_shape())
        model.reshape([static_batch, *[d.get_length() for d in shape[1:]]])
    compiled = core.compile_model(model, "CPU", config or {})
    request = compiled.create_infer_request()
    out = compiled.output(0)
    return lambda x: np.asarray(request.infer({0: x})[out])


def torch_runner(model):
    import torch

    model = model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run
