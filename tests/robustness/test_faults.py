"""Issue 7, faults: signals, a full or read-only disk, no permission, a reader that went away.

Real signals to real `resnet-deploy` processes, at known moments: ``RESNET_DEPLOY_TEST_PAUSE_AT``
makes the command stop at a named point and say so on stderr, and the test signals it then. Disks
are real tmpfs mounts (skipped where mounting is not permitted); EACCES comes from dropping root.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnet_deploy import environment
from resnet_deploy.errors import EnvironmentFault
from resnet_deploy.interrupts import TEST_PAUSE_ENV

CLI = [sys.executable, "-m", "resnet_deploy"]
# What these tests build is beside the point (the signal, the disk, the permissions are): a small, sure pass,
# from the shared bundle's FP32 ONNX (``fast``), a build that never imports PyTorch.
FAST = ["--target", "onnxruntime", "--eval-samples", "200", "--calib-samples", "16", "--calib-method", "max",
        "--max-drop", "100", "--fallback", "off", "--latency-seconds", "0", "-q"]
TIMEOUT = 120


@pytest.fixture(scope="module")
def fast(shared_bundle) -> list[str]:
    return [*FAST, "--onnx", str(shared_bundle / "model_fp32.onnx")]


@pytest.fixture(autouse=True)
def signals_not_ignored():
    """A child inherits an ignored SIGINT or SIGTERM, and the CLI then keeps it ignored, as it should under
    ``nohup``. Under pytest-xdist the worker may ignore SIGINT, and a CI runner may start the whole suite with
    SIGTERM ignored (a SIGTERM test then saw a bench run to its end and exit 0), so give the children what an
    interactive shell gives them."""
    wanted = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    before = {s: signal.getsignal(s) for s in wanted}
    for s, handler in wanted.items():
        if before[s] == signal.SIG_IGN:
            signal.signal(s, handler)
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


def cli(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})}, **kwargs)


def signal_at(point: str, sig: int, *args, repeat: int = 1) -> tuple[int, str]:
    """Run the CLI until it pauses at ``point``, send ``sig`` (``repeat`` times), return (exit code, stderr)."""
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, TEST_PAUSE_ENV: point})
    err = ""
    try:
        for line in proc.stderr:
            err += line
            if f"[test] paused at {point}" in line:
                for _ in range(repeat):
                    proc.send_signal(sig)
                break
        err += proc.stderr.read()
        return proc.wait(timeout=TIMEOUT), err
    finally:
        if proc.poll() is None:
            proc.kill()


def flat(text: str) -> str:
    return " ".join(text.split())  # rich wraps long lines


def leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def old_bundle(shared_bundle) -> Path:
    return shared_bundle  # bundle_copy (tests/conftest.py) gives a test its own copy


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- signals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("point, sig", [("data", signal.SIGINT),
                                        pytest.param("report", signal.SIGTERM, marks=pytest.mark.slow)])
def test_signal_before_publish_leaves_the_old_bundle_untouched(bundle_copy, fast, point, sig):
    before = snapshot(bundle_copy)
    code, err = signal_at(point, sig, "build", "--out", bundle_copy, *fast)
    assert code == 128 + sig, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert f"nothing was written to --out {bundle_copy}; the previous bundle there is untouched" in flat(err)
    assert snapshot(bundle_copy) == before
    assert leftovers(bundle_copy.parent, "bundle") == []


def test_second_ctrl_c_during_cleanup_prints_no_traceback(tmp_path, fashion_mnist, fast):
    out = tmp_path / "new"
    code, err = signal_at("data", signal.SIGINT, "build", "--out", out, *fast, repeat=2)
    assert code == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert f"nothing was written to --out {out}." in flat(err)
    assert not out.exists() and leftovers(tmp_path, "new") == []


@pytest.mark.slow  # a full build in a subprocess; the data-stage signal test stays in the fast suite
def test_signal_inside_publish_is_held_until_the_new_bundle_is_in_place(bundle_copy, fast):
    before = snapshot(bundle_copy)
    code, err = signal_at("publish", signal.SIGTERM, "build", "--out", bundle_copy, *fast)
    assert code == 143, err
    assert f"the new bundle was published to --out {bundle_copy}" in flat(err)
    after = snapshot(bundle_copy)
    assert after["manifest.json"] != before["manifest.json"]  # the new one, complete
    assert json.loads(after["report.json"])["status"] == "passed"
    assert leftovers(bundle_copy.parent, "bundle") == []


def test_sigterm_during_bench_writes_no_report(bundle_copy):
    proc = subprocess.Popen([*CLI, "bench", str(bundle_copy), "--seconds", "60"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    err = ""
    for line in proc.stderr:
        err += line
        if "benchmarking" in line:
            proc.send_signal(signal.SIGTERM)
            break
    err += proc.stderr.read()
    assert proc.wait(timeout=TIMEOUT) == 143, err
    assert "nothing was written" in err and "Traceback" not in err
    assert not (bundle_copy / "device_report.json").exists()


def test_ctrl_c_in_train_names_the_checkpoint_it_wrote(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(data / c / f"{i}.png")
    run = tmp_path / "run"
    code, err = signal_at("epoch", signal.SIGINT, "train", "--data", data, "--epochs", "3", "--batch-size", "8",
                          "--mean", "0.5", "--std", "0.25", "--out", run, "-q")
    assert code == 130, err
    assert f"{run / 'last.pt'} holds epoch 1 of 3; continue with the same command and --resume" in flat(err)
    assert (run / "last.pt").is_file() and not (run / "last.tmp").exists()
    assert "nothing was written" not in err


def test_two_openvino_runners_freed_in_order_leave_ctrl_c_working(tmp_path):
    """The segfault's cause: each ov.Core's CPU plugin swaps the main thread's alternate signal stack and
    puts the previous one back when freed; two Cores freed first-in-first-out left it pointing at freed
    memory, and Python's SIGINT handler (run on that stack) became a SIGSEGV. One shared Core fixes it."""
    pytest.importorskip("openvino")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 8, 8])])
    model = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    script = textwrap.dedent(f"""
        import gc, os, signal
        import numpy as np
        from resnet_deploy.targets.openvino import OvRunner
        a = OvRunner({str(model)!r})  # the build's validate stage: FP32 runner, then INT8
        b = OvRunner({str(model)!r})
        b.run(np.zeros((1, 1, 8, 8), np.float32))
        del a; gc.collect()
        del b; gc.collect()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        except KeyboardInterrupt:
            print("KeyboardInterrupt")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"exit {done.returncode} (-11 is the segfault): {done.stderr[-2000:]}"
    assert "KeyboardInterrupt" in done.stdout


# --- the machine refuses ----------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(path: Path, *, size: str = "2m", read_only: bool = False):
    path.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    if shutil.which("mount") is None or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here (needs root or CAP_SYS_ADMIN)")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_is_a_user_error_naming_the_path(tmp_path, fashion_mnist, fast):
    with tmpfs(tmp_path / "full", size="1m") as disk:
        done = cli("build", "--out", disk / "b", *fast)
        assert done.returncode == 2, done.stderr
        assert f"no space left on the device holding {disk / 'b'}" in flat(done.stderr)
        assert "internal error" not in done.stderr and "Traceback" not in done.stderr
        assert list(disk.iterdir()) == []


@pytest.mark.slow  # the full-disk test takes the same path to the same message
def test_read_only_out_is_a_user_error_naming_the_path(tmp_path, fast):
    with tmpfs(tmp_path / "ro", read_only=True) as disk:
        for args in (["build", "--out", disk / "b", *fast], ["train", "--out", disk / "run", "--epochs", "1"]):
            done = cli(*args)
            assert done.returncode == 2, done.stderr
            assert str(disk) in flat(done.stderr) and "Read-only file system" in done.stderr, done.stderr


def test_library_error_without_errno_on_a_full_disk_is_named(tmp_path):
    """OpenVINO's save_model on a full disk raises RuntimeError('basic_ios::clear: iostream error'): the probe
    of the folder finds the cause."""
    with tmpfs(tmp_path / "full", size="256k") as disk:
        (disk / "model.bin").write_bytes(b"\0" * 200_000)  # a model-sized file already there
        with pytest.raises(EnvironmentFault, match="no space left on the device holding /x/out"), \
                environment.explain(disk, shown=Path("/x/out")):
            raise RuntimeError("basic_ios::clear: iostream error")
    with environment.explain(tmp_path), pytest.raises(RuntimeError):  # a real bug stays a bug
        raise RuntimeError("a bug")


@pytest.mark.slow  # a build in a subprocess for one message; the permission test covers the path
def test_out_under_proc_is_a_user_error(tmp_path, fast):
    done = cli("build", "--out", "/proc/x/b", *fast)
    assert done.returncode == 2, done.stderr
    assert "/proc/x" in flat(done.stderr) and "internal error" not in done.stderr, done.stderr


def test_permission_denied_is_a_user_error(tmp_path, shared_bundle):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("dropping privileges needs root and setpriv")
    root = Path(__file__).resolve().parents[2]
    if any(not p.stat().st_mode & 0o001 for p in (root, *root.parents)):
        pytest.skip(f"the unprivileged user cannot reach the checkout {root} (a folder on its path is not o+x)")
    locked = Path("/tmp") / f"resnet-deploy-locked-{os.getpid()}"
    locked.mkdir(mode=0o755)
    try:  # the model where the unprivileged user can read it (pytest's folders are the owner's only)
        model = Path(shutil.copy(shared_bundle / "model_fp32.onnx", locked / "model.onnx"))
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CLI, "build",
                               "--out", str(locked / "b"), *FAST, "--onnx", str(model)], capture_output=True,
                              text=True, timeout=TIMEOUT, cwd="/")
        assert done.returncode == 2, done.stderr
        assert str(locked / "b") in flat(done.stderr) and "ermission denied" in done.stderr, done.stderr
    finally:
        shutil.rmtree(locked)


def test_oserror_with_an_environment_errno_is_described():
    import errno

    fault = environment.describe(OSError(errno.EROFS, "Read-only file system", "/mnt/x"))
    assert "/mnt/x is on a read-only file system" in str(fault) and fault.exit_code == 2
    assert environment.describe(OSError(errno.EINVAL, "Invalid argument", "/x")) is None


# --- a reader that went away ------------------------------------------------------------------------

@pytest.mark.parametrize("args", [pytest.param(["archs"], marks=pytest.mark.slow), ["targets"]])
def test_closed_stdout_stops_quietly_with_141(args):
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line: `| head -0`
    try:
        done = subprocess.run([*CLI, *args], stdout=write, stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_closed_stdout_during_infer_json(old_bundle, tmp_path):
    image = tmp_path / "x.png"
    Image.new("L", (28, 28), 128).save(image)
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([*CLI, "infer", str(old_bundle), str(image), "--json"], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=TIMEOUT)
    finally:
        os.close(write)
    assert done.returncode == 141, done.stderr
    assert "internal error" not in done.stderr and "Traceback" not in done.stderr
