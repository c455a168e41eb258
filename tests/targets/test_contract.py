"""The contract every registered target keeps (plug-in API 1), parametrized over the registry.

A target installed as a package (entry point group ``resnet_deploy.targets``) is collected here the
day it is installed; ``StubTarget``, registered in-process, is the cheap control case and a fast
target for tests of error paths. Each target compiles one small BN-folded resnet20 (1x28x28): the
embedded Fashion-MNIST model, since INT8 agreement means something only for a model whose
predictions vary (a random one gives every image the same class). Real calibration images; targets
whose build requirements are missing here skip, naming them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from stub_target import StubTarget  # tests/stub_target.py

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.pipeline.checkpoint import load_model
from resnet_deploy.pipeline.export import export_onnx, run_onnx
from resnet_deploy.pipeline.fold import fold_batchnorm
from resnet_deploy.pipeline.settings import EMBEDDED_MODEL
from resnet_deploy.targets import (
    PLUGIN_API,
    Artifact,
    CompileInput,
    Runtime,
    broken,
    get_target,
    list_targets,
    register,
    runtimes,
    unregister,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PRECISIONS = ("fp32", "fp16", "int8")  # the order artifacts come in
CALIBRATION_IMAGES = 48
FP32_ATOL = 1e-4  # of the output scale: FP32 ONNX vs PyTorch, the field's bound (STYLE.md)
INT8_AGREEMENT = 0.90  # top-1 agreement with FP32 on real images
# Flags given to a target here, else its defaults. The built-in targets' default range rule, `auto`, quantizes once
# per rule (openvino's four NNCF runs were 15 s of this file): one rule each here; test_calib_method.py and
# test_tensorrt_qdq.py check `auto`.
OPTIONS = {"openvino": {"calib_method": "mean_max"}, "onnxruntime": {"calib_method": "max"},
           "tensorrt": {"calib_method": "max"}, "jetson": {"calib_method": "max"}}


# Parametrized at collection, before the stub is registered (the fixture below registers it for this module).
NAMES = list(dict.fromkeys([*list_targets(), StubTarget.name]))


@pytest.fixture(scope="module", autouse=True)
def stub_registered():
    register(StubTarget)
    yield
    unregister(StubTarget.name)


# --- what every target compiles ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return load_model(EMBEDDED_MODEL)


@pytest.fixture(scope="module")
def prep(model) -> Preprocessing:
    return Preprocessing.from_dict(model.meta["preprocessing"])


@pytest.fixture(scope="module")
def images(fashion_mnist, prep) -> np.ndarray:
    """Real calibration images, float32 NCHW normalised as the model was trained."""
    source = open_source("fashion-mnist", "train", flag="--calib-data")
    return decode(source, choose(len(source), CALIBRATION_IMAGES, seed=0), prep, flag="--calib-data").inputs(prep)


@pytest.fixture(scope="module")
def folded_onnx(tmp_path_factory, model, images) -> tuple[Path, np.ndarray]:
    """The model BN-folded and exported as the build does, and its ONNX logits on ``images``."""
    folded, _ = fold_batchnorm(model.model)
    path = tmp_path_factory.mktemp("onnx") / bundle_io.MODEL_ONNX
    export_onnx(folded, path, sample=images[:8], metadata={})
    return path, run_onnx(path, images)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, images, prep, folded_onnx):
    """compile(name) -> (bundle, artifacts), once per target: the folded ONNX at the bundle's root, as the
    build's export stage leaves it, and the target's folder beside it."""
    done: dict[str, tuple[Path, list[Artifact]]] = {}

    def run(name: str) -> tuple[Path, list[Artifact]]:
        if name not in done:
            target = get_target(name)
            missing = target.missing()
            if missing:
                pytest.skip(f"--target {name} needs {', '.join(missing)} to build, not installed here")
            bundle = tmp_path_factory.mktemp(name)
            fp32 = Path(shutil.copyfile(folded_onnx[0], bundle / bundle_io.MODEL_ONNX))
            inp = CompileInput(fp32, images, prep, target.parse_options(OPTIONS.get(name, {})))
            done[name] = (bundle, list(target.compile(inp, bundle)))
        return done[name]

    return run


def _runnable(artifacts: Sequence[Artifact]) -> list[Artifact]:
    """The artifacts whose runtime is present here (a device engine is not, on a build machine)."""
    known = runtimes()
    return [a for a in artifacts if a.runtime in known and known[a.runtime].present()]


def _of(artifacts: Sequence[Artifact], precision: str, name: str) -> list[Artifact]:
    found = [a for a in artifacts if a.precision == precision]
    if not found:
        pytest.skip(f"--target {name} makes no {precision} artifact runnable here")
    return found


# --- the contract ------------------------------------------------------------------------------------

def test_every_installed_plugin_loads():
    assert not broken, f"entry points that could not be loaded: {broken}"


@pytest.mark.parametrize("name", NAMES)
def test_declares_itself(name):
    target = get_target(name)
    assert target.name == name and target.api_version in range(1, PLUGIN_API + 1)
    assert isinstance(target.summary, str) and target.summary.strip()
    assert target.runtimes and all(isinstance(rt, Runtime) for rt in target.runtimes)
    assert len({rt.name for rt in target.runtimes}) == len(target.runtimes)
    assert all(rt.name and rt.module and rt.install for rt in target.runtimes)
    assert isinstance(target.missing(), list)


@pytest.mark.parametrize("name", NAMES)
def test_options_parse_without_flags_and_ignore_other_targets_flags(name):
    target = get_target(name)
    options = target.parse_options({})
    assert target.parse_options({"a_flag_of_another_target": 3}) == options
    if target.options is not None:
        assert options is not None


@pytest.mark.parametrize("name", NAMES)
def test_writes_only_its_folder_artifacts_there_or_the_shared_onnx_fp32_first(name, compiled):
    """Every file a target writes lies under <bundle>/<name>/; an artifact may also name the bundle's shared
    model_fp32.onnx (the export stage's), so the same model is not stored twice."""
    bundle, artifacts = compiled(name)
    assert artifacts, f"{name} compiled nothing"
    folder = (bundle / name).resolve()
    shared = (bundle / bundle_io.MODEL_ONNX).resolve()
    written = [p for p in bundle.rglob("*") if p.is_file() and p.resolve() != shared]
    assert all(folder in p.resolve().parents for p in written), [str(p) for p in written]
    for a in artifacts:
        assert a.target == name and a.precision in PRECISIONS, a
        for rel in (a.path, *a.files):
            path = (bundle / rel).resolve()
            assert folder in path.parents or path == shared, f"{rel} is not under {name}/ nor {bundle_io.MODEL_ONNX}"
            assert path.is_file(), f"{rel} was not written"
    order = [PRECISIONS.index(a.precision) for a in artifacts]
    assert order == sorted(order), [a.precision for a in artifacts]


@pytest.mark.parametrize("name", NAMES)
def test_artifacts_name_a_declared_runtime_and_round_trip(name, compiled):
    _, artifacts = compiled(name)
    declared = {rt.name for rt in get_target(name).runtimes}
    for a in artifacts:
        assert a.runtime in declared, f"{a.path}: runtime {a.runtime!r} is not one of {sorted(declared)}"
        assert Artifact.from_dict(a.to_dict()) == a


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 3])
def test_runner_returns_logits_per_image(name, n, compiled, images, model):
    bundle, artifacts = compiled(name)
    target = get_target(name)
    runnable = _runnable(artifacts)
    if not runnable:
        pytest.skip(f"no runtime of --target {name} is present here")
    for a in runnable:
        runner = target.load(a, bundle, threads=1)
        assert isinstance(runner.description, str) and runner.description
        out = np.asarray(runner.run(np.ascontiguousarray(images[:n])))
        assert out.shape == (n, model.num_classes), (a.path, out.shape)
        assert np.issubdtype(out.dtype, np.floating) and np.isfinite(out).all(), a.path


