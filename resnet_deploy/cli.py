"""The command line: thin Click commands that parse flags, call one library function and print."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import click

from resnet_deploy import __version__, environment, interrupts
from resnet_deploy.console import Ui
from resnet_deploy.errors import ConfigError, DataError, DependencyError, GateFailed, ResnetDeployError

pass_ui = click.make_pass_decorator(Ui, ensure=True)


def _quiet_flag(ctx: click.Context, param, value: bool) -> bool:
    if value:
        ctx.ensure_object(Ui).quiet = True
    return value


quiet_option = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_quiet_flag,
                            help="No progress bars or messages; errors only.")


class _Group(click.Group):
    """Turns domain errors into one paragraph on stderr and their exit code: never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            with interrupts.handling():
                result = super().invoke(ctx)
                sys.stdout.flush()  # a reader that went away (`| head`) is noticed here, not at exit
                return result
        except ResnetDeployError as err:
            click.secho(f"error: {err}", fg="red", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt as err:  # Ctrl-C, and SIGTERM (errors.Interrupted)
            signum = getattr(err, "signum", signal.SIGINT)
            written = getattr(err, "written", None) or interrupts.done() or "nothing was written."
            click.secho(f"interrupted ({signal.Signals(signum).name}): {written}", fg="red", err=True)
            sys.exit(128 + signum)
        except BrokenPipeError:  # the reader of stdout went away: stop quietly, as Unix tools do
            _stdout_to_devnull()
            sys.exit(128 + signal.SIGPIPE)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except OSError as err:  # disk full, read-only, permission denied, ...: the user's to fix
            fault = environment.describe(err)
            if fault is None or os.environ.get("RESNET_DEPLOY_DEBUG"):
                return self._bug(err)
            click.secho(f"error: {fault}", fg="red", err=True)
            sys.exit(fault.exit_code)
        except Exception as err:  # a bug of ours: say so in one paragraph; the traceback is opt-in
            return self._bug(err)

    @staticmethod
    def _bug(err: Exception):
        if os.environ.get("RESNET_DEPLOY_DEBUG"):
            raise err
        click.secho(f"internal error: {err.__class__.__name__}: {err}. This is a bug in resnet-deploy; "
                    "rerun with RESNET_DEPLOY_DEBUG=1 for the traceback and report it.", fg="red", err=True)
        sys.exit(1)


def _stdout_to_devnull() -> None:
    """Python's advice for SIGPIPE: point stdout at /dev/null so the final flush at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (a test runner's buffer)
        pass


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="resnet-deploy")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or messages; errors only.")
@click.pass_context
def main(ctx: click.Context, quiet: bool) -> None:
    """Take a ResNet classifier from PyTorch to a validated INT8 deployment bundle."""
    ctx.obj = Ui(quiet=quiet)
    if quiet:
        _quiet_libraries(ctx.obj)


def _require_build_side(command: str) -> None:
    """build, train and archs need torch and the quantization toolchain (Python 3.10+); the device commands
    run on JetPack 5's Python 3.8 with the [device] extra. Say which before anything is imported."""
    if sys.version_info < (3, 10):
        here = ".".join(str(v) for v in sys.version_info[:3])
        raise ConfigError(f"resnet-deploy {command} needs Python 3.10 or newer (this is {here}): build bundles on "
                          "a workstation and copy them to the device; the device commands infer/bench/device-build "
                          "run here.")
    if importlib.util.find_spec("torch") is None:
        raise DependencyError(f"resnet-deploy {command} needs the build toolchain (torch, onnx and the quantizers), "
                              "which is not installed here: `pip install 'resnet-deploy[build]'`. The device "
                              "commands infer/bench/device-build need only the [device] extra.")


def _floats(flag: str):
    def convert(ctx, param, value):
        if value is None:
            return None
        from resnet_deploy.calibration.preprocess import parse_floats

        try:
            return parse_floats(value, flag)
        except ResnetDeployError as err:
            raise click.BadParameter(str(err)) from None

    return convert


class FiniteRange(click.FloatRange):
    """click.FloatRange lets NaN through (every comparison with NaN is false); this does not."""

    def convert(self, value, param, ctx):
        out = super().convert(value, param, ctx)
        if out != out:  # NaN
            self.fail(f"{value!r} is not a number in the range {self.min:g}..{self.max:g}.", param, ctx)
        return out


def _size(ctx, param, value):
    if value is None:
        return None
    from resnet_deploy.calibration.preprocess import parse_size

    try:
        return parse_size(value)
    except ResnetDeployError as err:
        raise click.BadParameter(str(err)) from None


@main.command(short_help="Train a ResNet.")
@click.option("--arch", default="resnet20", show_default=True, help="Architecture (see `resnet-deploy archs`).")
@click.option("--data", default="fashion-mnist", show_default=True,
              help="Training images: fashion-mnist, an ImageFolder, a folder with train/ and test/, or IDX files.")
@click.option("--test-data", default=None,
              help="Held-out images for top-1 after each epoch (default: the test split of --data).")
@click.option("--epochs", type=int, default=15, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=0.1, show_default=True, help="Peak learning rate.")
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--weight-decay", type=float, default=5e-4, show_default=True)
@click.option("--schedule", type=click.Choice(["onecycle", "cosine"]), default="onecycle", show_default=True)
@click.option("--input-size", callback=_size, default=None, help="N or HxW (default: the images' own size).")
@click.option("--channels", type=click.IntRange(1, 3), default=None, help="1 or 3 (default: from the images).")
@click.option("--mean", callback=_floats("--mean"), default=None, help="Per-channel mean on [0,1] (default: measured).")
@click.option("--std", callback=_floats("--std"), default=None, help="Per-channel std on [0,1] (default: measured).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads per process.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default: runs/<arch>).")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@quiet_option
@pass_ui
def train(ui: Ui, arch, data, test_data, epochs, batch_size, lr, momentum, weight_decay, schedule,
          input_size, channels, mean, std, seed, threads, out, resume) -> None:
    """Train a ResNet (SGD, cosine/one-cycle LR, crops and flips); runs under torchrun too."""
    _require_build_side("train")
    from resnet_deploy.pipeline.train import TrainSettings
    from resnet_deploy.pipeline.training_run import run_training

    settings = TrainSettings(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                             weight_decay=weight_decay, schedule=schedule, seed=seed, threads=threads)
    result = run_training(settings, data=data, test_data=test_data, out=out or Path("runs") / arch,
                          input_size=input_size, channels=channels, mean=mean, std=std, resume=resume, ui=ui)
    if result is not None:
        click.echo(json.dumps({"weights": str(result.weights), "checkpoint": str(result.checkpoint),
                               "test_top1": result.test_top1, "epochs": len(result.history)}))


@main.command(short_help="List the architectures and their parameter counts.")
def archs() -> None:
    """List the architectures."""
    _require_build_side("archs")
    from resnet_deploy.models import describe_arch, list_archs

    for name in list_archs():
        click.echo(describe_arch(name))


def _target_flags(kind: str):
    """Click options generated from every registered target's typed options ("options": ``build``'s flags,
    "device_options": ``device-build``'s), so a new target's flags appear without an edit here."""
    from resnet_deploy.targets import option_owners

    def decorate(f):
        for name, (spec, owners) in reversed(list(option_owners(kind).items())):
            f = click.option("--" + name.replace("_", "-"), name, type=spec.metadata.get("type", str), default=None,
                             help=f"{spec.metadata.get('help', '')} [--target {', '.join(owners)}]")(f)
        return f

    return decorate


def _default_target() -> str:
    from resnet_deploy.targets import list_targets

    return list_targets()[0]


def _target_help() -> str:
    from resnet_deploy.targets import get_target, list_targets

    names = [f"{n} (alias {', '.join(get_target(n).aliases)})" if get_target(n).aliases else n for n in list_targets()]
    return f"{', '.join(names)}, or all. Repeat for several."


@main.command(short_help="Build a validated INT8 bundle from a model.")
@click.option("--target", "targets", multiple=True, default=lambda: (_default_target(),),
              show_default=_default_target(), help=_target_help())
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help=".pt/.pth/.th/.tar or .safetensors (default: the embedded Fashion-MNIST resnet20).")
@click.option("--arch", default=None, help="Architecture; without --checkpoint builds a random model (latency only).")
@click.option("--num-classes", type=int, default=None, help="Classes (default: from the checkpoint).")
@click.option("--input-size", callback=_size, default=None,
              help="N or HxW (default: the checkpoint's or the family's).")
