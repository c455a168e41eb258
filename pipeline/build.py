"""The build chain: each stage is a function of what the earlier stages returned, read top to bottom.

    load -> data -> fold BN -> export ONNX -> reference -> compile per target -> validate -> report
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from resnet_deploy import environment, interrupts
from resnet_deploy.calibration.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from resnet_deploy.calibration.sampling import ImageBatch, choose, decode, same_images
from resnet_deploy.calibration.sources import check_classes, has_split, open_source
from resnet_deploy.console import Ui
from resnet_deploy.errors import DataError, GateFailed
from resnet_deploy.host import cpu_name
from resnet_deploy.models import get_arch
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.pipeline import checkpoint as ckpt
from resnet_deploy.pipeline import out_lock
from resnet_deploy.pipeline.evaluate import predict, score
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import FoldCheck, fold_batchnorm, verify_fold
from resnet_deploy.pipeline.html_report import render_html
from resnet_deploy.pipeline.latency import measure
from resnet_deploy.pipeline.records import (
    DataInfo,
    DataSet,
    Host,
    Latency,
    ModelInfo,
    Reference,
    Report,
    ResultRow,
    Stage,
)
from resnet_deploy.pipeline.report import gate, render_markdown
from resnet_deploy.pipeline.settings import EMBEDDED_MODEL, BuildSettings
from resnet_deploy.targets import Artifact, CompileInput, Target, expand, get_target, option_owners, runtimes


@dataclass(frozen=True)
class Data:
    """The data stage's result: the preprocessing record and the decoded images (calibration and
    evaluation never overlap), the indices of the evaluation images the bundle carries, and where they
    came from."""

    prep: Preprocessing
    calib: ImageBatch
    evals: ImageBatch
    sample: np.ndarray
    info: DataInfo

    def check_inputs(self, n: int = 64) -> np.ndarray:
        """Real images for the fold and export checks: from the carried sample, so every class shows up."""
        return self.prep.normalize(self.evals.pixels[self.sample[:n]])


@dataclass(frozen=True)
class Converted:
    """BN folded and exported: the folded model, the ONNX every target compiles from, the two self-checks."""

    folded: torch.nn.Module
    onnx: Path
    checks: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Baseline:
    """The PyTorch FP32 reference on the evaluation images and its per-image predictions."""

    reference: Reference
    predictions: np.ndarray


@dataclass(frozen=True)
class BuildResult:
    """What ``build`` returns: the published bundle and its report."""

    out: Path
    report: Report


class _Stages:
    """Times each stage (wall seconds, peak RSS) and guards it (the tests' pause point, disk errors)."""

    def __init__(self) -> None:
        self.done: list[Stage] = []
        self.staging, self.out = Path(), Path()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        with _guarded(name, self.staging, self.out):
            yield
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self.done.append(Stage(name, round(time.perf_counter() - t0, 3), round(peak_mb, 1)))


def build(settings: BuildSettings, *, ui: Ui) -> BuildResult:
    """Run every stage into a staging folder and publish it as ``settings.out`` when all succeeded."""
    started = time.perf_counter()
    targets = [get_target(name) for name in expand(settings.targets)]
    options = {}
    for target in targets:  # every cheap check before the expensive stages
        target.ensure_available()
        options[target.name] = target.parse_options(settings.target_options)
    _warn_unused_flags(settings, targets, ui)
    stage = _Stages()
    with contextlib.ExitStack() as held:
        if settings.out is not None:  # checked and locked before any checkpoint or image is read
            held.enter_context(_claim_out(settings.out, settings, ui))
        with stage("load"):
            loaded = load_model_stage(settings, ui)
        out = settings.out or Path("build") / f"{loaded.arch}-{'-'.join(t.name for t in targets)}"
        if settings.out is None:  # the default folder is named after the model, so it is claimed once that is known
            held.enter_context(_claim_out(out, settings, ui))
        with interrupts.saying(lambda: _nothing_written(out)), bundle_io.staging(out) as staging:
            stage.staging, stage.out = staging, out
            with stage("data"):
                data = data_stage(settings, loaded, ui)
            with stage("fold"):
                folded, fold_check = fold_stage(loaded, data, ui)
            with stage("export"):
                converted = export_stage(loaded, data, folded, fold_check, staging, ui)
            with stage("reference"):
                baseline = reference_stage(loaded, data, ui)
            artifacts: list[Artifact] = []
            for target in targets:
                with stage(f"compile:{target.name}"):
                    artifacts += compile_stage(target, options[target.name], converted, data, loaded.num_classes,
                                               staging, ui)
            with stage("validate"):
                results = validate_stage(settings, loaded, data, baseline, artifacts, staging, ui)
            with _guarded("report", staging, out):
                report = report_stage(settings, loaded, data, converted, baseline, artifacts, results, stage.done,
                                      staging, time.perf_counter() - started)
            with interrupts.critical(done=f"the new bundle was published to --out {out} just before it."):
                interrupts.test_point("publish")  # a signal here is held back until the bundle is in place
                bundle_io.publish(staging, out, force=settings.force)
    ui.info(f"bundle: {out}  report: {out / 'report.md'}")
    if not report.gate.passed:
        raise GateFailed(
            out,
            "INT8 accuracy gate failed: " + "; ".join(report.gate.failures) +
            f" (--max-drop {settings.max_drop}). The bundle was written to {out} and its report is marked failed; "
            "try more or more representative --calib-samples, or raise --max-drop if the drop is acceptable."
        )
    return BuildResult(out, report)


def _warn_unused_flags(settings: BuildSettings, targets: list[Target], ui: Ui) -> None:
    owners = option_owners()
    for key in settings.target_options:
        takers = owners[key][1] if key in owners else []
        if not any(t.name in takers for t in targets):
            ui.warn(f"--{key.replace('_', '-')} has no effect on --target {', '.join(t.name for t in targets)} "
                    f"(it is a flag of {', '.join(takers) or 'no installed target'}).")


@contextlib.contextmanager
def _claim_out(out: Path, settings: BuildSettings, ui: Ui) -> Iterator[None]:
    """Refuse an --out whose replacement would lose data, then hold its lock until the bundle is published."""
    inputs = [(flag, Path(value)) for flag, value in (("--eval-data", settings.eval_data),
                                                       ("--calib-data", settings.calib_data),
                                                       ("--checkpoint", settings.checkpoint)) if value is not None]
    bundle_io.check_out(out, force=settings.force, inputs=inputs)  # cheap checks first, before the lock file
    with out_lock.hold(out):
        dropped = bundle_io.check_out(out, force=settings.force, inputs=inputs)
        if dropped:
            ui.warn(f"--force: {len(dropped)} file(s) in {out} that its bundle did not write go when the new bundle "
                    f"replaces it: {', '.join(dropped[:5])}{' ...' if len(dropped) > 5 else ''}")
        yield


def _nothing_written(out: Path) -> str:
    """What is true of --out after an interrupt before the publish step (which cannot be cut in half)."""
    if (out / bundle_io.MANIFEST).is_file():
        return f"nothing was written to --out {out}; the previous bundle there is untouched."
    return f"nothing was written to --out {out}" + ("; it is as it was." if out.exists() else ".")


@contextlib.contextmanager
def _guarded(name: str, staging: Path, out: Path) -> Iterator[None]:
    """Around each stage: the tests' pause point, and a library error the disk caused named as such."""
    interrupts.test_point(name)
    with environment.explain(staging if staging != Path() else None, shown=out if out != Path() else None):
        yield


# --- stages ----------------------------------------------------------------------------------------

def load_model_stage(s: BuildSettings, ui: Ui) -> ckpt.LoadedModel:
    if s.checkpoint is not None:
        loaded = ckpt.load_model(s.checkpoint, arch=s.arch, num_classes=s.num_classes)
    elif s.arch is not None:
        spec = get_arch(s.arch)
        ui.warn(f"no --checkpoint: building a RANDOMLY INITIALISED {spec.name}. Its accuracy means nothing; "
                "use it for latency work only.")
        # As many classes as the evaluation data has, so the random model runs through every stage.
        num_classes = s.num_classes or len(open_source(s.eval_data, "test", flag="--eval-data").class_names)
        loaded = ckpt.random_model(spec.name, num_classes=num_classes, in_channels=3)
    else:
        loaded = ckpt.load_model(EMBEDDED_MODEL, num_classes=s.num_classes)
        loaded = replace(loaded, source="embedded:" + EMBEDDED_MODEL.name)
    ui.info(f"model: {loaded.arch}, {loaded.num_classes} classes, {loaded.in_channels} channel(s), "
            f"from {loaded.source}")
    return loaded


def _preprocessing(s: BuildSettings, loaded: ckpt.LoadedModel, class_names: tuple[str, ...]) -> Preprocessing:
    """Flags win over the checkpoint's own record, which wins over the family's defaults."""
    saved = loaded.meta.get("preprocessing")
    if saved:
        base = Preprocessing.from_dict(saved)
    else:
        spec = get_arch(loaded.arch)
        size = spec.default_input_size
        ch = loaded.in_channels
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if ch == 3 else ((0.5,), (0.5,))
        base = Preprocessing((size, size), ch, mean, std, crop_ratio=0.875 if spec.family == "imagenet" else 1.0)
    return Preprocessing(
        input_size=s.input_size or base.input_size, channels=loaded.in_channels,
        mean=s.mean or base.mean, std=s.std or base.std,
        crop_ratio=base.crop_ratio,
        class_names=class_names,
    )


def data_stage(s: BuildSettings, loaded: ckpt.LoadedModel, ui: Ui) -> Data:
    eval_src = open_source(s.eval_data, "test", flag="--eval-data")
    # Without --calib-data, calibrate on the evaluation data's own training split, or on the rest of its
    # folder: never on another data set than the one the user pointed at.
    calib_spec = s.calib_data if s.calib_data is not None else s.eval_data
    calib_src = open_source(calib_spec, "train", flag="--calib-data")
    if s.calib_data is None and s.eval_data is not None and not has_split(s.eval_data, "train"):
        ui.warn(f"no --calib-data: calibrating on images of --eval-data {s.eval_data} set apart from the "
                "evaluation images.")
    check_classes(eval_src, loaded.num_classes, flag="--eval-data")
    prep = _preprocessing(s, loaded, eval_src.class_names)
    eval_idx = choose(len(eval_src), s.eval_samples, seed=s.seed)
    # Calibration never sees an evaluation image, also when both flags name the same folder.
    exclude = eval_idx if same_images(eval_src, calib_src) else None
    calib_idx = choose(len(calib_src), s.calib_samples, seed=s.seed + 1, exclude=exclude)
    if len(calib_idx) < s.calib_samples:
        raise DataError(
            f"--calib-data: {calib_src.name} offers {len(calib_idx)} images (after setting aside the evaluation "
            f"images) but --calib-samples asks for {s.calib_samples}. Lower --calib-samples or add images."
        )
    with ui.task("decode calibration", len(calib_idx)) as bar:
        calib = decode(calib_src, calib_idx, prep, flag="--calib-data", progress=bar.advance)
    with ui.task("decode evaluation", len(eval_idx)) as bar:
        evals = decode(eval_src, eval_idx, prep, flag="--eval-data", progress=bar.advance)
    for name, batch in (("calibration", calib), ("evaluation", evals)):
        if batch.skipped:
            ui.warn(f"{len(batch.skipped)} unreadable {name} image(s) skipped (first: {batch.skipped[0]})")
    info = DataInfo(
        calibration=DataSet(calib_src.name, len(calib), len(calib.skipped), s.seed + 1, calib.digest()),
        evaluation=DataSet(eval_src.name, len(evals), len(evals.skipped), s.seed),
    )
    sample = bundle_io.eval_sample_indices(evals.pixels, limit=s.eval_sample_size, seed=s.seed)
    return Data(prep, calib, evals, sample, info)


def fold_stage(loaded: ckpt.LoadedModel, data: Data, ui: Ui) -> tuple[torch.nn.Module, FoldCheck]:
    folded, count = fold_batchnorm(loaded.model)
    check = verify_fold(loaded.model, folded, torch.from_numpy(data.check_inputs()), count)
    ui.info(f"fold: {count} conv+BN pairs folded, max |diff| {check.max_abs_diff:.2e} ({check.relative:.1e} of scale)")
    return folded, check


def export_stage(loaded: ckpt.LoadedModel, data: Data, folded: torch.nn.Module, fold_check: FoldCheck,
                 staging: Path, ui: Ui) -> Converted:
    path = staging / bundle_io.MODEL_ONNX
    metadata = {"resnet_deploy.preprocessing": data.prep.to_json(), "resnet_deploy.arch": loaded.arch,
                "resnet_deploy.class_names": list(data.prep.class_names)}
    check = export_onnx(folded, path, sample=data.check_inputs(), metadata=metadata)
    bundle_io.write_json(staging / bundle_io.PREPROCESSING, data.prep.to_dict())
    ui.info(f"export: {path.name} opset {check.opset}, max |diff| vs PyTorch {check.max_abs_diff:.2e}")
    return Converted(folded, path, {"fold": fold_check.to_dict(), "export": check.to_dict()})


def reference_stage(loaded: ckpt.LoadedModel, data: Data, ui: Ui) -> Baseline:
    model = loaded.model.eval()
    inputs = data.evals.inputs(data.prep)
    with torch.inference_mode(), ui.task("reference (PyTorch FP32)", len(inputs)) as bar:
        preds = predict(lambda x: model(torch.from_numpy(x)).numpy(), inputs, batch=256, progress=bar.advance)
    acc = score(preds, data.evals.labels, loaded.num_classes)
    ui.info(f"reference: PyTorch FP32 top-1 {acc.top1:.4f} on {len(inputs)} images")
    return Baseline(Reference("pytorch", "fp32", round(acc.top1, 6), tuple(round(v, 6) for v in acc.per_class)),
                    preds)


def compile_stage(target: Target, options: Any, converted: Converted, data: Data, num_classes: int,
                  staging: Path, ui: Ui) -> list[Artifact]:
    ui.info(f"compile: {target.name} ({target.summary})")
    inp = CompileInput(converted.onnx, data.calib.inputs(data.prep), data.prep, options)
    # Quantizers draw their own progress bars on stdout; keep stdout for results (--json).
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(os.devnull, "w")) if ui.quiet else sys.stderr
        with contextlib.redirect_stdout(sink):
            artifacts = list(target.compile(inp, staging))
    target.serving_configs(staging, artifacts, data.prep, num_classes)  # written into the bundle, and listed
    return artifacts