@pytest.mark.parametrize("name", NAMES)
def test_fp32_matches_the_onnx_reference(name, compiled, images, folded_onnx):
    bundle, artifacts = compiled(name)
    target = get_target(name)
    reference = folded_onnx[1]
    tolerance = FP32_ATOL * max(1.0, float(np.abs(reference).max()))
    for a in _of(_runnable(artifacts), "fp32", name):
        out = target.load(a, bundle, threads=1).run(images)
        diff = float(np.abs(out - reference).max())
        assert diff <= tolerance, f"{a.path}: max |diff| {diff:.2e} > {tolerance:.2e}"
        assert (out.argmax(1) == reference.argmax(1)).all(), a.path


@pytest.mark.parametrize("name", NAMES)
def test_int8_agrees_with_fp32_on_real_images(name, compiled, images, folded_onnx):
    bundle, artifacts = compiled(name)
    target = get_target(name)
    expected = folded_onnx[1].argmax(1)
    assert len(set(expected.tolist())) > 1, "the test model predicts one class only: agreement would be vacuous"
    for a in _of(_runnable(artifacts), "int8", name):
        agreement = float((target.load(a, bundle, threads=1).run(images).argmax(1) == expected).mean())
        assert agreement >= INT8_AGREEMENT, f"{a.path}: top-1 agreement with FP32 {agreement:.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_throughput_mode_gives_the_latency_runners_logits(name, compiled, images, model):
    """``load_throughput`` (API 2; a default for version-1 plug-ins) runs every image of a batch, in order, with
    ``requests`` in flight: the logits of the one-request runner, whatever the runtime's streams."""
    bundle, artifacts = compiled(name)
    target = get_target(name)
    runnable = _runnable(artifacts)
    if not runnable:
        pytest.skip(f"no runtime of --target {name} is present here")
    batch = np.ascontiguousarray(images[:13])
    for a in runnable:
        many = target.load_throughput(a, bundle, threads=2)
        assert isinstance(many.description, str) and many.description and many.requests >= 1
        out = np.asarray(many.run_many(batch))
        expected = np.asarray(target.load(a, bundle, threads=1).run(batch))
        assert out.shape == (13, model.num_classes), (a.path, out.shape)
        tolerance = FP32_ATOL * max(1.0, float(np.abs(expected).max()))
        assert float(np.abs(out - expected).max()) <= tolerance, a.path
        np.testing.assert_array_equal(many.run_many(batch[:1]).argmax(1), expected[:1].argmax(1))
