"""The TensorRT API tables, the strict stand-in built from them, and the parser that extracts them.

Each fact below was read in NVIDIA's pybind11 sources at the release tag (file:line in
tests/targets/tensorrt_api/README.md); the tables must agree with them.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from strict_trt import TABLES, VERSIONS, HostCuda, make_tensorrt, table_for

ROOT = Path(__file__).resolve().parents[2]


def _extractor():
    spec = importlib.util.spec_from_file_location("extract_trt_api", ROOT / "scripts" / "extract_trt_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def has(version: str, path: str) -> bool:
    """Whether ``Class.member`` or ``Enum.VALUE`` (or a bare module name) is in the version's table."""
    t = table_for(version)
    scope, _, name = path.rpartition(".")
    if not scope:
        return name in t["classes"] or name in t["enums"] or name in t["module_functions"]
    if scope in t["classes"]:
        return name in t["classes"][scope]["members"]
    if scope in t["enums"]:
        return name in t["enums"][scope]
    return False


# --- (a) the tables hold each release's known facts ------------------------------------------------

PRESENT_IN = {  # member -> versions whose bindings have it (the others must not)
    "IBuilderConfig.max_workspace_size": {"8.2.1", "8.5.2", "8.6.1"},  # deprecated in 8.4, removed in 10.0
    "IBuilderConfig.set_memory_pool_limit": {"8.5.2", "8.6.1", "10.3.0", "11.1"},  # added in 8.4
    "IBuilderConfig.int8_calibrator": {"8.2.1", "8.5.2", "8.6.1", "10.3.0"},  # removed with implicit INT8 in 11
    "IBuilderConfig.set_calibration_profile": {"8.2.1", "8.5.2", "8.6.1", "10.3.0"},
    "IInt8EntropyCalibrator2": {"8.2.1", "8.5.2", "8.6.1", "10.3.0"},  # 11.x has no pyInt8.cpp
    "BuilderFlag.INT8": {"8.2.1", "8.5.2", "8.6.1", "10.3.0"},
    "BuilderFlag.FP16": {"8.2.1", "8.5.2", "8.6.1", "10.3.0"},  # 11.x: strongly typed networks only
    "BuilderFlag.GPU_FALLBACK": set(VERSIONS),
    "BuilderFlag.STRICT_TYPES": {"8.2.1", "8.5.2", "8.6.1"},
    "NetworkDefinitionCreationFlag.EXPLICIT_BATCH": {"8.2.1", "8.5.2", "8.6.1", "10.3.0"},  # deprecated in 10
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": {"10.3.0", "11.1"},
    "MemoryPoolType": {"8.5.2", "8.6.1", "10.3.0", "11.1"},
    "TensorIOMode": {"8.5.2", "8.6.1", "10.3.0", "11.1"},
    "IExecutionContext.execute_async_v3": {"8.5.2", "8.6.1", "10.3.0", "11.1"},
    "IExecutionContext.set_input_shape": {"8.5.2", "8.6.1", "10.3.0", "11.1"},
    "IExecutionContext.execute_async_v2": {"8.2.1", "8.5.2", "8.6.1"},
    "IExecutionContext.set_binding_shape": {"8.2.1", "8.5.2", "8.6.1"},
    "IExecutionContext.execute_v2": set(VERSIONS),
    "ICudaEngine.get_binding_name": {"8.2.1", "8.5.2", "8.6.1"},
    "ICudaEngine.get_profile_shape": {"8.2.1", "8.5.2", "8.6.1"},
    "ICudaEngine.num_io_tensors": {"8.5.2", "8.6.1", "10.3.0", "11.1"},
    "ICudaEngine.get_tensor_profile_shape": {"8.5.2", "8.6.1", "10.3.0", "11.1"},
    "Builder.build_engine": {"8.2.1", "8.5.2", "8.6.1"},
    "Builder.build_serialized_network": set(VERSIONS),
    "Builder.platform_has_fast_int8": {"8.2.1", "8.5.2", "8.6.1", "10.3.0"},
    "OnnxParser.parse_from_file": set(VERSIONS),
    "ITimingCache.serialize": set(VERSIONS),
    "IHostMemory.nbytes": set(VERSIONS),
    "Logger.WARNING": set(VERSIONS),  # the package's __init__.py copies ILogger.Severity onto Logger
    "ILogger.Severity": set(VERSIONS),
    "DeviceType.DLA": set(VERSIONS),
    "CalibrationAlgoType.ENTROPY_CALIBRATION_2": {"8.2.1", "8.5.2", "8.6.1", "10.3.0"},
    "EngineCapability.DEFAULT": {"8.2.1", "8.5.2", "8.6.1"},  # the 8.x aliases of STANDARD, gone in 10
    "EngineCapability.STANDARD": set(VERSIONS),
    "ProfilingVerbosity.DEFAULT": {"8.2.1", "8.5.2", "8.6.1"},
    "DataType.INT64": {"10.3.0", "11.1"},
    "DataType.FP8": {"8.6.1", "10.3.0", "11.1"},
}


