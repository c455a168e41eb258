"""The on-device side of a bundle: pick the best runtime present, infer on images, benchmark.

Needs numpy, Pillow and one runtime (TensorRT, OpenVINO or ONNX Runtime): never torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from resnet_deploy.calibration.images import MAX_PIXELS, UnreadableImage, open_image
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import BundleError, ConfigError, DataError, DependencyError, ResnetDeployError
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.pipeline import out_lock
from resnet_deploy.pipeline.evaluate import predict, score
from resnet_deploy.pipeline.latency import LatencySettings, measure, measure_throughput
from resnet_deploy.pipeline.records import Report
from resnet_deploy.targets import Artifact, Runner, Target, ThroughputRunner, get_target, list_targets, runtimes

_PRECISION_ORDER = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class LoadedBundle:
    path: Path
    prep: Preprocessing
    artifacts: tuple[Artifact, ...]
    report: Report


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
        report = Report.from_json(json.loads((path / bundle_io.REPORT_JSON).read_text()))
        prep = Preprocessing.from_dict(json.loads((path / bundle_io.PREPROCESSING).read_text()),
                                       origin=bundle_io.PREPROCESSING)
        artifacts = report.artifacts
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
            if not bundle_io.is_sha256(a.sha256):
                raise BundleError(f"{path}: {bundle_io.DEVICE_ARTIFACTS} records the engine {a.path} without its "
                                  "sha256. Run `resnet-deploy device-build` again.")
            continue
        bundle_io.require_listed(path, manifest, [a.path, *a.files])
    return LoadedBundle(path, prep, device + artifacts, report)


def choose_artifact(b: LoadedBundle, *, runtime: str | None = None, precision: str | None = None) -> Artifact:
    """The best artifact this machine can run (the most preferred runtime present, then INT8 before FP16
    before FP32, then a real artifact before a simulation), or the one the flags name."""
    candidates = [a for a in b.artifacts
                  if (runtime is None or a.runtime == runtime) and (precision is None or a.precision == precision)]
    if not candidates:
        have = ", ".join(sorted({f"{a.runtime}/{a.precision}" for a in b.artifacts}))
        raise ConfigError(f"{b.path} has no artifact matching --runtime/--precision; it has (runtime/precision): "
                          f"{have}.")
    known = runtimes()
    runnable = [a for a in candidates if a.runtime in known and known[a.runtime].present()]
    if not runnable:
        needed = sorted({a.runtime for a in candidates})
        hints = "; ".join(f"{n}: {known[n].install}" if n in known else
                          f"{n}: no installed resnet-deploy target loads it (install the target's plug-in)"
                          for n in needed)
        raise DependencyError(f"None of the runtimes this bundle's models need is installed here ({hints}).")

    def rank(a: Artifact) -> tuple[int, int, int]:
        return (-known[a.runtime].preference, _PRECISION_ORDER.index(a.precision) if a.precision in
                _PRECISION_ORDER else len(_PRECISION_ORDER), int(a.simulated))

    return min(runnable, key=rank)


def artifact_to_time(bundle: Path, *, runtime: str | None, precision: str | None, simulated_ok: bool,
                     ui: Any = None) -> tuple[LoadedBundle, Artifact]:
    """The artifact ``bench`` times. A CPU simulation of a device model is never passed off as the device:
    its target's on-device build step runs first where it can (TensorRT present); otherwise the simulation
    is refused unless ``simulated_ok``, and then every figure is labelled as a simulation."""
    b = open_bundle(bundle)
    artifact = choose_artifact(b, runtime=runtime, precision=precision)
    if not artifact.simulated:
        return b, artifact
    target = get_target(artifact.target)
    why = f"--target {artifact.target} has no on-device build step"
    if target.has_device_build(bundle):
        try:
            for line in device_build(bundle, {}):
                if ui is not None:
                    ui.info(line)
            b = open_bundle(bundle)
            built = choose_artifact(b, runtime=runtime, precision=precision)
            if not built.simulated:
                return b, built
            why = "the engine was built but this machine cannot run it"
        except DependencyError as err:
            why = str(err)
    if simulated_ok:
        return b, artifact
    raise ConfigError(
        f"{bundle}: the {artifact.target} {artifact.precision} row is a CPU simulation of the device's engine, so "
        f"timing it would not measure the device. The engine could not be built here ({why}) Run "
        f"`resnet-deploy device-build {bundle}` on the device, or pass --simulated to time the simulation, "
        "labelled as such.")


def load_runner(b: LoadedBundle, artifact: Artifact, *, threads: int | None = None, hint: str | None = None) -> Runner:
    return _load(b, artifact, lambda target: target.load(artifact, b.path, threads=threads, hint=hint))


def load_throughput_runner(b: LoadedBundle, artifact: Artifact, *, threads: int | None = None) -> ThroughputRunner:
    """``artifact`` in its runtime's throughput mode (requests in flight), checked as ``load_runner``."""
    return _load(b, artifact, lambda target: target.load_throughput(artifact, b.path, threads=threads))


def _load(b: LoadedBundle, artifact: Artifact, load: Callable[[Target], Any]) -> Any:
    if Path(artifact.path).is_absolute():  # an engine in a --cache-dir outside the bundle: its own recorded hash
        bundle_io.verify_external(Path(artifact.path), sha256=artifact.sha256 or "")
    try:
        target = get_target(artifact.target)
    except ConfigError:
        raise DependencyError(f"{b.path}: {artifact.path} was made by the target {artifact.target!r}, which is not "
                              "installed here; install its plug-in package.") from None
    try:
        return load(target)
    except ResnetDeployError:
        raise
    except Exception as err:  # the runtimes raise their own types for unreadable models
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
        raise BundleError(f"{b.path / artifact.path} cannot be loaded by {artifact.runtime} "
                          f"({err.__class__.__name__}: {first}). "
                          "The file may be damaged or from a newer runtime: "
                          "rebuild or copy the bundle again.") from None


