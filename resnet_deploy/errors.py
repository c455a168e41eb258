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


class BundleError(ResnetDeployError):
    """A deployment bundle is missing files, was tampered with, or cannot run here."""
