"""The everyday surface of the CLI: grouped help with examples, -q/--json alike, defaults stated truly,
the targets' two readiness facts, missing extras, published file modes, the report header, completion."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from test_html_report import sample_report

from resnet_deploy import __version__, host
from resnet_deploy.cli import _build_command, main
from resnet_deploy.errors import DataError
from resnet_deploy.files import umask
from resnet_deploy.help_groups import OTHER, GroupedCommand
from resnet_deploy.pipeline.html_report import _header as html_header
from resnet_deploy.pipeline.records import Host, Report, to_json
from resnet_deploy.pipeline.report import render_markdown
from resnet_deploy.targets import Runtime, Target, get_target, list_targets, option_owners, register, unregister
from resnet_deploy.targets.base import option_fields

ROOT = Path(__file__).resolve().parents[1]
TEXT_ONLY = ("archs",)  # a plain listing: no --json


def run(*args: str, **kwargs):
    return CliRunner().invoke(main, list(args), prog_name="resnet-deploy", **kwargs)


def sections(text: str) -> dict[str, str]:
    """Help text split at its unindented "Title:" lines."""
    out: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            title = line[:-1]
            out[title] = ""
        elif title:
            out[title] += line + "\n"
    return out


# --- help -------------------------------------------------------------------------------------------

def test_build_help_groups_its_options_and_the_target_flags_sit_in_the_target_group():
    result = run("build", "--help")
    assert result.exit_code == 0, result.output
    parts = sections(result.output)
    titles = list(parts)
    order = ["Model", "Data", "Quantization and accuracy gate", "Output", "Examples"]
    assert all(t in titles for t in order)
    assert [titles.index(t) for t in order] == sorted(titles.index(t) for t in order)
    target = next(body for title, body in parts.items() if title.startswith("Target"))
    for name in ["target", *option_owners("options")]:
        assert f"--{name.replace('_', '-')} " in target, name
    assert "--checkpoint" in parts["Model"] and "--calib-data" in parts["Data"] and "--max-drop" in parts[
        "Quantization and accuracy gate"] and "--json" in parts["Output"]
    assert OTHER not in parts, parts.get(OTHER)  # every build flag has a group


def test_an_option_missing_from_the_mapping_still_shows_under_other():
    @click.command(cls=GroupedCommand, groups=(("Mine", ("known",)),), examples=("tool --known 1",))
    @click.option("--known")
    @click.option("--added-later", help="Someone else's flag.")
    def tool(known, added_later):
        """A tool."""

    parts = sections(CliRunner().invoke(tool, ["--help"]).output)
    assert "--known" in parts["Mine"] and "--added-later" in parts[OTHER] and "--help" in parts[OTHER]
    assert parts["Examples"].strip() == "tool --known 1"


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_help_ends_with_examples_of_itself(command):
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    examples = sections(result.output).get("Examples", "").split("\n")
    lines = [line.strip() for line in examples if line.strip() and not line.startswith("      ")]
    assert lines and any(f"resnet-deploy {command}" in line for line in lines), result.output


def test_calib_data_help_states_the_default_the_code_uses():
    """Without --calib-data, data_stage calibrates on --eval-data's training split (or the rest of its folder)."""
    parts = sections(run("build", "--help").output)
    calib = " ".join(parts["Data"].split("--calib-data", 1)[1].split("--calib-samples", 1)[0].split())
    assert "--eval-data" in calib and "Never overlaps" in calib


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_takes_quiet_and_the_ones_that_print_results_take_json(command):
    opts = {o for p in main.commands[command].params for o in getattr(p, "opts", ())}
    assert "-q" in opts
    assert ("--json" in opts) != (command in TEXT_ONLY), command


# --- train: human summary and the next command, or JSON only ----------------------------------------

@pytest.fixture()
def trained(monkeypatch, tmp_path):
    from resnet_deploy.pipeline import training_run
    from resnet_deploy.pipeline.train import TrainResult

    run_dir = tmp_path / "my run"

    def fake(settings, *, data, test_data, out, **_):
        return TrainResult(out / "last.pt", out / "model.safetensors", 2, [{"epoch": 1}, {"epoch": 2}], 0.9)

    monkeypatch.setattr(training_run, "run_training", fake)
    return run_dir


