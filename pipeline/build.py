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
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from resnet_deploy import environment, interrupts, recipes
from resnet_deploy.calibration.channel_spread import diagnosis, uneven
from resnet_deploy.calibration.labels import read_labels
from resnet_deploy.calibration.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, imagenet_preset
from resnet_deploy.calibration.sampling import EvalSet, ImageBatch, choose, decode, same_images
from resnet_deploy.calibration.sensitivity import Sensitivity
from resnet_deploy.calibration.sources import ImageSource, check_classes, has_split, open_source
from resnet_deploy.console import Ui
from resnet_deploy.errors import DataError, GateFailed, GateUnverified
from resnet_deploy.host import cpu_name
from resnet_deploy.models import get_arch
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.pipeline import out_lock
from resnet_deploy.pipeline import predictions as predictions_io
from resnet_deploy.pipeline.evaluate import score
from resnet_deploy.pipeline.fallback import Fallback, held_out_count
from resnet_deploy.pipeline.fold import FoldCheck
from resnet_deploy.pipeline.html_report import render_html
from resnet_deploy.pipeline.latency import LatencyStats, measure, measure_throughput
from resnet_deploy.pipeline.loaded_model import LoadedModel
from resnet_deploy.pipeline.onnx_input import OnnxModel, fold_onnx, load_onnx, reference_runner, write_onnx
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
    Throughput,
)
from resnet_deploy.pipeline.report import gate, render_markdown
from resnet_deploy.pipeline.settings import EMBEDDED_MODEL, BuildSettings
from resnet_deploy.pipeline.verdict import cannot_pass
from resnet_deploy.targets import (
    Artifact,
    CompileInput,
    Target,
    ThroughputRunner,
    expand,
    get_target,
    option_owners,
    runtimes,
)

if TYPE_CHECKING:  # torch is imported by the stages that need it: a build from --onnx never does
    import torch


@dataclass(frozen=True)
class Data:
    """The data stage's result: the preprocessing record, the decoded calibration images, the evaluation
    images by reference (streamed by each pass: memory does not grow with their number; calibration and
    evaluation never overlap), the decoded evaluation images the bundle carries, and where they came from."""

    prep: Preprocessing
    calib: ImageBatch
    evals: EvalSet
    sample: ImageBatch
    info: DataInfo
    held_out: ImageBatch | None = None  # --fallback auto's check: calibration-source images nothing else sees

    def check_inputs(self, n: int = 64) -> np.ndarray:
        """Real images for the fold and export checks: from the carried sample, so every class shows up."""
        return self.prep.normalize(self.sample.pixels[:n])

    def evaluated(self, evals: EvalSet) -> Data:
        """After the first pass: the evaluation images it could read, counted in the report."""
        counted = replace(self.info.evaluation, count=len(evals), skipped=len(evals.skipped))
        return replace(self, evals=evals, info=replace(self.info, evaluation=counted))


@dataclass(frozen=True)
class Converted:
    """BN folded and exported: the folded model, the ONNX every target compiles from, the two self-checks."""

    folded: torch.nn.Module | None  # None when the model came as ONNX: ``onnx`` is then its folded graph
    onnx: Path
    checks: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Baseline:
    """The PyTorch FP32 reference on the evaluation images, its per-image predictions, and the images it read."""

    reference: Reference
    predictions: np.ndarray
    evals: EvalSet


