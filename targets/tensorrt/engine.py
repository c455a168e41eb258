"""The TensorRT SDK layer: build (or reuse) the engine a bundle's build_config.json describes.

TensorRT and cuda-python are imported inside the functions that need them, never at import time;
running an engine is ``runner``. API versions (TensorRT Python API reference of each release):
- ``EXPLICIT_BATCH``: required for ONNX before 10.0, deprecated in 10.0 (the only mode then);
- ``set_memory_pool_limit(WORKSPACE, bytes)``: 8.4+ (``max_workspace_size`` before, removed in 10.0);
  ``build_serialized_network`` and the timing-cache calls: 8.0+;
- ``IInt8EntropyCalibrator2`` (implicit INT8): deprecated in 10.1, works through 10.x; DLA's only
  INT8 route.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_deploy.errors import BundleError, ConfigError, DependencyError, VerificationError
from resnet_deploy.targets.tensorrt import engine_cache as cache
from resnet_deploy.targets.tensorrt.calibration_cache import header_version, read_cache, retarget_cache, version_code
from resnet_deploy.targets.tensorrt.config import BUILD_CONFIG, TrtBuildConfig
from resnet_deploy.targets.tensorrt.cudart import CudaRuntime
from resnet_deploy.targets.tensorrt.profiles import has_fast_int8

ENGINES = "engines"

_INSTALL_HINT = ("On a Jetson, TensorRT comes with JetPack (`sudo apt install nvidia-jetpack`, Python module "
                 "python3-libnvinfer); on a desktop GPU `pip install tensorrt` (its CUDA runtime libraries come "
                 "with it).")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class EngineBuild:
    path: Path
    key: cache.EngineKey
    reused: bool
    reason: str
    note: str = ""  # e.g. why the engine is FP16 although the bundle asked for INT8


def tensorrt_available() -> bool:
    try:
        return importlib.util.find_spec("tensorrt") is not None
    except ValueError:  # imported already, without a spec
        return sys.modules.get("tensorrt") is not None


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise DependencyError(f"TensorRT is not installed, so no engine can be built or run here. {_INSTALL_HINT}"
                              ) from None
    return trt


def cuda_runtime() -> CudaRuntime:
    """The CUDA runtime through ctypes (``cudart.py`` says why not cuda-python)."""
    return CudaRuntime()


def gpu_info() -> GpuInfo | None:
    """The first CUDA device, or None without the CUDA runtime or a GPU."""
    try:
        cuda = cuda_runtime()
    except DependencyError:
        return None
    if cuda.device_count() < 1:
        return None
    return GpuInfo(cuda.device_name(0), cuda.compute_capability(0))


def engine_ready() -> bool:
    """Whether this machine can build and run engines: TensorRT importable and a GPU visible."""
    return tensorrt_available() and gpu_info() is not None


# --- building -------------------------------------------------------------------------------------

def _cache_calibrator(trt, cache_bytes: bytes):
    """An IInt8EntropyCalibrator2 that only replays the bundle's cache (it has no images to give)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            return None

        def read_calibration_cache(self) -> bytes:
            return cache_bytes

        def write_calibration_cache(self, data) -> None:
            return None

    return CacheCalibrator()


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def build_plan(cfg: TrtBuildConfig, onnx: Path, *, mode: str, precision: str, calibration: Path | None,
               timing_cache: Path) -> bytes:
    """Parse ``onnx`` and build a serialized engine with ``cfg``'s profile, precision, DLA and workspace.

    One path for TensorRT 8.2 to 11 (the README's table gives the source of each rule):
    - 8.x: explicit-batch networks need the EXPLICIT_BATCH flag; 10.x: the only mode, no flag;
    - 8.2/8.3: ``max_workspace_size``; 8.4+: ``set_memory_pool_limit`` (the attribute is gone in 10.0);
    - 8.x-10.x: weakly typed networks, where "to enable any quantization operations, the INT8 flag must be
      set" (TensorRT developer guide) for Q/DQ graphs and calibration alike, FP16 for the layers left
      unquantized; implicit INT8 replays the bundle's calibration cache through IInt8EntropyCalibrator2;
    - 11.x: the precision flags, the calibrator and EXPLICIT_BATCH are gone: networks are strongly typed
      (the Q/DQ graph's types decide), so only explicit quantization builds, and no DLA before 11.4.1.
    """
    trt = import_tensorrt()
    major = trt_major(trt)
    strongly_typed = major >= 11
    if strongly_typed and (mode == "implicit" or precision != "int8"):
        why = ("DLA takes INT8 through a calibration cache, which TensorRT 11 no longer reads (DLA returns in "
               "11.4.1)" if cfg.dla_core is not None else
               "implicit INT8 (calibration cache) and the FP16 flag are gone in TensorRT 11; it builds FP16 from "
               "an FP16 ONNX only")
        raise DependencyError(f"TensorRT {trt.__version__} cannot build this {precision} engine: {why}. Use the "
                              "TensorRT of the device's profile (resnet-deploy devices), or a GPU target with "
                              "explicit INT8.")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if cfg.dla_core is not None:
        cores = getattr(builder, "num_DLA_cores", None)
        if cores is not None and not 0 <= cfg.dla_core < cores:
            raise ConfigError(f"--dla-core {cfg.dla_core}: this device's TensorRT sees {cores} DLA core(s); pick "
                              f"0..{cores - 1}" + (" or leave --dla-core out" if cores else " by leaving it out")
                              + ". Build the bundle with the --device profile of this module.")
    if strongly_typed:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    elif major >= 10:
        flags = 0
    else:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise VerificationError(f"TensorRT could not parse {onnx.name}: {errors}")

    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    else:
        config.max_workspace_size = cfg.workspace_mb << 20
    profile = builder.create_optimization_profile()
    lo, opt, hi = cfg.shapes()
    profile.set_shape(cfg.input_name, lo, opt, hi)
    config.add_optimization_profile(profile)

    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if mode == "implicit":
                assert calibration is not None  # build_engine passes the bundle's cache in implicit mode
                config.int8_calibrator = _cache_calibrator(trt, calibration.read_bytes())
                config.set_calibration_profile(profile)
                if cfg.float_layers:
                    keep_float(trt, network, config, cfg.float_layers)
    if cfg.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    timing = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise VerificationError(f"TensorRT could not build an engine from {onnx.name} ({precision}, "
                                f"DLA core {cfg.dla_core}); run the bundle's trtexec.sh --verbose for the reason.")
    timing_cache.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(plan)


