#!/usr/bin/env python3
"""Extract the Python API surface of one TensorRT release from NVIDIA's pybind11 sources.

    python scripts/extract_trt_api.py --git-dir /work/.mirror/NVIDIA+TensorRT/repo --tag v10.3.0 \
        --version 10.3.0 --out tests/targets/tensorrt_api/10.3.0.json
    python scripts/extract_trt_api.py --src /path/to/TensorRT --version 10.3.0 --out 10.3.0.json

The tables feed ``tests/targets/strict_trt.py``, a stand-in ``tensorrt`` module exactly as strict as the
real bindings of that release. Only what the sources bind is recorded; see tests/targets/tensorrt_api/README.md
for what this parser sees and what it does not. Standard library only, Python 3.8+.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

# What the product's TensorRT layer touches (targets/tensorrt/engine.py, runner.py), plus the
# bases those classes inherit members from; the rest of the module is listed by name only.
KEEP_CLASSES = (
    "ILogger", "Logger", "Builder", "INetworkDefinition", "OnnxParser", "ParserError", "IBuilderConfig",
    "IOptimizationProfile", "ITimingCache", "IHostMemory", "Runtime", "ICudaEngine", "IExecutionContext",
    "IInt8Calibrator", "IInt8EntropyCalibrator2", "Dims", "ILayer",
)
KEEP_ENUMS = (
    "BuilderFlag", "MemoryPoolType", "NetworkDefinitionCreationFlag", "DeviceType", "TensorIOMode",
    "CalibrationAlgoType", "DataType", "ProfilingVerbosity", "EngineCapability", "ILogger.Severity",
)

# The ``tensorrt`` wheel is built with tensorrt_EXPORTS (full bindings, not lean/dispatch); everything else
# undefined is 0, as in the C preprocessor. The pybind11 version only guards buffer_info details.
DEFINES = {"EXPORT_ALL_BINDINGS": 1, "PYBIND11_VERSION_MAJOR": 2, "PYBIND11_VERSION_MINOR": 10}

PROPERTY_KIND = {
    "def_property": "rw", "def_readwrite": "rw", "def_property_static": "rw", "def_readwrite_static": "rw",
    "def_property_readonly": "r", "def_readonly": "r", "def_property_readonly_static": "r",
    "def_readonly_static": "r",
}
METHODS = {"def", "def_static"}


# --- reading sources ---------------------------------------------------------------------------------

class Source:
    """Files of one TensorRT checkout: a work tree, or a bare git dir at a tag."""

    def __init__(self, *, src: Optional[Path] = None, git_dir: Optional[Path] = None, tag: str = "") -> None:
        self.src, self.git_dir, self.tag = src, git_dir, tag

    def _git(self, *args: str) -> str:
        return subprocess.run(["git", "--git-dir", str(self.git_dir), *args], check=True, capture_output=True,
                              text=True).stdout

    def files(self, prefix: str) -> List[str]:
        if self.git_dir is not None:
            return sorted(self._git("ls-tree", "-r", "--name-only", self.tag, "--", prefix).split())
        root = self.src / prefix  # type: ignore[operator]
        return sorted(str(p.relative_to(self.src)) for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def read(self, path: str) -> str:
        if self.git_dir is not None:
            return self._git("show", f"{self.tag}:{path}")
        return (self.src / path).read_text(encoding="utf-8", errors="replace")  # type: ignore[operator]

    def commit(self) -> str:
        if self.git_dir is not None:
            return self._git("rev-list", "-n", "1", self.tag).strip()
        try:
            return subprocess.run(["git", "-C", str(self.src), "rev-parse", "HEAD"], check=True, capture_output=True,
                                  text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown"


# --- C++: comments, preprocessor, tokens -------------------------------------------------------------

def strip_comments(text: str) -> str:
    """Blank out comments (keeping newlines, so line numbers survive), leaving string literals intact."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == 'R' and text.startswith('R"', i):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            end = text.find(")" + (m.group(1) if m else "") + '"', i)
            j = n if end < 0 else end + len(m.group(1) if m else "") + 2
            out.append(text[i:j])
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _eval_condition(expr: str, defines: Dict[str, int]) -> bool:
    expr = re.sub(r"defined\s*\(\s*(\w+)\s*\)|defined\s+(\w+)",
                  lambda m: "1" if (m.group(1) or m.group(2)) in defines else "0", expr)
    expr = re.sub(r"[A-Za-z_]\w*", lambda m: str(defines.get(m.group(0), 0)), expr)
    expr = expr.replace("&&", " and ").replace("||", " or ")
    expr = re.sub(r"!(?!=)", " not ", expr)
    try:
        return bool(eval(expr, {"__builtins__": {}}, {}))
    except Exception:
        return False


