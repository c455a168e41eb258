"""The ``trtexec`` command that builds the same engine as ``device_build``, for people who prefer it.

Flag spelling follows trtexec's help of each release: ``--memPoolSize=workspace:N`` since 8.4
(MiB; 10.x also takes a unit suffix, written here as ``M``), ``--workspace=N`` before 8.4 (removed
in 10.0); ``--calib`` feeds a calibration cache to implicit INT8 (8.x and DLA); ``--useDLACore`` with
``--allowGPUFallback`` puts supported layers on a DLA core; min/opt/max shapes give the batch range;
``--precisionConstraints=obey`` with ``--layerPrecisions``/``--layerOutputTypes`` (8.4+) keeps layers in
FP32 under implicit INT8 (older trtexec cannot: ``device-build`` sets them through the Python API).
"""

from __future__ import annotations

import shlex

from resnet_deploy.targets.tensorrt.calibration_cache import parse_version, version_code
from resnet_deploy.targets.tensorrt.config import TrtBuildConfig


def _shape(name: str, shape: tuple[int, ...]) -> str:
    return f"{name}:{'x'.join(str(d) for d in shape)}"


ENGINES = "engines"  # everything the device writes goes here: the bundle's own files stay as listed
CALIB_ON_DEVICE = "$CALIB"  # the script's copy of the cache with this TensorRT's header


def engine_name(cfg: TrtBuildConfig) -> str:
    where = f"_dla{cfg.dla_core}" if cfg.dla_core is not None else ""
    return f"{ENGINES}/model_{cfg.precision}{where}.engine"


def trtexec_args(cfg: TrtBuildConfig, *, trt_version: str | None = None, engine: str | None = None,
                 timing_cache: str = f"{ENGINES}/timing.cache", calibration_cache: str | None = None) -> list[str]:
    """trtexec's arguments (without the program), paths relative to the target folder."""
    version = trt_version or cfg.profile.tensorrt
    major_minor = parse_version(version)[:2]
    mode = cfg.mode(trt_version=version)
    args = [f"--onnx={cfg.onnx_for(mode)}", f"--saveEngine={engine or engine_name(cfg)}"]
    if cfg.precision == "int8":
        args += ["--int8", "--fp16"]  # FP16 for the layers left unquantized (pooling, the classifier's add)
    else:
        args += ["--fp16"]
    if mode == "implicit":
        args.append(f"--calib={calibration_cache or cfg.calibration_cache}")
        if cfg.float_layers and major_minor >= (8, 4):  # per-layer constraints: trtexec 8.4+ (sampleOptions.cpp)
            kept = ",".join(f"{name}:fp32" for name in cfg.float_layers)
            args += ["--precisionConstraints=obey", f"--layerPrecisions={kept}", f"--layerOutputTypes={kept}"]
    if cfg.dla_core is not None:
        args += [f"--useDLACore={cfg.dla_core}", "--allowGPUFallback"]
    lo, opt, hi = cfg.shapes()
    args += [f"--minShapes={_shape(cfg.input_name, lo)}", f"--optShapes={_shape(cfg.input_name, opt)}",
             f"--maxShapes={_shape(cfg.input_name, hi)}"]
    if major_minor >= (10, 0):
        args.append(f"--memPoolSize=workspace:{cfg.workspace_mb}M")
    elif major_minor >= (8, 4):
        args.append(f"--memPoolSize=workspace:{cfg.workspace_mb}")
    else:
        args.append(f"--workspace={cfg.workspace_mb}")
    args.append(f"--timingCacheFile={timing_cache}")
    return args


def trtexec_command(cfg: TrtBuildConfig, **kwargs) -> str:
    return " ".join(shlex.quote(a) for a in ["trtexec", *trtexec_args(cfg, **kwargs)])


def _quote(arg: str) -> str:
    """shlex.quote, except that the calibration-cache variable the script sets stays expandable."""
    if CALIB_ON_DEVICE in arg:
        head, _, tail = arg.partition(CALIB_ON_DEVICE)
        return f'{shlex.quote(head)}"{CALIB_ON_DEVICE}"{shlex.quote(tail) if tail else ""}'
    return shlex.quote(arg)


def render_script(cfg: TrtBuildConfig) -> str:
    """A POSIX shell script that runs trtexec from the folder it lives in; extra arguments pass through.

    Implicit INT8 (TensorRT 8.x, DLA) reads the calibration cache, whose first line names the TensorRT
    release that may read it: the script copies the cache with the header of the TensorRT it runs (the
    version trtexec prints in its banner), so a JetPack other than the profile's still takes it.
    """
    p = cfg.profile
    stack = f"JetPack {p.jetpack}, TensorRT {p.tensorrt}" if p.jetpack else f"TensorRT {p.tensorrt}"
    implicit = cfg.mode() == "implicit"
    lines = [
        "#!/bin/sh",
        f"# Build the TensorRT {cfg.precision.upper()} engine for {p.gpu} ({stack}) with trtexec.",
        "# Written by resnet-deploy; `resnet-deploy device-build BUNDLE` builds the same engine from Python",
        "# and keeps it in an engine cache keyed on the TensorRT version and GPU. Output goes to engines/.",
        "set -eu",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
        f"mkdir -p {ENGINES}",
    ]
    if implicit:
        lines += [
            "# The cache header must name this TensorRT: read its version code from trtexec's banner",
            "# ('&&&& RUNNING TensorRT.trtexec [TensorRT v8502]') and rewrite the first line to match.",
            'CODE=$("$TRTEXEC" --help 2>&1 | sed -n \'s/.*\\[TensorRT v\\([0-9][0-9]*\\)\\].*/\\1/p\' | head -n 1)',
            f"CALIB={ENGINES}/calibration.cache",
            f'sed "1s/^TRT-[0-9]*-/TRT-${{CODE:-{version_code(p.tensorrt)}}}-/" {shlex.quote(cfg.calibration_cache)} '
            '> "$CALIB"',
        ]
    args = trtexec_args(cfg, calibration_cache=CALIB_ON_DEVICE if implicit else None)
    lines += ['exec "$TRTEXEC" \\', *[f"    {_quote(a)} \\" for a in args], '    "$@"']
    return "\n".join(lines) + "\n"
