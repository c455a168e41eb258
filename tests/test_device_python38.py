"""The device side on Python 3.8, JetPack 5.1's system Python and the only one its TensorRT bindings exist for.

The wheel is built here and installed with ``[device]`` into a venv of pyenv's real Python 3.8 (static
checkers miss ``tuple[int, ...]`` evaluated at import; the interpreter does not). There, the device
commands run on the session's shared bundle (its jetson row is JetPack 5.1's), every TensorRT-side module
imports, and ``build`` says it needs 3.10+. The venv's dependencies are downloaded once and kept in
``~/.cache/resnet-deploy-tests`` (keyed on the wheel's requirements). Skips, with the reason, without a
Python 3.8 or when the dependencies cannot be downloaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("RESNET_DEPLOY_TEST_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "resnet-deploy-tests")
TRT_VERSION = "8.5.2"  # JetPack 5.1's TensorRT

pytestmark = pytest.mark.py38


def _python38() -> Path | None:
    """pyenv's Python 3.8 (``RESNET_DEPLOY_PY38`` overrides), checked by running it."""
    candidates = [os.environ.get("RESNET_DEPLOY_PY38", "")]
    roots = [Path.home() / ".pyenv"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        roots.insert(0, Path(subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30,
                                            check=True).stdout.strip()))
    for root in roots:
        candidates += [str(p) for p in sorted((root / "versions").glob("3.8*/bin/python3.8"), reverse=True)]
    for c in filter(None, candidates):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([c, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"], capture_output=True,
                                 text=True, timeout=60, check=True).stdout
            if out.strip() == "True":
                return Path(c)
    return None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One process at a time fills the cache (pytest -n 2 runs this module's tests in two workers)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(command: list, *, timeout: float = 600, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run outside the checkout (``python -c`` puts the working folder first on sys.path: from the checkout
    it would import the source tree, not the installed wheel)."""
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYENV_VERSION", "VIRTUAL_ENV")},
           **(env or {})}
    CACHE.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd or CACHE, check=False)


def _ok(result: subprocess.CompletedProcess) -> str:
    command = " ".join(result.args)
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _build_wheel(out: Path) -> Path:
    """The wheel of this checkout, built from a copy (pip builds in the source folder: build/, *.egg-info)."""
    pytest.importorskip("setuptools", reason="the wheel is built with this venv's setuptools (--no-build-isolation)")
    source = shutil.copytree(ROOT, out / "source", ignore=shutil.ignore_patterns(
        ".*", "__pycache__", "*.egg-info", "build", "dist", "runs", "tests", "examples", "benchmarks"))
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", out / "wheel", source], cwd=out))
    return next((out / "wheel").glob("resnet_deploy-*.whl"))


def _wheel_requirements(wheel: Path) -> str:
    """A hash of the wheel's requirements: the venv is rebuilt when they change."""
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = z.read(name).decode()
    requires = [line for line in metadata.splitlines() if line.startswith(("Requires-Dist:", "Requires-Python:"))]
    return hashlib.sha256("\n".join(requires).encode()).hexdigest()[:16]


def _venv(python: Path, wheel: Path, requirements: str) -> Path:
    """A Python 3.8 venv holding the wheel's [device] dependencies (not resnet-deploy itself: each test session
    installs its own build beside it), reused while the wheel's requirements are unchanged."""
    venv = CACHE / "py38-venv"
    stamp = venv / ".resnet-deploy-requirements"
    if not (stamp.is_file() and stamp.read_text() == requirements and (venv / "bin" / "python").is_file()):
        shutil.rmtree(venv, ignore_errors=True)
        _ok(_run([python, "-m", "venv", venv]))
        pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
        got = _run([*pip, "install", "--quiet", "--retries", "1", "--timeout", "30", f"{wheel}[device]"])
        if got.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            tail = (got.stderr or got.stdout).strip().splitlines()[-3:]
            pytest.skip(f"the [device] dependencies for Python 3.8 could not be installed (no network?): "
                        f"{' / '.join(tail)}")
        _ok(_run([*pip, "uninstall", "--quiet", "--yes", "resnet-deploy"]))
        stamp.write_text(requirements)
    return venv


class Py38(NamedTuple):
    python: Path  # the venv's Python 3.8
    cli: Path  # this checkout's resnet-deploy script, run by it
    env: dict[str, str]  # PYTHONPATH: where this checkout's wheel is installed
    bundle: Path  # a fresh copy: bench and device-build write into it


@pytest.fixture(scope="module")
def py38(tmp_path_factory, shared_bundle) -> Py38:
    python = _python38()
    if python is None:
        pytest.skip("no Python 3.8 here (pyenv install 3.8.18, or set RESNET_DEPLOY_PY38=/path/to/python3.8)")
    work = tmp_path_factory.mktemp("py38")
    wheel = _build_wheel(work)
    requirements = _wheel_requirements(wheel)
    with _locked():  # the cache is shared by pytest workers and by concurrent sessions
        venv = _venv(python, wheel, requirements)
    bundle = shutil.copytree(shared_bundle, work / "bundle-copy")  # its jetson row is JetPack 5.1's (xavier-nx)
    site = work / "site"  # this session's code, installed as pip installs it, the shared dependencies untouched
    _ok(_run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
              "--target", site, wheel]))
    return Py38(venv / "bin" / "python", site / "bin" / "resnet-deploy", {"PYTHONPATH": str(site)}, bundle)