@click.option("--mean", callback=_floats("--mean"), default=None, help="Per-channel mean on [0,1], comma-separated.")
@click.option("--std", callback=_floats("--std"), default=None, help="Per-channel std on [0,1], comma-separated.")
@click.option("--calib-data", default=None, help="Calibration images (default: the training split of fashion-mnist).")
@click.option("--calib-samples", type=int, default=300, show_default=True)
@click.option("--eval-data", default=None,
              help="Labelled evaluation images (default: the test split of fashion-mnist).")
@click.option("--eval-samples", type=int, default=None, help="Evaluation images (default: all).")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Most top-1 points an INT8 row may lose against PyTorch FP32 before the build fails.")
@click.option("--min-agreement", type=float, default=0.98, show_default=True,
              help="Least share of images on which an INT8 row must predict what PyTorch FP32 predicts.")
@click.option("--fallback", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="auto: keep the layers INT8 hurts most in float until the gate holds on held-out "
                   "calibration images; off: all INT8.")
@click.option("--max-float-layers", type=int, default=8, show_default=True,
              help="Most layers --fallback auto may keep in float.")
@_target_flags("options")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for choosing calibration/evaluation images.")
@click.option("--threads", type=int, default=None, help="Runtime threads for validation and latency.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Bundle folder (default: build/<arch>-<target>).")
@click.option("--force", is_flag=True,
              help="Replace the bundle at --out even when it holds files it did not write (they are dropped).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout (implies --quiet).")
