"""The command line: thin Click commands that parse flags, call one library function and print."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from resnet_deploy import __version__, environment, interrupts, recipes
from resnet_deploy.console import Ui
from resnet_deploy.errors import ConfigError, DataError, DependencyError, GateFailed, GateUnverified, ResnetDeployError
from resnet_deploy.help_groups import GroupedCommand
from resnet_deploy.recipes import recipe_option

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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="\b\nExamples (`resnet-deploy COMMAND --help` shows each command's own):\n"
                    "  resnet-deploy train --data imgs/ --out runs/r20      # imgs/train/<class>/, imgs/test/<class>/\n"
                    "  resnet-deploy build --checkpoint runs/r20/model.safetensors --eval-data imgs/ --out build/r20\n"
                    "  resnet-deploy infer build/r20 cat.jpg                # on the device: no PyTorch needed\n"
                    "  resnet-deploy bench build/r20 --batch 1,8\n"
                    "\b\nShell completion (bash; zsh_source and fish_source for zsh and fish):\n"
                    "  eval \"$(_RESNET_DEPLOY_COMPLETE=bash_source resnet-deploy)\"")
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
    missing = _build_side_missing()
    if missing:
        raise DependencyError(f"resnet-deploy {command} needs the build toolchain of the [build] extra; "
                              f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed here: "
                              f"`{BUILD_EXTRA}`. The device commands infer/bench/device-build need only the "
                              "[device] extra.")


BUILD_EXTRA = "pip install 'resnet-deploy[build]'"


def _build_side_missing() -> list[str]:
    """Import names of what every build needs, whatever the target, that is not installed: torch, onnx,
    safetensors and the runtime the pipeline checks its own conversions with."""
    from resnet_deploy.targets import onnx_session_runtime

    needed = ("torch", "onnx", "safetensors", onnx_session_runtime().module)
    return [name for name in dict.fromkeys(needed) if not _importable(name)]


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # imported already without a spec (a stand-in module)
        return name in sys.modules


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


def _resize(ctx, param, value):
    """'256' (pixels) or '0.875' (crop ratio)."""
    if value is None:
        return None
    try:
        return int(value) if value.strip().isdigit() else float(value)
    except ValueError:
        raise click.BadParameter(f"give the shorter side in pixels (256) or a crop ratio (0.875), not {value!r}") \
            from None


@main.command(cls=GroupedCommand, short_help="Train a ResNet.", groups=(
    ("Recipe", ("recipe",)),
    ("Model and data", ("arch", "data", "test_data", "input_size", "channels", "mean", "std")),
    ("Training", ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "zero_init_residual",
                  "init_from", "int8_aware", "seed", "threads", "resume")),
    ("Output", ("out", "as_json", "quiet", "help"))),
    examples=("resnet-deploy train --arch resnet20 --data fashion-mnist --epochs 15 --out runs/r20",
              "resnet-deploy train --arch resnet18 --data imgs/ --input-size 64 --epochs 30 --json",
              "torchrun --nproc_per_node=2 $(command -v resnet-deploy) train --data imgs/ --out runs/ddp"))
@recipe_option
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
@click.option("--zero-init-residual/--no-zero-init-residual", default=True, show_default=True,
              help="Start each residual branch's last BN at 0, so every block starts as its shortcut "
                   "(Goyal et al. 2017; timm's default). Off: the paper's initialisation.")
@click.option("--init-from", default=None, metavar="CHECKPOINT",
              help="Start from these weights (fine-tuning), read like `build --checkpoint`; a classifier for "
                   "another number of classes starts fresh. Off: a fresh initialisation.")
@click.option("--int8-aware", type=float, default=0.0, show_default=True, metavar="WEIGHT",
              help="Quantization-aware fine-tuning of the --init-from model: each batch also runs with its "
                   "weights and activations fake-quantized to INT8, and a term of this weight (KL plus "
                   "cross-entropy against the FP32 top-1) pulls that pass toward the FP32 one. For a model whose "
                   "INT8 build fails its gate on uneven channels (the build says so); about 2.5 times the time a "
                   "step. 1 is the tested weight: at 2 a model can buy agreement with accuracy. 0: off.")
@click.option("--input-size", callback=_size, default=None, help="N or HxW (default: the images' own size).")
@click.option("--channels", type=click.IntRange(1, 3), default=None, help="1 or 3 (default: from the images).")
@click.option("--mean", callback=_floats("--mean"), default=None, help="Per-channel mean on [0,1] (default: measured).")
@click.option("--std", callback=_floats("--std"), default=None, help="Per-channel std on [0,1] (default: measured).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch threads per process.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run folder (default: runs/<arch>).")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result as JSON on stdout, nothing else (implies --quiet).")
@quiet_option
@pass_ui
def train(ui: Ui, arch, data, test_data, epochs, batch_size, lr, momentum, weight_decay, schedule,
          zero_init_residual, init_from, int8_aware, input_size, channels, mean, std, seed, threads, out, resume,
          as_json) -> None:
    """Train a ResNet (SGD, cosine/one-cycle LR, crops and flips); runs under torchrun too. Prints the weights
    it wrote and the `resnet-deploy build` command that makes a bundle of them."""
    _require_build_side("train")
    from resnet_deploy.pipeline.train import TrainSettings
    from resnet_deploy.pipeline.training_run import run_training

    settings = TrainSettings(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                             weight_decay=weight_decay, schedule=schedule, zero_init_residual=zero_init_residual,
                             init_from=init_from, int8_aware=int8_aware, seed=seed, threads=threads)
    if as_json:
        ui = Ui(quiet=True)
    result = run_training(settings, data=data, test_data=test_data, out=out or Path("runs") / arch,
                          input_size=input_size, channels=channels, mean=mean, std=std, resume=resume, ui=ui)
    if result is None:  # not rank 0 of a torchrun: rank 0 prints
        return
    following = _build_command(result.weights, data=data, test_data=test_data)
    if as_json:
        click.echo(json.dumps({"weights": str(result.weights), "checkpoint": str(result.checkpoint),
                               "test_top1": result.test_top1, "epochs": len(result.history), "next": following}))
        return
    top1 = "no held-out split" if result.test_top1 is None else f"test top-1 {result.test_top1 * 100:.2f}%"
    click.echo(f"trained {arch}: {len(result.history)} epochs, {top1}\n"
               f"weights: {result.weights}\ncheckpoint: {result.checkpoint} (--resume continues it)\n"
               f"next: {following}")


def _build_command(weights: Path, *, data: str, test_data: str | None) -> str:
    """The ``build`` that makes a bundle of freshly trained weights, evaluated on the data trained with: its
    test split (or --test-data), calibrated on its training images."""
    import shlex

    words = ["resnet-deploy", "build", "--checkpoint", str(weights)]
    if test_data is not None:
        words += ["--calib-data", data, "--eval-data", test_data]
    elif data != "fashion-mnist":  # build's own default data set
        words += ["--eval-data", data]
    return " ".join(shlex.quote(w) for w in words)


@main.command(cls=GroupedCommand, short_help="List the architectures and their parameter counts.",
              examples=("resnet-deploy archs",
                        "resnet-deploy build --arch resnet50 --input-size 224   # random weights: latency only"))
@quiet_option
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


def _target_flag_names(kind: str) -> tuple[str, ...]:
    from resnet_deploy.targets import option_owners

    return tuple(option_owners(kind))


@main.command(cls=GroupedCommand, short_help="Build a validated INT8 bundle from a model.", groups=(
    ("Recipe", ("recipe",)),
    ("Model", ("checkpoint", "onnx", "arch", "num_classes", "labels")),
    ("Training first (with --train-data; otherwise the model is loaded)",
     ("train_data", "epochs", "batch_size", "lr", "schedule", "train_out")),
    ("Model input (preprocessing)", ("input_size", "mean", "std", "resize", "crop", "interpolation",
                                     "channel_order")),
    ("Data", ("calib_data", "calib_samples", "eval_data", "eval_samples", "ground_truth", "seed")),
    ("Quantization and accuracy gate", ("max_drop", "min_agreement", "fallback", "max_float_layers")),
    ("Target (flags marked [--target ...] apply to those targets only)",
     ("targets", *_target_flag_names("options"), "threads", "latency_seconds", "latency_iterations")),
    ("Output", ("out", "force", "as_json", "quiet", "help"))),
    examples=("resnet-deploy build                        # the embedded Fashion-MNIST resnet20, default target",
              "resnet-deploy build --checkpoint runs/r20/model.safetensors --eval-data imgs/ --target all",
              "resnet-deploy build --checkpoint r50.pth --eval-data imagenet/val --ground-truth val.txt \\",
              "    --labels synsets.txt --calib-data imagenet/train --out build/r50",
              "resnet-deploy build --onnx model.onnx --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 "
              "--eval-data imgs/",
              "resnet-deploy build --train-data imgs/ --arch resnet20 --epochs 30 --target all --out build/r20",
              "resnet-deploy build --recipe build/r50/recipe.yaml --out build/r50-again"))
@recipe_option
@click.option("--target", "targets", multiple=True, default=lambda: (_default_target(),),
              show_default=_default_target(), help=_target_help())
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help=".pt/.pth/.th/.tar or .safetensors (default: the embedded Fashion-MNIST resnet20).")
@click.option("--onnx", type=click.Path(path_type=Path), default=None,
              help="Start from an FP32 ONNX classifier instead (no torch stages; BN is folded in the graph).")
@click.option("--arch", default=None, help="Architecture; without --checkpoint builds a random model (latency only).")
@click.option("--num-classes", type=int, default=None, help="Classes (default: from the checkpoint).")
@click.option("--train-data", default=None,
              help="Train --arch (default resnet20) on these images first, as `resnet-deploy train --data` does, "
                   "then build the trained weights; --eval-data defaults to its test split.")
@click.option("--epochs", type=int, default=None, help="Training epochs (default 15, as `train`).")
@click.option("--batch-size", type=int, default=None, help="Training batch size (default 128).")
@click.option("--lr", type=float, default=None, help="Peak learning rate (default 0.1).")
@click.option("--schedule", type=click.Choice(["onecycle", "cosine"]), default=None,
              help="Learning-rate schedule (default onecycle).")
@click.option("--train-out", type=click.Path(path_type=Path), default=None,
              help="The training run's folder, kept beside the bundle (default: runs/<arch>).")
@click.option("--input-size", callback=_size, default=None,
              help="N or HxW (default: the checkpoint's or the family's).")
@click.option("--mean", callback=_floats("--mean"), default=None, help="Per-channel mean on [0,1], comma-separated.")
@click.option("--std", callback=_floats("--std"), default=None, help="Per-channel std on [0,1], comma-separated.")
@click.option("--resize", callback=_resize, default=None,
              help="Shorter side before the centre crop: pixels (256) or the crop ratio (0.875) "
                   "(default: the checkpoint's or the family's).")
@click.option("--crop", type=click.Choice(["center", "none"]), default=None,
              help="center: resize the shorter side, keep the middle; none: stretch to --input-size.")
@click.option("--interpolation", type=click.Choice(["bilinear", "bicubic", "lanczos", "nearest"]), default=None,
              help="Resize filter (antialiased, as torchvision's antialias=True; default bilinear).")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), default=None,
              help="Channel order the model takes (default RGB); --mean/--std are in that order.")
@click.option("--labels", type=click.Path(path_type=Path), default=None,
              help="Class names in output order: one per line (ImageNet's `n01440764 tench` lines map class "
                   "folders by id), or JSON. infer prints them.")
@click.option("--ground-truth", type=click.Path(path_type=Path), default=None,
              help="Labels of a flat --eval-data folder: `<file> <label>` lines (val.txt) or LOC_val_solution.csv.")
@click.option("--calib-data", default=None,
              help="Calibration images (default: the training split of --eval-data, or when it has none the images "
                   "of --eval-data set apart from the evaluation ones; without --eval-data, fashion-mnist's "
                   "training split). Never overlaps the evaluation images.")
@click.option("--calib-samples", type=int, default=300, show_default=True)
@click.option("--eval-data", default=None,
              help="Labelled evaluation images: fashion-mnist, IDX files, an ImageFolder, or a folder with train/ "
                   "and test/ (or val/), whose test split is used (default: fashion-mnist's test split).")
@click.option("--eval-samples", type=int, default=None, help="Evaluation images (default: all).")
@click.option("--max-drop", type=float, default=1.0, show_default=True,
              help="Most top-1 points an INT8 row may lose against FP32 (PyTorch, or the --onnx graph) before "
                   "the build fails.")
@click.option("--min-agreement", type=float, default=0.98, show_default=True,
              help="Least share of images on which an INT8 row must predict what FP32 (PyTorch, or the --onnx "
                   "graph) predicts.")
@click.option("--fallback", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="auto: keep the layers INT8 hurts most in float until the gate holds on held-out "
                   "calibration images; off: all INT8.")
@click.option("--max-float-layers", type=int, default=8, show_default=True,
              help="Most layers --fallback auto may keep in float.")
@_target_flags("options")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for choosing calibration/evaluation images.")
@click.option("--threads", type=int, default=None, help="Runtime threads for validation and latency.")
@click.option("--latency-seconds", type=FiniteRange(0, 3600), default=1.0, show_default=True,
              help="Minimum timed seconds per row at batch 1 (and at least --latency-iterations calls).")
@click.option("--latency-iterations", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="Minimum timed calls per row at batch 1, after 10 warm-up calls (benchmark_app's -niter); "
                   "a slow runtime's quick look can take fewer.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Bundle folder (default: build/<arch>-<target>).")
@click.option("--force", is_flag=True,
              help="Replace the bundle at --out even when it holds files it did not write (they are dropped).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json on stdout (implies --quiet).")
@quiet_option
@pass_ui
def build(ui: Ui, targets, checkpoint, onnx, arch, num_classes, train_data, epochs, batch_size, lr, schedule,
          train_out, input_size, mean, std, resize, crop, interpolation,
          channel_order, labels, ground_truth, calib_data, calib_samples,
          eval_data, eval_samples, max_drop, min_agreement, fallback, max_float_layers, seed, threads,
          latency_seconds, latency_iterations, out, force, as_json, **target_flags) -> None:
    """Load a checkpoint (or an FP32 ONNX), fold BN, export ONNX, quantize to INT8, compile per target,
    validate, write a bundle. `resnet-deploy train` makes a checkpoint from a folder of images."""
    _require_build_side("build")
    from resnet_deploy.pipeline.build import build as run_build
    from resnet_deploy.pipeline.latency import LatencySettings
    from resnet_deploy.pipeline.settings import BuildSettings

    if as_json:
        ui = Ui(quiet=True)
    options = {k: v for k, v in target_flags.items() if v is not None}
    training = {k: v for k, v in (("epochs", epochs), ("batch_size", batch_size), ("lr", lr),
                                  ("schedule", schedule)) if v is not None}
    if training and train_data is None:
        raise ConfigError(f"--{next(iter(training)).replace('_', '-')} is a training flag: give --train-data to train "
                          "before building, or drop it.")
    settings = BuildSettings(
        targets=tuple(targets), out=out, checkpoint=checkpoint, onnx=onnx, arch=arch, num_classes=num_classes,
        input_size=input_size, mean=mean, std=std, resize=resize, crop=crop, interpolation=interpolation,
        channel_order=channel_order, labels=labels, ground_truth=ground_truth,
        calib_data=calib_data, calib_samples=calib_samples,
        eval_data=eval_data, eval_samples=eval_samples, max_drop=max_drop, min_agreement=min_agreement,
        fallback=fallback, max_float_layers=max_float_layers, seed=seed, threads=threads,
        target_options=options, force=force, latency=LatencySettings(
            min_seconds=latency_seconds, min_iterations=latency_iterations,
            max_iterations=max(LatencySettings.max_iterations, latency_iterations)),
        recipe=recipes.effective(click.get_current_context()),
        train_data=train_data, train=_train_settings(train_data, arch, seed, threads, training), train_out=train_out,
    )
    _quiet_libraries(ui)
    try:
        record = run_build(settings, ui=ui)
    except (GateFailed, GateUnverified) as err:
        if as_json:  # programs get the (failed or unverified) report on stdout too
            click.echo((Path(err.out) / "report.json").read_text())
        raise
    if as_json:
        click.echo(json.dumps(record.report.to_json(), indent=2))
    else:
        _print_summary(ui, record.report, record.out)


def _train_settings(train_data: str | None, arch: str | None, seed: int, threads: int | None,
                    flags: dict[str, Any]):
    """build --train-data: the training settings `train` would use for the same flags."""
    if train_data is None:
        return None
    from resnet_deploy.pipeline.train import TrainSettings

    return TrainSettings(arch=arch or TrainSettings.arch, seed=seed, threads=threads, **flags)


def _quiet_libraries(ui: Ui) -> None:
    """The runtimes' libraries log at INFO and draw their own bars; keep them for errors only when quiet."""
    import logging

    from resnet_deploy.targets import runtimes

    for name in dict.fromkeys(n for rt in runtimes().values() for n in rt.loggers):
        logging.getLogger(name).setLevel(logging.ERROR if ui.quiet else logging.WARNING)