def _sample_size(bundle: Path) -> int:
    """The images the bundle keeps for ``bench`` to measure accuracy on (the build's evaluation, capped)."""
    return len(np.load(bundle / "eval_sample.npz")["labels"])


def _report_row(bundle: Path, target: str, precision: str) -> dict:
    return next(r for r in json.loads((bundle / "report.json").read_text())["results"]
                if r["target"] == target and r["precision"] == precision)


def test_device_commands_run_on_python38(py38, tmp_path):
    def run(*args) -> str:
        return _ok(_run([py38.cli, *args], env=py38.env))

    assert _ok(_run([py38.python, "-c", "import sys; print(sys.version_info[:2])"])).strip() == "(3, 8)"
    assert "device-build" in run("--help")
    assert "jetson" in run("targets")
    assert "xavier-nx" in run("devices")

    image = tmp_path / "sample.png"
    _ok(_run([py38.python, "-c", "import sys, numpy as np; from PIL import Image; "
              "Image.fromarray(np.load(sys.argv[1])['pixels'][0].squeeze().astype('uint8')).save(sys.argv[2])",
              py38.bundle / "eval_sample.npz", image]))
    answer = json.loads(run("infer", "--json", py38.bundle, image))
    assert len(answer["results"]) == 1 and len(answer["results"][0]["top"]) == 5

    for precision in ("int8", "fp32"):
        report = json.loads(run("bench", py38.bundle, "--runtime", "onnxruntime", "--precision", precision,
                                "--iterations", "5", "--seconds", "0", "--json", "--out", tmp_path / "r.json"))
        acc = report["accuracy"]
        assert report["artifact"]["target"] == "onnxruntime" and acc["images"] == _sample_size(py38.bundle)
        # The same images and model as the build measured (ONNX Runtime 1.19 here, the build's own there).
        assert acc["top1"] == acc["build_top1_same_images"] == _report_row(py38.bundle, "onnxruntime", precision)[
            "sample_top1"], report


