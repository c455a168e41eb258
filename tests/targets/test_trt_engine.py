"""The TensorRT/Jetson targets: bundle files, engine-cache keys, trtexec flags, and the engine builder.

The builder runs here against a stand-in ``tensorrt`` module that records what it is told (flags,
DLA core, calibrator, shapes, workspace); tests marked ``tensorrt`` use the real SDK and a GPU.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import stat
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from strict_trt import HostCuda, make_tensorrt

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.errors import BundleError, ConfigError, DependencyError
from resnet_deploy.models import build_model
from resnet_deploy.pipeline.export import export_onnx
from resnet_deploy.pipeline.fold import fold_batchnorm
from resnet_deploy.targets import CompileInput, get_target
from resnet_deploy.targets.tensorrt import engine as _trt_engine
from resnet_deploy.targets.tensorrt import engine_cache as cache
from resnet_deploy.targets.tensorrt.calibration_cache import read_cache
from resnet_deploy.targets.tensorrt.config import TrtBuildConfig, quantization_mode
from resnet_deploy.targets.tensorrt.profiles import get_profile
from resnet_deploy.targets.tensorrt.runner import TrtRunner
from resnet_deploy.targets.tensorrt.trtexec import render_script, trtexec_args

PREP = Preprocessing((32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A bundle folder holding a BN-folded resnet20 ONNX, as the build writes it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("bundle")
    calib = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    folded, _ = fold_batchnorm(build_model("resnet20", num_classes=10).eval())
    export_onnx(folded, folder / "model_fp32.onnx", sample=calib[:2], metadata={})
    return folder, calib


_COMPILED: dict[tuple, tuple[Path, list]] = {}


@pytest.fixture
def compiled(base_bundle, tmp_path_factory):
    """compile(target, **options) into a fresh copy of the bundle (cached per target and options)."""

    def run(target: str, **options):
        key = (target, tuple(sorted(options.items())))
        if key not in _COMPILED:
            bundle = tmp_path_factory.mktemp(target)
            shutil.copyfile(base_bundle[0] / "model_fp32.onnx", bundle / "model_fp32.onnx")
            t = get_target(target)
            arts = t.compile(CompileInput(bundle / "model_fp32.onnx", base_bundle[1], PREP,
                                          t.parse_options(options)), bundle)
            _as_bundle(bundle, arts)
            _COMPILED[key] = (bundle, arts)
        bundle, arts = _COMPILED[key]
        fresh = tmp_path_factory.mktemp("copy")
        shutil.copytree(bundle, fresh, dirs_exist_ok=True)
        return fresh, arts

    return run


def _as_bundle(bundle: Path, arts) -> None:
    """The rest of a bundle around a compiled target folder (report, preprocessing, sample, manifest), so the
    device side (device-build, infer) takes it as a build's."""
    from resnet_deploy.pipeline import bundle as bundle_io
    from resnet_deploy.pipeline.records import DataInfo, DataSet, Gate, Host, ModelInfo, Reference, Report, to_json

    data = DataSet("x", 2, 0, 0)
    report = Report("passed", "", ModelInfo("resnet20", 10, PREP.shape, "test", "A", 0), PREP.to_dict(),
                    DataInfo(data, data), Reference("pytorch", "fp32", 0.5, ()), (), Gate(1.0, True), {}, (), {},
                    Host("", "", ""), 0.0, tuple(arts))
    bundle_io.write_json(bundle / bundle_io.REPORT_JSON, to_json(report))
    bundle_io.write_json(bundle / bundle_io.PREPROCESSING, PREP.to_dict())
    bundle_io.save_eval_sample(bundle / bundle_io.EVAL_SAMPLE, np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2),
                               tuple(str(i) for i in range(10)))
    bundle_io.write_manifest(bundle, versions={}, args={}, seed=0, calibration={})


def device_build(bundle: Path, **options) -> Path:
    """`resnet-deploy device-build` through the library; the engine it recorded."""
    from resnet_deploy.pipeline import device

    cache_dir = options.pop("cache_dir", None)
    device.device_build(bundle, options, cache_dir=cache_dir)
    record = json.loads((bundle / "device_artifacts.json").read_text())[0]
    return Path(record["path"]) if Path(record["path"]).is_absolute() else bundle / record["path"]


# --- compile ----------------------------------------------------------------------------------------

