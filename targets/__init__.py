"""Deployment targets, one module each behind one interface (``base.Target``), registered by name.

Modules are imported on first use, so the heavy SDKs load only for the targets asked for; nothing
outside this table branches on target names.
"""

from __future__ import annotations

import importlib

from resnet_deploy.errors import ConfigError
from resnet_deploy.targets.base import Artifact, CompileInput, Runner, Target

# name -> "module:Class"; aliases resolve through the class's ``aliases``.
_REGISTRY: dict[str, str] = {
    "openvino": "resnet_deploy.targets.openvino:OpenVINOTarget",
    "onnxruntime": "resnet_deploy.targets.onnxruntime:OnnxRuntimeTarget",
    "tensorrt": "resnet_deploy.targets.tensorrt:TensorRTTarget",
    "jetson": "resnet_deploy.targets.jetson:JetsonTarget",
}
_ALIASES = {"cpu": "openvino", "ort": "onnxruntime", "ov": "openvino", "trt": "tensorrt"}


def list_targets() -> list[str]:
    return list(_REGISTRY)


def canonical(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ConfigError(
            f"Unknown target {name!r} (--target). Known targets: {', '.join(_REGISTRY)} "
            f"(aliases: {', '.join(f'{a}={t}' for a, t in _ALIASES.items())}), or 'all'."
        )
    return key


def get_target(name: str) -> Target:
    module, cls = _REGISTRY[canonical(name)].split(":")
    return getattr(importlib.import_module(module), cls)()


def expand(names: tuple[str, ...] | list[str]) -> list[str]:
    """--target values in order, 'all' expanded, duplicates and aliases folded."""
    out: list[str] = []
    for n in names:
        for key in (list(_REGISTRY) if n.lower() == "all" else [canonical(n)]):
            if key not in out:
                out.append(key)
    return out


__all__ = ["Artifact", "CompileInput", "Runner", "Target", "canonical", "expand", "get_target", "list_targets"]
