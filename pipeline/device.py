"""The on-device side of a bundle: pick the best runtime present, infer on images, benchmark.

Needs numpy, Pillow and one runtime (TensorRT, OpenVINO or ONNX Runtime): never torch.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import BundleError, ConfigError, DataError, DependencyError, ResnetDeployError
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.pipeline.evaluate import predict, score
from resnet_deploy.pipeline.latency import LatencySettings, measure
from resnet_deploy.targets import Artifact, Runner, get_target

# Preference when the user does not choose: a device engine, then INT8 on the fastest CPU runtime.
_RUNTIME_ORDER = ("tensorrt", "openvino", "onnxruntime")
_PRECISION_ORDER = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class LoadedBundle:
    path: Path
    prep: Preprocessing
    artifacts: tuple[Artifact, ...]
    report: dict[str, Any]


def open_bundle(path: Path, *, check_hashes: bool = True) -> LoadedBundle:
    """A bundle whose files all match their manifest hashes (cheap next to loading a model)."""
    if not path.is_dir():
        raise BundleError(f"BUNDLE: {path} is not a folder. Give the --out folder of `resnet-deploy build`.")
    bundle_io.verify_bundle(path, check_hashes=check_hashes)
    extra = path / "device_artifacts.json"  # engines built on the device by `device-build`
    try:
        report = json.loads((path / bundle_io.REPORT_JSON).read_text())
        prep = Preprocessing.from_dict(json.loads((path / bundle_io.PREPROCESSING).read_text()))
        artifacts = tuple(Artifact.from_dict(a) for a in report.get("artifacts", []))
        if extra.is_file():
            artifacts = tuple(Artifact.from_dict(a) for a in json.loads(extra.read_text())) + artifacts
    except (ValueError, KeyError, TypeError) as err:
        raise BundleError(f"{path}: report.json, preprocessing.json or device_artifacts.json is damaged "
                          f"({err.__class__.__name__}: {err}). Rebuild or copy the bundle again.") from None
    return LoadedBundle(path, prep, artifacts, report)


def _runtime_present(runtime: str) -> bool:
    module = {"tensorrt": "tensorrt", "openvino": "openvino", "onnxruntime": "onnxruntime"}[runtime]
    return importlib.util.find_spec(module) is not None


def choose_artifact(b: LoadedBundle, *, runtime: str | None = None, precision: str | None = None,
                    target: str | None = None) -> Artifact:
    """The best artifact this machine can run, or the one the flags name."""
    candidates = [a for a in b.artifacts
                  if (runtime is None or a.runtime == runtime) and (precision is None or a.precision == precision)
                  and (target is None or a.target == target)]
    if not candidates:
        have = ", ".join(sorted({f"{a.target}/{a.runtime}/{a.precision}" for a in b.artifacts}))
        raise ConfigError(f"{b.path} has no artifact matching --runtime/--precision/--target; it has: {have}.")
    runnable = [a for a in candidates if _runtime_present(a.runtime)]
    if not runnable:
        needed = sorted({a.runtime for a in candidates})
        raise DependencyError(
            f"None of the runtimes this bundle's models need is installed ({', '.join(needed)}). Install one, e.g. "
            "`pip install resnet-deploy[device]` (ONNX Runtime) or `pip install openvino`."
        )

    def rank(a: Artifact) -> tuple[int, int, int]:
        return (_RUNTIME_ORDER.index(a.runtime), _PRECISION_ORDER.index(a.precision), int(a.simulated))

    return min(runnable, key=rank)


def load_runner(b: LoadedBundle, artifact: Artifact, *, threads: int | None = None, hint: str | None = None) -> Runner:
    try:
        return get_target(artifact.target).load(artifact, b.path, threads=threads, hint=hint)
    except ResnetDeployError:
        raise
    except Exception as err:  # the runtimes raise their own types for unreadable models
        raise BundleError(f"{b.path / artifact.path} cannot be loaded by {artifact.runtime} "
                          f"({err.__class__.__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}). "
                          "The file may be damaged or from a newer runtime: rebuild or copy the bundle again.") from None


def read_images(paths: Sequence[Path], prep: Preprocessing) -> np.ndarray:
    batch = np.empty((len(paths), *prep.shape), dtype=np.float32)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as img:
                img.load()
                batch[i] = prep(img)
        except FileNotFoundError:
            raise DataError(f"IMAGE: {p} does not exist.") from None
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise DataError(f"IMAGE: {p} is not a readable image ({err.__class__.__name__}). "
                            "Give JPEG, PNG, BMP or WebP files.") from None
    return batch


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def infer(b: LoadedBundle, runner: Runner, paths: Sequence[Path], *, top: int = 5) -> list[dict[str, Any]]:
    probs = softmax(np.asarray(runner.run(read_images(paths, b.prep)), dtype=np.float64))
    names = b.prep.class_names or tuple(str(i) for i in range(probs.shape[1]))
    out = []
    for p, row in zip(paths, probs):
        best = np.argsort(-row)[:top]
        out.append({"image": str(p), "top": [{"class": names[i], "index": int(i), "probability": float(row[i])}
                                              for i in best]})
    return out


def bench(b: LoadedBundle, runner: Runner, artifact: Artifact, *, batches: Sequence[int] = (1,),
          latency: LatencySettings = LatencySettings(), accuracy: bool = True) -> dict[str, Any]:
    """Latency per batch size on evaluation images, and top-1 on the bundle's labelled sample."""
    try:
        pixels, labels, names = bundle_io.load_eval_sample(b.path / bundle_io.EVAL_SAMPLE)
    except (OSError, ValueError, KeyError) as err:
        raise BundleError(f"{b.path / bundle_io.EVAL_SAMPLE} is damaged ({err.__class__.__name__}). "
                          "Rebuild or copy the bundle again.") from None
    inputs = b.prep.normalize(pixels)
    rows = []
    for n in batches:
        reps = -(-n // len(inputs))
        batch = np.ascontiguousarray(np.concatenate([inputs] * reps)[:n])
        rows.append(measure(runner.run, batch, latency).to_dict())
    result: dict[str, Any] = {"bundle": str(b.path), "artifact": artifact.to_dict(), "runner": runner.description,
                              "latency": rows}
    if accuracy:
        acc = score(predict(runner.run, inputs), labels, len(names))
        built = next((r for r in b.report.get("results", []) if r["artifact"] == artifact.path), None)
        result["accuracy"] = {"images": len(labels), "top1": round(acc.top1, 6),
                              "build_top1_same_images": built.get("sample_top1") if built else None}
    return result
