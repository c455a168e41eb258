"""The mixed-precision fallback loop, driven on a tiny outlier model through a cheap registered target."""

from __future__ import annotations

import re
import shutil
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import outlier_onnx as tiny
import pytest

from resnet_deploy.calibration.channel_spread import ActivationSpread
from resnet_deploy.calibration.qdq import make_qdq_onnx
from resnet_deploy.calibration.sensitivity import LayerSensitivity, Sensitivity
from resnet_deploy.pipeline import fallback_report
from resnet_deploy.pipeline.fallback import MIN_HELD_OUT, Fallback, smallest_passing
from resnet_deploy.pipeline.latency import LatencySettings
from resnet_deploy.pipeline.records import ResultRow
from resnet_deploy.targets import Artifact, CompileInput, Runtime, Target, onnx_session, register, unregister
from resnet_deploy.targets.onnxruntime import OrtRunner

RUNTIME = Runtime("qdq-stub-ort", "onnxruntime", "pip install onnxruntime")
QUICK = LatencySettings(warmup=1, min_iterations=3, max_iterations=3, min_seconds=0.0)


class QdqStub(Target):
    """INT8 by the reference Q/DQ writer ("max" ranges), run by ONNX Runtime; records each compile's float layers."""

    name = "qdq-stub"
    summary = "test target: the Q/DQ graph under ONNX Runtime"
    runtimes = (RUNTIME,)
    float_layers = True
    compiles: ClassVar[list[tuple[str, ...]]] = []

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        type(self).compiles.append(tuple(inp.float_layers))
        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = Path(shutil.copyfile(inp.fp32_onnx, folder / "model_fp32.onnx"))
        make_qdq_onnx(fp32, folder / "model_int8.onnx", inp.calibration, session=onnx_session, method="max",
                      float_layers=inp.float_layers)
        return [Artifact(self.name, "fp32", f"{self.name}/model_fp32.onnx", RUNTIME.name),
                Artifact(self.name, "int8", f"{self.name}/model_int8.onnx", RUNTIME.name)]

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None, hint: str | None = None):
        return OrtRunner(bundle / artifact.path, threads=threads)


class AllInt8Stub(QdqStub):
    name = "all-int8-stub"
    float_layers = False


class Said:
    """A ``Ui`` that keeps what it was told."""

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []

    def info(self, message: str) -> None:
        self.infos.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


@pytest.fixture(autouse=True)
def stubs():
    for cls in (QdqStub, AllInt8Stub):
        register(cls)
        cls.compiles = []
    yield
    for cls in (QdqStub, AllInt8Stub):
        unregister(cls.name)


CALIBRATION = 128  # the first images calibrate (and fit the tiny model's classifier); the rest are held out