def preprocess(text: str, defines: Dict[str, int]) -> str:
    """Blank lines inside inactive #if branches and all directives (with their continuation lines)."""
    lines = text.split("\n")
    stack: List[Tuple[bool, bool]] = []  # (this branch active, some branch of this #if taken)
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith("#"):
            span = 1
            while lines[i + span - 1].rstrip().endswith("\\") and i + span < len(lines):
                span += 1
            directive = " ".join(part.rstrip("\\") for part in lines[i:i + span]).strip()[1:].strip()
            word, _, rest = directive.partition(" ")
            if word.startswith("if"):
                parent = all(a for a, _ in stack)
                if word == "ifdef":
                    cond = rest.strip() in defines
                elif word == "ifndef":
                    cond = rest.strip() not in defines
                else:
                    cond = _eval_condition(rest, defines)
                stack.append((parent and cond, cond))
            elif word == "elif" and stack:
                taken = stack[-1][1]
                parent = all(a for a, _ in stack[:-1])
                cond = not taken and _eval_condition(rest, defines)
                stack[-1] = (parent and cond, taken or cond)
            elif word == "else" and stack:
                taken = stack[-1][1]
                stack[-1] = (all(a for a, _ in stack[:-1]) and not taken, True)
            elif word == "endif" and stack:
                stack.pop()
            out.extend([""] * span)
            i += span
            continue
        out.append(line if all(a for a, _ in stack) else "")
        i += 1
    return "\n".join(out)


TOKEN = re.compile(r'(?P<str>"(?:\\.|[^"\\])*")|(?P<chr>\'(?:\\.|[^\'\\])*\')|(?P<id>[A-Za-z_]\w*)|'
                   r'(?P<num>\d[\w.]*)|(?P<op>::|->|\S)')


def tokenize(text: str) -> List[Tuple[str, str, int]]:
    """(kind, text, line) tokens; kind is str, chr, id, num or op."""
    tokens, line, pos = [], 1, 0
    for m in TOKEN.finditer(text):
        line += text.count("\n", pos, m.start())
        pos = m.start()
        tokens.append((m.lastgroup or "op", m.group(0), line))
    return tokens


# --- pybind11 definitions ----------------------------------------------------------------------------

class Api:
    """What one module binds: classes (members, property kinds, argument names, bases), enums, functions."""

    def __init__(self) -> None:
        self.classes: Dict[str, dict] = {}
        self.enums: Dict[str, dict] = {}
        self.cpp_to_py: Dict[str, str] = {}
        self.functions: Dict[str, dict] = {}
        self.attributes: Dict[str, str] = {}

    def klass(self, name: str, where: str = "") -> dict:
        return self.classes.setdefault(name, {"members": {}, "properties": {}, "args": {}, "bases_cpp": [],
                                              "at": where})


def _close(tokens, i: int, opening: str, closing: str) -> int:
    """Index of the token closing the bracket opened at tokens[i]."""
    depth = 0
    for j in range(i, len(tokens)):
        t = tokens[j][1]
        if tokens[j][0] == "op":
            if t == opening:
                depth += 1
            elif t == closing:
                depth -= 1
                if depth == 0:
                    return j
    raise ValueError(f"unbalanced {opening} at line {tokens[i][2]}")


def _close_any(tokens, i: int) -> int:
    pairs = {"(": ")", "{": "}", "[": "]"}
    want = []
    for j in range(i, len(tokens)):
        kind, t, _ = tokens[j]
        if kind != "op":
            continue
        if t in pairs:
            want.append(pairs[t])
        elif want and t == want[-1]:
            want.pop()
            if not want:
                return j
    raise ValueError(f"unbalanced bracket at line {tokens[i][2]}")


