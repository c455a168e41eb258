"""Domain exceptions. Library code raises these; only the CLI turns them into a message and exit code."""

from __future__ import annotations


class ResnetDeployError(Exception):
    """Base class: ``str(err)`` is a one-paragraph message that says what is wrong and what to do."""

    exit_code = 2


class ConfigError(ResnetDeployError):
    """A flag or setting is invalid (unknown arch or target, wrong mean/std length, ...)."""


class CheckpointError(ResnetDeployError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit the architecture."""


class DataError(ResnetDeployError):
    """An image folder or data file is missing, empty, or unreadable."""


class DependencyError(ResnetDeployError):
    """A runtime or SDK a target needs is not installed."""


class VerificationError(ResnetDeployError):
    """A conversion failed its own check (BN folding or ONNX parity changed the outputs)."""

    exit_code = 3


class GateFailed(ResnetDeployError):
    """INT8 accuracy fell further below the FP32 reference than --max-drop allows; the bundle is at ``out``."""

    exit_code = 4

    def __init__(self, out, message: str) -> None:
        super().__init__(message)
        self.out = out


class GateUnverified(ResnetDeployError):
    """No INT8 row failed, but the evaluation cannot support a verdict (too few images for --max-drop, FP32
    not clearly above chance, one class taking most predictions, fewer than 2 classes); the bundle is at
    ``out``, its report marked unverified."""

    exit_code = 5

    def __init__(self, out, message: str) -> None:
        super().__init__(message)
        self.out = out


class BundleError(ResnetDeployError):
    """A deployment bundle is missing files, was tampered with, or cannot run here."""


class OutputInUse(ResnetDeployError):
    """Another resnet-deploy process holds the lock of this output folder."""


class EnvironmentFault(ResnetDeployError):
    """The machine refused a file operation (disk full, read-only, permission denied, not a regular file):
    the user's to fix, not a bug. Made from an ``OSError`` by ``resnet_deploy.environment``."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command. A ``KeyboardInterrupt``, so every ``finally`` and cleanup
    treats both alike; ``written`` is the true sentence about what reached the disk, when known."""

    def __init__(self, signum: int, written: str | None = None) -> None:
        super().__init__(signum)
        self.signum = signum
        self.written = written

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