def test_jetson_compile_writes_the_device_files(compiled):
    bundle, arts = compiled("jetson")
    folder = bundle / "jetson"
    for name in ("model_qdq.onnx", "calibration.cache", "build_config.json", "trtexec.sh"):
        assert (folder / name).is_file(), name
    assert (folder / "trtexec.sh").stat().st_mode & stat.S_IXUSR
    assert read_cache(folder / "calibration.cache")[0] == "TRT-100300-EntropyCalibration2"  # orin-nano: TRT 10.3
    cfg = TrtBuildConfig.read(folder)
    assert (cfg.profile.name, cfg.precision, cfg.input_name, cfg.input_shape) == ("orin-nano", "int8", "input",
                                                                                  (3, 32, 32))
    assert (folder / cfg.fp32_onnx).resolve() == (bundle / "model_fp32.onnx").resolve()
    assert [a.runtime for a in arts] == ["onnxruntime"]  # no TensorRT here: the simulated row only
    sim = arts[0]
    assert (sim.target, sim.precision, sim.path, sim.simulated) == ("jetson", "int8", "jetson/model_qdq.onnx", True)
    assert all((bundle / f).is_file() for f in sim.files)
    assert "trtexec" in sim.commands["jetson-trtexec"]


def test_simulated_row_runs_under_onnx_runtime(compiled, base_bundle):
    bundle, arts = compiled("tensorrt")
    runner = get_target("tensorrt").load(arts[0], bundle, threads=1)
    out = runner.run(base_bundle[1][:3])
    assert out.shape == (3, 10) and np.isfinite(out).all()
    assert "simulated" in runner.description


def test_devices_without_fast_int8_get_fp16_and_say_so(compiled):
    bundle, arts = compiled("jetson", device="nano")
    sim = arts[0]
    assert sim.precision == "fp16" and "FP16" in sim.note and "Jetson Nano" in sim.note
    cfg = TrtBuildConfig.read(bundle / "jetson")
    assert cfg.precision == "fp16" and cfg.mode() == "none" and cfg.note
    assert read_cache(bundle / "jetson" / "calibration.cache")[0] == "TRT-8201-EntropyCalibration2"


def test_dla_bundle_uses_implicit_int8_and_static_shapes(compiled):
    bundle, arts = compiled("jetson", device="agx-orin", dla_core=1, max_batch=4)
    cfg = TrtBuildConfig.read(bundle / "jetson")
    assert cfg.dla_core == 1 and cfg.mode() == "implicit"
    assert cfg.shapes() == ((1, 3, 32, 32),) * 3  # DLA takes min = opt = max
    assert "--useDLACore=1" in arts[0].commands["jetson-trtexec"]


def test_bad_options_fail_before_any_work(base_bundle, tmp_path):
    with pytest.raises(ConfigError, match="--dla-core"):
        get_target("jetson").parse_options({"dla_core": 0})  # orin-nano has no DLA: refused before compile


def test_targets_need_no_sdk_for_the_simulated_row():
    for name in ("tensorrt", "jetson", "trt"):
        assert get_target(name).missing() == []  # ONNX Runtime only, a build dependency


# --- build_config.json and quantization mode -----------------------------------------------------------

@pytest.mark.parametrize("version, precision, dla, mode", [
    ("10.3.0", "int8", None, "explicit"), ("10.3.0", "int8", 0, "implicit"), ("8.5.2", "int8", None, "implicit"),
    ("8.6.2", "int8", 1, "implicit"), ("10.3.0", "fp16", None, "none"), ("8.2.1", "fp16", None, "none"),
])
def test_quantization_mode(version, precision, dla, mode):
    assert quantization_mode(version, precision=precision, dla_core=dla) == mode


def _config(device="agx-orin", **kw) -> TrtBuildConfig:
    p = get_profile(device)
    base = dict(target="jetson", profile=p, precision=p.precision, input_name="input", input_shape=(3, 32, 32),
                min_batch=1, opt_batch=2, max_batch=8, dla_core=None, workspace_mb=512, qdq_onnx="model_qdq.onnx",
                fp32_onnx="../model_fp32.onnx", calibration_cache="calibration.cache", amax_method="entropy")
    return TrtBuildConfig(**{**base, **kw})


def test_build_config_round_trips(tmp_path):
    cfg = _config(dla_core=1)
    cfg.write(tmp_path)
    assert TrtBuildConfig.read(tmp_path) == cfg


