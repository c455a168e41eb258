"""The target registry, fed by Python entry points (group ``resnet_deploy.targets``).

The built-in targets are entry points of this distribution like any third party's, so a target
shipped as its own package is found the same way. Target modules import their SDKs only when used,
so the registry (and ``resnet-deploy --help``) works with none of them installed. Nothing outside
``targets/`` names a target or a runtime: they ask this module.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
from pathlib import Path
from typing import Any, Sequence

from resnet_deploy.errors import ConfigError
from resnet_deploy.targets.base import (
    PLUGIN_API,
    Artifact,
    CompileInput,
    DeviceBuild,
    Runner,
    Runtime,
    Target,
    ThroughputRunner,
    option_fields,
)

GROUP = "resnet_deploy.targets"
# Used only when this package's own metadata is absent (run from a source tree without `pip install`).
_BUILTIN = {
    "openvino": "resnet_deploy.targets.openvino:OpenVINOTarget",
    "onnxruntime": "resnet_deploy.targets.onnxruntime:OnnxRuntimeTarget",
    "tensorrt": "resnet_deploy.targets.tensorrt:TensorRTTarget",
    "jetson": "resnet_deploy.targets.tensorrt:JetsonTarget",
}
_cache: dict[str, type[Target]] | None = None
_extra: dict[str, type[Target]] = {}  # registered in-process (tests)
broken: dict[str, str] = {}  # entry point name -> why it could not be loaded


def _entry_points() -> list[tuple[str, str]]:
    """(name, "module:attr") of every installed target. Every distribution's metadata is read (not only
    the first of each name, as ``entry_points()`` does), so a stale ``*.egg-info`` in the working folder
    cannot hide the installed metadata; the built-ins are added when no metadata lists them at all
    (running from a source tree without ``pip install``)."""
    found: dict[tuple[str, str], None] = {}
    for dist in md.distributions():
        for ep in dist.entry_points:
            if ep.group == GROUP:
                found[(ep.name, ep.value)] = None
    names = {name for name, _ in found}
    builtin = [(n, v) for n, v in _BUILTIN.items() if n not in names]
    order = list(_BUILTIN)  # built-ins first, in their usual order; then plug-ins by name
    return sorted([*builtin, *found], key=lambda e: (order.index(e[0]) if e[0] in order else len(order), e[0]))


def _load(value: str) -> type[Target]:
    module, _, attr = value.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise TypeError(f"{value} is not a resnet_deploy Target subclass")
    version = getattr(cls, "api_version", None)
    if version not in range(1, PLUGIN_API + 1):
        raise TypeError(f"{value} implements plug-in API {version}; this resnet-deploy speaks 1..{PLUGIN_API}")
    return cls


def _registry() -> dict[str, type[Target]]:
    global _cache
    if _cache is None:
        table: dict[str, type[Target]] = {}
        for name, value in _entry_points():
            if name in table:
                continue
            try:
                cls = _load(value)
            except Exception as err:
                broken[name] = f"{value}: {err.__class__.__name__}: {err}"
                continue
            if cls.name != name:
                broken[name] = f"{value}: its name is {cls.name!r}, not the entry point's {name!r}"
                continue
            table[name] = cls
        _cache = table
    return {**_cache, **_extra}


def register(cls: type[Target]) -> type[Target]:
    """Register a target class in this process (tests; a plug-in package uses an entry point instead)."""
    _extra[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _extra.pop(name, None)


def list_targets() -> list[str]:
    return list(_registry())


def _aliases() -> dict[str, str]:
    return {alias: name for name, cls in _registry().items() for alias in cls.aliases}


def canonical(name: str) -> str:
    key = name.lower()
    table = _registry()
    key = _aliases().get(key, key)
    if key not in table:
        aliases = ", ".join(f"{a}={t}" for a, t in _aliases().items())
        raise ConfigError(f"Unknown target {name!r} (--target). Known targets: {', '.join(table)}"
                          + (f" (aliases: {aliases})" if aliases else "") + ", or 'all'.")
    return key


def get_target(name: str) -> Target:
    return _registry()[canonical(name)]()


def expand(names: Sequence[str]) -> list[str]:
    """--target values in order, 'all' expanded, duplicates and aliases folded."""
    out: list[str] = []
    for n in names:
        for key in (list_targets() if n.lower() == "all" else [canonical(n)]):
            if key not in out:
                out.append(key)
    return out


def runtimes() -> dict[str, Runtime]:
    """Every runtime a registered target loads artifacts with, by name."""
    out: dict[str, Runtime] = {}
    for cls in _registry().values():
        for rt in cls.runtimes:
            out.setdefault(rt.name, rt)
    return out


def option_owners(kind: str = "options") -> dict[str, tuple[Any, list[str]]]:
    """flag field name -> (the dataclass field, the targets that take it), over every target's ``kind``
    ("options" for build, "device_options" for device-build). Two targets may share a flag only with
    the same type and default."""
    out: dict[str, tuple[Any, list[str]]] = {}
    for name, cls in _registry().items():
        for f in option_fields(getattr(cls, kind)):
            if f.name in out:
                known = out[f.name][0]
                if known.metadata.get("type") != f.metadata.get("type") or known.default != f.default:
                    raise ConfigError(f"targets {out[f.name][1][0]} and {name} declare the flag "
                                      f"--{f.name.replace('_', '-')} differently.")
                out[f.name][1].append(name)
            else:
                out[f.name] = (f, [name])
    return out


def onnx_session(model: Path | bytes, *, threads: int | None = None) -> Any:
    """The ONNX executor the pipeline checks its own conversions with (export parity, activation ranges,
    the Q/DQ reference simulation): ONNX Runtime's CPU provider, one session factory for every use."""
    from resnet_deploy.targets.onnxruntime import ort_session

    return ort_session(model, threads=threads)


def onnx_session_runtime() -> Runtime:
    """The runtime behind ``onnx_session``, for records that say what ran (the FP32 reference of an ONNX input)."""
    from resnet_deploy.targets.onnxruntime import RUNTIME

    return RUNTIME


__all__ = ["GROUP", "PLUGIN_API", "Artifact", "CompileInput", "DeviceBuild", "Runner", "Runtime", "Target",
           "ThroughputRunner", "broken", "canonical", "expand", "get_target", "list_targets", "onnx_session",
           "onnx_session_runtime", "option_owners", "register", "runtimes", "unregister"]
