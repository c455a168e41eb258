"""The plug-in boundary holds: no target or runtime is named outside targets/, and no layer reaches up.

The names come from the registry (every registered target, its aliases, its runtimes and their
packages), so a new target is covered the day it is installed. Docstrings may name them; code may not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from resnet_deploy.targets import get_target, list_targets, runtimes

ROOT = Path(__file__).resolve().parents[1]
NEUTRAL = ("resnet_deploy", "pipeline", "calibration")  # the packages that must not know any target
# Layers, lowest first: a module may import from its own layer or lower ones only.
LAYERS = {"resnet_deploy": 0, "calibration": 1, "targets": 2, "pipeline": 3}
# The CLI and the Python API sit on top of everything (both import the layers below when called).
UPPER_ONLY = {"resnet_deploy/cli.py", "resnet_deploy/__main__.py", "resnet_deploy/api.py"}


def _forbidden() -> set[str]:
    names: set[str] = set()
    for name in list_targets():
        t = get_target(name)
        names.add(t.name)  # aliases such as "cpu" are words of their own; the canonical names are the names
    for rt in runtimes().values():
        names |= {rt.name, rt.module, *rt.packages}
    # A plug-in's runtime may be built on the core's own dependencies (onnx is the format every target
    # starts from): those are not target names.
    return {n.lower() for n in names} - {"onnx", "torch", "numpy", "pillow"}


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value,
                                                                                                    str):
                out.add(id(first.value))
    return out


def _words(node: ast.AST, docs: set[int]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
        return [node.value]
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.alias):
        return [node.name, node.asname or ""]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    return []


def _sources(folders) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def test_registry_has_the_builtin_targets():
    assert {"openvino", "onnxruntime", "tensorrt", "jetson"} <= set(list_targets())


@pytest.mark.parametrize("path", _sources(NEUTRAL), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_target_or_runtime_named_outside_targets(path):
    forbidden = _forbidden()
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    hits = []
    for node in ast.walk(tree):
        for text in _words(node, docs):
            found = set(re.split(r"[^a-z0-9]+", text.lower())) & forbidden
            if found:
                hits.append(f"line {getattr(node, 'lineno', '?')}: {sorted(found)} in {text[:60]!r}")
    assert not hits, f"{path.relative_to(ROOT)} names targets/runtimes: ask resnet_deploy.targets instead\n" + \
        "\n".join(hits)


def test_the_scan_would_catch_a_name():
    """The test above is not vacuous: a planted import and a string are found."""
    tree = ast.parse("import onnxruntime\nx = 'use TensorRT here'\n")
    words = [w for node in ast.walk(tree) for w in _words(node, _docstrings(tree))]
    tokens = {t for w in words for t in re.split(r"[^a-z0-9]+", w.lower())}
    assert {"onnxruntime", "tensorrt"} <= tokens & _forbidden()


def _imports(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("resnet_deploy.")]


def _layer_of_module(module: str) -> int:
    part = module.split(".")[1]
    return LAYERS.get(part, 0)  # resnet_deploy.models, .errors, .host ... are the bottom layer


@pytest.mark.parametrize("path", _sources(LAYERS), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_import_from_a_higher_layer_nor_a_private_module_of_another_package(path):
    rel = str(path.relative_to(ROOT))
    if rel in UPPER_ONLY:
        return
    own = LAYERS[rel.split("/")[0]]
    if rel.startswith("resnet_deploy/models/"):
        own = LAYERS["resnet_deploy"]
    package = "resnet_deploy." + ".".join(Path(rel).parent.parts[1:]) if "/" in rel else "resnet_deploy"
    if rel.split("/")[0] in ("pipeline", "calibration", "targets"):
        package = "resnet_deploy." + ".".join(Path(rel).parent.parts)
    bad = []
    for module in _imports(ast.parse(path.read_text())):
        if _layer_of_module(module) > own:
            bad.append(f"{module} (a higher layer)")
        parts = module.split(".")
        private = next((i for i, p in enumerate(parts) if p.startswith("_")), None)
        if private is not None and not (package + ".").startswith(".".join(parts[:private]) + "."):
            bad.append(f"{module} (private to {'.'.join(parts[:private])})")
    assert not bad, f"{rel} imports " + ", ".join(bad)