def _artifact_bytes(staging: Path, artifact: Artifact) -> int:
    paths = [artifact.path, *artifact.files]
    return sum((staging / p).stat().st_size for p in paths)


def validate_stage(s: BuildSettings, loaded: ckpt.LoadedModel, data: Data, baseline: Baseline,
                   artifacts: list[Artifact], staging: Path, ui: Ui) -> tuple[ResultRow, ...]:
    inputs = data.evals.inputs(data.prep)
    labels = data.evals.labels
    rows = []
    for artifact in artifacts:
        runner = get_target(artifact.target).load(artifact, staging, threads=s.threads)
        label = f"{artifact.target} {artifact.precision}"
        with ui.task(f"evaluate {label}", len(inputs)) as bar:
            preds = predict(runner.run, inputs, progress=bar.advance)
        acc = score(preds, labels, loaded.num_classes, reference=baseline.predictions)
        lat = measure(runner.run, inputs[:1], s.latency)
        rows.append(ResultRow(
            target=artifact.target, precision=artifact.precision, runtime=artifact.runtime,
            simulated=artifact.simulated, runner=runner.description, top1=round(acc.top1, 6),
            per_class_top1=tuple(round(v, 6) for v in acc.per_class),
            agreement=None if acc.agreement is None else round(acc.agreement, 6), batch=lat.batch,
            iterations=lat.iterations, throughput_ips=round(lat.throughput_ips, 2),
            latency_ms=Latency(*(round(v, 4) for v in (lat.p50, lat.p90, lat.p99, lat.mean, lat.min))),
            artifact=artifact.path, bytes=_artifact_bytes(staging, artifact),
            # top-1 on the images the bundle carries, so `bench` on the device compares like with like
            sample_top1=round(float((preds[data.sample] == labels[data.sample]).mean()), 6),
            samples_ms=tuple(round(v, 4) for v in lat.samples_ms[:1000]),
            details=dict(artifact.details), note=artifact.note))
        ui.info(f"validate: {label:22s} top-1 {acc.top1:.4f} agreement {acc.agreement:.4f} "
                f"p50 {lat.p50:.3f} ms ({runner.description})")
    return tuple(rows)