def _split_args(tokens, start: int, end: int) -> List[list]:
    """Top-level comma-separated arguments of tokens[start:end] (brackets and template brackets balanced)."""
    args, cur, depth = [], [], 0
    for tok in tokens[start:end]:
        t = tok[1]
        if tok[0] == "op" and t in "([{":
            depth += 1
        elif tok[0] == "op" and t in ")]}":
            depth -= 1
        if tok[0] == "op" and t == "," and depth == 0:
            args.append(cur)
            cur = []
        else:
            cur.append(tok)
    if cur:
        args.append(cur)
    return args


def _template_args(tokens, i: int) -> Tuple[List[str], int]:
    """The type names of py::class_<A, B<...>, C> starting at the '<' at tokens[i]; and the index after '>'."""
    depth, j, cur, args = 0, i, [], []
    while j < len(tokens):
        t = tokens[j][1]
        if t == "<":
            depth += 1
            if depth > 1:
                cur.append(t)
        elif t == ">":
            depth -= 1
            if depth == 0:
                args.append("".join(cur))
                return args, j + 1
            cur.append(t)
        elif t == "," and depth == 1:
            args.append("".join(cur))
            cur = []
        else:
            cur.append(t)
        j += 1
    raise ValueError("unbalanced template arguments")


def _unquote(tok) -> Optional[str]:
    return ast.literal_eval(tok[1]) if tok and tok[0] == "str" else None


def _arg_names(tokens: list) -> List[str]:
    """pybind11 keyword names in a .def(...)'s arguments: "name"_a and py::arg("name")."""
    names = []
    for k, tok in enumerate(tokens):
        if tok[0] == "str" and k + 1 < len(tokens) and tokens[k + 1][1] == "_a":
            names.append(_unquote(tok))
        elif (tok[1] == "arg" and k + 2 < len(tokens) and tokens[k + 1][1] == "(" and tokens[k + 2][0] == "str"
              and k >= 2 and tokens[k - 1][1] == "::" and tokens[k - 2][1] == "py"):
            names.append(_unquote(tokens[k + 2]))
    return names


def _first_cpp_name(arg: list) -> str:
    """The enumerator in `.value("X", Scope::kX, doc)`: the last identifier of the scoped name."""
    ids = [t[1] for t in arg if t[0] == "id"]
    return ids[-1] if ids else ""


def _chain(tokens, i: int, api: Api, target: Tuple[str, str], where: str) -> int:
    """Apply a `.def(...).value(...)...` chain starting at tokens[i] ('.') to target ('class'|'enum'|'module', name)."""
    kind, name = target
    while i + 2 < len(tokens) and tokens[i][1] == "." and tokens[i + 1][0] == "id" and tokens[i + 2][1] == "(":
        method, open_ = tokens[i + 1][1], i + 2
        close = _close(tokens, open_, "(", ")")
        args = _split_args(tokens, open_ + 1, close)
        line = tokens[open_][2]
        first = _unquote(args[0][0]) if args and len(args[0]) == 1 else None
        if kind == "enum":
            enum = api.enums[name]
            if method == "value" and first is not None:
                enum["values"].append(first)
                enum["cpp"][first] = _first_cpp_name(args[1]) if len(args) > 1 else ""
            elif method == "export_values":  # the values become attributes of the enclosing scope too
                enum["exported"] = True
                if enum["owner"]:
                    for value in enum["values"]:
                        api.classes[enum["owner"]]["members"].setdefault(value, f"{where}:{line}")
                else:
                    for value in enum["values"]:
                        api.attributes.setdefault(value, f"{name}.{value}")
            elif method.startswith("def") and first is not None:
                enum["members"].append(first)
        elif kind == "class":
            cls = api.classes[name]
            if method in METHODS or method in PROPERTY_KIND:
                member = first
                if member is None and method == "def" and args and any(t[1] == "init" for t in args[0][:4]):
                    member = "__init__"
                if member is not None:
                    cls["members"].setdefault(member, f"{where}:{line}")
                    if method in PROPERTY_KIND:
                        prop = PROPERTY_KIND[method]
                        if method == "def_property" and len(args) > 1 and [t[1] for t in args[1]] == ["nullptr"]:
                            prop = "w"
                        cls["properties"][member] = prop
                    else:
                        names = _arg_names([t for a in args[1:] for t in a]) if member != "__init__" else \
                            _arg_names([t for a in args for t in a])
                        cls["args"].setdefault(member, [])
                        if names not in cls["args"][member]:
                            cls["args"][member].append(names)
        elif kind == "module" and method == "def" and first is not None:
            api.functions.setdefault(first, {"at": f"{where}:{line}"})
        i = close + 1
    return i


