"""trtexec.sh as the device runs it: POSIX sh syntax, and the calibration cache's header rewritten for
the TensorRT that runs the script (a real shell, a stand-in trtexec that prints NVIDIA's banner)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from resnet_deploy.targets.tensorrt.calibration_cache import write_cache
from resnet_deploy.targets.tensorrt.config import TrtBuildConfig
from resnet_deploy.targets.tensorrt.profiles import get_profile
from resnet_deploy.targets.tensorrt.trtexec import render_script

FAKE_TRTEXEC = """#!/bin/sh
# trtexec's first line, as every release prints it
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v{code}] # trtexec $*"
[ "$1" = "--help" ] && exit 0
printf '%s\\n' "$@" > args.txt
"""


def _config(device: str, dla_core: int | None) -> TrtBuildConfig:
    return TrtBuildConfig("jetson", get_profile(device), "int8", "input", (3, 32, 32), 1, 1, 8, dla_core, 512,
                          "model_qdq.onnx", "../model_fp32.onnx", "calibration.cache", "entropy")


@pytest.mark.parametrize("device, dla", [("orin-nano", None), ("agx-orin", 0), ("xavier-nx", None), ("nano", None)])
@pytest.mark.parametrize("shell", ["sh", "dash", "bash"])
def test_generated_script_is_valid_posix_sh(device, dla, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed")
    cfg = _config(device, dla)
    done = subprocess.run([shell, "-n"], input=render_script(cfg), text=True, capture_output=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("device_code", [8502, 8601, 100300])
def test_cache_header_follows_the_tensorrt_that_runs_the_script(tmp_path: Path, device_code: int):
    """A Xavier NX bundle (profile TensorRT 8.5.2, implicit INT8) run by another TensorRT: the cache it
    passes to trtexec names that TensorRT, the bundle's own cache is untouched."""
    folder = tmp_path / "jetson"
    folder.mkdir()
    cfg = _config("xavier-nx", None)
    write_cache(folder / "calibration.cache", {"input": 2.0, "x": 1.0}, trt_version="8.5.2")
    script = folder / "trtexec.sh"
    script.write_text(render_script(cfg))
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC.format(code=device_code))
    fake.chmod(0o755)
    done = subprocess.run(["sh", str(script)], env={"TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    args = (folder / "args.txt").read_text().split()
    calib = next(a.split("=", 1)[1] for a in args if a.startswith("--calib="))
    assert calib == "engines/calibration.cache"
    assert (folder / calib).read_text().splitlines()[0] == f"TRT-{device_code}-EntropyCalibration2"
    assert (folder / "calibration.cache").read_text().splitlines()[0] == "TRT-8502-EntropyCalibration2"
    assert "--saveEngine=engines/model_int8.engine" in args and "--timingCacheFile=engines/timing.cache" in args


def test_explicit_quantization_needs_no_cache(tmp_path: Path):
    script = render_script(_config("orin-nano", None))
    assert "--calib" not in script and "CALIB" not in script and "--onnx=model_qdq.onnx" in script