@dataclass(frozen=True)
class Validated:
    """The validate stage's result: a row per artifact and, aligned with them, each one's predicted class for
    every evaluation image (the gate pairs them with the reference's image by image)."""

    rows: tuple[ResultRow, ...]
    predictions: tuple[np.ndarray, ...]


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
        for notice in target.notices(settings.target_options):  # a default chosen for a flag left out
            ui.warn(notice)
    _warn_unused_flags(settings, targets, ui)
    stage = _Stages()
    with contextlib.ExitStack() as held:
        if settings.out is not None:  # checked and locked before any checkpoint or image is read
            held.enter_context(_claim_out(settings.out, settings, ui))
        if settings.train_data is not None:  # build --train-data: the weights it trains are the checkpoint
            with stage("train"):
                settings = train_stage(settings, ui)
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
                data = data.evaluated(baseline.evals)  # the images the first pass could read
            artifacts: list[Artifact] = []
            fb = fallback_for(settings, converted, data, baseline, ui)
            for target in targets:
                with stage(f"compile:{target.name}"):
                    artifacts += compile_stage(target, options[target.name], converted, data, loaded.num_classes,
                                               staging, ui, fb)
            with stage("validate"):
                results = validate_stage(settings, loaded, data, baseline, artifacts, staging, ui)
            with _guarded("report", staging, out):
                report = report_stage(settings, loaded, data, converted, baseline, artifacts, results, stage.done,
                                      staging, time.perf_counter() - started, sensitivity=fb.sensitivity)
            with interrupts.critical(done=f"the new bundle was published to --out {out} just before it."):
                interrupts.test_point("publish")  # a signal here is held back until the bundle is in place
                bundle_io.publish(staging, out, force=settings.force)
    ui.info(f"bundle: {out}  report: {out / 'report.md'}")
    if report.gate.status == "failed":
        besides = "; ".join(report.gate.unverified)
        raise GateFailed(
            out,
            "INT8 accuracy gate failed: " + "; ".join(report.gate.failures) +
            (f". Besides, this evaluation could not have verified a pass: {besides}" if besides else "") +
            f". The bundle was written to {out} and its report is marked failed; "
            + gate_failed_advice(report.sensitivity)
        )
    if report.gate.status == "unverified":
        raise GateUnverified(
            out,
            "INT8 accuracy is UNVERIFIED: no row failed, but the evaluation cannot support a verdict: "
            + "; ".join(report.gate.unverified) + f". The bundle was written to {out} and its report is marked "
            "unverified; evaluate a trained model on more labelled images (--eval-data, --eval-samples)."
        )
    return BuildResult(out, report)


def gate_failed_advice(sensitivity: Sensitivity | None) -> str:
    """What to do about a failed gate: when the fallback's analysis found activations whose channels no one INT8
    scale serves (calibration/channel_spread.py), that, since more calibration images cannot help then."""
    spread = sensitivity.spread if sensitivity else ()
    relax = "relax --max-drop / --min-agreement if the loss is acceptable."
    if uneven(spread):
        return f"{diagnosis(spread)} Or {relax}"
    return f"try more or more representative --calib-samples, or {relax}"


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
                                                       ("--onnx", settings.onnx),
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

def train_stage(s: BuildSettings, ui: Ui) -> BuildSettings:
    """Train as `resnet-deploy train --data` does (its run folder kept, resumable), then go on with the weights
    it wrote as --checkpoint, evaluated by default on the training data's own test split."""
    from resnet_deploy.pipeline.training_run import run_training

    assert s.train is not None and s.train_data is not None
    run = s.train_out or Path("runs") / s.train.arch
    result = run_training(s.train, data=s.train_data, test_data=None, out=run, input_size=s.input_size,
                          mean=s.mean, std=s.std, ui=ui)
    assert result is not None  # rank 0: build does not run under torchrun
    ui.info(f"train: {run} ({len(result.history)} epochs), weights {result.weights}")
    return replace(s, checkpoint=result.weights, arch=None, train_data=None, train=None,
                   eval_data=s.eval_data if s.eval_data is not None else s.train_data)


def load_model_stage(s: BuildSettings, ui: Ui) -> LoadedModel:
    loaded = _load_model(s, ui)
    ui.info(f"model: {loaded.arch}, {loaded.num_classes} classes, {loaded.in_channels} channel(s), "
            f"from {loaded.source}")
    return loaded


def _load_model(s: BuildSettings, ui: Ui) -> LoadedModel:
    if s.onnx is not None:  # the one path without PyTorch: nothing after it imports torch either
        return load_onnx(s.onnx, input_size=s.input_size, mean=s.mean, std=s.std, num_classes=s.num_classes)
    from resnet_deploy.pipeline import checkpoint as ckpt

    if s.checkpoint is not None:
        return ckpt.load_model(s.checkpoint, arch=s.arch, num_classes=s.num_classes)
    if s.arch is not None:
        spec = get_arch(s.arch)
        ui.warn(f"no --checkpoint: building a RANDOMLY INITIALISED {spec.name}. Its accuracy means nothing; "
                "use it for latency work only.")
        # As many classes as the evaluation data has, so the random model runs through every stage.
        num_classes = s.num_classes or len(_eval_source(s).class_names)
        return ckpt.random_model(spec.name, num_classes=num_classes, in_channels=3)
    return replace(ckpt.load_model(EMBEDDED_MODEL, num_classes=s.num_classes),
                   source="embedded:" + EMBEDDED_MODEL.name)


