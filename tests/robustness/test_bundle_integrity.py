"""Issue 7, data loss and integrity: what --out may be, one writer per --out, stale staging, and a
device side that reads only files the manifest lists, resolved inside the bundle.

One small real bundle per module, copied per test; the refusals that must come before any work run
with the load and data stages replaced by ones that fail the test, so they cost nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from resnet_deploy.cli import main
from resnet_deploy.errors import BundleError, OutputInUse
from resnet_deploy.pipeline import bundle as bundle_io
from resnet_deploy.pipeline import out_lock
from resnet_deploy.pipeline.device import load_runner, open_bundle


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_clean_failure(result, *needles: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    flat = " ".join(result.output.split())  # rich wraps long lines
    for needle in needles:
        assert needle in flat, result.output


@pytest.fixture()
def bundle(bundle_copy) -> Path:
    return bundle_copy  # of the session's shared bundle (tests/conftest.py)


@pytest.fixture()
def no_work(monkeypatch):
    """The load and data stages fail the test: a refusal must come before them."""
    from resnet_deploy.pipeline import build as build_mod

    def never(*a, **k):
        raise AssertionError("a stage ran before --out was checked")

    monkeypatch.setattr(build_mod, "load_model_stage", never)
    monkeypatch.setattr(build_mod, "data_stage", never)


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "x.png"
    Image.new("L", (28, 28), 128).save(path)
    return path


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, data) -> None:
    (bundle / "manifest.json").write_text(json.dumps(data))


# --- case 1 and 7: --out that is not a bundle, or holds a user's files ------------------------------------

def test_foreign_manifest_is_not_a_bundle_and_nothing_is_decoded(tmp_path, no_work):
    p = tmp_path / "p"
    p.mkdir()
    (p / "manifest.json").write_text("{}")
    (p / "thesis.tex").write_text("x")
    assert_clean_failure(run("build", "--target", "onnxruntime", "--out", p), f"--out {p}",
                         "not a resnet-deploy bundle", "empty or new folder")
    assert (p / "thesis.tex").read_text() == "x"


def test_non_empty_folder_is_refused_before_any_work(tmp_path, no_work):
    p = tmp_path / "site"
    p.mkdir()
    (p / "index.html").write_text("<html>")
    assert_clean_failure(run("build", "--out", p), "not empty", "not a resnet-deploy bundle")
    assert (p / "index.html").exists() and not [q for q in tmp_path.iterdir() if q.name.startswith(".")]


def test_empty_folder_is_accepted(tmp_path, monkeypatch):
    from resnet_deploy.errors import ConfigError
    from resnet_deploy.pipeline import build as build_mod

    def stop(*a, **k):
        raise ConfigError("stopped after the --out checks")

    monkeypatch.setattr(build_mod, "load_model_stage", stop)
    (tmp_path / "empty").mkdir()
    assert_clean_failure(run("build", "--out", tmp_path / "empty"), "stopped after the --out checks")


def test_user_files_in_a_bundle_need_force(bundle, no_work):
    (bundle / "notes.txt").write_text("mine")
    (bundle / "onnxruntime" / "extra.onnx").write_text("mine too")
    assert_clean_failure(run("build", "--target", "onnxruntime", "--out", bundle), "notes.txt",
                         "onnxruntime/extra.onnx", "--force")
    assert (bundle / "notes.txt").exists()


def test_force_names_the_files_it_drops(bundle, monkeypatch):
    from resnet_deploy.errors import ConfigError
    from resnet_deploy.pipeline import build as build_mod

    def stop(*a, **k):
        raise ConfigError("stopped")

    monkeypatch.setattr(build_mod, "load_model_stage", stop)
    (bundle / "notes.txt").write_text("mine")
    result = run("build", "--target", "onnxruntime", "--out", bundle, "--force")
    assert_clean_failure(result, "--force", "notes.txt", "stopped")


def test_files_the_device_side_writes_are_not_user_files(bundle):
    (bundle / "device_report.json").write_text("{}")
    (bundle / "tensorrt" / "engines").mkdir(parents=True)
    (bundle / "tensorrt" / "engines" / "timing_x.cache").write_bytes(b"t")
    assert bundle_io.unlisted_files(bundle, _manifest(bundle)) == []
    assert bundle_io.check_out_contents(bundle, force=False) == []
    open_bundle(bundle)  # and they are no damage


def test_bundles_of_the_previous_version_are_recognised(bundle, tmp_path):
    m = _manifest(bundle)
    assert m["tool"] == "resnet-deploy" and m["bundle_schema"] == 1
    legacy = {k: v for k, v in m.items() if k not in ("tool", "bundle_schema")}
    _write_manifest(bundle, legacy)
    assert bundle_io.is_bundle(bundle)
    open_bundle(bundle)
    for other in ({}, [], {"files": {}}, {"files": [], "versions": {"resnet-deploy": "0.1"}},
                  {"tool": "webpack", "files": {}, "versions": {"resnet-deploy": "1"}}):
        _write_manifest(bundle, other)
        assert not bundle_io.is_bundle(bundle), other


@pytest.mark.parametrize("where", [".", "..", "/", "~"])
def test_out_that_would_move_the_working_folder_away(tmp_path, monkeypatch, no_work, where):
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    (work / "keep").write_text("x")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    out = os.path.expanduser(where)
    assert_clean_failure(run("build", "--out", out), "current folder", "home folder")
    assert (work / "keep").exists()


# --- case 6: --out and the inputs ----------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["out-inside-eval", "out-is-eval", "eval-inside-out", "calib-inside-out",
                                    "checkpoint-inside-out"])
def test_out_and_the_inputs_must_not_overlap(tmp_path, no_work, layout):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    out = {"out-inside-eval": data / "bundle", "out-is-eval": data}.get(layout, tmp_path)
    if layout.startswith("checkpoint"):
        ckpt = tmp_path / "r20.pt"
        ckpt.write_bytes(b"x")
        args = ["--checkpoint", ckpt]
        flag = "--checkpoint"
    else:
        flag = "--eval-data" if "eval" in layout else "--calib-data"
        args = [flag, data]
    result = run("build", "--target", "onnxruntime", *args, "--out", out)
    assert_clean_failure(result, flag, str(out))
    assert sorted(p.name for p in (data / "cat").parent.iterdir()) == ["cat"]


# --- case 5: one writer per --out ------------------------------------------------------------------------

def test_second_build_into_a_locked_out_is_refused_at_once(tmp_path, no_work):
    out = tmp_path / "b"
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import time; from pathlib import Path; from resnet_deploy.pipeline import out_lock\n"
                                f"with out_lock.hold(Path({str(out)!r})):\n"
                                "    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        result = run("build", "--target", "onnxruntime", "--out", out)
        assert time.perf_counter() - t0 < 5
        assert_clean_failure(result, "another resnet-deploy build", f"pid {holder.pid}", f"--out {out}",
                             "choose another --out")
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_released_and_its_file_removed(tmp_path):
    out = tmp_path / "b"
    lock = out_lock.lock_path(out)
    lock.write_text("999999\n")  # left by a killed process: flock died with it
    with out_lock.hold(out):
        assert lock.read_text().split() == [str(os.getpid()), "build"]
        with pytest.raises(OutputInUse, match="is writing --out"), out_lock.hold(out):
            pass
    assert not lock.exists()
    with out_lock.hold(out):  # free again
        pass


def test_lock_retries_when_the_holder_unlinked_the_file(tmp_path, monkeypatch):
    """Open, then the holder releases (unlinks), then flock: the orphaned file must not count as the lock."""
    out = tmp_path / "b"
    lock = out_lock.lock_path(out)
    real_open = os.open
    calls = []

    def racing_open(path, *a, **k):
        fd = real_open(path, *a, **k)
        if Path(path) == lock and not calls:
            calls.append(1)
            os.unlink(lock)  # as a releasing holder does, after our open
        return fd

    monkeypatch.setattr(out_lock.os, "open", racing_open)
    with out_lock.hold(out):
        assert lock.exists() and os.stat(lock).st_ino
        monkeypatch.setattr(out_lock.os, "open", real_open)
        with pytest.raises(OutputInUse, match="is writing"), out_lock.hold(out):  # the one at the path is held
            pass


# --- stale staging -----------------------------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_staging_of_dead_processes_is_removed_and_nothing_else(tmp_path):
    dead = _dead_pid()

    def folder(name: str, marker: bool) -> Path:
        path = tmp_path / name
        path.mkdir()
        (path / "model.onnx").write_bytes(b"x")
        if marker:
            (path / bundle_io.STAGING_MARKER).write_text(str(dead))
        return path

    stale = [folder(f".b.partial-{dead}-abc123", True), folder(f".other.old-{dead}-x_y", True)]
    kept = [folder(f".b.partial-{dead}-nomark", False),  # a user's folder that happens to match
            folder(f".b.partial-{os.getpid()}-alive1", True),  # a running build's
            folder("b.partial-1-x", True)]
    with bundle_io.staging(tmp_path / "b") as staging:
        assert staging.name.startswith(f".b.partial-{os.getpid()}-")
        assert (staging / bundle_io.STAGING_MARKER).is_file()
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)


def test_publish_leaves_no_old_folder_and_no_marker(bundle, tmp_path):
    with bundle_io.staging(bundle) as staging:
        shutil.copytree(bundle, staging, dirs_exist_ok=True)
        bundle_io.publish(staging, bundle)
    assert not (bundle / bundle_io.STAGING_MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no .old-*, no staging, no lock file
    open_bundle(bundle)


# --- case 2: the device side reads only listed files -------------------------------------------------------

@pytest.mark.parametrize("planted", ["/abs", "../../x.onnx"])
def test_unlisted_device_artifacts_are_ignored(bundle, tmp_path, image, planted):
    evil = tmp_path / "evil.onnx"
    shutil.copyfile(bundle / "model_fp32.onnx", evil)
    path = str(evil) if planted == "/abs" else planted
    (bundle / "device_artifacts.json").write_text(json.dumps([
        {"target": "onnxruntime", "precision": "int8", "path": path, "runtime": "onnxruntime"}]))
    b = open_bundle(bundle)
    assert all(a.path != path for a in b.artifacts)
    result = run("infer", bundle, image, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["artifact"] in {a.path for a in b.artifacts}


def test_artifact_the_manifest_does_not_list_is_damage(bundle, image):
    m = _manifest(bundle)
    del m["files"]["onnxruntime/model_int8.onnx"]
    _write_manifest(bundle, m)
    assert_clean_failure(run("infer", bundle, image), "onnxruntime/model_int8.onnx", "not listed", "damaged")


def test_emptied_files_map_is_damage(bundle, image):
    m = _manifest(bundle)
    m["files"] = {}
    _write_manifest(bundle, m)
    assert_clean_failure(run("infer", bundle, image), "report.json", "not listed", "damaged")


def test_engine_outside_the_bundle_is_checked_against_its_recorded_hash(bundle, tmp_path):
    engine = tmp_path / "cache" / "model.engine"
    engine.parent.mkdir()
    engine.write_bytes(b"PLAN")
    record = [{"target": "tensorrt", "precision": "int8", "path": str(engine), "runtime": "tensorrt",
               "extra": {"sha256": bundle_io.sha256_file(engine), "bytes": 4}}]
    (bundle / "device_artifacts.json").write_text(json.dumps(record))
    bundle_io.record_device_files(bundle, {"device_artifacts.json": bundle / "device_artifacts.json"})
    b = open_bundle(bundle)
    assert b.artifacts[0].path == str(engine)
    bundle_io.verify_external(engine, sha256=record[0]["extra"]["sha256"], size=4)
    engine.write_bytes(b"EVIL")
    with pytest.raises(BundleError, match=r"model\.engine"):
        load_runner(b, b.artifacts[0])
    record[0]["extra"].pop("sha256")  # recorded without a hash: refused at open
    (bundle / "device_artifacts.json").write_text(json.dumps(record))
    bundle_io.record_device_files(bundle, {"device_artifacts.json": bundle / "device_artifacts.json"})
    with pytest.raises(BundleError, match="without its sha256"):
        open_bundle(bundle)


def test_bench_report_in_the_bundle_is_not_damage(bundle):
    (bundle / "device_report.json").write_text('{"latency": []}')
    open_bundle(bundle)


# --- case 3: a strict manifest ------------------------------------------------------------------------------

@pytest.mark.parametrize("damage, needle", [
    ("[]", "holds a list"),
    ('{"files": []}', '"files"'),
    ('{"files": {"report.json": "abc"}}', "'report.json' is not an object"),
    ('{"files": {"report.json": {"bytes": 1}}}', "'report.json' has no valid sha256"),
    ('{"files": {"report.json": {"sha256": "xyz", "bytes": 1}}}', "'report.json' has no valid sha256"),
    ('{"files": {"report.json": {"sha256": "' + "a" * 64 + '", "bytes": "1"}}}', "valid byte count"),
    ("{not json", "not valid JSON"),
])
def test_malformed_manifests_are_damage(bundle, image, damage, needle):
    (bundle / "manifest.json").write_text(damage)
    assert_clean_failure(run("infer", bundle, image), "manifest.json", needle)


@pytest.mark.parametrize("name", ["../outside.bin", "ABS"])
def test_paths_outside_the_bundle_are_never_read(bundle, tmp_path, image, name):
    big = tmp_path / "outside.bin"
    with open(big, "wb") as f:
        f.truncate(10 << 30)  # 10 GB, sparse: reading it would take half a minute
    rel = str(big) if name == "ABS" else name
    m = _manifest(bundle)
    m["files"][rel] = {"sha256": "0" * 64, "bytes": 10 << 30}
    _write_manifest(bundle, m)
    t0 = time.perf_counter()
    assert_clean_failure(run("infer", bundle, image), "outside the bundle", "damaged")
    assert time.perf_counter() - t0 < 5


def test_listed_file_of_the_wrong_size_is_not_hashed(bundle, image, monkeypatch):
    with open(bundle / "eval_sample.npz", "r+b") as f:
        f.truncate(10 << 30)
    monkeypatch.setattr(bundle_io, "sha256_file", lambda p: pytest.fail(f"hashed {p}"))
    assert_clean_failure(run("infer", bundle, image), "eval_sample.npz", "bytes")


def test_symlink_out_of_the_bundle_is_damage(bundle, tmp_path, image):
    outside = tmp_path / "prep.json"
    shutil.copyfile(bundle / "preprocessing.json", outside)
    (bundle / "preprocessing.json").unlink()
    (bundle / "preprocessing.json").symlink_to(outside)
    assert_clean_failure(run("infer", bundle, image), "preprocessing.json", "outside the bundle")


def test_listed_fifo_is_damage_not_a_hang(bundle, image):
    (bundle / "eval_sample.npz").unlink()
    os.mkfifo(bundle / "eval_sample.npz")
    assert_clean_failure(run("infer", bundle, image), "eval_sample.npz", "not a regular file")


def test_changed_file_still_fails_its_hash(bundle, image):
    data = (bundle / "report.md").read_bytes()
    (bundle / "report.md").write_bytes(data[:-1] + (b"x" if data[-1:] != b"x" else b"y"))
    assert_clean_failure(run("infer", bundle, image), "report.md", "sha256")


# --- train --out over an existing run --------------------------------------------------------------------------

def test_train_refuses_a_folder_that_is_not_a_run(tmp_path):
    p = tmp_path / "p"
    p.mkdir()
    (p / "model.safetensors").write_bytes(b"someone else's model")
    assert_clean_failure(run("train", "--data", tmp_path / "no-data", "--out", p), f"--out {p}",
                         "not a resnet-deploy training run")
    assert (p / "model.safetensors").read_bytes() == b"someone else's model"


def test_train_over_an_existing_run_needs_resume(tmp_path):
    import torch

    from resnet_deploy.models import build_model
    from resnet_deploy.pipeline import checkpoint as ckpt

    p = tmp_path / "run"
    p.mkdir()
    ckpt.save_safetensors(p / "model.safetensors", build_model("resnet20", num_classes=10, in_channels=1),
                          {"arch": "resnet20", "train": {"epochs": 1}})  # a run written before run.json existed
    assert_clean_failure(run("train", "--data", tmp_path / "no-data", "--out", p), "pass --resume",
                         "choose another --out")
    (p / "run.json").write_text(json.dumps({"tool": "resnet-deploy", "kind": "train"}))
    torch.save({"state_dict": {}}, p / "last.pt")
    assert_clean_failure(run("train", "--data", tmp_path / "no-data", "--out", p), "pass --resume")
    (p / "last.pt").unlink()
    assert_clean_failure(run("train", "--data", tmp_path / "no-data", "--out", p, "--resume"), "--resume",
                         "last.pt")