@pytest.mark.parametrize("path", sorted(PRESENT_IN))
@pytest.mark.parametrize("version", VERSIONS)
def test_table_has_exactly_the_releases_members(version, path):
    assert has(version, path) == (version in PRESENT_IN[path]), f"{path} in TensorRT {version}"


@pytest.mark.parametrize("version", VERSIONS)
def test_each_table_names_its_source_and_the_classes_the_product_uses(version):
    t = json.loads((TABLES / f"{version}.json").read_text())
    assert t["version"] == version
    assert t["source"].startswith("NVIDIA/TensorRT@") and "python/src/infer/pyCore.cpp" in t["source"]
    sha = t["source"].split()[1]
    assert len(sha) == 40 and int(sha, 16) >= 0
    for name in ("Logger", "Builder", "INetworkDefinition", "OnnxParser", "IBuilderConfig", "IOptimizationProfile",
                 "ITimingCache", "IHostMemory", "Runtime", "ICudaEngine", "IExecutionContext"):
        assert name in t["classes"], name
    for name in ("BuilderFlag", "NetworkDefinitionCreationFlag", "DeviceType", "DataType", "ProfilingVerbosity",
                 "EngineCapability"):
        assert name in t["enums"], name
    assert t["classes"]["Logger"]["bases"] == ["ILogger"]