def parse_cpp(text: str, where: str, api: Api, *, defines: Optional[Dict[str, int]] = None) -> Api:
    """Add the py::class_ / py::enum_ / m.def / m.attr definitions of one C++ file to ``api``."""
    tokens = tokenize(preprocess(strip_comments(text), DEFINES if defines is None else defines))
    vars_: Dict[str, Tuple[str, str]] = {}  # C++ variable holding a binding -> ("class"|"enum", name)
    i = 0
    while i < len(tokens):
        kind, t, line = tokens[i]
        if t == "py" and i + 3 < len(tokens) and tokens[i + 1][1] == "::" and tokens[i + 2][1] in ("class_", "enum_") \
                and tokens[i + 3][1] == "<":
            what = "class" if tokens[i + 2][1] == "class_" else "enum"
            targs, j = _template_args(tokens, i + 3)
            var = None
            if tokens[j][0] == "id":  # py::class_<X> binding{m, "Name", ...};
                var, j = tokens[j][1], j + 1
            if j >= len(tokens) or tokens[j][1] not in "({":
                i = j
                continue
            close = _close_any(tokens, j)
            args = _split_args(tokens, j + 1, close)
            name = _unquote(args[1][0]) if len(args) > 1 and len(args[1]) == 1 else None
            if name is None:
                i = close + 1
                continue
            scope = "".join(x[1] for x in args[0])
            owner = vars_.get(scope)
            qual = f"{owner[1]}.{name}" if owner else name
            if owner and owner[0] == "class":
                api.classes[owner[1]]["members"].setdefault(name, f"{where}:{line}")
            if what == "class":
                cls = api.klass(qual, f"{where}:{line}")
                cls["bases_cpp"] = targs[1:]
                api.cpp_to_py.setdefault(targs[0], qual)
            else:
                api.enums[qual] = {"values": [], "cpp": {}, "members": [], "exported": False, "at": f"{where}:{line}",
                                   "cpp_type": targs[0], "owner": owner[1] if owner else None}
            if var:
                vars_[var] = (what, qual)
            prev = tokens[i - 1][1] if i else ""
            if prev == "=" and i >= 2 and tokens[i - 2][0] == "id":
                vars_[tokens[i - 2][1]] = (what, qual)
            i = _chain(tokens, close + 1, api, (what, qual), where)
            continue
        if kind == "id" and t in vars_ and i + 1 < len(tokens) and tokens[i + 1][1] == "." and \
                (i == 0 or tokens[i - 1][1] in (";", "{", "}")):
            i = _chain(tokens, i + 1, api, vars_[t], where)
            continue
        if kind == "id" and t == "m" and i + 3 < len(tokens) and tokens[i + 1][1] == "." and \
                (i == 0 or tokens[i - 1][1] in (";", "{", "}")):
            if tokens[i + 2][1] == "def":
                i = _chain(tokens, i + 1, api, ("module", ""), where)
                continue
            if tokens[i + 2][1] == "attr" and tokens[i + 3][1] == "(" and tokens[i + 4][0] == "str":
                close = _close(tokens, i + 3, "(", ")")
                if tokens[close + 1][1] == "=":
                    end = close + 2
                    while end < len(tokens) and tokens[end][1] != ";":
                        end += 1
                    api.attributes[_unquote(tokens[i + 4])] = "".join(x[1] for x in tokens[close + 2:end])
                    i = end
                    continue
        i += 1
    return api


# --- the Python package's __init__.py ----------------------------------------------------------------