def device_build(bundle: Path, options: Mapping[str, Any], *, force: bool = False,
                 cache_dir: Path | None = None) -> list[str]:
    """On the device: run the on-device build step of each of the bundle's targets that has one here (a
    TensorRT engine), and record what they made, so ``infer``/``bench`` use it.

    The artifacts go into ``device_artifacts.json``; it and the files inside the bundle are added to the
    manifest (``"written_by": "device-build"``) by an atomic rewrite, so the device side trusts them like
    the build's own files. A file outside the bundle (an engine cache elsewhere) is recorded with its
    sha256, checked before loading. The bundle's lock is held throughout. Returns one line per step.
    """
    with out_lock.hold(bundle, flag="BUNDLE", what="device-build"):
        b = open_bundle(bundle, device_records=False)
        installed = set(list_targets())
        names = [n for n in dict.fromkeys(a.target for a in b.artifacts) if n in installed]
        steps = [t for t in (get_target(n) for n in names) if t.has_device_build(bundle)]
        if not steps:
            raise ConfigError(f"{bundle} has nothing to build on a device: its targets ({', '.join(names)}) have no "
                              "on-device build step here.")
        record = bundle / bundle_io.DEVICE_ARTIFACTS
        rebuilt = {t.name for t in steps}
        kept = [a for a in _device_records(record) if a.target not in rebuilt]
        made: list[Artifact] = []
        files: dict[str, Path] = {}
        messages = []
        for t in steps:
            result = t.device_build(bundle, t.parse_device_options(options), force=force, cache_dir=cache_dir)
            made += result.artifacts
            files.update(result.files)
            messages.append(result.message)
        tmp = record.with_name(f"{record.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps([a.to_dict() for a in (*made, *kept)], indent=2) + "\n")
        os.replace(tmp, record)
        keep = [p for a in kept if not Path(a.path).is_absolute() for p in (a.path, *a.files)]
        bundle_io.record_device_files(bundle, {bundle_io.DEVICE_ARTIFACTS: record, **files}, keep=keep)
    return messages


def _device_records(record: Path) -> list[Artifact]:
    """The artifacts an earlier device-build recorded (none when the record is missing or damaged)."""
    try:
        return [Artifact.from_dict(a) for a in json.loads(record.read_text())]
    except (OSError, ValueError, TypeError, KeyError):
        return []


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
        inputs: list[np.ndarray] = []
        answered: list[dict[str, Any]] = []
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


def _sample(b: LoadedBundle) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The bundle's labelled evaluation sample, normalised: what ``bench`` times and scores."""
    try:
        pixels, labels, names = bundle_io.load_eval_sample(b.path / bundle_io.EVAL_SAMPLE)
    except (OSError, ValueError, KeyError) as err:
        raise BundleError(f"{b.path / bundle_io.EVAL_SAMPLE} is damaged ({err.__class__.__name__}). "
                          "Rebuild or copy the bundle again.") from None
    return b.prep.normalize(pixels), labels, names


def _accuracy(b: LoadedBundle, artifact: Artifact, preds: np.ndarray, labels: np.ndarray,
              names: tuple[str, ...]) -> dict[str, Any]:
    acc = score(preds, labels, len(names))
    built = next((r for r in b.report.results if r.artifact == artifact.path), None)
    return {"images": len(labels), "top1": round(acc.top1, 6),
            "build_top1_same_images": built.sample_top1 if built else None}


def bench_throughput(b: LoadedBundle, runner: ThroughputRunner, artifact: Artifact, *,
                     settings: LatencySettings | None = None, accuracy: bool = True) -> dict[str, Any]:
    """Images/s the way the runtime's own tool measures it (its requests in flight over the bundle's sample,
    completed images over wall time), and top-1 on that sample from the same runner."""
    inputs, labels, names = _sample(b)
    stats = measure_throughput(runner.run_many, inputs, settings or LatencySettings(), requests=runner.requests)
    result: dict[str, Any] = {"bundle": str(b.path), "artifact": artifact.to_dict(), "runner": runner.description,
                              "simulated": artifact.simulated, "throughput": stats.to_dict()}
    if artifact.simulated:
        result["measured_on"] = "CPU simulation of the device model, not the device"
    if accuracy:
        result["accuracy"] = _accuracy(b, artifact, np.asarray(runner.run_many(inputs)).argmax(1), labels, names)
    return result


def bench(b: LoadedBundle, runner: Runner, artifact: Artifact, *, batches: Sequence[int] = (1,),
          latency: LatencySettings | None = None, accuracy: bool = True) -> dict[str, Any]:
    """Latency per batch size on evaluation images, and top-1 on the bundle's labelled sample."""
    latency = latency or LatencySettings()
    inputs, labels, names = _sample(b)
    rows = []
    for n in batches:
        reps = -(-n // len(inputs))
        batch = np.ascontiguousarray(np.concatenate([inputs] * reps)[:n])
        rows.append(measure(runner.run, batch, latency).to_dict())
    result: dict[str, Any] = {"bundle": str(b.path), "artifact": artifact.to_dict(), "runner": runner.description,
                              "simulated": artifact.simulated, "latency": rows}
    if artifact.simulated:  # said in the file too, not only on the terminal
        result["measured_on"] = "CPU simulation of the device model, not the device"
    if accuracy:
        result["accuracy"] = _accuracy(b, artifact, predict(runner.run, inputs), labels, names)
    return result