def test_enum_values_come_from_the_headers():
    assert table_for("8.5.2")["enum_values"]["NetworkDefinitionCreationFlag"]["EXPLICIT_BATCH"] == 0
    assert table_for("10.3.0")["enum_values"]["DataType"]["BF16"] == 7  # not its position in the binding
    assert table_for("11.1")["enum_values"]["NetworkDefinitionCreationFlag"] == {
        "STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}


def test_keyword_names_are_the_bindings():
    t = table_for("10.3.0")["classes"]
    assert t["IExecutionContext"]["args"]["execute_async_v3"] == [["stream_handle"]]
    assert t["IBuilderConfig"]["args"]["set_timing_cache"] == [["cache", "ignore_mismatch"]]
    assert t["IBuilderConfig"]["args"]["set_memory_pool_limit"] == [["pool", "pool_size"]]


def test_versions_resolve_to_their_release_table():
    assert table_for("8.5.2.2")["version"] == "8.5.2"
    assert table_for("11.1.0")["version"] == "11.1"
    with pytest.raises(ValueError, match="No TensorRT API table"):
        table_for("9.1.0")


# --- (b) the strict module is exactly as strict as the table -------------------------------------------

def test_unknown_reads_and_writes_raise_like_the_bindings():
    trt = make_tensorrt("10.3.0")
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    with pytest.raises(AttributeError, match="max_workspace_size"):
        config.max_workspace_size = 1 << 20
    with pytest.raises(AttributeError, match="max_workspace_size"):
        config.max_workspace_size  # noqa: B018
    with pytest.raises(AttributeError):
        config.set_flag = None  # a bound method is not assignable on a pybind11 object
    with pytest.raises(AttributeError):
        config.anything_new = 1  # pybind11 objects have no __dict__
    with pytest.raises(AttributeError, match="has no attribute 'NotAThing'"):
        trt.NotAThing  # noqa: B018
    config.DLA_core = 1
    assert config.DLA_core == 1
    with pytest.raises(TypeError):
        config.default_device_type = "DLA"  # the binding takes a DeviceType, not a string


def test_removed_enum_values_and_classes_are_gone():
    trt = make_tensorrt("11.1")
    with pytest.raises(AttributeError, match="INT8"):
        trt.BuilderFlag.INT8  # noqa: B018
    with pytest.raises(AttributeError):
        trt.IInt8EntropyCalibrator2  # noqa: B018
    assert trt.__version__ == "11.1" and int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0
    assert make_tensorrt("10.3.0").BuilderFlag.INT8.name == "INT8"


def test_readonly_properties_and_unmodelled_names():
    trt = make_tensorrt("8.6.1")
    with pytest.raises(AttributeError):
        trt.Builder(trt.Logger()).create_builder_config().num_optimization_profiles = 3
    with pytest.raises(AttributeError, match="does not model it"):
        trt.IConvolutionLayer  # noqa: B018 - real in 8.6, outside the table's subset
    with pytest.raises(NotImplementedError, match="no behaviour"):
        trt.Builder(trt.Logger()).create_builder_config().get_tactic_sources()
    with pytest.raises(TypeError, match="No constructor"):
        trt.IBuilderConfig()


def test_keywords_the_binding_does_not_declare_are_refused():
    trt = make_tensorrt("10.3.0")
    config = trt.Builder(trt.Logger()).create_builder_config()
    cache = config.create_timing_cache(b"")
    assert config.set_timing_cache(cache, ignore_mismatch=False)
    with pytest.raises(TypeError, match="incompatible"):
        config.set_timing_cache(cache, ignore=False)


def test_calibrator_subclass_must_call_the_base_init():
    trt = make_tensorrt("8.5.2")

    class Forgetful(trt.IInt8EntropyCalibrator2):
        def __init__(self):  # no base __init__: pybind11 refuses the object
            pass

        def read_calibration_cache(self):
            return b""

    config = trt.Builder(trt.Logger()).create_builder_config()
    with pytest.raises(TypeError, match="__init__"):
        config.int8_calibrator = Forgetful()


def test_host_memory_is_a_buffer_with_only_its_members():
    trt = make_tensorrt("10.3.0")
    plan = trt.Builder(trt.Logger()).create_builder_config().create_timing_cache(b"").serialize()
    assert bytes(plan) == b"timing-cache" and memoryview(plan).nbytes == plan.nbytes == 12
    with pytest.raises(AttributeError):
        plan.decode  # noqa: B018 - bytes' methods are not IHostMemory's


# --- the product's engine build and runner, against each release -----------------------------------------

def _tiny_onnx(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])])
    onnx.save(helper.make_model(graph), str(path))
    return path


def _cfg(dla_core=None):
    shapes = ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    return types.SimpleNamespace(workspace_mb=64, input_name="input", dla_core=dla_core, shapes=lambda: shapes,
                                 float_layers=())