def _preprocessing(s: BuildSettings, loaded: LoadedModel, class_names: tuple[str, ...]) -> Preprocessing:
    """Flags win over the checkpoint's own record, which wins over the family's defaults (the ImageNet
    family's: torchvision's evaluation transform)."""
    saved = loaded.meta.get("preprocessing")
    if saved:
        base = Preprocessing.from_dict(saved)
    else:
        spec = get_arch(loaded.arch)
        size = spec.default_input_size
        ch = loaded.in_channels
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if ch == 3 else ((0.5,), (0.5,))
        base = (imagenet_preset(size) if spec.family == "imagenet" and ch == 3 else
                Preprocessing((size, size), ch, mean, std, crop_ratio=0.875 if spec.family == "imagenet" else 1.0))
    size = s.input_size or base.input_size
    pixels, ratio = (s.resize, None) if isinstance(s.resize, int) else (None, s.resize)
    if pixels is None and ratio is None:  # the record's own policy; its resize only at its own input size
        pixels, ratio = (base.resize if size == base.input_size else None), base.crop_ratio
    return Preprocessing(
        input_size=size, channels=loaded.in_channels,
        mean=s.mean or base.mean, std=s.std or base.std,
        crop_ratio=ratio if ratio is not None else max(size) / pixels if pixels else 1.0, resize=pixels,
        crop=s.crop or ("center" if s.resize is not None else base.crop),
        interpolation=s.interpolation or base.interpolation, channel_order=s.channel_order or base.channel_order,
        class_names=class_names,
    )


def _eval_source(s: BuildSettings) -> ImageSource:
    """The evaluation images: --eval-data, named by --labels, a flat folder labelled by --ground-truth."""
    labels = read_labels(s.labels) if s.labels is not None else None
    return open_source(s.eval_data, "test", flag="--eval-data", labels=labels, ground_truth=s.ground_truth)


def data_stage(s: BuildSettings, loaded: LoadedModel, ui: Ui) -> Data:
    eval_src = _eval_source(s)
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
    calib_idx = choose(len(calib_src), s.calib_samples, seed=s.seed + 1, exclude=exclude, shuffled=True)
    if len(calib_idx) < s.calib_samples:
        raise DataError(
            f"--calib-data: {calib_src.name} offers {len(calib_idx)} images (after setting aside the evaluation "
            f"images) but --calib-samples asks for {s.calib_samples}. Lower --calib-samples or add images."
        )
    with ui.task("decode calibration", len(calib_idx)) as bar:
        calib = decode(calib_src, calib_idx, prep, flag="--calib-data", progress=bar.advance)
    if calib.skipped:
        ui.warn(f"{len(calib.skipped)} unreadable calibration image(s) skipped (first: {calib.skipped[0]})")
    taken = calib_idx if exclude is None else np.concatenate([calib_idx, exclude])
    held_idx = choose(len(calib_src), held_out_count(s.fallback), seed=s.seed + 2, exclude=taken,
                      shuffled=True)
    held_out = decode(calib_src, held_idx, prep, flag="--calib-data") if len(held_idx) else None
    # Evaluation images are decoded by each pass, a chunk at a time; only the ones the bundle carries stay.
    evals = EvalSet.of(eval_src, eval_idx)
    carried = bundle_io.eval_sample_indices(len(evals), int(np.prod(prep.shape)), limit=s.eval_sample_size,
                                            seed=s.seed)
    sample = decode(eval_src, evals.indices[carried], prep, flag="--eval-data")
    info = DataInfo(
        calibration=DataSet(calib_src.name, len(calib), len(calib.skipped), s.seed + 1, calib.digest()),
        evaluation=DataSet(eval_src.name, len(evals), 0, s.seed),  # counted again after the first pass
    )
    return Data(prep, calib, evals, sample, info, held_out)