def test_train_prints_a_summary_and_the_build_command_to_run_next(trained):
    result = run("train", "--data", "imgs", "--out", str(trained))
    assert result.exit_code == 0, result.output
    assert "{" not in result.stdout
    following = next(line for line in result.stdout.splitlines() if line.startswith("next: "))[len("next: "):]
    assert following == _build_command(trained / "model.safetensors", data="imgs", test_data=None)
    words = shlex.split(following)  # the run folder's space is quoted
    assert words[:2] == ["resnet-deploy", "build"]
    ctx = main.commands["build"].make_context("build", words[2:])
    assert ctx.params["checkpoint"] == trained / "model.safetensors" and ctx.params["eval_data"] == "imgs"


def test_train_json_prints_json_only(trained):
    result = run("train", "--data", "imgs", "--test-data", "held", "--out", str(trained), "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["weights"] == str(trained / "model.safetensors") and printed["epochs"] == 2
    assert "--calib-data imgs --eval-data held" in printed["next"]


# --- train writes files readable like its neighbours ------------------------------------------------

def test_safetensors_weights_get_the_mode_of_an_ordinary_new_file(tmp_path):
    from torch import nn

    from resnet_deploy.pipeline.checkpoint import save_checkpoint, save_safetensors

    model = nn.Linear(2, 2)
    save_checkpoint(tmp_path / "last.pt", model, {})
    save_safetensors(tmp_path / "model.safetensors", model, {})
    (tmp_path / "plain").write_text("x")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes["model.safetensors"] == modes["last.pt"] == modes["plain"], modes


def test_a_published_bundle_has_no_private_files(tmp_path):
    from resnet_deploy.pipeline import bundle

    out = tmp_path / "bundle"
    with bundle.staging(out) as staging:
        (staging / "private.bin").write_bytes(b"x")
        (staging / "private.bin").chmod(0o600)
        (staging / "run.sh").write_text("true\n")
        (staging / "run.sh").chmod(0o700)
        (staging / "plain").write_text("x")
        bundle.publish(staging, out)
    mask = umask()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.name != "run.sh"}
    assert set(modes.values()) == {0o666 & ~mask}, modes
    assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o777 & ~mask


# --- --target jetson without --device ---------------------------------------------------------------

def test_a_device_target_names_the_default_it_chose_and_the_flag():
    takes_device = [n for n in list_targets() if "device" in {f.name for f in option_fields(get_target(n).options)}]
    assert takes_device
    for name in takes_device:
        notes = get_target(name).notices({})
        assert notes and all("--device" in n for n in notes)
        assert get_target(name).notices({"device": get_target(name).profiles()[0][0]}) == []


def test_build_warns_about_the_default_device_before_any_stage(monkeypatch, tmp_path):
    from resnet_deploy.errors import ConfigError
    from resnet_deploy.pipeline import build as build_mod

    def stop(*a, **k):
        raise ConfigError("stopped here by the test")

    monkeypatch.setattr(build_mod, "load_model_stage", stop)
    target = next(n for n in list_targets() if get_target(n).notices({}))
    result = run("build", "--target", target, "--out", str(tmp_path / "b"))
    assert result.exit_code == 2 and "stopped here" in result.output
    assert "warning:" in result.output and "--device" in result.output
    profile = get_target(target).profiles()[0][0]
    quiet = run("build", "--target", target, "--device", profile, "--out", str(tmp_path / "b"))
    assert "warning:" not in quiet.output and "stopped here" in quiet.output


# --- targets: builds here / runtime present ---------------------------------------------------------

class _DeviceOnly(Target):
    name = "surface-test-device"
    summary = "a device target whose runtime is not installed here"
    runtimes = (Runtime("surface-rt", "surface_test_no_such_module", "pip install surface-rt"),
                Runtime("surface-sim", "json", "pip install nothing"))
    simulated_by = ("surface-sim",)

    def compile(self, inp, bundle):
        raise NotImplementedError

    def load(self, artifact, bundle, *, threads=None, hint=None):
        raise NotImplementedError


@pytest.fixture()
def device_only_target():
    register(_DeviceOnly)
    yield _DeviceOnly.name
    unregister(_DeviceOnly.name)


def test_targets_tells_builds_here_apart_from_runtime_present(device_only_target):
    result = run("targets")
    assert result.exit_code == 0, result.output
    line = next(entry for entry in result.output.splitlines() if entry.startswith(device_only_target))
    assert "[builds here; runtime missing (pip install surface-rt); CPU simulation here: surface-sim" in line
    rows = {r["target"]: r for r in json.loads(run("targets", "--json").output)["targets"]}
    assert rows[device_only_target]["builds_here"] and rows[device_only_target]["runtime_present"] == []
    assert set(rows) == set(list_targets())