@pytest.fixture(scope="module")
def model(fashion_mnist, tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    x, y = tiny.images(CALIBRATION + MIN_HELD_OUT)
    return tiny.write(tmp_path_factory.mktemp("tiny") / "fp32.onnx", x[:CALIBRATION], y[:CALIBRATION]), x, y


def _fallback(model, ui, **kw) -> Fallback:
    fp32, x, y = model
    settings = {"mode": "auto", "min_agreement": 0.9, "max_drop": 3.0, "max_float_layers": 3, **kw}  # 200 images
    return Fallback(fp32_onnx=fp32, calibration=x[:CALIBRATION], held_out=x[CALIBRATION:], labels=y[CALIBRATION:],
                    latency=QUICK, ui=ui, **settings)


def _compile(fb: Fallback, target: Target, model, tmp_path: Path) -> list[Artifact]:
    return fb.compile(target, CompileInput(model[0], fb.calibration, tiny.PREP), tmp_path)


@pytest.mark.parametrize("limit", [1, 5, 8, 13])
def test_smallest_passing_finds_the_first_success_in_few_compiles(limit):
    for first in [*range(1, limit + 1), None]:
        tried: list[int] = []

        def passes(k: int, first=first, tried=tried) -> bool:
            tried.append(k)
            return first is not None and k >= first

        assert smallest_passing(limit, passes) == first
        assert len(tried) <= 2 * int(np.ceil(np.log2(limit))) + 1 and len(set(tried)) == len(tried)
    assert smallest_passing(0, lambda k: True) is None


def test_a_sensitive_layer_is_kept_in_float_until_the_held_out_images_agree(model, tmp_path):
    said = Said()
    fb = _fallback(model, said)
    held = MIN_HELD_OUT
    assert fb.active and len(fb.calibration) == CALIBRATION and len(fb.held_out) == held
    artifacts = _compile(fb, QdqStub(), model, tmp_path)
    assert QdqStub.compiles == [(), (tiny.SENSITIVE,)]  # the first try fixes it: one recompile
    assert fb.sensitivity is not None and fb.sensitivity.ranked()[0] == (tiny.SENSITIVE,)
    record = next(a for a in artifacts if a.precision == "int8").details["fallback"]
    assert record["float_layers"] == [tiny.SENSITIVE] and record["held_out_images"] == held
    first, last = record["attempts"]
    assert not first["passed"] and first["agreement"] < 0.9 and last["passed"] and record["held_out"] == last
    assert record["latency"]["all_int8_p50_ms"] > 0 and record["latency"]["p50_ms"] > 0  # timed: a measured row
    graph = onnx.load(str(tmp_path / "qdq-stub" / "model_int8.onnx")).graph
    assert next(n for n in graph.node if n.name == tiny.SENSITIVE).input[0] == "/a/Relu_output_0"
    assert not said.warnings and any("meets the gate" in m for m in said.infos)


def test_the_check_asks_the_held_out_bounds_to_meet_the_gate_not_the_point_estimates(model):
    """At the gate, a point estimate on 1,000 images is a coin toss for the evaluation: a row meets the gate when
    its one-sided 95 % bounds do (agreement: Wilson; drop: Newcombe's paired interval)."""
    fb = _fallback(model, Said(), min_agreement=0.98, max_drop=1.0)
    labels = np.arange(1000) % 10
    fp32 = labels.copy()
    fp32[:400] = (labels[:400] + 1) % 10  # FP32 right on 60 %

    def int8(changed: int, wrong: bool) -> np.ndarray:
        out = fp32.copy()  # changes on images FP32 gets right: to a wrong class, or (``wrong`` False) ...
        where = np.arange(400, 400 + changed) if wrong else np.arange(changed)  # ... where FP32 was wrong too
        out[where] = (labels[where] + 2) % 10
        return out

    at_gate = fb.judge(0, fp32, int8(20, wrong=False), labels)
    assert at_gate.agreement == 0.98 and at_gate.drop == 0.0 and not at_gate.passed
    assert at_gate.agreement_low < 0.975 and at_gate.drop_high > 0
    clear = fb.judge(0, fp32, int8(8, wrong=False), labels)
    assert clear.agreement == 0.992 and clear.agreement_low > 0.98 and clear.passed
    dropping = fb.judge(0, fp32, int8(8, wrong=True), labels)  # the same agreement, 0.8 points of top-1 lost
    assert dropping.agreement == 0.992 and dropping.drop == pytest.approx(0.8) and dropping.drop_high > 1.0
    assert not dropping.passed
    assert clear.to_dict()["agreement_low"] == round(clear.agreement_low, 6)


def test_the_loop_stops_at_max_float_layers_and_says_so(model, tmp_path):
    said = Said()
    fb = _fallback(model, said, max_float_layers=1)
    useless = LayerSensitivity("/c/Conv", "Conv", 0.5, 1.0, 0.0)
    spiky = ActivationSpread("/a/Relu_output_0", 200.0, 0.002, 0.52, 0.0)  # what the analysis measures on this model
    fb.sensitivity = Sensitivity("given", "max", 1, 0.5, 1.0, (useless,), 0.0, (spiky,))  # a ranking that cannot help
    artifacts = _compile(fb, QdqStub(), model, tmp_path)
    assert QdqStub.compiles == [(), ("/c/Conv",)]
    record = next(a for a in artifacts if a.precision == "int8").details["fallback"]
    assert record["float_layers"] == ["/c/Conv"] and not record["held_out"]["passed"]
    [warning] = [w for w in said.warnings if "--max-float-layers" in w]
    assert "1 activation tensor(s) have channels 30x" in warning and "/a/Relu_output_0: median channel at 0.002" \
        in warning  # and why, in the same breath


def test_a_target_without_float_layers_keeps_its_all_int8_row(model, tmp_path):
    said = Said()
    artifacts = _compile(_fallback(model, said), AllInt8Stub(), model, tmp_path)
    assert AllInt8Stub.compiles == [()]
    record = next(a for a in artifacts if a.precision == "int8").details["fallback"]
    assert record["float_layers"] == [] and not record["held_out"]["passed"]
    assert any("cannot keep layers in float" in w for w in said.warnings)


def test_off_or_too_few_held_out_images_checks_nothing(model, tmp_path):
    fb = _fallback(model, Said(), mode="off")
    assert not fb.active
    artifacts = _compile(fb, QdqStub(), model, tmp_path)
    assert QdqStub.compiles == [()] and all("fallback" not in a.details for a in artifacts)
    fp32, x, y = model
    said = Said()
    fb = Fallback(mode="auto", min_agreement=0.98, max_drop=1.0, max_float_layers=8, fp32_onnx=fp32,
                  calibration=x[:CALIBRATION], held_out=x[1 - MIN_HELD_OUT:], labels=y[1 - MIN_HELD_OUT:], ui=said)
    assert not fb.active and f"{MIN_HELD_OUT - 1} more" in said.warnings[0]


def test_auto_scores_on_one_half_of_the_held_out_images_and_the_check_runs_on_the_other(model):
    """Checked on the images that chose it, a target's best ``auto`` candidate looks better than it is: with room
    for both, every other image scores the candidates and the rest are the check's, labels alongside. Interleaved:
    held-out images listed class by class give two halves with the same classes, where first and second half
    would not (CIFAR-10's were airplane to dog, and dog to truck)."""
    fp32, x, y = model
    order = np.argsort(np.concatenate([y[CALIBRATION:]] * 2), kind="stable")  # class by class, as a folder lists
    held, labels = np.concatenate([x[CALIBRATION:]] * 2)[order], np.concatenate([y[CALIBRATION:]] * 2)[order]
    fb = Fallback(mode="auto", min_agreement=0.98, max_drop=1.0, max_float_layers=8, fp32_onnx=fp32,
                  calibration=x[:CALIBRATION], held_out=held, labels=labels)
    assert fb.active and fb.scoring_images is not None
    assert fb.scoring_images is not None and len(fb.scoring_images) == len(fb.held_out) == MIN_HELD_OUT
    assert np.array_equal(fb.scoring_images, held[0::2]) and np.array_equal(fb.held_out, held[1::2])
    assert np.array_equal(fb.labels, labels[1::2])
    assert len(set(labels[:MIN_HELD_OUT].tolist())) < len(set(labels.tolist()))  # the trap: a plain half
    assert np.array_equal(np.bincount(labels[0::2], minlength=10), np.bincount(fb.labels, minlength=10))
    few = Fallback(mode="auto", min_agreement=0.98, max_drop=1.0, max_float_layers=8, fp32_onnx=fp32,
                   calibration=x[:CALIBRATION], held_out=x[CALIBRATION:], labels=y[CALIBRATION:])
    assert few.active and few.scoring_images is None and len(few.held_out) == MIN_HELD_OUT  # all for the check


def _row(details: dict, simulated: bool = False) -> ResultRow:
    return ResultRow.from_json({"target": "qdq-stub", "precision": "int8", "runtime": RUNTIME.name, "top1": 0.9,
                                "simulated": simulated, "artifact": "x", "details": details,
                                "latency_ms": {"p50": 1.0, "p90": 1.0, "p99": 1.0, "mean": 1.0, "min": 1.0}})


def test_the_report_names_the_layers_their_cost_and_draws_the_sensitivity():
    record = {"float_layers": [tiny.SENSITIVE], "held_out_images": 80, "attempts": [{}, {}],
              "held_out": {"agreement": 0.99, "drop": 0.0, "passed": True},
              "latency": {"all_int8_p50_ms": 0.5, "p50_ms": 0.6, "cost": 0.2}}
    sens = Sensitivity("ref", "max", 64, 0.5, 8.0, (LayerSensitivity(tiny.SENSITIVE, "Conv", 0.99, 30.0, 22.0),
                                                    LayerSensitivity("/c/Conv", "Conv", 0.5, 8.1, 0.1)), 0.1,
                       (ActivationSpread("/a/Relu_output_0", 200.0, 0.002, 0.52, 0.0),))
    simulated = {k: v for k, v in record.items() if k != "latency"}  # the loop times measured rows only
    report = types.SimpleNamespace(results=(_row({"fallback": record}), _row({"fallback": simulated}, True)),
                                   sensitivity=sens)
    md = "\n".join(fallback_report.markdown(report))
    assert f"1 layer(s) kept in float after 1 recompile(s): {tiny.SENSITIVE}" in md
    assert "0.500 ms all-INT8 -> 0.600 ms (+20.0%" in md and "simulated row: no latency cost" in md
    assert md.index(tiny.SENSITIVE, md.index("| layer")) < md.index("/c/Conv")  # worst first
    page = fallback_report.html(report)
    assert page.count("<svg ") == 1 and "SQNR gain" in page
    bars = re.findall(r"<title>([^<]*)</title></rect>", page)  # one bar per layer, worst first
    assert bars == [f"{tiny.SENSITIVE}: 22", "/c/Conv: 0.1"]
    for text in (md, page):  # the most uneven activations, and what that means
        assert "/a/Relu_output_0" in text and "52.0%" in text and "channels 30x or more apart" in text


@pytest.mark.parametrize("mode", ["auto", "off"])
def test_the_data_stage_holds_out_images_that_calibration_never_sees(fashion_mnist, mode):
    from resnet_deploy.console import Ui
    from resnet_deploy.pipeline.build import data_stage
    from resnet_deploy.pipeline.checkpoint import load_model
    from resnet_deploy.pipeline.fallback import HELD_OUT
    from resnet_deploy.pipeline.settings import EMBEDDED_MODEL, BuildSettings

    settings = BuildSettings(targets=("onnxruntime",), calib_samples=50, eval_samples=100, fallback=mode)
    data = data_stage(settings, load_model(EMBEDDED_MODEL), Ui(quiet=True))
    if mode == "off":
        assert data.held_out is None
        return
    assert data.held_out is not None and len(data.held_out) == 2 * HELD_OUT and len(data.calib) == 50
    assert not set(data.held_out.idents) & set(data.calib.idents)
    assert not set(data.held_out.idents) & set(data.evals.idents)  # another split here, and never the same image


def test_calibration_and_held_out_images_from_a_folder_come_in_drawn_order_not_class_by_class(fashion_mnist,
                                                                                              tmp_path):
    """A folder lists its images class by class. The calibration and held-out images stay in the order drawn, so
    that the first few (the sensitivity analysis's 128, ``auto``'s scoring half) stand for every class; the
    evaluation images stay in folder order, read as streamed."""
    from PIL import Image

    from resnet_deploy.calibration.sources import open_source
    from resnet_deploy.console import Ui
    from resnet_deploy.pipeline.build import data_stage
    from resnet_deploy.pipeline.checkpoint import load_model
    from resnet_deploy.pipeline.settings import EMBEDDED_MODEL, BuildSettings

    src, per_class = open_source(None, "train", flag="x"), 40
    for cls in range(10):
        folder = tmp_path / src.class_names[cls]
        folder.mkdir(parents=True)
        for i, k in enumerate(np.flatnonzero(src.labels == cls)[:per_class]):
            Image.fromarray(src.images[k]).save(folder / f"{i:03d}.png")
    settings = BuildSettings(targets=("onnxruntime",), calib_data=str(tmp_path), eval_data=str(tmp_path),
                             calib_samples=100, eval_samples=100, fallback="auto")
    data = data_stage(settings, load_model(EMBEDDED_MODEL), Ui(quiet=True))
    assert data.held_out is not None and len(data.held_out) == 10 * per_class - 200  # every spare image
    for labels in (data.calib.labels[:30], data.held_out.labels[:30]):
        assert len(set(labels.tolist())) >= 6, labels  # class by class, 30 images would span one or two classes
    assert (np.diff(data.evals.indices) > 0).all()
    again = data_stage(settings, load_model(EMBEDDED_MODEL), Ui(quiet=True))
    assert again.calib.idents == data.calib.idents and again.held_out is not None
    assert again.held_out.idents == data.held_out.idents  # the same order from the same --seed


def test_a_group_entry_keeps_all_its_layers_in_float_in_one_step(model, tmp_path):
    """An entry of the ranking may be a group (the residual shortcuts): one step of --max-float-layers, all of
    its layers at once, and the record lists them."""
    fb = _fallback(model, Said(), max_float_layers=1)
    members = (next(n for n in tiny.LAYERS if n != tiny.SENSITIVE), tiny.SENSITIVE)
    fb.sensitivity = Sensitivity("reference", "max", 16, 0.5, 10.0,
                                 (LayerSensitivity("a group", "Conv", 1.0, 30.0, 20.0, members),), 0.0)
    artifacts = _compile(fb, QdqStub(), model, tmp_path)
    assert QdqStub.compiles == [(), members]
    record = next(a for a in artifacts if a.precision == "int8").details["fallback"]
    assert record["float_layers"] == list(members)
    assert [a["float_layers"] for a in record["attempts"]] == [0, 2]  # layers, not steps