def fold_stage(loaded: LoadedModel, data: Data, ui: Ui) -> tuple[Any, FoldCheck]:
    """BN folded into the convolutions: a new module, or for an ONNX input a new graph (checked alike)."""
    if isinstance(loaded, OnnxModel):
        folded, check = fold_onnx(loaded, data.check_inputs())
    else:
        import torch

        from resnet_deploy.pipeline.fold import fold_batchnorm, verify_fold

        folded, count = fold_batchnorm(loaded.model)
        check = verify_fold(loaded.model, folded, torch.from_numpy(data.check_inputs()), count)
    ui.info(f"fold: {check.folded_layers} conv+BN pairs folded, max |diff| {check.max_abs_diff:.2e} "
            f"({check.relative:.1e} of scale)")
    return folded, check


def export_stage(loaded: LoadedModel, data: Data, folded: Any, fold_check: FoldCheck,
                 staging: Path, ui: Ui) -> Converted:
    path = staging / bundle_io.MODEL_ONNX
    metadata = {"resnet_deploy.preprocessing": data.prep.to_json(), "resnet_deploy.arch": loaded.arch,
                "resnet_deploy.class_names": list(data.prep.class_names)}
    if isinstance(loaded, OnnxModel):  # already ONNX: written as the bundle's model, checked against its graph
        check = write_onnx(folded, path, sample=data.check_inputs(), metadata=metadata)
        against, module = "the input graph", None
    else:
        from resnet_deploy.pipeline.export import export_onnx

        check = export_onnx(folded, path, sample=data.check_inputs(), metadata=metadata)
        against, module = "PyTorch", folded
    bundle_io.write_json(staging / bundle_io.PREPROCESSING, data.prep.to_dict())
    ui.info(f"export: {path.name} opset {check.opset}, max |diff| vs {against} {check.max_abs_diff:.2e}")
    return Converted(module, path, {"fold": fold_check.to_dict(), "export": check.to_dict()})


def reference_stage(loaded: LoadedModel, data: Data, ui: Ui) -> Baseline:
    """FP32 predictions every row is compared with: the PyTorch model, or an ONNX input's graph as given."""
    held = contextlib.ExitStack()
    if isinstance(loaded, OnnxModel):  # no PyTorch model: the graph as given, in the pipeline's ONNX session
        framework, run = reference_runner(loaded)
        shown = framework
    else:
        import torch

        assert loaded.model is not None
        model = loaded.model.eval()
        framework, shown, run = "pytorch", "PyTorch", lambda x: model(torch.from_numpy(x)).numpy()
        held.enter_context(torch.inference_mode())
    images = data.evals.stream(data.prep, flag="--eval-data")
    preds = np.full(len(images), -1, dtype=np.int64)
    with held, ui.task(f"reference ({shown} FP32)", len(images)) as bar:
        for chunk in images:
            preds[chunk.positions] = np.asarray(run(data.prep.normalize(chunk.pixels))).argmax(1)
            bar.advance(chunk.covered)
    if images.skipped:
        ui.warn(f"{len(images.skipped)} unreadable evaluation image(s) skipped (first: {images.skipped[0]})")
    evals = data.evals.readable(preds >= 0, images.skipped)
    preds = preds[preds >= 0]
    acc = score(preds, evals.labels, loaded.num_classes)
    ui.info(f"reference: {shown} FP32 top-1 {acc.top1:.4f} on {len(evals)} images")
    return Baseline(Reference(framework, "fp32", round(acc.top1, 6), tuple(round(v, 6) for v in acc.per_class)),
                    preds, evals)