def test_tensorrt_side_modules_import_on_python38(py38):
    where = "import resnet_deploy, os; print(os.path.dirname(resnet_deploy.__file__))"
    package = Path(_ok(_run([py38.python, "-c", where], env=py38.env)).strip())
    assert package.parent == Path(py38.env["PYTHONPATH"]), package  # the wheel, not the checkout
    tensorrt_side = sorted("resnet_deploy.targets.tensorrt" + ("" if p.stem == "__init__" else f".{p.stem}")
                           for p in (package / "targets" / "tensorrt").glob("*.py"))
    modules = ["resnet_deploy.pipeline.device", "resnet_deploy.cli", *tensorrt_side]
    assert len(modules) > 8, modules
    # One interpreter; before each module every resnet_deploy module is dropped from sys.modules, so no module
    # is imported by another's success (third-party ones stay loaded: they are not what is checked).
    check = ("import importlib, json, sys, traceback\n"
             "failed = {}\n"
             "for m in sys.argv[1:]:\n"
             "    for name in [n for n in sys.modules if n == 'resnet_deploy' or n.startswith('resnet_deploy.')]:\n"
             "        del sys.modules[name]\n"
             "    try:\n"
             "        importlib.import_module(m)\n"
             "    except BaseException:\n"
             "        failed[m] = traceback.format_exc().strip().splitlines()[-1]\n"
             "print(json.dumps(failed))\n")
    failed = json.loads(_ok(_run([py38.python, "-c", check, *modules], env=py38.env)))
    assert not failed, failed


def test_build_side_says_it_needs_python310(py38, tmp_path):
    for command in ("build", "train"):
        got = _run([py38.cli, command, "--out", tmp_path / command], env=py38.env)
        assert got.returncode == 2, (got.stdout, got.stderr)
        assert f"resnet-deploy {command} needs Python 3.10 or newer (this is 3.8." in got.stderr
        assert "Traceback" not in got.stderr and not (tmp_path / command).exists()


def test_engine_built_and_run_through_tensorrt_8_5_on_python38(py38, tmp_path):
    """JetPack 5.1: Python 3.8 with TensorRT 8.5.2 (the strict stand-in; see tests/_py38_tensorrt_run.py)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler for the stand-in libcudart.so (tests/fixtures/host_cudart.c)")
    lib = tmp_path / "lib"
    lib.mkdir()
    _ok(_run([compiler, "-shared", "-fPIC", "-o", lib / "libcudart.so", ROOT / "tests" / "fixtures" / "host_cudart.c"]))
    # Under every name the product may ask dlopen for (LD_LIBRARY_PATH comes before the system's), including
    # the soname ldconfig knows here: a CUDA toolkit without a GPU would answer "insufficient driver".
    known = _ok(_run([py38.python, "-c", "import ctypes.util; print(ctypes.util.find_library('cudart') or '')"]))
    names = {"libcudart.so.12", "libcudart.so.11.0", "libcudart.so.10.2", Path(known.strip()).name}
    for soname in names - {"", "libcudart.so"}:
        (lib / soname).symlink_to("libcudart.so")
    report = tmp_path / "device_report.json"
    _ok(_run([py38.python, ROOT / "tests" / "_py38_tensorrt_run.py", py38.bundle, ROOT / "tests" / "targets",
              TRT_VERSION, report], env={**py38.env, "LD_LIBRARY_PATH": str(lib)}))
    got = json.loads(report.read_text())
    assert got["artifact"]["runtime"] == "tensorrt" and got["runner"].startswith(f"TensorRT {TRT_VERSION}")
    assert "host-memory stand-in" in got["runner"]  # the GPU name came from the stand-in libcudart.so
    assert got["artifact"]["details"]["engine_key"]["tensorrt"] == TRT_VERSION
    assert [r["batch"] for r in got["latency"]] == [1, 8]
    # The stand-in's engine runs the Q/DQ graph: what reached it, in chunks of the engine's batch range, and
    # what came back must give that graph's own top-1. (Not compared with the build's simulated row: ONNX
    # Runtime 1.19, the last for Python 3.8, rounds this symmetric-INT8 graph differently from the build's.)
    expected = json.loads(report.with_name(report.name + ".expected.json").read_text())
    assert got["accuracy"]["top1"] == expected["top1"] and got["accuracy"]["images"] == _sample_size(py38.bundle)