def _fill_placeholders(text: str) -> str:
    text = text.replace("##TENSORRT_MODULE##", "tensorrt")
    text = re.sub(r'"##(\w+)##"', r'"\1"', text)  # "##TENSORRT_PYTHON_VERSION##"
    return re.sub(r'(?<!["\w])##(\w+)##(?!["\w])', "None", text)  # a bare build-time flag


def _static_if(test: ast.expr) -> Optional[bool]:
    """`if "tensorrt" == "tensorrt" or ...:` once the template is filled: an expression of constants only."""
    if any(isinstance(n, ast.Name) for n in ast.walk(test)):
        return None  # depends on the platform or on imports (e.g. sys.platform): not a build-time constant
    try:
        return bool(eval(compile(ast.Expression(test), "<init>", "eval"), {"__builtins__": {}}, {}))
    except Exception:
        return None


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def parse_package_init(text: str, where: str, api: Api) -> None:
    """Module-level defs, `Class.attr = ...` and the `setattr(Logger, ...)` loop of tensorrt/__init__.py."""
    tree = ast.parse(_fill_placeholders(text))

    def walk(body: Iterable[ast.stmt]) -> None:
        for node in body:
            at = f"{where}:{node.lineno}"
            if isinstance(node, ast.If):
                static = _static_if(node.test)
                if static is not None:
                    walk(node.body if static else node.orelse)
                continue  # platform branches (Windows DLL loading) are not part of the Linux module
            if isinstance(node, ast.FunctionDef):
                api.functions.setdefault(node.name, {"at": at})
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == "__version__":
                        api.attributes["__version__"] = "str"
                    elif isinstance(target, ast.Attribute) and _dotted(target.value) in api.classes:
                        api.classes[_dotted(target.value)]["members"].setdefault(target.attr, at)
                        if isinstance(node.value, ast.Call) and _dotted(node.value.func) == "property":
                            api.classes[_dotted(target.value)]["properties"][target.attr] = "r"
                    elif isinstance(target, ast.Attribute) and _dotted(target.value) in api.enums:
                        api.enums[_dotted(target.value)]["members"].append(target.attr)
            elif isinstance(node, ast.For) and isinstance(node.iter, ast.Call):
                # for attr, value in ILogger.Severity.__members__.items(): setattr(Logger, attr, value)
                src = _dotted(node.iter.func)
                enum = src[: -len(".__members__.items")] if src.endswith(".__members__.items") else ""
                for stmt in node.body:
                    call = stmt.value if isinstance(stmt, ast.Expr) else None
                    if enum in api.enums and isinstance(call, ast.Call) and _dotted(call.func) == "setattr":
                        cls = _dotted(call.args[0])
                        if cls in api.classes:
                            for value in api.enums[enum]["values"]:
                                api.classes[cls]["members"].setdefault(value, at)

    walk(tree.body)


# --- enum values from the C++ headers --------------------------------------------------------------

def header_enum_values(text: str) -> Dict[str, Dict[str, int]]:
    """{enum name: {enumerator: int}} for `enum class X : T { kA = 0, kB, ... };` in one header."""
    found: Dict[str, Dict[str, int]] = {}
    body_text = strip_comments(text)
    for m in re.finditer(r"\benum\s+(?:class\s+)?(\w+)\s*(?::\s*[\w:]+\s*)?\{([^}]*)\}", body_text):
        values: Dict[str, int] = {}
        nxt = 0
        for item in m.group(2).split(","):
            item = item.strip()
            if not item:
                continue
            key, _, expr = item.partition("=")
            key, expr = key.split()[0], expr.strip()  # `kX TRT_DEPRECATED_ENUM = 0`: the name comes first
            if expr:
                expr_py = re.sub(r"\b(\d+)[uUlL]+\b", r"\1", expr)
                expr_py = re.sub(r"[A-Za-z_]\w*", lambda e, known=values: str(known.get(e.group(0), "None")),
                                 expr_py)
                try:
                    nxt = int(eval(expr_py, {"__builtins__": {}}, {}))
                except Exception:
                    values = {}
                    break
            values[key] = nxt
            nxt += 1
        if values:
            found.setdefault(m.group(1), values)
    return found


# --- the table -------------------------------------------------------------------------------------