def _print_summary(ui: Ui, report, out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{report.model.arch}: {report.reference.label} top-1 {report.reference.top1 * 100:.2f}%")
    for col in ("target", "precision", "top-1", "agreement", "p50 ms", "p99 ms", "img/s"):
        table.add_column(col, justify="left" if col in ("target", "precision") else "right")
    for r in report.results:  # a simulated row is an accuracy row: a CPU simulation times no device
        agreement = "-" if r.agreement is None else f"{r.agreement * 100:.2f}%"
        lat = r.latency_ms
        table.add_row(r.target, r.precision + (" (sim, accuracy only)" if r.simulated else ""),
                      f"{r.top1 * 100:.2f}%", agreement, f"{lat.p50:.3f}" if lat else "-",
                      f"{lat.p99:.3f}" if lat else "-", "-" if r.throughput_ips is None else f"{r.throughput_ips:.0f}")
    if not ui.quiet and any(r.measured_on for r in report.results):
        table.caption = f"p50/p99 at batch 1, img/s in the runtime's throughput mode, measured on this machine's " \
                        f"CPU ({report.host.cpu})"
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


@main.command(cls=GroupedCommand, short_help="Classify images with a bundle.",
              examples=("resnet-deploy infer build/r20 cat.jpg dog.png --top 3",
                        "resnet-deploy infer build/r20 imgs/*.jpg --precision fp32 --json"))
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


@main.command(cls=GroupedCommand, short_help="Time a bundle on this machine and check its accuracy.",
              examples=("resnet-deploy bench build/r20 --batch 1,8,32",
                        "resnet-deploy bench build/r20 --hint throughput --threads 4 --json",
                        "resnet-deploy bench build/r20 --precision fp32 --seconds 10 --out fp32.json"))
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
    facts = get_target(artifact.target).host_facts(artifact)
    label = "[CPU simulation, not the device] " if artifact.simulated else ""
    settings = LatencySettings(warmup=warmup, min_iterations=iterations, max_iterations=max(iterations, 100_000),
                               min_seconds=seconds)
    if hint == "throughput":  # the runtime's requests in flight, as its own benchmark tool runs them
        if batches != (1,):
            ui.warn("--batch sets the latency runs; --hint throughput keeps the runtime's requests busy, one image "
                    "each, as its own benchmark tool does.")
        many = device.load_throughput_runner(b, artifact, threads=threads)
        ui.info(f"{label}benchmarking {artifact.path} ({artifact.precision}) on {many.description}, {cpu_name()}")
        result = device.bench_throughput(b, many, artifact, settings=settings)
    else:
        runner = device.load_runner(b, artifact, threads=threads, hint=hint)
        ui.info(f"{label}benchmarking {artifact.path} ({artifact.precision}) on {runner.description}, {cpu_name()}")
        result = device.bench(b, runner, artifact, batches=batches, latency=settings)
    result["host"] = {"cpu": cpu_name(), "threads": threads, "hint": hint, **facts}
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
    for row in result.get("latency", ()):
        lat = row["latency_ms"]
        click.echo(f"{label}batch {row['batch']:4d}: p50 {lat['p50']:.3f} ms  p90 {lat['p90']:.3f} ms  "
                   f"p99 {lat['p99']:.3f} ms  {row['throughput_ips']:.0f} img/s  ({row['iterations']} runs)")
    if "throughput" in result:
        t = result["throughput"]
        click.echo(f"{label}throughput: {t['throughput_ips']:.1f} img/s ({t['images']} images in {t['seconds']:.1f} s, "
                   f"{t['requests']} requests in flight)")
    acc = result.get("accuracy")
    if acc:
        same = acc["build_top1_same_images"]
        ref = f" (build measured {same * 100:.2f}% on the same images)" if same is not None else ""
        click.echo(f"{label}top-1 on {acc['images']} bundled images: {acc['top1'] * 100:.2f}%{ref}")


@main.command(cls=GroupedCommand, short_help="List the targets: builds here? runtime present?",
              examples=("resnet-deploy targets", "resnet-deploy targets --json"))
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@quiet_option
def targets(as_json: bool) -> None:
    """List the deployment targets and, for each, two separate facts: whether a bundle for it can be built
    on this machine (the [build] toolchain and the target's own packages), and whether the runtime that runs
    its models is present here. A device target may build here without its runtime: its bundle then runs
    on the device, and only a CPU simulation of it (accuracy, not speed) runs here."""
    from resnet_deploy.targets import broken, get_target, list_targets

    toolchain = _build_side_problem()
    rows = []
    for name in list_targets():
        t = get_target(name)
        missing = t.missing()
        cannot = toolchain or (f"`pip install {' '.join(missing)}`" if missing else None)
        real = [rt for rt in t.runtimes if rt.name not in t.simulated_by]
        rows.append({"target": name, "summary": t.summary, "builds_here": cannot is None, "to_build": cannot,
                     "runtime_present": [rt.name for rt in real if rt.present()],
                     "runtime_install": [rt.install for rt in real if not rt.present()],
                     "simulated_here": [rt.name for rt in t.runtimes if rt.name in t.simulated_by and rt.present()]})
    if as_json:
        click.echo(json.dumps({"targets": rows, "broken": dict(broken)}, indent=2))
        return
    width = max(len(n) for n in [*list_targets(), *broken])
    for row in rows:
        build_state = "builds here" if row["builds_here"] else f"cannot build here: {row['to_build']}"
        run_state = (f"runtime present: {', '.join(row['runtime_present'])}" if row["runtime_present"] else
                     f"runtime missing ({'; '.join(row['runtime_install'])})")
        if row["simulated_here"]:
            run_state += f"; CPU simulation here: {', '.join(row['simulated_here'])} (accuracy only)"
        click.echo(f"{row['target']:{width}s}  {row['summary']}  [{build_state}; {run_state}]")
    for name, why in broken.items():
        click.echo(f"{name:{width}s}  BROKEN plug-in, not loaded: {why}")


def _build_side_problem() -> str | None:
    """Why no bundle at all can be built here (an old Python, the [build] extra missing), or None."""
    if sys.version_info < (3, 10):
        return "the build side needs Python 3.10 or newer"
    missing = _build_side_missing()
    return f"`{BUILD_EXTRA}` ({', '.join(missing)} missing)" if missing else None


@main.command("device-build", cls=GroupedCommand,
              short_help="Build the device's engine for a bundle (on the device).",
              examples=("resnet-deploy device-build build/r20 && resnet-deploy bench build/r20",
                        "resnet-deploy device-build build/r20 --cache-dir ~/.cache/engines --force"))
@click.argument("bundle", type=click.Path(path_type=Path))
@_target_flags("device_options")
@click.option("--force", is_flag=True, help="Rebuild even when a valid cached result exists.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Cache folder for what is built (default: inside the bundle).")
@click.option("--json", "as_json", is_flag=True, help="Print what was built as JSON.")
@quiet_option
@pass_ui
def device_build(ui: Ui, bundle, force, cache_dir, as_json, **device_flags) -> None:
    """On the device: run the on-device build step of the bundle's targets (a TensorRT engine)."""
    from resnet_deploy.pipeline.device import device_build as run

    lines = run(bundle, {k: v for k, v in device_flags.items() if v is not None}, force=force, cache_dir=cache_dir)
    following = f"resnet-deploy bench {bundle}"
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle), "built": list(lines), "next": following}, indent=2))
        return
    for line in lines:
        click.echo(line)
    click.echo(f"run `{following}` to measure it")