def test_without_the_build_toolchain_no_target_builds_here(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # find_spec answers None: as if not installed
    rows = json.loads(run("targets", "--json").output)["targets"]
    assert rows and all(not r["builds_here"] and "resnet-deploy[build]" in r["to_build"] for r in rows)


# --- missing extras: the exact pip line, exit 2 ------------------------------------------------------

@pytest.mark.parametrize("absent", ["torch", "onnx"])
def test_build_without_the_build_extra_names_the_pip_line(absent, tmp_path):
    code = (f"import sys; sys.modules[{absent!r}] = None\n"
            "from resnet_deploy.cli import main\n"
            f"main(['build', '--out', {str(tmp_path / 'b')!r}], prog_name='resnet-deploy')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "RESNET_DEPLOY_DEBUG": ""})
    assert done.returncode == 2, done.stderr
    assert "pip install 'resnet-deploy[build]'" in done.stderr and absent in done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


def test_a_target_package_missing_names_its_own_pip_line(monkeypatch, tmp_path):
    """e.g. nncf absent while torch and onnx are present: that target's own line, not the [build] extra's."""
    target = next(n for n in list_targets() if len(get_target(n).build_requires) > 1)
    for module, pip in get_target(target).build_requires.items():
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)
            result = run("build", "--target", target, "--out", str(tmp_path / "b"))
        assert result.exit_code == 2 and f"`pip install {pip}`" in result.output, result.output
        assert "Traceback" not in result.output


# --- RESNET_DEPLOY_FASHION_MNIST -----------------------------------------------------------------------

def test_a_wrong_fashion_mnist_variable_is_an_error_naming_it(monkeypatch, tmp_path):
    from resnet_deploy.calibration.sources import open_source

    monkeypatch.setenv("RESNET_DEPLOY_FASHION_MNIST", str(tmp_path / "nothing-here"))
    with pytest.raises(DataError, match=r"^RESNET_DEPLOY_FASHION_MNIST=.*nothing-here.*unset it"):
        open_source("fashion-mnist", "train", flag="--calib-data")


# --- the report header ----------------------------------------------------------------------------------

def test_instruction_sets_are_read_on_x86_and_on_arm():
    x86 = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8 avx512_bf16\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp i8mm bf16\nCPU part\t: 0xd42\n"
    assert {"AVX2", "AVX512F", "AVX512-VNNI", "AMX-INT8", "AVX512-BF16"} <= set(host.isa_of(host.flags_of(x86)))
    assert {"NEON", "DOTPROD", "I8MM", "BF16"} <= set(host.isa_of(host.flags_of(arm)))
    assert not {"NEON", "DOTPROD"} & set(host.isa_of(host.flags_of(x86)))


def test_the_report_header_names_version_isa_cores_threads_and_runtimes():
    here = Host.of_this_machine(threads=3, versions={"python": "3.x", "resnet-deploy": __version__, "rt": "9.9"})
    assert Host.from_json(json.loads(json.dumps(to_json(here)))) == here
    report = replace(Report.from_json(sample_report()), host=here)
    for text in (render_markdown(report), html_header(report, report.status)):  # the page's header, no plots
        assert f"resnet-deploy {__version__}" in text and "rt 9.9" in text
        assert "3 runtime threads" in text and f"{here.cores} usable of {here.logical_cpus} logical CPUs" in text
        assert all(name in text for name in here.isa)


def test_a_report_written_before_the_new_host_fields_still_loads_and_renders():
    old = Report.from_json(sample_report())
    assert old.host.tool_version == "" and old.host.isa == () and old.host.versions == {}
    assert "- host: " in render_markdown(old) and "usable of" not in render_markdown(old)


# --- shell completion -------------------------------------------------------------------------------------

def test_shell_completion_script_and_a_completion():
    script = run(env={"_RESNET_DEPLOY_COMPLETE": "bash_source"})
    assert script.exit_code == 0 and "_RESNET_DEPLOY_COMPLETE=bash_complete" in script.output
    done = run(env={"_RESNET_DEPLOY_COMPLETE": "bash_complete", "COMP_WORDS": "resnet-deploy bu", "COMP_CWORD": "1"})
    assert done.exit_code == 0 and "plain,build" in done.output.splitlines() and "bench" not in done.output
    readme = (ROOT / "README.md").read_text()
    assert "_RESNET_DEPLOY_COMPLETE=bash_source resnet-deploy" in readme
