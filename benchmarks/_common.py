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
    calibration_labels: np.ndarray
    evaluation: np.ndarray
    prep: Preprocessing
    source: str


def real_images(size: int, *, calib: int, evals: int = 0, data: Path = CIFAR10, seed: int = 0) -> Images:
    """Calibration images from the training split and evaluation images from the test split."""
    if (data / "train").is_dir() and (data / "test").is_dir():
        spec = str(data)
    elif fashion_mnist_dir() is not None:
        print(f"note: {data} is absent; calibrating on Fashion-MNIST (grey, replicated to RGB) instead",
              file=sys.stderr)
        spec = "fashion-mnist"
    else:
        raise SystemExit(f"no real images: {data} is absent and Fashion-MNIST is not installed "
                         "(apt-get install dataset-fashion-mnist). Benchmarks calibrate on real images only.")
    train, test = open_source(spec, "train", flag="--data"), open_source(spec, "test", flag="--data")
    prep = Preprocessing((size, size), 3, class_names=train.class_names)
    cal = decode(train, choose(len(train), calib, seed=seed + 1), prep, flag="--data")
    out = decode(test, choose(len(test), evals, seed=seed), prep, flag="--data") if evals else None
    empty = np.empty((0, 3, size, size), np.float32)
    return Images(cal.inputs(prep), cal.labels, out.inputs(prep) if out is not None else empty, prep, train.name)


def export_model(arch: str, size: int, work: Path, sample: np.ndarray, *, num_classes: int = 1000,
                 bn_data: np.ndarray | None = None, probe: tuple[np.ndarray, np.ndarray] | None = None,
                 seed: int = 0):
    """A random-init model, BN-folded and exported to ``work/<arch>.onnx``; returns (model, onnx path).

    ``bn_data``: re-estimate BN statistics on these real images first, so activations have the
    per-channel scale of a trained network. ``probe`` (images, labels): replace the classifier by a
    class-centroid head on the random features of these images, so logits have the class structure
    and margins of a (weak) trained classifier. Without both, a random net's logits are
    near ties and agreement checks measure noise.
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
    if probe is not None:
        model.fc = _centroid_head(model, *probe)
    folded, _ = fold_batchnorm(model)
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{arch}_{size}.onnx"
    export_onnx(folded, path, sample=sample[:4], metadata={"resnet_deploy.arch": arch})
    return model, path


def _centroid_head(model, images: np.ndarray, labels: np.ndarray):
    """A linear layer scoring each class by its centroid direction in the model's pooled features.

    Class-mean weights use the high-variance directions the classes actually differ in, so their
    margins are real; a least-squares fit on few images (d=2048 > n) would lean on near-constant
    features and turn any rounding, INT8 or not, into flipped predictions.
    """
    import torch

    with torch.no_grad():
        feats = torch.cat([torch.flatten(model.avgpool(model.forward_features(torch.from_numpy(images[i : i + 32]))), 1)
                           for i in range(0, len(images), 32)]).double()
        mu = feats.mean(0)
        scale = float((feats - mu).std()) + 1e-12
        labels_t = torch.from_numpy(labels).long()
        k = int(labels.max()) + 1
        w = torch.stack([(feats[labels_t == c].mean(0) - mu) if (labels_t == c).any() else torch.zeros_like(mu)
                         for c in range(k)]) / scale**2
        head = torch.nn.Linear(feats.shape[1], k)
        head.weight.copy_(w.float())
        head.bias.copy_((-(w @ mu)).float())
    return head


@contextlib.contextmanager
def quiet():
    """Quantizers draw progress bars on stdout; keep the benchmark's output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def ort_session(path: Path, *, threads: int | None = None, spin: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


def torch_runner(model, *, threads: int | None = None):
    import torch

    model = model.eval()
    if threads:
        torch.set_num_threads(threads)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run