@main.command(cls=GroupedCommand, short_help="List the device profiles (--device).",
              examples=("resnet-deploy devices", "resnet-deploy devices --json"))
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@quiet_option
def devices(as_json: bool) -> None:
    """List the device profiles of the targets that have them: the GPU, compute capability, DLA cores, software
    stack (JetPack and TensorRT; no JetPack for a desktop/data-center GPU) and precision a bundle is prepared
    for. A target that takes --device picks one with it; a target with a single profile uses it always."""
    from resnet_deploy.targets import get_target, list_targets

    rows = [(profile, description, name) for name in list_targets() for profile, description in
            get_target(name).profiles()]
    if as_json:
        click.echo(json.dumps([{"profile": p, "description": d, "target": n} for p, d, n in rows], indent=2))
        return
    width = max((len(r[0]) for r in rows), default=0)
    for profile, description, name in rows:
        click.echo(f"{profile:{width}s}  {description}  [--target {name}]")


@main.command(cls=GroupedCommand, short_help="Compare two builds; exit 4 when B is worse than A.",
              examples=("resnet-deploy compare build/v1 build/v2",
                        "resnet-deploy compare build/v1 build/v2 --html compare.html --json"))
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--top1-points", type=FiniteRange(0, 100), default=0.5, show_default=True,
              help="Top-1 points a row of B may lose against A (changes McNemar cannot tell from chance pass).")