@quiet_option
@pass_ui
def build(ui: Ui, targets, checkpoint, arch, num_classes, input_size, mean, std, calib_data, calib_samples,
          eval_data, eval_samples, max_drop, min_agreement, fallback, max_float_layers, seed, threads, out, force,
          as_json, **target_flags) -> None:
    """Load or train, fold BN, export ONNX, quantize to INT8, compile per target, validate, write a bundle."""
    _require_build_side("build")
    from resnet_deploy.pipeline.build import build as run_build
    from resnet_deploy.pipeline.settings import BuildSettings

    if as_json:
        ui = Ui(quiet=True)
    options = {k: v for k, v in target_flags.items() if v is not None}
    settings = BuildSettings(
        targets=tuple(targets), out=out, checkpoint=checkpoint, arch=arch, num_classes=num_classes,
        input_size=input_size, mean=mean, std=std, calib_data=calib_data, calib_samples=calib_samples,
        eval_data=eval_data, eval_samples=eval_samples, max_drop=max_drop, min_agreement=min_agreement,
        fallback=fallback, max_float_layers=max_float_layers, seed=seed, threads=threads,
        target_options=options, force=force,
    )
    _quiet_libraries(ui)
    try:
        record = run_build(settings, ui=ui)
    except GateFailed as err:
        if as_json:  # programs get the (failed) report on stdout too
            click.echo((Path(err.out) / "report.json").read_text())
        raise
    if as_json:
        click.echo(json.dumps(record.report.to_json(), indent=2))
    else:
        _print_summary(ui, record.report, record.out)


def _quiet_libraries(ui: Ui) -> None:
    """The runtimes' libraries log at INFO and draw their own bars; keep them for errors only when quiet."""
    import logging

    from resnet_deploy.targets import runtimes

    for name in dict.fromkeys(n for rt in runtimes().values() for n in rt.loggers):
        logging.getLogger(name).setLevel(logging.ERROR if ui.quiet else logging.WARNING)


