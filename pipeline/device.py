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

from resnet_deploy.calibration.images import MAX_PIXELS, UnreadableImage, open_image
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


def open_bundle(path: Path, *, check_hashes: bool = True, device_records: bool = True) -> LoadedBundle:
    """A bundle whose files all match their manifest hashes (cheap next to loading a model).

    Only listed files are read: an unlisted ``device_artifacts.json`` is ignored, and every model file an
    artifact names must be listed too, or be an engine outside the bundle that device-build recorded with
    its sha256 (checked in ``load_runner``). ``device_records=False`` (for device-build itself, which
    rewrites them) neither checks nor reads what device-build wrote.
    """
    if not path.is_dir():
        raise BundleError(f"BUNDLE: {path} is not a folder. Give the --out folder of `resnet-deploy build`.")
    manifest = bundle_io.verify_bundle(path, check_hashes=check_hashes, skip_device_files=not device_records)
    bundle_io.require_listed(path, manifest, (bundle_io.REPORT_JSON, bundle_io.PREPROCESSING, bundle_io.EVAL_SAMPLE))
    try:
        report = json.loads((path / bundle_io.REPORT_JSON).read_text())
        prep = Preprocessing.from_dict(json.loads((path / bundle_io.PREPROCESSING).read_text()),
                                       origin=bundle_io.PREPROCESSING)
        artifacts = tuple(Artifact.from_dict(a) for a in report.get("artifacts", []))
        device: tuple[Artifact, ...] = ()
        if device_records and bundle_io.DEVICE_ARTIFACTS in manifest["files"]:  # engines built by device-build
            device = tuple(Artifact.from_dict(a) for a in json.loads((path / bundle_io.DEVICE_ARTIFACTS).read_text()))
    except ConfigError as err:
        raise BundleError(f"{path}: the bundle is damaged: {err} Rebuild or copy the bundle again.") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise BundleError(f"{path}: report.json, preprocessing.json or device_artifacts.json is damaged "
                          f"({err.__class__.__name__}: {err}). Rebuild or copy the bundle again.") from None
    for a in device + artifacts:
        if a.path.startswith("/") and any(a is d for d in device):
            if not bundle_io.is_sha256(a.extra.get("sha256")):
                raise BundleError(f"{path}: {bundle_io.DEVICE_ARTIFACTS} records the engine {a.path} without its "
                                  "sha256. Run `resnet-deploy device-build` again.")
            continue
        bundle_io.require_listed(path, manifest, [a.path, *a.extra.get("files", [])])
    return LoadedBundle(path, prep, device + artifacts, report)


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
    if Path(artifact.path).is_absolute():  # an engine in a --cache-dir outside the bundle: its own recorded hash
        bundle_io.verify_external(Path(artifact.path), sha256=artifact.extra.get("sha256", ""),
                                  size=artifact.extra.get("bytes"))
    try:
        return get_target(artifact.target).load(artifact, b.path, threads=threads, hint=hint)
    except ResnetDeployError:
        raise
    except Exception as err:  # the runtimes raise their own types for unreadable models
        raise BundleError(f"{b.path / artifact.path} cannot be loaded by {artifact.runtime} "
                          f"({err.__class__.__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}). "
                          "The file may be damaged or from a newer runtime: rebuild or copy the bundle again.") from None


def read_image(path: Path, prep: Preprocessing) -> np.ndarray:
    """One image file as the model's input (C, H, W); DataError naming the file and the cause."""
    try:
        with open_image(path, min_side=prep.resize_side) as img:
            return prep(img)
    except FileNotFoundError:
        raise DataError(f"IMAGE: {path} does not exist.") from None
    except PermissionError:
        raise DataError(f"IMAGE: {path} cannot be read (permission denied).") from None
    except UnreadableImage as err:
        raise DataError(f"IMAGE: {path} is not a readable image ({err}). Give JPEG, PNG, BMP or WebP files "
                        f"of at most {MAX_PIXELS:,} pixels.") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"IMAGE: {path} is not a readable image ({err.__class__.__name__}). "
                        "Give JPEG, PNG, BMP or WebP files.") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def infer(b: LoadedBundle, runner: Runner, paths: Sequence[Path], *, top: int = 5,
          chunk: int = 64) -> list[dict[str, Any]]:
    """One entry per path, in order: ``{"image", "top": [...]}``, or ``{"image", "error"}`` for a file that
    cannot be read (the others are still answered). Images are decoded ``chunk`` at a time."""
    names = b.prep.class_names
    out: list[dict[str, Any]] = []
    for start in range(0, len(paths), chunk):
        inputs, answered = [], []
        for p in paths[start : start + chunk]:
            try:
                inputs.append(read_image(p, b.prep))
            except DataError as err:
                out.append({"image": str(p), "error": str(err)})
                continue
            answered.append({"image": str(p)})
            out.append(answered[-1])
        if not inputs:
            continue
        probs = softmax(np.asarray(runner.run(np.stack(inputs)), dtype=np.float64))
        for entry, row in zip(answered, probs):
            best = np.argsort(-row)[:top]
            entry["top"] = [{"class": names[i] if i < len(names) else str(i), "index": int(i),
                             "probability": float(row[i])} for i in best]
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