def _versions() -> dict[str, str]:
    """Versions of the build's own libraries and of every runtime's packages the targets name."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "resnet-deploy": md.version("resnet-deploy")}
    packages = ["torch", "onnx", "numpy", *(p for rt in runtimes().values() for p in rt.packages)]
    for pkg in dict.fromkeys(packages):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def report_stage(s: BuildSettings, loaded: ckpt.LoadedModel, data: Data, converted: Converted, baseline: Baseline,
                 artifacts: list[Artifact], results: tuple[ResultRow, ...], stages: list[Stage], staging: Path,
                 wall: float) -> Report:
    g = gate(baseline.reference.top1, results, s.max_drop)
    bundle_io.save_eval_sample(staging / bundle_io.EVAL_SAMPLE, data.evals.pixels[data.sample],
                               data.evals.labels[data.sample], data.prep.class_names)
    report = Report(
        status="passed" if g.passed else "failed",
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo(loaded.arch, loaded.num_classes, tuple(data.prep.shape), loaded.source, loaded.shortcut,
                        int(sum(p.numel() for p in loaded.model.parameters()))),
        preprocessing=data.prep.to_dict(), data=data.info, reference=baseline.reference, results=results, gate=g,
        checks=converted.checks, stages=tuple(stages),
        commands={k: v for a in artifacts for k, v in a.commands.items()},
        host=Host(cpu_name(), platform.platform(), sys.version.split()[0]), wall_seconds=round(wall, 2),
        artifacts=tuple(artifacts),
    )
    bundle_io.write_json(staging / bundle_io.REPORT_JSON, report.to_json())
    (staging / "report.md").write_text(render_markdown(report))
    (staging / "report.html").write_text(render_html(report))
    bundle_io.write_manifest(staging, versions=_versions(), args=s.to_args(), seed=s.seed,
                             calibration={"count": data.info.calibration.count,
                                          "sha256": data.info.calibration.sha256})
    return report