@click.option("--agreement-points", type=FiniteRange(0, 100), default=0.5, show_default=True,
              help="Points of agreement with FP32 a row of B may lose against A, likewise.")
@click.option("--latency-ratio", type=FiniteRange(1, 1000), default=1.25, show_default=True,
              help="Most times A's p50 a row of B may take (compared when timed on the same CPU model).")
@click.option("--size-ratio", type=FiniteRange(1, 1000), default=1.10, show_default=True,
              help="Most times A's bytes a row of B may take.")
@click.option("--html", "html_out", type=click.Path(path_type=Path), default=None, help="Also write an HTML page.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@quiet_option
def compare(a: Path, b: Path, top1_points: float, agreement_points: float, latency_ratio: float, size_ratio: float,
            html_out: Path | None, as_json: bool) -> None:
    """Two bundles of the same model side by side: the settings and versions that differ, and per row top-1,
    agreement, p50 latency and size of A and B, with top-1 paired image by image (95 % interval, McNemar).
    Exits 4 when a row of B is worse than A's beyond the tolerances (a CI regression gate), 0 otherwise."""
    from resnet_deploy.pipeline.compare import Tolerances, render_html, render_text
    from resnet_deploy.pipeline.compare import compare as run

    result = run(a, b, Tolerances(top1_points, agreement_points, latency_ratio, size_ratio))
    if html_out is not None:
        html_out.write_text(render_html(result))
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else render_text(result), nl=not as_json)
    if as_json:
        click.echo()
    if result.worse:
        sys.exit(GateFailed.exit_code)