def test_build_config_errors_are_bundle_errors(tmp_path):
    with pytest.raises(BundleError, match="missing"):
        TrtBuildConfig.read(tmp_path)
    (tmp_path / "build_config.json").write_text(json.dumps({**_config().to_dict(), "schema": 99}))
    with pytest.raises(BundleError, match="schema"):
        TrtBuildConfig.read(tmp_path)
    (tmp_path / "build_config.json").write_text("{")
    with pytest.raises(BundleError, match="damaged"):
        TrtBuildConfig.read(tmp_path)


def test_dla_override_is_validated_against_the_profile():
    assert _config().with_dla(1).dla_core == 1
    with pytest.raises(ConfigError, match="--dla-core"):
        _config().with_dla(2)
    with pytest.raises(ConfigError, match="no DLA"):
        _config("orin-nano").with_dla(0)


# --- trtexec ------------------------------------------------------------------------------------------

def test_trtexec_explicit_int8_on_tensorrt_10():
    args = trtexec_args(_config())
    assert args == ["--onnx=model_qdq.onnx", "--saveEngine=engines/model_int8.engine", "--int8", "--fp16",
                    "--minShapes=input:1x3x32x32", "--optShapes=input:2x3x32x32", "--maxShapes=input:8x3x32x32",
                    "--memPoolSize=workspace:512M", "--timingCacheFile=engines/timing.cache"]


def test_trtexec_dla_uses_the_fp32_onnx_with_the_cache():
    args = trtexec_args(_config(dla_core=0))
    assert "--onnx=../model_fp32.onnx" in args and "--calib=calibration.cache" in args
    assert "--useDLACore=0" in args and "--allowGPUFallback" in args
    assert "--minShapes=input:2x3x32x32" in args and "--maxShapes=input:2x3x32x32" in args


def test_trtexec_flags_follow_the_tensorrt_release():
    xavier = trtexec_args(_config("xavier-nx"))  # TensorRT 8.5: implicit INT8, memPoolSize in MiB
    assert "--calib=calibration.cache" in xavier and "--memPoolSize=workspace:512" in xavier
    nano = trtexec_args(_config("nano"))  # TensorRT 8.2: no memPoolSize yet, FP16 only
    assert "--workspace=512" in nano and "--fp16" in nano and "--int8" not in nano
    assert not any(a.startswith("--calib") for a in nano)


def test_trtexec_script_runs_from_its_folder():
    script = render_script(_config())
    assert script.startswith("#!/bin/sh") and 'cd "$(dirname "$0")"' in script and '"$@"' in script
    assert "--onnx=model_qdq.onnx" in script and "JetPack 6.1" in script


# --- engine cache keys ------------------------------------------------------------------------------

KEY = cache.EngineKey("10.3.0", "Orin", (8, 7), None, "int8", "a" * 64, ((1, 3, 32, 32), (1, 3, 32, 32),
                                                                       (8, 3, 32, 32)))


@pytest.mark.parametrize("field, value", [
    ("tensorrt", "10.4.0"), ("gpu", "NVIDIA H100"), ("compute_capability", (9, 0)), ("dla_core", 0),
    ("precision", "fp16"), ("onnx_sha256", "b" * 64), ("shapes", ((1, 3, 32, 32),) * 3),
    ("calibration_sha256", "c" * 64),
])
def test_every_key_field_changes_the_engine_file(field, value):
    from dataclasses import replace

    other = replace(KEY, **{field: value})
    assert other.digest() != KEY.digest() and other.file_stem() != KEY.file_stem()


def test_key_round_trips_and_names_its_file():
    assert cache.EngineKey.from_dict(json.loads(json.dumps(KEY.to_dict()))) == KEY
    assert KEY.file_stem().startswith("model_int8_orin_sm87_trt10.3.0_")


def test_cache_stores_and_finds_only_the_same_key(tmp_path):
    assert cache.lookup(tmp_path, KEY).engine is None
    path = cache.store(tmp_path, KEY, b"plan")
    assert cache.lookup(tmp_path, KEY).engine == path and path.read_bytes() == b"plan"
    assert not list(tmp_path.glob("*.partial"))
    from dataclasses import replace

    assert cache.lookup(tmp_path, replace(KEY, tensorrt="10.4.0")).engine is None


def test_copied_engine_with_another_key_is_not_loaded(tmp_path):
    from dataclasses import replace

    other = replace(KEY, gpu="Xavier", compute_capability=(7, 2))
    src_engine, src_meta = cache.paths(tmp_path, other)
    cache.store(tmp_path, other, b"xavier plan")
    engine, meta = cache.paths(tmp_path, KEY)  # someone renamed the Xavier engine to the Orin name
    src_engine.rename(engine)
    src_meta.rename(meta)
    found = cache.lookup(tmp_path, KEY)
    assert found.engine is None and "compute_capability" in found.reason and "gpu" in found.reason