def fallback_for(s: BuildSettings, converted: Converted, data: Data, baseline: Baseline, ui: Ui) -> Fallback:
    """The mixed-precision fallback every compile goes through: its gate, cap and held-out images. Off when
    the evaluation cannot verify any INT8 row (a one-class model, too few images): keeping layers in float
    would cost compiles and latency for a verdict that cannot say whether they helped."""
    spare, mode = data.held_out, s.fallback
    if mode == "auto" and s.max_drop >= 100 and s.min_agreement <= 0:
        mode = "off"  # a gate every row passes: no layer can need to stay in float
    if mode == "auto":
        reasons = cannot_pass(data.evals.labels, baseline.predictions, data.prep.class_names, max_drop=s.max_drop)
        if reasons:
            ui.warn("--fallback auto: skipped, no layer is kept in float: this evaluation cannot verify any INT8 "
                    "row (" + "; ".join(reasons) + ").")
            mode = "off"
    return Fallback(mode=mode, min_agreement=s.min_agreement, max_drop=s.max_drop,
                    max_float_layers=s.max_float_layers, fp32_onnx=converted.onnx,
                    calibration=data.calib.inputs(data.prep),
                    held_out=spare.inputs(data.prep) if spare else np.zeros((0, *data.prep.shape), np.float32),
                    labels=spare.labels if spare else np.zeros(0, np.int64), latency=s.latency, threads=s.threads,
                    ui=ui)


def compile_stage(target: Target, options: Any, converted: Converted, data: Data, num_classes: int,
                  staging: Path, ui: Ui, fb: Fallback) -> list[Artifact]:
    ui.info(f"compile: {target.name} ({target.summary})")
    inp = CompileInput(converted.onnx, fb.calibration, data.prep, options, check=fb.scoring_images)
    # Quantizers draw their own progress bars on stdout; keep stdout for results (--json).
    with contextlib.ExitStack() as stack:
        sink = stack.enter_context(open(os.devnull, "w")) if ui.quiet else sys.stderr
        with contextlib.redirect_stdout(sink):
            artifacts = fb.compile(target, inp, staging)  # with layers kept in float where INT8 misses the gate
    target.serving_configs(staging, artifacts, data.prep, num_classes)  # written into the bundle, and listed
    return artifacts


def _artifact_bytes(staging: Path, artifact: Artifact) -> int:
    paths = [artifact.path, *artifact.files]
    return sum((staging / p).stat().st_size for p in paths)


# Images per throughput pass: many times the requests in flight, so waiting for the last ones costs little.
_THROUGHPUT_IMAGES = 64


def validate_stage(s: BuildSettings, loaded: LoadedModel, data: Data, baseline: Baseline,
                   artifacts: list[Artifact], staging: Path, ui: Ui) -> Validated:
    """Accuracy of every artifact in one streamed pass, each at its runtime's throughput settings; then, per
    measured artifact, images/s in the same mode and latency at batch 1 with the latency settings. A
    simulated artifact (a device model run on this CPU) is scored, never timed."""
    evals, prep = data.evals, data.prep
    many = [get_target(a.target).load_throughput(a, staging, threads=s.threads) for a in artifacts]
    predictions = [np.full(len(evals), -1, dtype=np.int64) for _ in artifacts]
    with ui.task(f"evaluate {len(artifacts)} artifacts", len(evals)) as bar:
        for chunk in evals.stream(prep, flag="--eval-data", strict=True):
            x = prep.normalize(chunk.pixels)
            for preds, runner in zip(predictions, many):
                preds[chunk.positions] = np.asarray(runner.run_many(x)).argmax(1)
            bar.advance(chunk.covered)
    carried = evals.positions(data.sample.idents)
    timed = prep.normalize(data.sample.pixels[:_THROUGHPUT_IMAGES])
    rows = []
    for artifact, preds, mode in zip(artifacts, predictions, many):
        acc = score(preds, evals.labels, loaded.num_classes, reference=baseline.predictions)
        tput, lat, runner = _time_artifact(artifact, mode, timed, s, staging)
        rows.append(ResultRow(
            target=artifact.target, precision=artifact.precision, runtime=artifact.runtime,
            simulated=artifact.simulated, runner=runner, top1=round(acc.top1, 6),
            per_class_top1=tuple(round(v, 6) for v in acc.per_class),
            agreement=None if acc.agreement is None else round(acc.agreement, 6), batch=1,
            iterations=lat.iterations if lat else 0,
            throughput_ips=round(tput.images / tput.seconds, 2) if tput else None,
            latency_ms=Latency(*(round(v, 4) for v in (lat.p50, lat.p90, lat.p99, lat.mean, lat.min))) if lat else None,
            artifact=artifact.path, bytes=_artifact_bytes(staging, artifact),
            # top-1 on the images the bundle carries, so `bench` on the device compares like with like
            sample_top1=round(float((preds[carried] == evals.labels[carried]).mean()), 6),
            samples_ms=tuple(round(v, 4) for v in lat.samples_ms[:1000]) if lat else (),
            details=dict(artifact.details), note=artifact.note, throughput=tput,
            measured_on="" if artifact.simulated else f"host CPU: {cpu_name()}"))
        timing = (f"{tput.images / tput.seconds:.1f} img/s, p50 {lat.p50:.3f} ms" if tput and lat else
                  "a CPU simulation of the device model: accuracy only")
        ui.info(f"validate: {artifact.target + ' ' + artifact.precision:22s} top-1 {acc.top1:.4f} agreement "
                f"{acc.agreement:.4f} {timing}")
    return Validated(tuple(rows), tuple(predictions))


