"""What the TensorRT and Jetson targets share: compile a bundle folder for a device, load its models.

``compile`` writes, under ``<bundle>/<target>/``: the Q/DQ ONNX (explicit INT8), the calibration
cache (implicit INT8: TensorRT 8.x and DLA), ``build_config.json`` and ``trtexec.sh``. An engine is
tied to the GPU and TensorRT release that built it, so it is built on the device (``device_build``);
here the Q/DQ graph runs under ONNX Runtime on the CPU as a simulated INT8 row, and the engine is
built here too only where TensorRT and a GPU are present. A Q/DQ model or cache with the same bytes as one
another target of the bundle already wrote (tensorrt/ and jetson/, one calibration) is stored once:
``build_config.json`` then names it as ``../tensorrt/model_qdq.onnx``, as it names ``../model_fp32.onnx``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

from resnet_deploy.calibration.activation_ranges import METHODS
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.qdq import AUTO, QdqResult, make_qdq_onnx
from resnet_deploy.errors import ConfigError, DependencyError
from resnet_deploy.files import stored_once
from resnet_deploy.targets import onnx_session
from resnet_deploy.targets.base import Artifact, CompileInput, DeviceBuild, Runner, Runtime, Target, calib_method
from resnet_deploy.targets.onnxruntime import RUNTIME as ORT_RUNTIME
from resnet_deploy.targets.onnxruntime import OrtRunner
from resnet_deploy.targets.tensorrt import config as tc
from resnet_deploy.targets.tensorrt.calibration_cache import write_cache
from resnet_deploy.targets.tensorrt.profiles import PROFILES, describe_profile
from resnet_deploy.targets.tensorrt.trtexec import ENGINES, render_script, trtexec_command

RUNTIME = Runtime(
    "tensorrt", "tensorrt",
    "on a Jetson, TensorRT comes with JetPack (python3-libnvinfer); on a desktop GPU `pip install tensorrt`",
    preference=300, packages=("tensorrt",), loggers=())


def _input_name(onnx_path: Path) -> str:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def _on_jetson() -> bool:
    return Path("/etc/nv_tegra_release").exists()


class TrtTargetBase(Target):
    """A TensorRT device target; subclasses set ``name``, ``summary``, ``preset`` and ``options``."""

    preset: tc.TrtPreset = tc.DESKTOP
    runtimes = (RUNTIME, ORT_RUNTIME)  # the engine on the device; its CPU simulation here
    simulated_by = (ORT_RUNTIME.name,)
    # the simulated row; TensorRT itself is optional here
    build_requires: ClassVar[Mapping[str, str]] = {"onnxruntime": "onnxruntime"}
    device_options = tc.DeviceBuildFlags

    float_layers = True  # explicit: no Q/DQ around them; implicit: FP32 precision constraints (engine.py)

    def parse_options(self, raw: Mapping[str, Any]) -> tc.TrtOptions:
        flags = super().parse_options(raw)
        method = calib_method(raw.get("calib_method"), target=self.name, methods=METHODS, default=AUTO)
        return replace(tc.TrtOptions.from_flags(flags, self.preset), calib_method=method)

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        opts = inp.options if isinstance(inp.options, tc.TrtOptions) else self.parse_options({})
        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = Path(inp.fp32_onnx)
        if bundle.resolve() not in fp32.resolve().parents:  # not in the bundle yet: carry a copy
            fp32 = Path(shutil.copyfile(fp32, folder / "model_fp32.onnx"))
        qdq = make_qdq_onnx(fp32, folder / tc.QDQ_ONNX, inp.calibration, session=onnx_session,
                            method=opts.calib_method, float_layers=inp.float_layers, check=inp.check)
        # tensorrt/ and jetson/ built from one model and one calibration get the same Q/DQ model: store it once
        qdq = replace(qdq, path=stored_once(qdq.path, bundle.glob(f"*/{tc.QDQ_ONNX}")))
        cfg = self._write_device_files(opts, inp, fp32, folder, qdq)
        artifacts = [self._simulated(cfg, qdq, fp32, folder, bundle)]
        engine = self._engine_here(folder, bundle)
        return artifacts + ([engine] if engine is not None else [])

    def _write_device_files(self, opts: tc.TrtOptions, inp: CompileInput, fp32: Path, folder: Path,
                            qdq: QdqResult) -> tc.TrtBuildConfig:
        """calibration.cache, build_config.json and trtexec.sh: what the device needs besides the models."""
        p = opts.profile
        cache = write_cache(folder / tc.CALIBRATION_CACHE, qdq.amax, trt_version=p.tensorrt)
        cache = stored_once(cache, folder.parent.glob(f"*/{tc.CALIBRATION_CACHE}"))  # same TensorRT, same amax
        note = "" if p.fast_int8 else (
            f"{p.gpu.split(' (')[0]} (sm {p.compute_capability[0]}.{p.compute_capability[1]}) has no fast INT8 "
            "in TensorRT, so its engine is FP16; this row runs the FP32 ONNX under ONNX Runtime in its place "
            "(FP16 rounding is not simulated).")
        cfg = tc.TrtBuildConfig(
            target=self.name, profile=p, precision=p.precision, input_name=_input_name(fp32),
            input_shape=inp.preprocessing.shape, min_batch=1, opt_batch=opts.opt_batch, max_batch=opts.max_batch,
            dla_core=opts.dla_core, workspace_mb=opts.workspace_mb,
            qdq_onnx=os.path.relpath(qdq.path.resolve(), folder.resolve()),
            fp32_onnx=os.path.relpath(fp32.resolve(), folder.resolve()),
            calibration_cache=os.path.relpath(cache.resolve(), folder.resolve()),
            amax_method=qdq.method, note=note, float_layers=tuple(inp.float_layers))
        cfg.write(folder)
        script = folder / tc.TRTEXEC_SCRIPT
        script.write_text(render_script(cfg))
        script.chmod(0o755)
        return cfg

    def _simulated(self, cfg: tc.TrtBuildConfig, qdq: QdqResult, fp32: Path, folder: Path,
                   bundle: Path) -> Artifact:
        """The CPU stand-in for the engine: the Q/DQ graph (INT8), or the FP32 graph for an FP16 device."""
        model = qdq.path if cfg.precision == "int8" else fp32
        files = [folder / cfg.calibration_cache, folder / tc.BUILD_CONFIG, folder / tc.TRTEXEC_SCRIPT]
        if model != fp32 and fp32.parent == folder:
            files.append(fp32)
        p = cfg.profile
        details: dict[str, Any] = {
            "device": p.name, "gpu": p.gpu, "tensorrt": p.tensorrt, "jetpack": p.jetpack or None,
            "engine_precision": cfg.precision, "quantization": {
                **qdq.to_dict(), "tensorrt_mode": cfg.mode(),
                **({"float_layers_by": "no Q/DQ around them" if cfg.mode() == "explicit" else
                    "FP32 precision constraints (OBEY_PRECISION_CONSTRAINTS)"} if cfg.float_layers else {})},
            "batch": {"min": cfg.min_batch, "opt": cfg.opt_batch, "max": cfg.max_batch}, "dla_core": cfg.dla_core,
        }
        model_rel = str(model.resolve().relative_to(bundle.resolve()))
        return Artifact(self.name, cfg.precision, model_rel, ORT_RUNTIME.name, simulated=True,
                        files=tuple(str(f.resolve().relative_to(bundle.resolve())) for f in files), note=cfg.note,
                        commands={f"{self.name}-trtexec": f"cd {folder.name} && {trtexec_command(cfg)}"},
                        details=details)

    def _engine_here(self, folder: Path, bundle: Path) -> Artifact | None:
        """Build the engine on this machine when it has TensorRT and a GPU (a desktop build, or on a Jetson)."""
        from resnet_deploy.targets.tensorrt import engine as trt_engine

        if not trt_engine.engine_ready():
            return None
        built = trt_engine.build_engine(folder)
        return Artifact(self.name, built.key.precision, str(built.path.relative_to(bundle)), RUNTIME.name,
                        note=built.note, details={"engine_key": built.key.to_dict()})

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        path = bundle / artifact.path
        if artifact.runtime == ORT_RUNTIME.name:
            if not ORT_RUNTIME.present():
                raise DependencyError(f"The simulated {self.name} row needs ONNX Runtime: {ORT_RUNTIME.install}.")
            return OrtRunner(path, threads=threads, label="TensorRT simulated")
        if artifact.runtime == RUNTIME.name:
            from resnet_deploy.targets.tensorrt.runner import TrtRunner

            dla = (artifact.details.get("engine_key") or {}).get("dla_core")
            return TrtRunner(path, dla_core=None if dla is None else int(dla))
        raise ConfigError(f"--target {self.name} cannot load a {artifact.runtime} artifact ({artifact.path}).")

    # --- on the device ------------------------------------------------------------------------------

    def _folder(self, bundle: Path) -> Path:
        return bundle / self.name

    def has_device_build(self, bundle: Path) -> bool:
        """This target's folder is in the bundle, and it is the one to build here: jetson/ on a Jetson,
        tensorrt/ elsewhere, either when the bundle has only one of them."""
        if not (self._folder(bundle) / tc.BUILD_CONFIG).is_file():
            return False
        other = "tensorrt" if self.name == "jetson" else "jetson"
        if not (bundle / other / tc.BUILD_CONFIG).is_file():
            return True
        return (self.name == "jetson") == _on_jetson()

    def device_build(self, bundle: Path, options: Any, *, force: bool = False,
                     cache_dir: Path | None = None) -> DeviceBuild:
        """Build (or reuse from the engine cache) this bundle's TensorRT engine on this device's GPU."""
        from resnet_deploy.targets.tensorrt import engine as trt_engine

        dla_core = getattr(options, "dla_core", None)
        built = trt_engine.build_engine(self._folder(bundle), dla_core=dla_core, force=force, cache_dir=cache_dir)
        engine = built.path.resolve()
        details = {"engine_key": built.key.to_dict(), "cache": built.reason}
        try:
            rel: str | None = str(engine.relative_to(bundle.resolve()))
        except ValueError:
            rel = None
        if rel is None:  # an engine cache outside the bundle: recorded with its own hash, checked at load
            from resnet_deploy.targets.tensorrt.engine_cache import sha256_file

            artifact = Artifact(self.name, built.key.precision, str(engine), RUNTIME.name, note=built.note,
                                details=details, sha256=sha256_file(engine))
            files: dict[str, Path] = {}
        else:  # the engine and its cache-key record, listed in the manifest by the caller
            files = {rel: engine}
            key_file = engine.with_suffix(".json")
            if key_file.is_file():
                files[str(Path(rel).with_suffix(".json"))] = key_file
            artifact = Artifact(self.name, built.key.precision, rel, RUNTIME.name, files=tuple(files)[1:],
                                note=built.note, details=details)
        verb = "reused" if built.reused else "built"
        return DeviceBuild((artifact,), files, f"engine {verb}: {engine} ({built.reason})")

    def serving_configs(self, bundle: Path, artifacts: Sequence[Artifact], prep: Preprocessing,
                        num_classes: int) -> list[Path]:
        """A Triton ``tensorrt_plan`` model (the engine device-build makes on the server) and a DeepStream
        nvinfer config for the engine nvinfer builds itself from the same ONNX and cache."""
        from resnet_deploy.targets import serving

        folder = self._folder(bundle)
        cfg = tc.TrtBuildConfig.read(folder)
        written = serving.triton_model(
            bundle, f"{self.name}_{cfg.precision}", prep=prep, num_classes=num_classes, platform="tensorrt_plan",
            kind="KIND_GPU", max_batch=cfg.max_batch, input_name=cfg.input_name,
            sources={"1/model.plan": f"{self.name}/{ENGINES}/*.engine"})
        mode = cfg.mode()
        onnx_rel = os.path.normpath(f"{self.name}/{cfg.onnx_for(mode)}")
        scale, offsets, exact = serving.nvinfer_normalisation(prep)
        if not exact:  # nvinfer cannot scale channels apart: normalise in the graph
            pixels = bundle / serving.DEEPSTREAM / f"model_{self.name}_pixels.onnx"
            serving.with_normalisation(bundle / onnx_rel, pixels, prep)
            pixels = stored_once(pixels, pixels.parent.glob("model_*_pixels.onnx"))  # one per distinct model
            written.append(pixels)
            onnx_rel = str(pixels.relative_to(bundle))
        notes = []
        if prep.crop_ratio < 1.0:
            notes.append(f"The bundle centre-crops (resize the shorter side to {prep.resize_side} px, crop "
                         f"{prep.input_size[0]}x{prep.input_size[1]}); nvinfer scales the whole frame or object "
                         "instead, which changes predictions on uncropped frames. Crop upstream (a ROI, or "
                         "nvdspreprocess) to match the bundle.")
        if mode == "implicit":
            notes.append(f"int8-calib-file's header names TensorRT {cfg.profile.tensorrt}; on another TensorRT "
                         "use trtexec.sh's engines/calibration.cache, rewritten for it.")
        dla = [f"enable-dla=1 and use-dla-core={cfg.dla_core} go under [property] to run on DLA."] \
            if cfg.dla_core is not None else []
        network_mode = {"int8": 1, "fp16": 2}.get(cfg.precision, 0)
        written += serving.nvinfer_config(
            bundle, self.name, prep=prep, num_classes=num_classes, onnx_file=f"../{onnx_rel}",
            network_mode=network_mode,
            calib_file="../" + os.path.normpath(f"{self.name}/{cfg.calibration_cache}") if mode == "implicit"
            else "", exact=exact, scale=scale, offsets=offsets, input_name=cfg.input_name,
            notes=[*notes, *dla])
        return written

    def host_facts(self, artifact: Artifact) -> dict[str, Any]:
        from resnet_deploy.targets.tensorrt import engine as trt_engine
        from resnet_deploy.targets.tensorrt.jetson_facts import jetson_facts

        facts: dict[str, Any] = dict(jetson_facts())
        if artifact.runtime != RUNTIME.name:
            return {**facts, "engine": "none: the CPU simulation ran"}
        trt = trt_engine.import_tensorrt()
        gpu = trt_engine.gpu_info()
        dla = (artifact.details.get("engine_key") or {}).get("dla_core")
        return {**facts, "tensorrt": str(trt.__version__), "gpu": gpu.name if gpu else None,
                "runs_on": f"DLA core {dla} (GPU fallback)" if dla is not None else "GPU"}

    def profiles(self) -> list[tuple[str, str]]:
        """Jetson profiles for ``--device`` (the preset's marked as the default); for a desktop GPU its single
        profile, which has no JetPack: the real GPU and TensorRT are read where the engine is built."""
        out = []
        for p in PROFILES.values():
            if p.is_jetson != self.preset.device_flag:
                continue
            text = describe_profile(p)
            if p.name == self.preset.device:
                text += ("  (default without --device)" if self.preset.device_flag else
                         f"  (the only profile of --target {self.name}, which takes no --device: no JetPack; "
                         "the GPU and TensorRT are read where the engine is built)")
            out.append((p.name, text))
        return out

    def notices(self, raw: Mapping[str, Any]) -> list[str]:
        """A Jetson bundle is prepared for one module: say which when --device was left out."""
        if not self.preset.device_flag or raw.get("device") is not None:
            return []
        p = PROFILES[self.preset.device]
        dla = f"{p.dla_cores} DLA core(s)" if p.dla_cores else "no DLA"
        return [f"--target {self.name} without --device: the bundle is prepared for --device {p.name} ({p.gpu}, "
                f"JetPack {p.jetpack} / TensorRT {p.tensorrt}, {dla}), which every module of its JetPack runs. "
                "Give --device for another Jetson or to use a DLA core (`resnet-deploy devices` lists them)."]


class TensorRTTarget(TrtTargetBase):
    """TensorRT on a desktop or data-center NVIDIA GPU: INT8 by explicit Q/DQ, engine built where the GPU is."""

    name = "tensorrt"
    aliases = ("trt",)
    summary = "TensorRT on an NVIDIA GPU: INT8 Q/DQ ONNX + calibration cache, engine built on the GPU"
    preset = tc.DESKTOP
    options = tc.TensorRTFlags


class JetsonTarget(TrtTargetBase):
    """NVIDIA Jetson: the TensorRT target for one device profile (``--device``, default ``orin-nano``).

    The profile sets the TensorRT version (calibration-cache header, trtexec flags), whether INT8 is
    worth it (FP16 on Nano and TX2) and which DLA cores ``--dla-core`` may pick (GPU fallback on).
    """

    name = "jetson"
    summary = "NVIDIA Jetson (--device profile): TensorRT INT8/FP16 bundle, optional DLA, engine built on device"
    preset = tc.JETSON
    options = tc.JetsonFlags