def test_edited_or_torn_engine_is_rebuilt(tmp_path):
    path = cache.store(tmp_path, KEY, b"plan")
    path.write_bytes(b"pla")
    assert "sha256" in cache.lookup(tmp_path, KEY).reason and cache.lookup(tmp_path, KEY).engine is None
    cache.paths(tmp_path, KEY)[1].write_text("not json")
    assert cache.lookup(tmp_path, KEY).engine is None


# --- the builder, against a stand-in TensorRT ---------------------------------------------------------

@pytest.fixture
def fake_gpu(monkeypatch):
    def install(version: str, gpu=("Orin", (8, 7))) -> list:
        log: list = []
        # the strict stand-in: exactly the attributes NVIDIA's bindings define at that release
        monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(version, log=log))
        monkeypatch.setattr(_trt_engine, "gpu_info", lambda: _trt_engine.GpuInfo(*gpu))
        return log

    return install


def _builds(log):
    return [e for e in log if e[0] == "build"]


def test_explicit_int8_build_and_cache_reuse(compiled, fake_gpu):
    bundle, _ = compiled("jetson")
    log = fake_gpu("10.3.0")
    folder = bundle / "jetson"
    first = _trt_engine.build_engine(folder)
    assert ("parse", "model_qdq.onnx") in log and ("network_flags", 0) in log
    assert _builds(log) == [("build", ["FP16", "INT8"], "GPU", -1, None)]  # Q/DQ: no calibrator
    assert ("pool", "WORKSPACE", 512 << 20) in log
    assert ("shapes", "input", (1, 3, 32, 32), (1, 3, 32, 32), (8, 3, 32, 32)) in log
    assert not first.reused and first.path.read_bytes().startswith(b"STRICT-TRT") and first.key.precision == "int8"
    assert (first.key.tensorrt, first.key.gpu, first.key.compute_capability) == ("10.3.0", "Orin", (8, 7))

    again = _trt_engine.build_engine(folder)
    assert again.reused and again.path == first.path and len(_builds(log)) == 1
    assert ("timing_in", b"") in log

    forced = _trt_engine.build_engine(folder, force=True)
    assert not forced.reused and len(_builds(log)) == 2
    assert ("timing_in", b"timing-cache") in log  # the saved timing cache is loaded again

    import onnx

    model = onnx.load(str(folder / "model_qdq.onnx"))  # a changed (still valid) model: stale engine, rebuilt
    model.doc_string = "changed"
    onnx.save(model, str(folder / "model_qdq.onnx"))
    changed = _trt_engine.build_engine(folder)
    assert not changed.reused and changed.path != first.path and len(_builds(log)) == 3


def test_implicit_int8_on_dla_reads_the_calibration_cache(compiled, fake_gpu):
    bundle, _ = compiled("jetson", device="xavier-nx", dla_core=0)
    log = fake_gpu("8.5.2.2", gpu=("Xavier", (7, 2)))
    built = _trt_engine.build_engine(bundle / "jetson")
    assert ("parse", "model_fp32.onnx") in log and ("network_flags", 1) in log  # EXPLICIT_BATCH on 8.x
    assert _builds(log) == [("build", ["FP16", "GPU_FALLBACK", "INT8"], "DLA", 0, b"TRT-8502-EntropyCalibration2")]
    assert ("calibration_profile",) in log
    assert ("shapes", "input", (1, 3, 32, 32), (1, 3, 32, 32), (1, 3, 32, 32)) in log
    assert built.key.dla_core == 0 and built.key.calibration_sha256


def test_another_tensorrt_gets_the_cache_under_its_own_header(compiled, fake_gpu):
    bundle, _ = compiled("jetson", device="xavier-nx", dla_core=0)
    log = fake_gpu("8.6.1", gpu=("Xavier", (7, 2)))
    _trt_engine.build_engine(bundle / "jetson")
    assert _builds(log)[0][-1] == b"TRT-8601-EntropyCalibration2"


def test_gpu_without_fast_int8_builds_fp16(compiled, fake_gpu):
    bundle, _ = compiled("jetson")
    log = fake_gpu("10.3.0", gpu=("Pascal P100", (6, 0)))
    built = _trt_engine.build_engine(bundle / "jetson")
    assert built.key.precision == "fp16" and "FP16" in built.note
    assert _builds(log) == [("build", ["FP16"], "GPU", -1, None)]