def _build_and_run(version: str, tmp_path: Path, monkeypatch, log: list, *, precision="int8", mode="explicit"):
    from resnet_deploy.targets.tensorrt import engine as _trt_engine
    from resnet_deploy.targets.tensorrt import runner as _trt_runner

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt(version, log=log))
    cuda = HostCuda()
    monkeypatch.setattr(_trt_runner, "cuda_runtime", lambda: cuda)
    monkeypatch.setattr(_trt_runner, "gpu_info", lambda: _trt_engine.GpuInfo("Orin", (8, 7)))
    calibration = tmp_path / "calibration.cache"
    calibration.write_bytes(b"TRT-8502-EntropyCalibration2\ninput: 3c010a14\n")
    plan = _trt_engine.build_plan(_cfg(), _tiny_onnx(tmp_path / "m.onnx"), mode=mode, precision=precision,
                                  calibration=calibration, timing_cache=tmp_path / "timing.cache")
    (tmp_path / "m.engine").write_bytes(plan)
    runner = _trt_runner.TrtRunner(tmp_path / "m.engine")
    x = np.random.default_rng(0).standard_normal((9, 3, 8, 8)).astype(np.float32)
    out = runner.run(x)
    runner.close()
    expected = x.reshape(9, -1).mean(1, keepdims=True) * np.arange(1, 4, dtype=np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    return runner


@pytest.mark.parametrize("version", ["8.2.1", "8.5.2", "8.6.1", "10.3.0", "11.1"])
def test_product_builds_and_runs_under_each_release(version, tmp_path, monkeypatch):
    log: list = []
    runner = _build_and_run(version, tmp_path, monkeypatch, log)
    flags = next(e for e in log if e[0] == "network_flags")[1]
    major = int(version.split(".")[0])
    # EXPLICIT_BATCH (bit 0) before 10; nothing on 10; STRONGLY_TYPED on 11, where the precision flags are gone
    expected_flags = {8: 1, 10: 0}.get(major)
    if major >= 11:
        trt = sys.modules["tensorrt"]
        expected_flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert flags == expected_flags
    assert ("pool", "WORKSPACE", 64 << 20) in log  # max_workspace_size on 8.2, the memory pool after
    precision_flags = [] if major >= 11 else ["FP16", "INT8"]
    assert [e for e in log if e[0] == "build"] == [("build", precision_flags, "GPU", -1, None)]
    assert runner._v3 == (version != "8.2.1")  # execute_async_v3 from 8.5


def test_product_implicit_int8_replays_the_calibration_cache(tmp_path, monkeypatch):
    log: list = []
    _build_and_run("8.5.2", tmp_path, monkeypatch, log, mode="implicit")
    assert ("calibration_profile",) in log
    assert next(e for e in log if e[0] == "build")[-1] == b"TRT-8502-EntropyCalibration2"


@pytest.mark.parametrize("precision, mode", [("int8", "implicit"), ("fp16", "none")])
def test_tensorrt_11_refuses_what_it_cannot_build_with_the_reason(tmp_path, monkeypatch, precision, mode):
    from resnet_deploy.errors import DependencyError

    with pytest.raises(DependencyError, match="TensorRT 11"):
        _build_and_run("11.1", tmp_path, monkeypatch, [], precision=precision, mode=mode)


# --- (c) the extractor, on a pybind11 snippet copied from the 8.2.1 sources ---------------------------------

SNIPPET = r'''
#include "ForwardDeclarations.h"
void bindCore(py::module& m)
{
    // Timing cache
    py::class_<ITimingCache>(m, "ITimingCache", ITimingCacheDoc::descr)
        .def("serialize", &ITimingCache::serialize, ITimingCacheDoc::serialize)
        .def("combine", &ITimingCache::combine, "input_cache"_a, "ignore_mismatch"_a, ITimingCacheDoc::combine)
        .def("reset", &ITimingCache::reset, ITimingCacheDoc::reset);
#if ENABLE_INETWORK_SERIALIZE
    py::class_<INotBound>(m, "NotBound").def("x", &INotBound::x);
#endif
    py::enum_<NetworkDefinitionCreationFlag>(m, "NetworkDefinitionCreationFlag", py::arithmetic{},
        NetworkDefinitionCreationFlagDoc::descr)
        .value("EXPLICIT_BATCH", NetworkDefinitionCreationFlag::kEXPLICIT_BATCH,
            NetworkDefinitionCreationFlagDoc::EXPLICIT_BATCH)
        .value("EXPLICIT_PRECISION", NetworkDefinitionCreationFlag::kEXPLICIT_PRECISION,
            NetworkDefinitionCreationFlagDoc::EXPLICIT_PRECISION);
    /* m.def("commented_out", &f); */
    m.def("get_nv_onnx_parser_version", &getNvOnnxParserVersion, get_nv_onnx_parser_version);
}
'''

HEADER = "enum class NetworkDefinitionCreationFlag : int32_t\n{\n    kEXPLICIT_BATCH = 0, //!< x\n" \
         "    kEXPLICIT_PRECISION TRT_DEPRECATED_ENUM = 1,\n};\n"


def test_extractor_reproduces_the_committed_table_from_source_text():
    ex = _extractor()
    api = ex.parse_cpp(SNIPPET, "python/src/infer/pyCore.cpp", ex.Api())
    table = ex.build_table(api, version="8.2.1", source="snippet", enum_values=ex.header_enum_values(HEADER))
    committed = table_for("8.2.1")
    assert table["classes"]["ITimingCache"]["members"] == committed["classes"]["ITimingCache"]["members"]
    assert table["classes"]["ITimingCache"]["args"] == committed["classes"]["ITimingCache"]["args"]
    flag = "NetworkDefinitionCreationFlag"
    assert table["enums"][flag] == committed["enums"][flag]
    assert table["enum_values"][flag] == committed["enum_values"][flag]
    assert table["module_functions"] == ["get_nv_onnx_parser_version"]
    assert "NotBound" not in table["other_names"]  # inside an #if that is false for the wheel


def test_extractor_reads_nested_enums_properties_and_the_package_init():
    ex = _extractor()
    src = r'''
    py::class_<ILogger, PyLogger> baseLoggerBinding{m, "ILogger", ILoggerDoc::descr};
    py::enum_<ILogger::Severity>(baseLoggerBinding, "Severity", py::arithmetic())
        .value("ERROR", ILogger::Severity::kERROR)
        .value("WARNING", ILogger::Severity::kWARNING)
        .export_values();
    baseLoggerBinding.def(py::init<>()).def("log", &ILogger::log, "severity"_a, "msg"_a);
    py::class_<DefaultLogger, ILogger>(m, "Logger")
        .def(py::init<ILogger::Severity>(), "min_severity"_a = ILogger::Severity::kWARNING)
        .def_readwrite("min_severity", &DefaultLogger::mMinSeverity);
    py::class_<IExecutionContext>(m, "IExecutionContext")
        .def_property("device_memory", nullptr, &lambdas::context_set_device_memory)
        .def_property_readonly("engine", &IExecutionContext::getEngine);
    '''
    api = ex.parse_cpp(src, "pyCore.cpp", ex.Api())
    ex.parse_package_init('from .##TENSORRT_MODULE## import *\n__version__ = "##TENSORRT_VERSION##"\n'
                          'if "##TENSORRT_MODULE##" == "tensorrt":\n    Logger.__enter__ = common_enter\n'
                          'for attr, value in ILogger.Severity.__members__.items():\n'
                          '    setattr(Logger, attr, value)\n'
                          'def volume(iterable):\n    return 1\n', "__init__.py", api)
    t = ex.build_table(api, version="x", source="s", enum_values={}, keep_classes=("Logger", "IExecutionContext"),
                       keep_enums=("ILogger.Severity",))
    assert t["classes"]["ILogger"]["members"] == ["ERROR", "Severity", "WARNING", "__init__", "log"]
    assert t["classes"]["Logger"]["bases"] == ["ILogger"]
    assert set(t["classes"]["Logger"]["members"]) == {"ERROR", "WARNING", "__enter__", "__init__", "min_severity"}
    assert t["classes"]["IExecutionContext"]["properties"] == {"device_memory": "w", "engine": "r"}
    assert t["module_functions"] == ["volume"] and "__version__" in t["module_attributes"]