def _py_bases(api: Api, cls: dict) -> List[str]:
    return [api.cpp_to_py[b] for b in cls["bases_cpp"] if b in api.cpp_to_py]


def build_table(api: Api, *, version: str, source: str, enum_values: Dict[str, Dict[str, int]],
                keep_classes: Iterable[str] = KEEP_CLASSES, keep_enums: Iterable[str] = KEEP_ENUMS) -> dict:
    classes: Dict[str, dict] = {}
    want = [c for c in keep_classes if c in api.classes]
    while want:  # kept classes bring their bases
        name = want.pop(0)
        if name in classes:
            continue
        cls = api.classes[name]
        bases = _py_bases(api, cls)
        want.extend(b for b in bases if b not in classes)
        entry: dict = {"members": sorted(cls["members"])}
        if bases:
            entry["bases"] = bases
        if cls["properties"]:
            entry["properties"] = dict(sorted(cls["properties"].items()))
        args = {k: v for k, v in sorted(cls["args"].items()) if any(v)}
        if args:
            entry["args"] = args
        entry["at"] = cls["at"]
        classes[name] = entry
    enums: Dict[str, List[str]] = {}
    values: Dict[str, Dict[str, int]] = {}
    extras: Dict[str, List[str]] = {}
    locations: Dict[str, str] = {}
    for name in keep_enums:
        if name not in api.enums:
            continue
        enum = api.enums[name]
        enums[name] = list(enum["values"])
        cpp_enum = enum["cpp_type"].split("::")[-1]
        header = enum_values.get(cpp_enum, {})
        values[name] = {v: header.get(enum["cpp"].get(v, ""), i) for i, v in enumerate(enum["values"])}
        if enum["members"]:
            extras[name] = sorted(set(enum["members"]))
        locations[name] = enum["at"]
    kept = set(classes) | set(enums)
    others = sorted(n for n in set(api.classes) | set(api.enums) if n not in kept and "." not in n)
    return {
        "version": version,
        "source": source,
        "module_functions": sorted(api.functions),
        "module_attributes": dict(sorted(api.attributes.items())),
        "classes": dict(sorted(classes.items())),
        "enums": dict(sorted(enums.items())),
        "enum_values": dict(sorted(values.items())),
        "enum_members": dict(sorted(extras.items())),
        "enum_at": dict(sorted(locations.items())),
        "other_names": others,
    }


def extract(source: Source, *, version: str) -> dict:
    api = Api()
    cpp = [f for f in source.files("python/src") if f.endswith(".cpp")]
    # bindCore needs bindInt8's classes declared first for bases; the order of files does not change members.
    for path in cpp:
        parse_cpp(source.read(path), path, api)
    inits = [f for f in source.files("python/packaging") if re.fullmatch(r"python/packaging/(bindings_wheel/)?"
                                                                       r"tensorrt/__init__\.py", f)]
    for path in inits:
        parse_package_init(source.read(path), path, api)
    enum_values: Dict[str, Dict[str, int]] = {}
    for path in source.files("include"):
        if path.endswith(".h"):
            for name, vals in header_enum_values(source.read(path)).items():
                enum_values.setdefault(name, vals)
    where = f"NVIDIA/TensorRT@{source.tag or 'worktree'} {source.commit()} " + " ".join(cpp + inits)
    return build_table(api, version=version, source=where, enum_values=enum_values)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, help="a TensorRT source checkout (work tree)")
    p.add_argument("--git-dir", type=Path, help="a (bare) git dir of NVIDIA/TensorRT; needs --tag")
    p.add_argument("--tag", default="", help="release tag, e.g. 8.2.1, v10.3.0, v11.1")
    p.add_argument("--version", required=True, help="version string recorded in the table, e.g. 10.3.0")
    p.add_argument("--out", type=Path, help="JSON file to write (default: stdout)")
    args = p.parse_args(argv)
    if (args.src is None) == (args.git_dir is None) or (args.git_dir is not None and not args.tag):
        p.error("give --src, or --git-dir with --tag")
    table = extract(Source(src=args.src, git_dir=args.git_dir, tag=args.tag), version=args.version)
    text = json.dumps(table, indent=1) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
