"""The build chain: one record flows through the stages, each adding the files and figures it made.

    load -> data -> fold BN -> export ONNX -> reference -> compile per target -> validate -> report
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from resnet_deploy.calibration.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from resnet_deploy.calibration.sampling import ImageBatch, choose, decode, same_images
from resnet_deploy.calibration.sources import check_classes, has_split, open_source
from resnet_deploy import environment, interrupts
from resnet_deploy.console import Ui
from resnet_deploy.errors import DataError, GateFailed
from resnet_deploy.models import get_arch
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.pipeline import checkpoint as ckpt
from resnet_deploy.pipeline import out_lock
from resnet_deploy.pipeline.evaluate import predict, score
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import fold_batchnorm, verify_fold
from resnet_deploy.pipeline.latency import measure
from resnet_deploy.pipeline.html_report import render_html
from resnet_deploy.pipeline.report import SCHEMA, gate, render_markdown
from resnet_deploy.pipeline.settings import EMBEDDED_MODEL, BuildSettings
from resnet_deploy.targets import Artifact, CompileInput, expand, get_target, option_owners, runtimes
from resnet_deploy.host import cpu_name


@dataclass(frozen=True)
class BuildRecord:
    """What the build knows so far. Stages return a new record; nothing is mutated in place."""

    settings: BuildSettings
    staging: Path
    out: Path
    options: dict[str, Any] = field(default_factory=dict)  # each target's parsed options, by target name
    loaded: ckpt.LoadedModel | None = None
    prep: Preprocessing | None = None
    calib: ImageBatch | None = None
    evals: ImageBatch | None = None
    sample: np.ndarray | None = None  # indices into ``evals`` of the images the bundle carries
    data_info: dict[str, Any] = field(default_factory=dict)
    folded: torch.nn.Module | None = None
    onnx: Path | None = None
    checks: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    reference_preds: np.ndarray | None = None
    artifacts: tuple[Artifact, ...] = ()
    notes: dict[tuple[str, str], str] = field(default_factory=dict)
    results: tuple[dict[str, Any], ...] = ()
    stages: tuple[dict[str, Any], ...] = ()
    report: dict[str, Any] = field(default_factory=dict)


def build(settings: BuildSettings, *, ui: Ui) -> BuildRecord:
    """Run every stage into a staging folder and publish it as ``settings.out`` when all succeeded."""
    started = time.perf_counter()
    targets = [get_target(name) for name in expand(settings.targets)]
    options = {}
    for target in targets:  # every cheap check before the expensive stages
        target.ensure_available()
        options[target.name] = target.parse_options(settings.target_options)
    owners = option_owners()
    for key in settings.target_options:
        takers = owners[key][1] if key in owners else []
        if not any(t.name in takers for t in targets):
            ui.warn(f"--{key.replace('_', '-')} has no effect on --target {', '.join(t.name for t in targets)} "
                    f"(it is a flag of {', '.join(takers) or 'no installed target'}).")
    with contextlib.ExitStack() as held:
        if settings.out is not None:  # checked and locked before any checkpoint or image is read
            held.enter_context(_claim_out(settings.out, settings, ui))
        rec = _timed(load_model_stage, "load")(BuildRecord(settings, Path(), Path(), options=options), ui)
        out = settings.out or Path("build") / f"{rec.loaded.arch}-{'-'.join(t.name for t in targets)}"
        if settings.out is None:  # the default folder is named after the model, so it is claimed once that is known
            held.enter_context(_claim_out(out, settings, ui))
        with interrupts.saying(lambda: _nothing_written(out)), bundle_io.staging(out) as staging:
            rec = replace(rec, staging=staging, out=out)
            rec = _timed(data_stage, "data")(rec, ui)
            rec = _timed(fold_stage, "fold")(rec, ui)
            rec = _timed(export_stage, "export")(rec, ui)
            rec = _timed(reference_stage, "reference")(rec, ui)
            for target in targets:
                rec = _timed(lambda r, u, t=target: compile_stage(r, u, t), f"compile:{target.name}")(rec, ui)
            rec = _timed(validate_stage, "validate")(rec, ui)
            with _guarded("report", staging, out):
                rec = report_stage(rec, time.perf_counter() - started)
            with interrupts.critical(done=f"the new bundle was published to --out {out} just before it."):
                interrupts.test_point("publish")  # a signal here is held back until the bundle is in place
                bundle_io.publish(staging, out, force=settings.force)
    ui.info(f"bundle: {out}  report: {out / 'report.md'}")
    if not rec.report["gate"]["passed"]:
        raise GateFailed(
            out,
            "INT8 accuracy gate failed: " + "; ".join(rec.report["gate"]["failures"]) +
            f" (--max-drop {settings.max_drop}). The bundle was written to {out} and its report is marked failed; "
            "try more or more representative --calib-samples, or raise --max-drop if the drop is acceptable."
        )
    return rec


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


def _timed(stage: Callable[..., BuildRecord], name: str) -> Callable[..., BuildRecord]:
    def run(rec: BuildRecord, ui: Ui) -> BuildRecord:
        t0 = time.perf_counter()
        with _guarded(name, rec.staging, rec.out):
            new = stage(rec, ui)
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return replace(new, stages=new.stages + ({"name": name, "seconds": round(time.perf_counter() - t0, 3),
                                                  "peak_rss_mb": round(peak_mb, 1)},))
    return run


# --- stages ----------------------------------------------------------------------------------------

def load_model_stage(rec: BuildRecord, ui: Ui) -> BuildRecord:
    s = rec.settings
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
    ui.info(f"model: {loaded.arch}, {loaded.num_classes} classes, {loaded.in_channels} channel(s), from {loaded.source}")
    return replace(rec, loaded=loaded)


def _preprocessing(rec: BuildRecord, class_names: tuple[str, ...]) -> Preprocessing:
    """Flags win over the checkpoint's own record, which wins over the family's defaults."""
    s, loaded = rec.settings, rec.loaded
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


def data_stage(rec: BuildRecord, ui: Ui) -> BuildRecord:
    s, loaded = rec.settings, rec.loaded
    eval_src = open_source(s.eval_data, "test", flag="--eval-data")
    # Without --calib-data, calibrate on the evaluation data's own training split, or on the rest of its
    # folder: never on another data set than the one the user pointed at.
    calib_spec = s.calib_data if s.calib_data is not None else s.eval_data
    calib_src = open_source(calib_spec, "train", flag="--calib-data")
    if s.calib_data is None and s.eval_data is not None and not has_split(s.eval_data, "train"):
        ui.warn(f"no --calib-data: calibrating on images of --eval-data {s.eval_data} set apart from the "
                "evaluation images.")
    check_classes(eval_src, loaded.num_classes, flag="--eval-data")
    prep = _preprocessing(rec, eval_src.class_names)
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
    info = {
        "calibration": {"source": calib_src.name, "count": len(calib), "sha256": calib.digest(),
                        "skipped": len(calib.skipped), "seed": s.seed + 1},
        "evaluation": {"source": eval_src.name, "count": len(evals), "skipped": len(evals.skipped), "seed": s.seed},
    }
    sample = bundle_io.eval_sample_indices(evals.pixels, limit=s.eval_sample_size, seed=s.seed)
    return replace(rec, prep=prep, calib=calib, evals=evals, sample=sample, data_info=info)


def _check_inputs(rec: BuildRecord, n: int = 64) -> np.ndarray:
    """Real images for the fold and export checks: from the carried sample, so every class shows up."""
    return rec.prep.normalize(rec.evals.pixels[rec.sample[:n]])


def fold_stage(rec: BuildRecord, ui: Ui) -> BuildRecord:
    folded, count = fold_batchnorm(rec.loaded.model)
    check = verify_fold(rec.loaded.model, folded, torch.from_numpy(_check_inputs(rec)), count)
    ui.info(f"fold: {count} conv+BN pairs folded, max |diff| {check.max_abs_diff:.2e} ({check.relative:.1e} of scale)")
    return replace(rec, folded=folded, checks={**rec.checks, "fold": check.to_dict()})


def export_stage(rec: BuildRecord, ui: Ui) -> BuildRecord:
    path = rec.staging / bundle_io.MODEL_ONNX
    metadata = {"resnet_deploy.preprocessing": rec.prep.to_json(), "resnet_deploy.arch": rec.loaded.arch,
                "resnet_deploy.class_names": list(rec.prep.class_names)}
    check = export_onnx(rec.folded, path, sample=_check_inputs(rec), metadata=metadata)
    bundle_io.write_json(rec.staging / bundle_io.PREPROCESSING, rec.prep.to_dict())
    ui.info(f"export: {path.name} opset {check.opset}, max |diff| vs PyTorch {check.max_abs_diff:.2e}")
    return replace(rec, onnx=path, checks={**rec.checks, "export": check.to_dict()})


def reference_stage(rec: BuildRecord, ui: Ui) -> BuildRecord:
    model = rec.loaded.model.eval()
    inputs = rec.evals.inputs(rec.prep)
    with torch.inference_mode(), ui.task("reference (PyTorch FP32)", len(inputs)) as bar:
        preds = predict(lambda x: model(torch.from_numpy(x)).numpy(), inputs, batch=256, progress=bar.advance)
    acc = score(preds, rec.evals.labels, rec.loaded.num_classes)
    ui.info(f"reference: PyTorch FP32 top-1 {acc.top1:.4f} on {len(inputs)} images")
    ref = {"framework": "pytorch", "precision": "fp32", **acc.to_dict()}
    return replace(rec, reference=ref, reference_preds=preds)


def compile_stage(rec: BuildRecord, ui: Ui, target) -> BuildRecord:
    ui.info(f"compile: {target.name} ({target.summary})")
    inp = CompileInput(rec.onnx, rec.calib.inputs(rec.prep), rec.prep, rec.options.get(target.name))
    # Quantizers draw their own progress bars on stdout; keep stdout for results (--json).
    sink = open(os.devnull, "w") if ui.quiet else sys.stderr
    try:
        with contextlib.redirect_stdout(sink):
            artifacts = target.compile(inp, rec.staging)
    finally:
        if sink is not sys.stderr:
            sink.close()
    return replace(rec, artifacts=rec.artifacts + tuple(artifacts))


def _artifact_bytes(staging: Path, artifact: Artifact) -> int:
    paths = [artifact.path, *artifact.files]
    return sum((staging / p).stat().st_size for p in paths)


def validate_stage(rec: BuildRecord, ui: Ui) -> BuildRecord:
    s = rec.settings
    inputs = rec.evals.inputs(rec.prep)
    one = inputs[:1]
    rows = []
    for artifact in rec.artifacts:
        target = get_target(artifact.target)
        runner = target.load(artifact, rec.staging, threads=s.threads)
        label = f"{artifact.target} {artifact.precision}"
        with ui.task(f"evaluate {label}", len(inputs)) as bar:
            preds = predict(runner.run, inputs, progress=bar.advance)
        acc = score(preds, rec.evals.labels, rec.loaded.num_classes, reference=rec.reference_preds)
        lat = measure(runner.run, one, s.latency)
        row = {"target": artifact.target, "precision": artifact.precision, "runtime": artifact.runtime,
               "simulated": artifact.simulated, "runner": runner.description, **acc.to_dict(), **lat.to_dict(),
               "artifact": artifact.path, "bytes": _artifact_bytes(rec.staging, artifact),
               # top-1 on the images the bundle carries, so `bench` on the device compares like with like
               "sample_top1": round(float((preds[rec.sample] == rec.evals.labels[rec.sample]).mean()), 6),
               "samples_ms": [round(v, 4) for v in lat.samples_ms[:1000]]}  # for the HTML report's plots
        if artifact.details:
            row["details"] = dict(artifact.details)
        if artifact.note:
            row["note"] = artifact.note
        ui.info(f"validate: {label:22s} top-1 {acc.top1:.4f} agreement {acc.agreement:.4f} "
                f"p50 {lat.p50:.3f} ms ({runner.description})")
        rows.append(row)
    return replace(rec, results=tuple(rows))


def _versions() -> dict[str, str]:
    """Versions of the build's own libraries and of every runtime's packages the targets name."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "resnet-deploy": md.version("resnet-deploy")}
    packages = ["torch", "onnx", "numpy", *(p for rt in runtimes().values() for p in rt.packages)]
    for pkg in dict.fromkeys(packages):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def report_stage(rec: BuildRecord, wall: float) -> BuildRecord:
    s, loaded = rec.settings, rec.loaded
    results = [dict(r) for r in rec.results]
    g = gate(rec.reference["top1"], results, s.max_drop)
    bundle_io.save_eval_sample(rec.staging / bundle_io.EVAL_SAMPLE, rec.evals.pixels[rec.sample],
                               rec.evals.labels[rec.sample], rec.prep.class_names)
    report = {
        "schema": SCHEMA,
        "status": "passed" if g["passed"] else "failed",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"arch": loaded.arch, "num_classes": loaded.num_classes, "input_shape": list(rec.prep.shape),
                  "source": loaded.source, "shortcut": loaded.shortcut,
                  "parameters": int(sum(p.numel() for p in loaded.model.parameters()))},
        "preprocessing": rec.prep.to_dict(),
        "data": rec.data_info,
        "reference": rec.reference,
        "results": results,
        "gate": g,
        "checks": rec.checks,
        "stages": list(rec.stages),
        "commands": {k: v for a in rec.artifacts for k, v in a.commands.items()},
        "host": {"cpu": cpu_name(), "platform": platform.platform(), "python": sys.version.split()[0]},
        "wall_seconds": round(wall, 2),
        "artifacts": [a.to_dict() for a in rec.artifacts],
    }
    bundle_io.write_json(rec.staging / bundle_io.REPORT_JSON, report)
    (rec.staging / "report.md").write_text(render_markdown(report))
    (rec.staging / "report.html").write_text(render_html(report))
    bundle_io.write_manifest(rec.staging, versions=_versions(), args=s.to_args(), seed=s.seed,
                             calibration={"count": rec.data_info["calibration"]["count"],
                                          "sha256": rec.data_info["calibration"]["sha256"]})
    return replace(rec, report=report)