def _print_summary(ui: Ui, report, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{report.model.arch}: PyTorch FP32 top-1 {report.reference.top1 * 100:.2f}%")
    for col in ("target", "precision", "top-1", "agreement", "p50 ms", "p99 ms", "img/s"):
        table.add_column(col, justify="left" if col in ("target", "precision") else "right")
    for r in report.results:
        agreement = "-" if r.agreement is None else f"{r.agreement * 100:.2f}%"
        table.add_row(r.target, r.precision + (" (sim)" if r.simulated else ""), f"{r.top1 * 100:.2f}%", agreement,
                      f"{r.latency_ms.p50:.3f}", f"{r.latency_ms.p99:.3f}", f"{r.throughput_ips:.0f}")
    if not ui.quiet:
        ui.console.print(table)
    click.echo(f"{'passed' if report.gate.passed else 'FAILED'}: bundle {out}, report {out / 'report.md'}")


def _batches(ctx, param, value):
    try:
        out = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("--batch takes comma-separated sizes such as 1,8,32") from None
    if not out or min(out) < 1 or max(out) > 4096:
        raise click.BadParameter("--batch sizes must lie in 1..4096")
    return out


def _runtime_names() -> list[str]:
    from resnet_deploy.targets import runtimes

    known = runtimes()
    return sorted(known, key=lambda n: -known[n].preference)


_runtime_opt = click.option("--runtime", type=click.Choice(_runtime_names()), default=None,
                            help="Runtime to use (default: the most preferred one present, in this order: "
                                 f"{', '.join(_runtime_names())}).")
_precision_opt = click.option("--precision", type=click.Choice(["int8", "fp16", "fp32"]), default=None,
                              help="Model precision to use (default: INT8 where the bundle has it).")


@main.command(short_help="Classify images with a bundle.")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", type=click.IntRange(1, 100), default=5, show_default=True)
@_runtime_opt
@_precision_opt
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@quiet_option
@pass_ui
def infer(ui: Ui, bundle, images, top, runtime, precision, as_json) -> None:
    """Classify IMAGES with a bundle: top classes and probabilities (no PyTorch needed)."""
    from resnet_deploy.pipeline import device

    b = device.open_bundle(bundle)
    artifact = device.choose_artifact(b, runtime=runtime, precision=precision)
    runner = device.load_runner(b, artifact)
    results = device.infer(b, runner, images, top=top)
    failed = [r for r in results if "error" in r]
    if as_json:
        click.echo(json.dumps({"runner": runner.description, "artifact": artifact.path, "results": results}, indent=2))
    else:
        ui.info(f"using {artifact.path} ({artifact.precision}) on {runner.description}")
        for r in results:
            if "error" in r:
                continue
            click.echo(r["image"])
            for t in r["top"]:
                click.echo(f"  {t['probability'] * 100:6.2f}%  {t['class']}")
    if failed:  # the readable images were answered above; the exit code says not all were
        raise DataError(f"{len(failed)} of {len(results)} image(s) could not be classified: "
                        + " ".join(r["error"] for r in failed[:5]) + (" ..." if len(failed) > 5 else ""))


@main.command(short_help="Time a bundle on this machine and check its accuracy.")
@click.argument("bundle", type=click.Path(path_type=Path))
@_runtime_opt
@_precision_opt
@click.option("--batch", "batches", callback=_batches, default="1", show_default=True, help="Batch sizes, e.g. 1,8,32.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Runtime threads (default: the runtime's choice).")
@click.option("--hint", type=click.Choice(["latency", "throughput"]), default=None,
              help="latency: one request at a time (default); throughput: the runtime's multi-stream settings.")
@click.option("--warmup", type=click.IntRange(0, 100_000), default=10, show_default=True)
@click.option("--iterations", type=click.IntRange(1, 10_000_000), default=100, show_default=True,
              help="Minimum timed calls per batch size.")
@click.option("--seconds", type=FiniteRange(0, 3600), default=2.0, show_default=True,
              help="Minimum timed seconds per batch size.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Device report path (default: BUNDLE/device_report.json).")
@click.option("--json", "as_json", is_flag=True, help="Print the device report as JSON.")
@click.option("--simulated", is_flag=True,
              help="Time the CPU simulation of a device model when the device's engine cannot be built here "
                   "(labelled as a simulation everywhere).")
@quiet_option
@pass_ui
def bench(ui: Ui, bundle, runtime, precision, batches, threads, hint, warmup, iterations, seconds, out,
          as_json, simulated) -> None:
    """Latency (p50/p90/p99), throughput and accuracy of a bundle on this machine (no PyTorch needed)."""
    from resnet_deploy.host import cpu_name
    from resnet_deploy.pipeline import device
    from resnet_deploy.pipeline.bundle import write_json
    from resnet_deploy.pipeline.latency import LatencySettings
    from resnet_deploy.targets import get_target

    b, artifact = device.artifact_to_time(bundle, runtime=runtime, precision=precision, simulated_ok=simulated,
                                          ui=ui)
    runner = device.load_runner(b, artifact, threads=threads, hint=hint)
    label = "[CPU simulation, not the device] " if artifact.simulated else ""
    ui.info(f"{label}benchmarking {artifact.path} ({artifact.precision}) on {runner.description}")
    settings = LatencySettings(warmup=warmup, min_iterations=iterations, max_iterations=max(iterations, 100_000),
                               min_seconds=seconds)
    result = device.bench(b, runner, artifact, batches=batches, latency=settings)
    result["host"] = {"cpu": cpu_name(), "threads": threads, "hint": hint,
                      **get_target(artifact.target).host_facts(artifact)}
    report_path = out or bundle / "device_report.json"
    try:
        with interrupts.critical(done=f"the device report was written to {report_path} just before it."):
            report_path.parent.mkdir(parents=True, exist_ok=True)
            write_json(report_path, result)
    except OSError as err:
        raise environment.describe(err) or ConfigError(
            f"--out: cannot write the device report to {report_path} ({err.strerror}). "
            "Give a writable path with --out.") from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    for row in result["latency"]:
        lat = row["latency_ms"]
        click.echo(f"{label}batch {row['batch']:4d}: p50 {lat['p50']:.3f} ms  p90 {lat['p90']:.3f} ms  "
                   f"p99 {lat['p99']:.3f} ms  {row['throughput_ips']:.0f} img/s  ({row['iterations']} runs)")
    acc = result.get("accuracy")
    if acc:
        same = acc["build_top1_same_images"]
        ref = f" (build measured {same * 100:.2f}% on the same images)" if same is not None else ""
        click.echo(f"{label}top-1 on {acc['images']} bundled images: {acc['top1'] * 100:.2f}%{ref}")


@main.command(short_help="List the targets: builds here? runtime present?")
def targets() -> None:
    """List the deployment targets: can they build here, and are their runtimes present."""
    from resnet_deploy.targets import broken, get_target, list_targets

    width = max(len(n) for n in [*list_targets(), *broken])
    for name in list_targets():
        t = get_target(name)
        missing = t.missing()
        build_state = "builds here" if not missing else f"to build: pip install {' '.join(missing)}"
        present = [rt.name for rt in t.runtimes if rt.present()]
        run_state = f"runtime present: {', '.join(present)}" if present else "no runtime present"
        click.echo(f"{name:{width}s}  {t.summary}  [{build_state}; {run_state}]")
    for name, why in broken.items():
        click.echo(f"{name:{width}s}  BROKEN plug-in, not loaded: {why}")


@main.command("device-build", short_help="Build the device's engine for a bundle (on the device).")
@click.argument("bundle", type=click.Path(path_type=Path))
@_target_flags("device_options")
@click.option("--force", is_flag=True, help="Rebuild even when a valid cached result exists.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Cache folder for what is built (default: inside the bundle).")
@quiet_option
@pass_ui
def device_build(ui: Ui, bundle, force, cache_dir, **device_flags) -> None:
    """On the device: run the on-device build step of the bundle's targets (a TensorRT engine)."""
    from resnet_deploy.pipeline.device import device_build as run

    for line in run(bundle, {k: v for k, v in device_flags.items() if v is not None}, force=force,
                    cache_dir=cache_dir):
        click.echo(line)
    click.echo(f"run `resnet-deploy bench {bundle}` to measure it")


@main.command(short_help="List the device profiles (--device).")
def devices() -> None:
    """List the device profiles of the targets that have them (--device)."""
    from resnet_deploy.targets import get_target, list_targets

    rows = [(profile, description, name) for name in list_targets() for profile, description in
            get_target(name).profiles()]
    width = max((len(r[0]) for r in rows), default=0)
    for profile, description, name in rows:
        click.echo(f"{profile:{width}s}  {description}  [--target {name}]")