def test_device_build_records_the_engine_for_the_device_side(compiled, fake_gpu):
    bundle, _ = compiled("jetson", device="agx-orin")
    fake_gpu("10.3.0")
    path = device_build(bundle)
    path2 = device_build(bundle, dla_core=1)
    assert path.is_file() and path2.is_file() and path != path2
    records = json.loads((bundle / "device_artifacts.json").read_text())
    assert len(records) == 1, "one engine per target: the newest replaces the last"
    assert records[0]["runtime"] == "tensorrt" and records[0]["target"] == "jetson"
    assert (bundle / records[0]["path"]).resolve() == path2.resolve()
    assert records[0]["details"]["engine_key"]["dla_core"] == 1
    with pytest.raises(ConfigError, match="--dla-core"):
        device_build(bundle, dla_core=5)


def test_device_build_lists_its_engine_in_the_manifest(compiled, fake_gpu, tmp_path):
    from resnet_deploy.pipeline import bundle as bundle_io

    bundle, _ = compiled("jetson", device="agx-orin")
    bundle_io.write_manifest(bundle, versions={}, args={}, seed=0, calibration={})
    fake_gpu("10.3.0")
    path = device_build(bundle)
    files = bundle_io.verify_bundle(bundle)["files"]
    rel = str(path.resolve().relative_to(bundle.resolve()))
    for name in ("device_artifacts.json", rel, rel[:-len(".engine")] + ".json"):
        assert files[name]["written_by"] == "device-build", name
    assert not list(bundle.glob("*.tmp-*")) and not (bundle.parent / f".{bundle.name}.lock").exists()
    device_build(bundle, dla_core=1)  # the newest engine replaces the last in the manifest too
    files = bundle_io.verify_bundle(bundle)["files"]
    assert rel not in files and sum(n.endswith(".engine") for n in files) == 1

    outside = tmp_path / "engine-cache"  # --cache-dir outside the bundle: absolute path and its own sha256
    path = device_build(bundle, cache_dir=outside)
    record = json.loads((bundle / "device_artifacts.json").read_text())[0]
    assert record["path"] == str(path.resolve()) and record["sha256"] == cache.sha256_file(path)
    assert not any(n.endswith(".engine") for n in bundle_io.verify_bundle(bundle)["files"])


def test_device_build_refuses_while_another_writes_the_bundle(compiled, fake_gpu):
    from resnet_deploy.errors import OutputInUse
    from resnet_deploy.pipeline import out_lock

    bundle, _ = compiled("jetson")
    fake_gpu("10.3.0")
    with out_lock.hold(bundle, what="device-build"), pytest.raises(OutputInUse, match=r"device-build \(pid"):
        device_build(bundle)


def test_device_build_without_tensorrt_says_how_to_get_it(compiled, monkeypatch):
    bundle, _ = compiled("jetson")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when it is not installed
    with pytest.raises(DependencyError, match="TensorRT is not installed"):
        device_build(bundle)


def test_device_build_without_a_gpu(compiled, fake_gpu, monkeypatch):
    bundle, _ = compiled("jetson")
    fake_gpu("10.3.0")
    monkeypatch.setattr(_trt_engine, "gpu_info", lambda: None)
    with pytest.raises(DependencyError, match="GPU"):
        device_build(bundle)


def test_device_build_needs_a_tensorrt_bundle(compiled):
    bundle, _ = compiled("tensorrt")
    (bundle / "tensorrt" / "build_config.json").unlink()  # listed in the manifest, so now damage
    with pytest.raises(BundleError):
        device_build(bundle)


# --- the runner, against stand-ins for TensorRT and the CUDA runtime -------------------------------------