def keep_float(trt: Any, network: Any, config: Any, names: tuple[str, ...]) -> None:
    """Implicit INT8 with layers kept in float: FP32 precision and output types on the layers the ONNX parser
    made from those nodes (it names a node's first layer after it, later ones ``<name>_<n>``), obeyed by the
    builder. ``ILayer.precision``/``set_output_type`` and ``BuilderFlag.OBEY_PRECISION_CONSTRAINTS``: 8.2 to
    10.x (pyGraph.cpp, pyCore.cpp); TensorRT 11 builds no implicit INT8 (``build_plan`` refuses it first)."""
    wanted = set(names)
    found: set[str] = set()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        base = layer.name
        if base not in wanted:
            head, _, tail = base.rpartition("_")
            base = head if tail.isdigit() and head in wanted else base
        if base in wanted:
            layer.precision = trt.DataType.FLOAT
            for k in range(layer.num_outputs):
                layer.set_output_type(k, trt.DataType.FLOAT)
            found.add(base)
    missing = sorted(wanted - found)
    if missing:
        raise VerificationError(f"TensorRT's network has no layer named {', '.join(missing[:3])} (kept in float by "
                                f"the bundle's {BUILD_CONFIG}): was the bundle built from another ONNX?")
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def build_engine(folder: Path, *, dla_core: int | None = None, force: bool = False,
                 cache_dir: Path | None = None) -> EngineBuild:
    """Build (or reuse from the cache) the engine described by ``folder/build_config.json`` on this GPU."""
    trt = import_tensorrt()
    gpu = gpu_info()
    if gpu is None:
        raise DependencyError("No CUDA GPU is visible here (or cuda-python is missing): TensorRT engines are "
                              f"built on the device. {_INSTALL_HINT}")
    cfg = TrtBuildConfig.read(folder)
    if dla_core is not None:
        cfg = cfg.with_dla(dla_core)
    version = ".".join(trt.__version__.split(".")[:3])
    precision, note = cfg.precision, ""
    if precision == "int8" and not has_fast_int8(gpu.compute_capability):
        precision = "fp16"
        note = f"{gpu.name} (sm {gpu.compute_capability[0]}.{gpu.compute_capability[1]}) has no fast INT8: FP16 engine."
    mode = cfg.mode(trt_version=version) if precision == "int8" else "none"
    onnx = folder / cfg.onnx_for(mode)
    cache_dir = cache_dir or folder / ENGINES
    cache_dir.mkdir(parents=True, exist_ok=True)
    calibration = None
    if mode == "implicit":
        calibration = _calibration_for(folder / cfg.calibration_cache, cache_dir, version)
    key = cache.EngineKey(version, gpu.name, gpu.compute_capability, cfg.dla_core, precision,
                          cache.sha256_file(onnx), cfg.shapes(),
                          cache.sha256_file(calibration) if calibration else None)
    found = cache.lookup(cache_dir, key)
    if found.engine is not None and not force:
        return EngineBuild(found.engine, key, True, found.reason, note)
    timing = cache_dir / f"timing_{_slug(gpu.name)}_trt{version}.cache"
    plan = build_plan(cfg, onnx, mode=mode, precision=precision, calibration=calibration, timing_cache=timing)
    reason = "forced rebuild" if force and found.engine is not None else found.reason
    return EngineBuild(cache.store(cache_dir, key, plan), key, False, reason, note)


def _calibration_for(bundled: Path, cache_dir: Path, version: str) -> Path:
    """The bundle's calibration cache under this TensorRT's header (TensorRT refuses another version's)."""
    header, _ = read_cache(bundled)
    if header_version(header) == version_code(version):
        return bundled
    return retarget_cache(bundled, cache_dir / f"calibration_trt{version}.cache", trt_version=version)


def find_target_folder(bundle: Path) -> Path:
    """The folder of the bundle holding build_config.json (jetson/ before tensorrt/ on a Jetson)."""
    if (bundle / BUILD_CONFIG).is_file():
        return bundle
    found = [p.parent for p in sorted(bundle.glob(f"*/{BUILD_CONFIG}"))]
    if not found:
        raise BundleError(f"{bundle} holds no TensorRT build ({BUILD_CONFIG}); build it with --target jetson or "
                          "--target tensorrt.")
    on_jetson = Path("/etc/nv_tegra_release").exists()
    return sorted(found, key=lambda p: (p.name != ("jetson" if on_jetson else "tensorrt"), p.name))[0]