def _time_artifact(artifact: Artifact, mode: ThroughputRunner, images: np.ndarray, s: BuildSettings,
                   staging: Path) -> tuple[Throughput | None, LatencyStats | None, str]:
    """Images/s in the runtime's throughput mode (``mode``), then latency at batch 1 in its latency mode, and
    the latency runner's description; a simulated artifact is not timed."""
    if artifact.simulated:
        return None, None, mode.description
    stats = measure_throughput(mode.run_many, images, s.latency, requests=mode.requests)
    tput = Throughput(stats.images, round(stats.seconds, 3), stats.requests, mode.description)
    runner = get_target(artifact.target).load(artifact, staging, threads=s.threads)
    return tput, measure(runner.run, images[:1], s.latency), runner.description


def _versions() -> dict[str, str]:
    """Versions of the build's own libraries and of every runtime's packages the targets name."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "resnet-deploy": md.version("resnet-deploy")}
    packages = ["torch", "onnx", "numpy", *(p for rt in runtimes().values() for p in rt.packages)]
    for pkg in dict.fromkeys(packages):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def report_stage(s: BuildSettings, loaded: LoadedModel, data: Data, converted: Converted, baseline: Baseline,
                 artifacts: list[Artifact], results: Validated, stages: list[Stage], staging: Path,
                 wall: float, *, sensitivity: Sensitivity | None = None) -> Report:
    preds = predictions_io.Predictions(
        np.asarray(data.evals.idents, dtype=str), data.evals.labels, baseline.predictions,
        tuple(predictions_io.RowPredictions(r.target, r.precision, r.simulated, p)
              for r, p in zip(results.rows, results.predictions)))
    g = gate(results.rows, preds, max_drop=s.max_drop, min_agreement=s.min_agreement,
             class_names=data.prep.class_names)
    predictions_io.save(staging / predictions_io.FILE, preds)
    bundle_io.save_eval_sample(staging / bundle_io.EVAL_SAMPLE, data.sample.pixels, data.sample.labels,
                               data.prep.class_names)
    report = Report(
        status=g.status,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model=ModelInfo(loaded.arch, loaded.num_classes, tuple(data.prep.shape), loaded.source, loaded.shortcut,
                        loaded.parameter_count),
        preprocessing=data.prep.to_dict(), data=data.info, reference=baseline.reference, results=results.rows, gate=g,
        checks=converted.checks, stages=tuple(stages),
        commands={k: v for a in artifacts for k, v in a.commands.items()},
        host=Host.of_this_machine(threads=s.threads, versions=_versions()), wall_seconds=round(wall, 2),
        artifacts=tuple(artifacts), sensitivity=sensitivity,
    )
    bundle_io.write_json(staging / bundle_io.REPORT_JSON, report.to_json())
    (staging / "report.md").write_text(render_markdown(report))
    (staging / "report.html").write_text(render_html(report))
    if s.recipe:  # `build --recipe <bundle>/recipe.yaml` builds this bundle again
        (staging / recipes.RECIPE).write_text(recipes.dump(s.recipe))
    bundle_io.write_manifest(staging, versions=_versions(), args=s.to_args(), seed=s.seed,
                             calibration={"count": data.info.calibration.count,
                                          "sha256": data.info.calibration.sha256})
    return report