def _fake_runtime_trt(cudart: HostCuda, profile: tuple, calls: list) -> types.ModuleType:
    """An "engine" whose logit k of an image is (k + 1) times the image's mean."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")

    class Context:
        shape = None
        addresses: dict = {}

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)

        def get_tensor_shape(self, name):
            return (self.shape[0], 10)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream_handle):
            n = self.shape[0]
            calls.append(n)
            x = np.frombuffer(cudart.buffers[self.addresses["input"]], np.float32, n * 3 * 32 * 32)
            logits = x.reshape(n, -1).mean(1, keepdims=True) * np.arange(1, 11, dtype=np.float32)
            ctypes.memmove(self.addresses["logits"], logits.astype(np.float32).ctypes.data, logits.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("input", "logits")[i]

        def get_tensor_mode(self, name):
            return "in" if name == "input" else "out"

        def get_tensor_profile_shape(self, name, index):
            return [(b, 3, 32, 32) for b in profile]

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger): ...

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"PLAN" else None

    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.Runtime = Runtime
    return trt


@pytest.mark.parametrize("profile, batch, runs", [((1, 4, 8), 20, [8, 8, 4]), ((2, 2, 2), 3, [2, 2])],
                         ids=["split-beyond-max-batch", "pad-a-static-dla-profile"])
def test_runner_splits_and_pads_batches_to_the_engine_profile(tmp_path, monkeypatch, profile, batch, runs):
    from resnet_deploy.targets.tensorrt import runner as _trt_runner

    cudart, calls = HostCuda(), []
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_runtime_trt(cudart, profile, calls))
    monkeypatch.setattr(_trt_runner, "cuda_runtime", lambda: cudart)
    monkeypatch.setattr(_trt_runner, "gpu_info", lambda: _trt_engine.GpuInfo("Orin", (8, 7)))
    (tmp_path / "e.engine").write_bytes(b"PLAN")
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    runner = TrtRunner(tmp_path / "e.engine")
    out = runner.run(x)
    expected = x.reshape(batch, -1).mean(1, keepdims=True) * np.arange(1, 11, dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert calls == runs and "Orin" in runner.description
    runner.close()
    assert len(cudart.freed) == 2


def test_runner_refuses_an_engine_of_another_tensorrt(tmp_path, monkeypatch):
    from resnet_deploy.targets.tensorrt import runner as _trt_runner

    cudart = HostCuda()
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_runtime_trt(cudart, (1, 1, 1), []))
    monkeypatch.setattr(_trt_runner, "cuda_runtime", lambda: cudart)
    (tmp_path / "e.engine").write_bytes(b"OTHER")
    with pytest.raises(BundleError, match="device-build"):
        TrtRunner(tmp_path / "e.engine")


# --- the real SDK -------------------------------------------------------------------------------------

def _require_tensorrt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it needs an NVIDIA GPU)")
    if _trt_engine.gpu_info() is None:
        pytest.skip("no CUDA GPU visible (or cuda-python missing)")


@pytest.mark.tensorrt
def test_real_engine_agrees_with_the_simulated_row(compiled, base_bundle):
    _require_tensorrt()
    bundle, arts = compiled("tensorrt")
    path = device_build(bundle)
    assert _trt_engine.build_engine(bundle / "tensorrt").reused
    runner = TrtRunner(path)
    x = np.random.default_rng(1).standard_normal((40, 3, 32, 32)).astype(np.float32)  # > max batch 32: split
    out = runner.run(x)
    sim = get_target("tensorrt").load(arts[0], bundle).run(x)
    assert out.shape == sim.shape == (40, 10)
    assert (out.argmax(1) == sim.argmax(1)).mean() >= 0.9


def test_device_check_script_explains_what_is_missing(compiled):
    import subprocess

    if _trt_engine.tensorrt_available():
        pytest.skip("TensorRT is installed here: the script would run the check")
    bundle, _ = compiled("jetson")
    script = Path(__file__).resolve().parents[2] / "scripts" / "device_check.py"
    done = subprocess.run([sys.executable, str(script), str(bundle)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "TensorRT is not installed" in done.stderr


@pytest.mark.parametrize("version", ["8.2.1", "8.5.2", "8.6.1", "10.3.0", "11.1"])
def test_device_build_and_runner_on_every_release(compiled, fake_gpu, monkeypatch, version):
    """`device-build` then the runner, on the strict stand-in of each release the profiles and pip reach."""
    from resnet_deploy.targets.tensorrt import runner as _trt_runner

    bundle, _ = compiled("jetson", device="agx-orin")
    log = fake_gpu(version)
    path = device_build(bundle)
    assert path.is_file() and len(_builds(log)) == 1
    cuda = HostCuda()
    monkeypatch.setattr(_trt_runner, "cuda_runtime", lambda: cuda)
    runner = TrtRunner(path)
    out = runner.run(np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32))
    runner.close()
    assert out.shape == (3, 10) and np.isfinite(out).all()
    assert not cuda.streams and len(cuda.freed) == 2  # every buffer and stream given back
