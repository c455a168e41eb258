"""What the TensorRT and Jetson targets share: compile a bundle folder for a device, load its models.

``compile`` writes, under ``<bundle>/<target>/``: the Q/DQ ONNX (explicit INT8), the calibration
cache (implicit INT8: TensorRT 8.x and DLA), ``build_config.json`` and ``trtexec.sh``. The engine
itself is built on the device (``device_build``); here the Q/DQ graph runs under ONNX Runtime on the
CPU as a simulated INT8 row. Where TensorRT and a GPU are present, the engine is built here too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from resnet_deploy.calibration.qdq import QdqResult, make_qdq_onnx
from resnet_deploy.calibration.trt_cache import write_cache
from resnet_deploy.errors import ConfigError, DependencyError
from resnet_deploy.targets import _trt_config as tc
from resnet_deploy.targets._trtexec import render_script, trtexec_command
from resnet_deploy.targets.base import Artifact, CompileInput, Runner, Target


class SimulatedRunner:
    """A Q/DQ (or FP32) ONNX under ONNX Runtime on the CPU, standing in for the device's engine."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.description = f"onnxruntime {ort.__version__} CPUExecutionProvider (TensorRT simulated)"

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]


def _input_name(onnx_path: Path) -> str:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


class TrtTargetBase(Target):
    """A TensorRT device target; subclasses set ``name``, ``summary`` and ``preset``."""

    preset: tc.TrtPreset = tc.DESKTOP
    requires: dict[str, str] = {}  # the simulated row needs only ONNX Runtime, a build dependency

    def check_options(self, options: dict[str, Any]) -> None:
        tc.TrtOptions.from_options(options, self.preset)

    def compile(self, inp: CompileInput, bundle: Path) -> list[Artifact]:
        opts = tc.TrtOptions.from_options(inp.options, self.preset)
        folder = bundle / self.name
        folder.mkdir(parents=True, exist_ok=True)
        fp32 = Path(inp.fp32_onnx)
        if bundle.resolve() not in fp32.resolve().parents:  # not in the bundle yet: carry a copy
            fp32 = Path(shutil.copyfile(fp32, folder / "model_fp32.onnx"))
        qdq = make_qdq_onnx(fp32, folder / tc.QDQ_ONNX, inp.calibration)
        cfg = self._write_device_files(opts, inp, fp32, folder, qdq)
        artifacts = [self._simulated(cfg, qdq, fp32, folder, bundle)]
        engine = self._engine_here(folder, bundle)
        return artifacts + ([engine] if engine is not None else [])

    def _write_device_files(self, opts: tc.TrtOptions, inp: CompileInput, fp32: Path, folder: Path,
                            qdq: QdqResult) -> tc.TrtBuildConfig:
        """calibration.cache, build_config.json and trtexec.sh: what the device needs besides the models."""
        p = opts.profile
        write_cache(folder / tc.CALIBRATION_CACHE, qdq.amax, trt_version=p.tensorrt)
        note = "" if p.fast_int8 else (
            f"{p.gpu.split(' (')[0]} (sm {p.compute_capability[0]}.{p.compute_capability[1]}) has no fast INT8 "
            "in TensorRT, so its engine is FP16; this row runs the FP32 ONNX under ONNX Runtime in its place "
            "(FP16 rounding is not simulated).")
        cfg = tc.TrtBuildConfig(
            target=self.name, profile=p, precision=p.precision, input_name=_input_name(fp32),
            input_shape=inp.preprocessing.shape, min_batch=1, opt_batch=opts.opt_batch, max_batch=opts.max_batch,
            dla_core=opts.dla_core, workspace_mb=opts.workspace_mb, qdq_onnx=tc.QDQ_ONNX,
            fp32_onnx=os.path.relpath(fp32.resolve(), folder.resolve()), calibration_cache=tc.CALIBRATION_CACHE,
            amax_method=qdq.method, note=note)
        cfg.write(folder)
        script = folder / tc.TRTEXEC_SCRIPT
        script.write_text(render_script(cfg))
        script.chmod(0o755)
        return cfg

    def _simulated(self, cfg: tc.TrtBuildConfig, qdq: QdqResult, fp32: Path, folder: Path,
                   bundle: Path) -> Artifact:
        """The CPU stand-in for the engine: the Q/DQ graph (INT8), or the FP32 graph for an FP16 device."""
        model = folder / tc.QDQ_ONNX if cfg.precision == "int8" else fp32
        files = [folder / tc.CALIBRATION_CACHE, folder / tc.BUILD_CONFIG, folder / tc.TRTEXEC_SCRIPT]
        if model != fp32 and fp32.parent == folder:
            files.append(fp32)
        p = cfg.profile
        extra: dict[str, Any] = {
            "device": p.name, "gpu": p.gpu, "tensorrt": p.tensorrt, "jetpack": p.jetpack or None,
            "engine_precision": cfg.precision, "quantization": {**qdq.to_dict(), "tensorrt_mode": cfg.mode()},
            "batch": {"min": cfg.min_batch, "opt": cfg.opt_batch, "max": cfg.max_batch}, "dla_core": cfg.dla_core,
            "files": [str(f.relative_to(bundle)) for f in files],
            "commands": {f"{self.name}-trtexec": f"cd {folder.name} && {trtexec_command(cfg)}"},
        }
        if cfg.note:
            extra["note"] = cfg.note
        return Artifact(self.name, cfg.precision, str(model.relative_to(bundle)), "onnxruntime", simulated=True,
                        extra=extra)

    def _engine_here(self, folder: Path, bundle: Path) -> Artifact | None:
        """Build the engine on this machine when it has TensorRT and a GPU (a desktop build, or on a Jetson)."""
        from resnet_deploy.targets import _trt_engine

        if not _trt_engine.engine_ready():
            return None
        built = _trt_engine.build_engine(folder)
        extra: dict[str, Any] = {"engine_key": built.key.to_dict()}
        if built.note:
            extra["note"] = built.note
        return Artifact(self.name, built.key.precision, str(built.path.relative_to(bundle)), "tensorrt", extra=extra)

    def load(self, artifact: Artifact, bundle: Path, *, threads: int | None = None,
             hint: str | None = None) -> Runner:
        path = bundle / artifact.path
        if artifact.runtime == "onnxruntime":
            try:
                return SimulatedRunner(path, threads=threads)
            except ImportError:
                raise DependencyError("The simulated TensorRT row needs ONNX Runtime: `pip install onnxruntime`."
                                      ) from None
        if artifact.runtime == "tensorrt":
            from resnet_deploy.targets._trt_runner import TrtRunner

            return TrtRunner(path)
        raise ConfigError(f"--target {self.name} cannot load a {artifact.runtime} artifact ({artifact.path}).")

    def describe(self) -> dict[str, Any]:
        from resnet_deploy.targets._trt_engine import tensorrt_available

        return {**super().describe(), "default_device": self.preset.device,
                "engine": "built here and on the device" if tensorrt_available() else
                          "built on the device (resnet-deploy device-build BUNDLE)"}
