"""A stand-in ``tensorrt`` module exactly as strict as the real bindings of one release.

Built from ``tensorrt_api/<version>.json`` (extracted from NVIDIA's pybind11 sources by
``scripts/extract_trt_api.py``): every class and enum has the table's members and nothing else, so an
attribute TensorRT X.Y does not bind raises AttributeError on read and on write, as the real module does.
The behaviour behind the members the product calls (build -> serialize -> deserialize -> run) is simple;
the surface is what this file promises. Members without behaviour exist and raise NotImplementedError.
"""

from __future__ import annotations

import ctypes
import functools
import json
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

TABLES = Path(__file__).with_name("tensorrt_api")
VERSIONS = ("8.2.1", "8.5.2", "8.6.1", "10.3.0", "11.1")
PLAN_MAGIC = b"STRICT-TRT-PLAN\0"


def table_for(version: str) -> dict:
    """The table whose version is the longest prefix of ``version`` ("8.5.2.2" -> 8.5.2, "11.1.0" -> 11.1)."""
    parts = version.split(".")
    for known in sorted(VERSIONS, key=lambda v: -len(v)):
        if parts[:len(known.split("."))] == known.split("."):
            return json.loads((TABLES / f"{known}.json").read_text())
    raise ValueError(f"No TensorRT API table for {version}; known: {', '.join(VERSIONS)}")


def default_compute(batch: np.ndarray, out_features: int) -> np.ndarray:
    """Logit k of an image is (k + 1) times the image's mean: easy to check, depends on every input value."""
    return batch.reshape(len(batch), -1).mean(1, keepdims=True) * np.arange(1, out_features + 1, dtype=np.float32)


def make_tensorrt(version: str, *, log: Optional[list] = None,
                  compute: Callable[[np.ndarray, int], np.ndarray] = default_compute) -> types.ModuleType:
    """A fresh ``tensorrt`` module for ``version``; ``log`` receives what the builder is told, as tuples."""
    return _Factory(version, table_for(version), [] if log is None else log, compute).module


# --- the generated classes -------------------------------------------------------------------------

_STATE = "_strict_state"


def _state(obj: Any) -> dict:
    try:
        return object.__getattribute__(obj, _STATE)
    except AttributeError:
        raise TypeError(f"{type(obj).__name__}.__init__() must be called when overriding __init__") from None


class _Strict:
    """Base of every generated class: slots only (no __dict__), so unknown names fail on read and write."""

    __slots__ = (_STATE, "__weakref__")
    _trt_version = ""

    def __getattribute__(self, name: str) -> Any:
        if name == _STATE:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == _STATE:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        try:
            object.__setattr__(self, name, value)
        except AttributeError as err:
            raise AttributeError(f"{err} (TensorRT {self._trt_version})") from None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError(f"tensorrt.{type(self).__name__}: No constructor defined!")


def _new(cls: type, **state: Any) -> Any:
    obj = cls.__new__(cls)
    object.__setattr__(obj, _STATE, dict(state))
    return obj


def _check_args(owner: str, name: str, overloads: List[List[str]], args: tuple, kwargs: dict) -> None:
    """pybind11's overload resolution, as far as names go: keywords must be declared, counts must fit."""
    for names in overloads or [[]]:
        if len(args) + len(kwargs) > len(names) and (names or kwargs):
            continue
        if all(k in names[len(args):] for k in kwargs):
            return
    raise TypeError(f"{owner}.{name}(): incompatible function arguments {args!r} {kwargs!r}; "
                    f"the bindings declare {overloads or 'no keyword names'}")


class _Factory:
    def __init__(self, version: str, table: dict, log: list, compute: Callable) -> None:
        self.version, self.table, self.log, self.compute = version, table, log, compute
        self.enums: Dict[str, type] = {}
        self.classes: Dict[str, type] = {}
        for name in table["enums"]:
            self.enums[name] = self._enum(name)
        for name in table["classes"]:
            self._class(name)
        self.module = self._module()

    # enums
    def _enum(self, qual: str) -> type:
        values = self.table["enum_values"][qual]
        extras = self.table.get("enum_members", {}).get(qual, [])
        short = qual.split(".")[-1]

        def __init__(self, value: int) -> None:
            for name, v in values.items():
                if v == int(value):
                    object.__setattr__(self, _STATE, {"name": name, "value": v})
                    return
            raise ValueError(f"{value} is not a {short}")

        ns: Dict[str, Any] = {
            "__slots__": (), "__module__": "tensorrt", "__qualname__": qual, "_trt_version": self.version,
            "__init__": __init__,
            "name": property(lambda s: _state(s)["name"]), "value": property(lambda s: _state(s)["value"]),
            "__int__": lambda s: _state(s)["value"], "__index__": lambda s: _state(s)["value"],
            "__hash__": lambda s: hash(_state(s)["value"]),
            "__eq__": lambda s, o: type(o) is type(s) and _state(o)["value"] == _state(s)["value"],
            "__ne__": lambda s, o: not (type(o) is type(s) and _state(o)["value"] == _state(s)["value"]),
            "__repr__": lambda s: f"<{short}.{_state(s)['name']}: {_state(s)['value']}>",
            "__str__": lambda s: f"{short}.{_state(s)['name']}",
        }
        for extra in extras:
            ns[extra] = self._enum_extra(short, extra)
        cls = type(short, (_Strict,), ns)
        members = {}
        for name, v in values.items():
            members[name] = _new(cls, name=name, value=v)
            setattr(cls, name, members[name])
        cls.__members__ = types.MappingProxyType(members)
        return cls

    def _enum_extra(self, enum: str, name: str) -> Any:
        if (enum, name) == ("DataType", "itemsize"):
            sizes = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1, "UINT8": 1,
                     "FP8": 1, "INT4": 0.5, "FP4": 0.5, "E8M0": 1}
            return property(lambda s: sizes.get(_state(s)["name"]))
        return property(self._stub(enum, name))

    # classes
    def _class(self, name: str) -> type:
        if name in self.classes:
            return self.classes[name]
        spec = self.table["classes"][name]
        if name == "IHostMemory":
            self.classes[name] = self._host_memory_class(spec)
            return self.classes[name]
        bases = tuple(self._class(b) for b in spec.get("bases", [])) or (_Strict,)
        props = spec.get("properties", {})
        args = spec.get("args", {})
        ns: Dict[str, Any] = {"__slots__": (), "__module__": "tensorrt", "__qualname__": name,
                              "_trt_version": self.version}
        behaviour = _BEHAVIOUR.get(name, {})
        for member in spec["members"]:
            if member in props:
                ns[member] = self._property(name, member, props[member], behaviour.get(member))
            elif f"{name}.{member}" in self.enums:
                ns[member] = self.enums[f"{name}.{member}"]
            elif self._exported(name, member) is not None:
                ns[member] = self._exported(name, member)
            else:
                ns[member] = self._method(name, member, behaviour.get(member), args.get(member, []))
        if "__init__" not in spec["members"] and bases == (_Strict,):
            ns["__init__"] = _Strict.__init__
        cls = type(name, bases, ns)
        self.classes[name] = cls
        return cls

    def _host_memory_class(self, spec: dict) -> type:
        """IHostMemory supports the buffer protocol (bytes(plan), memoryview(plan)): a bytes subclass whose
        attribute surface is still exactly the table's (bytes' own methods are hidden)."""
        members, version = set(spec["members"]), self.version

        def __getattribute__(self: bytes, name: str) -> Any:
            if not (name.startswith("__") and name.endswith("__")) and name not in members:
                raise AttributeError(f"'IHostMemory' object has no attribute '{name}' (TensorRT {version})")
            return bytes.__getattribute__(self, name)

        ns: Dict[str, Any] = {"__slots__": (), "__module__": "tensorrt", "__qualname__": "IHostMemory",
                              "__getattribute__": __getattribute__}
        for member in members:
            if member == "nbytes":
                ns[member] = property(len)
            elif member in ("__enter__", "__exit__", "__del__"):
                ns[member] = {"__enter__": lambda s: s, "__exit__": lambda s, *a: None,
                              "__del__": lambda s: None}[member]
            elif member not in ("__init__",):
                ns[member] = property(self._stub("IHostMemory", member)) if member in spec.get("properties", {}) \
                    else self._stub("IHostMemory", member)
        return type("IHostMemory", (bytes,), ns)

    def _exported(self, cls: str, member: str) -> Any:
        """An enum value exported into a class (ILogger.WARNING) or copied onto it (Logger.WARNING)."""
        for qual, enum in self.enums.items():
            if "." in qual and member in enum.__members__:
                owner = qual.split(".")[0]
                if owner == cls or owner in self.table["classes"].get(cls, {}).get("bases", []) or cls == "Logger":
                    return enum.__members__[member]
        return None

    def _property(self, cls: str, name: str, kind: str, impl: Any) -> property:
        getter = setter = None
        if isinstance(impl, tuple):
            getter, setter = impl
        elif impl is not None:
            getter = impl
        fget = (lambda s: getter(self, s)) if getter else (lambda s: _state(s).get(name))
        if kind == "w":
            fget = None
        fset = None
        if kind in ("rw", "w"):
            fset = (lambda s, v: setter(self, s, v)) if setter else (lambda s, v: _state(s).__setitem__(name, v))
        return property(fget, fset, doc=f"{cls}.{name} ({kind})")

    def _stub(self, cls: str, name: str) -> Callable:
        version = self.version

        def stub(*args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError(f"tensorrt {version}: {cls}.{name} exists in the bindings but the strict "
                                      "stand-in gives it no behaviour (tests/targets/strict_trt.py)")
        return stub

    def _method(self, cls: str, name: str, impl: Optional[Callable], overloads: List[List[str]]) -> Callable:
        defaults = {"__del__": lambda s: None, "__enter__": lambda s: s, "__exit__": lambda s, *a: None,
                    "__bool__": lambda s: True, "__nonzero__": lambda s: True}
        if impl is None and name in defaults:
            return defaults[name]
        factory = self
        owner = f"tensorrt.{cls}"

        if name == "__init__":
            def init(obj: Any, *args: Any, **kwargs: Any) -> None:
                _check_args(owner, name, overloads, args, kwargs)
                object.__setattr__(obj, _STATE, {})
                if impl is not None:
                    impl(factory, obj, *args, **kwargs)
            return init
        if impl is None:
            stub = self._stub(cls, name)

            def method(obj: Any, *args: Any, **kwargs: Any) -> Any:
                _check_args(owner, name, overloads, args, kwargs)
                return stub()
        else:
            def method(obj: Any, *args: Any, **kwargs: Any) -> Any:
                _check_args(owner, name, overloads, args, kwargs)
                return impl(factory, obj, *args, **kwargs)
        functools.update_wrapper(method, impl or self._stub(cls, name))
        method.__name__ = name
        return method

    # the module
    def _module(self) -> types.ModuleType:
        table, version = self.table, self.version
        modelled = set(self.classes) | {e for e in self.enums if "." not in e}
        unmodelled = set(table["other_names"]) | set(table["module_attributes"])

        class StrictModule(types.ModuleType):
            def __getattr__(self, name: str) -> Any:
                if name in unmodelled:
                    raise AttributeError(f"tensorrt {version} has {name}, but the strict stand-in does not model it: "
                                         "add it to KEEP_CLASSES/KEEP_ENUMS in scripts/extract_trt_api.py")
                raise AttributeError(f"module 'tensorrt' has no attribute '{name}' (TensorRT {version})")

        mod = StrictModule("tensorrt", f"Strict stand-in for TensorRT {version} ({table['source'].split()[0]})")
        for name in modelled:
            setattr(mod, name, self.classes.get(name) or self.enums[name])
        for name, expr in table["module_attributes"].items():
            if name == "__version__":
                continue
            value = self._module_value(expr)
            if value is not None:
                setattr(mod, name, value)
                unmodelled.discard(name)
        for name in table["module_functions"]:
            impl = _MODULE_FUNCTIONS.get(name)
            setattr(mod, name, impl if impl is not None else self._stub("tensorrt", name))
        mod.__version__ = version
        return mod

    def _module_value(self, expr: str) -> Any:
        """`DataType::kFLOAT` -> DataType.FLOAT; `Enum.VALUE` (export_values into the module)."""
        scope, _, value = expr.replace("::", ".").rpartition(".")
        enum = self.enums.get(scope.split(".")[-1]) if scope else None
        if enum is None:
            return None
        for candidate in (value, value[1:] if value.startswith("k") else value):
            if candidate in enum.__members__:
                return enum.__members__[candidate]
        return None

    def enum_value(self, enum: str, name: str) -> Any:
        return self.enums[enum].__members__[name]

    def instance(self, cls: str, **state: Any) -> Any:
        return _new(self.classes[cls], **state)

    def require(self, value: Any, cls: str, what: str) -> None:
        want = self.classes.get(cls) or self.enums.get(cls)
        if want is None or not isinstance(value, want):
            raise TypeError(f"{what}: incompatible function arguments; expected tensorrt.{cls}, got {value!r}")


# --- behaviour ---------------------------------------------------------------------------------------

def _dims(f: _Factory, shape: Any) -> Any:
    return f.instance("Dims", shape=tuple(int(v) for v in shape))


def _major(f: _Factory) -> int:
    return int(f.version.split(".")[0])


def _logger_init(f: _Factory, s: Any, min_severity: Any = None) -> None:
    _state(s)["min_severity"] = min_severity if min_severity is not None else f.enum_value("ILogger.Severity",
                                                                                            "WARNING")


def _builder_init(f: _Factory, s: Any, logger: Any) -> None:
    f.require(logger, "ILogger", "Builder.__init__")


def _create_network(f: _Factory, s: Any, flags: int = 0) -> Any:
    if not isinstance(flags, int):
        raise TypeError(f"create_network(): flags must be an int, got {flags!r}")
    f.log.append(("network_flags", flags))
    return f.instance("INetworkDefinition", flags=flags, inputs=[], outputs=[])


def _builder_config(f: _Factory, s: Any) -> Any:
    state = {"flags": set(), "DLA_core": -1, "default_device_type": f.enum_value("DeviceType", "GPU"),
             "int8_calibrator": None, "profiles": [], "pools": {}, "timing_cache": None}
    if "max_workspace_size" in f.table["classes"]["IBuilderConfig"]["members"]:
        state["max_workspace_size"] = 0
    return f.instance("IBuilderConfig", **state)


def _create_profile(f: _Factory, s: Any) -> Any:
    return f.instance("IOptimizationProfile", shapes={})


def _onnx_shapes(model: Any) -> tuple:
    """(input name, per-image input dims, output name, per-image output dims) of an ONNX model."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False) if not isinstance(model, (bytes, bytearray)) \
        else onnx.load_from_string(bytes(model))
    graph = proto.graph
    inits = {t.name for t in graph.initializer}

    def dims(value: Any) -> tuple:
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)

    inp = next(i for i in graph.input if i.name not in inits)
    out = graph.output[0]
    return inp.name, dims(inp), out.name, dims(out), [(n.name or n.op_type, len(n.output)) for n in graph.node]


def _parser_init(f: _Factory, s: Any, network: Any, logger: Any) -> None:
    f.require(network, "INetworkDefinition", "OnnxParser.__init__")
    f.require(logger, "ILogger", "OnnxParser.__init__")
    _state(s).update(network=network, errors=[])


def _parse(f: _Factory, s: Any, model: Any, path: Any = None) -> bool:
    state = _state(s)
    net = _state(state["network"])
    explicit = _major(f) >= 10 or net["flags"] & (1 << 0)  # kEXPLICIT_BATCH = 0 in 8.x
    if not explicit:  # onnx-tensorrt 8.x refuses implicit-batch networks
        state["errors"].append("Network must have explicit batch dimension (create it with "
                               "1 << int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH))")
        return False
    try:
        parsed = _onnx_shapes(model)  # a 4-tuple where a caller without onnx replaced it (no layers then)
        name, in_dims, out_name, out_dims = parsed[:4]
        nodes = parsed[4] if len(parsed) > 4 else []
    except Exception as err:
        state["errors"].append(f"ModelImporter: could not read the model: {err}")
        return False
    # One layer per ONNX node, named after it as onnx-tensorrt's registerLayer does (ImporterContext.cpp).
    layers = [f.instance("ILayer", name=node, num_outputs=outputs, precision=f.enum_value("DataType", "FLOAT"),
                         precision_is_set=False, output_types={}) for node, outputs in nodes]
    net.update(inputs=[(name, in_dims)], outputs=[(out_name, out_dims)], layers=layers)
    return True


def _parse_from_file(f: _Factory, s: Any, model: str) -> bool:
    if not isinstance(model, str):
        raise TypeError("parse_from_file(): model must be a str path")
    f.log.append(("parse", Path(model).name))
    if not Path(model).is_file():
        _state(s)["errors"].append(f"Failed to open file: {model}")
        return False
    return _parse(f, s, model)


def _parse_bytes(f: _Factory, s: Any, model: Any, path: Any = None) -> bool:
    return _parse(f, s, bytes(model))


def _get_error(f: _Factory, s: Any, index: int) -> Any:
    return f.instance("ParserError", desc=_state(s)["errors"][index])


def _get_layer(f: _Factory, s: Any, index: int) -> Any:
    layers = _state(s).get("layers", [])
    if not isinstance(index, int) or not 0 <= index < len(layers):
        raise IndexError(f"get_layer({index!r}): the network has {len(layers)} layers")
    return layers[index]


def _set_precision(f: _Factory, s: Any, value: Any) -> None:
    f.require(value, "DataType", "ILayer.precision")
    _state(s).update(precision=value, precision_is_set=True)
    f.log.append(("precision", _state(s)["name"], value.name))


def _set_output_type(f: _Factory, s: Any, index: int, dtype: Any) -> None:
    f.require(dtype, "DataType", "ILayer.set_output_type")
    if not isinstance(index, int) or not 0 <= index < _state(s)["num_outputs"]:
        raise IndexError(f"set_output_type({index!r}): layer {_state(s)['name']} has "
                         f"{_state(s)['num_outputs']} outputs")
    _state(s)["output_types"][index] = dtype
    f.log.append(("output_type", _state(s)["name"], index, dtype.name))


def _pool_limit(f: _Factory, s: Any, pool: Any, pool_size: int) -> None:
    f.require(pool, "MemoryPoolType", "IBuilderConfig.set_memory_pool_limit")
    _state(s)["pools"][pool.name] = int(pool_size)
    f.log.append(("pool", pool.name, int(pool_size)))


def _set_flag(f: _Factory, s: Any, flag: Any) -> None:
    f.require(flag, "BuilderFlag", "IBuilderConfig.set_flag")
    _state(s)["flags"].add(flag.name)


def _clear_flag(f: _Factory, s: Any, flag: Any) -> None:
    f.require(flag, "BuilderFlag", "IBuilderConfig.clear_flag")
    _state(s)["flags"].discard(flag.name)


def _get_flag(f: _Factory, s: Any, flag: Any) -> bool:
    f.require(flag, "BuilderFlag", "IBuilderConfig.get_flag")
    return flag.name in _state(s)["flags"]


def _typed_setter(name: str, cls: Optional[str], *, none_ok: bool = False) -> Callable:
    def setter(f: _Factory, s: Any, value: Any) -> None:
        if not (none_ok and value is None):
            if cls is None:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise TypeError(f"{name}: expected an int, got {value!r}")
            else:
                f.require(value, cls, f"IBuilderConfig.{name}")
                _state(value)  # a calibrator subclass must have called the base __init__, as pybind11 checks
        if name == "max_workspace_size":
            f.log.append(("pool", "WORKSPACE", value))
        _state(s)[name] = value
    return setter


def _add_profile(f: _Factory, s: Any, profile: Any) -> int:
    f.require(profile, "IOptimizationProfile", "IBuilderConfig.add_optimization_profile")
    _state(s)["profiles"].append(profile)
    return len(_state(s)["profiles"]) - 1


def _set_calibration_profile(f: _Factory, s: Any, profile: Any) -> bool:
    f.require(profile, "IOptimizationProfile", "IBuilderConfig.set_calibration_profile")
    f.log.append(("calibration_profile",))
    _state(s)["calibration_profile"] = profile
    return True


def _create_timing_cache(f: _Factory, s: Any, serialized_timing_cache: Any) -> Any:
    data = bytes(memoryview(serialized_timing_cache))
    f.log.append(("timing_in", data))
    return f.instance("ITimingCache", data=data)


def _set_timing_cache(f: _Factory, s: Any, cache: Any, ignore_mismatch: bool) -> bool:
    f.require(cache, "ITimingCache", "IBuilderConfig.set_timing_cache")
    _state(s)["timing_cache"] = cache
    return True


def _host_memory(f: _Factory, data: bytes) -> Any:
    return f.classes["IHostMemory"](data)


def _set_shape(f: _Factory, s: Any, input: str, min: Any, opt: Any, max: Any) -> None:
    lo, mid, hi = (tuple(int(v) for v in d) for d in (min, opt, max))
    if not (len(lo) == len(mid) == len(hi)) or any(a > b or b > c for a, b, c in zip(lo, mid, hi)):
        raise ValueError(f"set_shape({input!r}): needs min <= opt <= max, got {lo}, {mid}, {hi}")
    f.log.append(("shapes", input, lo, mid, hi))
    _state(s)["shapes"][input] = (lo, mid, hi)


def _build(f: _Factory, s: Any, network: Any, config: Any) -> Any:
    f.require(network, "INetworkDefinition", "Builder.build_serialized_network")
    f.require(config, "IBuilderConfig", "Builder.build_serialized_network")
    net, cfg = _state(network), _state(config)
    if not net["inputs"]:
        return None  # "Network must have at least one output" and friends: TensorRT logs and returns None
    (name, in_dims), (out_name, out_dims) = net["inputs"][0], net["outputs"][0]
    profiles = [_state(p)["shapes"] for p in cfg["profiles"]]
    if any(d < 0 for d in in_dims) and not any(name in p for p in profiles):
        return None  # dynamic input without an optimization profile
    cal = cfg.get("int8_calibrator")
    first = None
    if cal is not None and "INT8" in cfg["flags"]:
        cache = cal.read_calibration_cache()
        first = bytes(cache).splitlines()[0] if cache else None
    device = cfg["default_device_type"]
    f.log.append(("build", sorted(cfg["flags"]), device.name, cfg["DLA_core"], first))
    shapes = profiles[0][name] if profiles else (in_dims,) * 3
    header = {"version": f.version, "input": name, "output": out_name, "out_per_image": list(out_dims[1:]),
              "profile": [list(d) for d in shapes]}
    return _host_memory(f, PLAN_MAGIC + json.dumps(header).encode())


def _runtime_init(f: _Factory, s: Any, logger: Any) -> None:
    f.require(logger, "ILogger", "Runtime.__init__")


def _deserialize(f: _Factory, s: Any, serialized_engine: Any) -> Any:
    data = bytes(memoryview(serialized_engine))
    if not data.startswith(PLAN_MAGIC):
        return None  # TensorRT logs "Serialization assertion ... failed" and returns None
    header = json.loads(data[len(PLAN_MAGIC):])
    if header["version"] != f.version:
        return None  # "The engine plan file is not compatible with this version of TensorRT"
    return f.instance("ICudaEngine", **header)


def _engine_names(s: Any) -> List[str]:
    return [_state(s)["input"], _state(s)["output"]]


def _tensor_mode(f: _Factory, s: Any, name: str) -> Any:
    names = _engine_names(s)
    if name not in names:
        return f.enum_value("TensorIOMode", "NONE")
    return f.enum_value("TensorIOMode", "INPUT" if name == names[0] else "OUTPUT")


def _tensor_profile_shape(f: _Factory, s: Any, name: str, profile_index: int) -> list:
    if name != _state(s)["input"] or profile_index != 0:
        raise RuntimeError(f"get_tensor_profile_shape({name!r}, {profile_index}): not an input of profile 0")
    return [_dims(f, d) for d in _state(s)["profile"]]


def _profile_shape(f: _Factory, s: Any, profile_index: int, binding: Any) -> list:
    if profile_index != 0 or binding not in (0, _state(s)["input"]):
        raise RuntimeError(f"get_profile_shape({profile_index}, {binding!r}): not an input of profile 0")
    return [_dims(f, d) for d in _state(s)["profile"]]


def _context(f: _Factory, s: Any) -> Any:
    return f.instance("IExecutionContext", engine=s, shape=None, addresses={})


def _set_input_shape(f: _Factory, s: Any, name: str, shape: Any) -> bool:
    eng = _state(_state(s)["engine"])
    shape = tuple(int(v) for v in shape)
    lo, _, hi = eng["profile"]
    if name != eng["input"] or len(shape) != len(lo) or any(not a <= v <= b for a, v, b in zip(lo, shape, hi)):
        return False  # TensorRT logs the error and returns False
    _state(s)["shape"] = shape
    return True


def _set_binding_shape(f: _Factory, s: Any, binding: int, shape: Any) -> bool:
    return binding == 0 and _set_input_shape(f, s, _state(_state(s)["engine"])["input"], shape)


def _output_shape(f: _Factory, s: Any) -> tuple:
    eng, shape = _state(_state(s)["engine"]), _state(s)["shape"]
    batch = shape[0] if shape else -1
    return (batch, *eng["out_per_image"])


def _tensor_shape(f: _Factory, s: Any, name: str) -> Any:
    eng = _state(_state(s)["engine"])
    if name == eng["input"]:
        return _dims(f, _state(s)["shape"] or eng["profile"][0])
    return _dims(f, _output_shape(f, s))


def _binding_shape(f: _Factory, s: Any, binding: int) -> Any:
    return _tensor_shape(f, s, _engine_names(_state(s)["engine"])[binding])


def _set_address(f: _Factory, s: Any, name: str, memory: int) -> bool:
    _state(s)["addresses"][name] = int(memory)
    return True


def _run(f: _Factory, s: Any, src: int, dst: int) -> bool:
    shape = _state(s)["shape"]
    if shape is None:
        return False
    count = int(np.prod(shape))
    batch = np.frombuffer(ctypes.string_at(src, count * 4), np.float32).reshape(shape)
    out_shape = _output_shape(f, s)
    out = np.ascontiguousarray(f.compute(batch, int(np.prod(out_shape[1:]))), dtype=np.float32)
    if out.shape != (shape[0], int(np.prod(out_shape[1:]))) and out.shape != out_shape:
        raise ValueError(f"compute returned {out.shape}, the engine's output is {out_shape}")
    ctypes.memmove(dst, out.ctypes.data, out.nbytes)
    return True


def _execute_v3(f: _Factory, s: Any, stream_handle: int) -> bool:
    eng, addresses = _state(_state(s)["engine"]), _state(s)["addresses"]
    if eng["input"] not in addresses or eng["output"] not in addresses:
        return False  # "Neither address or allocator is set for output tensor"
    return _run(f, s, addresses[eng["input"]], addresses[eng["output"]])


def _execute_v2(f: _Factory, s: Any, bindings: list, stream_handle: int = 0, input_consumed: Any = None) -> bool:
    return _run(f, s, int(bindings[0]), int(bindings[1]))


def _calibrator_init(f: _Factory, s: Any) -> None:
    return None


def _dims_init(f: _Factory, s: Any, shape: Any = ()) -> None:
    _state(s)["shape"] = tuple(int(v) for v in shape)


def _volume(iterable: Any) -> int:
    vol = 1
    for elem in iterable:
        vol *= elem
    return vol


_MODULE_FUNCTIONS: Dict[str, Callable] = {"volume": _volume}

# (class, member) -> behaviour; a tuple is (getter, setter) of a property. Only members in the table are used.
_BEHAVIOUR: Dict[str, Dict[str, Any]] = {
    "ILogger": {"__init__": lambda f, s: None},
    "Logger": {"__init__": _logger_init, "log": lambda f, s, severity, msg: None},
    "Builder": {"__init__": _builder_init, "create_network": _create_network,
                "create_builder_config": _builder_config, "create_optimization_profile": _create_profile,
                "build_serialized_network": _build,
                "platform_has_fast_fp16": lambda f, s: True, "platform_has_fast_int8": lambda f, s: True},
    "OnnxParser": {"__init__": _parser_init, "parse_from_file": _parse_from_file, "parse": _parse_bytes,
                   "num_errors": lambda f, s: len(_state(s)["errors"]), "get_error": _get_error,
                   "clear_errors": lambda f, s: _state(s)["errors"].clear()},
    "ParserError": {"desc": lambda f, s: _state(s)["desc"], "__str__": lambda f, s: _state(s)["desc"],
                    "__repr__": lambda f, s: _state(s)["desc"]},
    "IBuilderConfig": {
        "set_memory_pool_limit": _pool_limit,
        "get_memory_pool_limit": lambda f, s, pool: _state(s)["pools"].get(pool.name, 0),
        "set_flag": _set_flag, "clear_flag": _clear_flag, "get_flag": _get_flag,
        "add_optimization_profile": _add_profile, "set_calibration_profile": _set_calibration_profile,
        "num_optimization_profiles": lambda f, s: len(_state(s)["profiles"]),
        "create_timing_cache": _create_timing_cache, "set_timing_cache": _set_timing_cache,
        "get_timing_cache": lambda f, s: _state(s)["timing_cache"],
        "int8_calibrator": (lambda f, s: _state(s)["int8_calibrator"],
                            _typed_setter("int8_calibrator", "IInt8Calibrator", none_ok=True)),
        "default_device_type": (lambda f, s: _state(s)["default_device_type"],
                                _typed_setter("default_device_type", "DeviceType")),
        "DLA_core": (lambda f, s: _state(s)["DLA_core"], _typed_setter("DLA_core", None)),
        "max_workspace_size": (lambda f, s: _state(s)["max_workspace_size"],
                               _typed_setter("max_workspace_size", None)),
    },
    "INetworkDefinition": {"num_layers": lambda f, s: len(_state(s).get("layers", [])), "get_layer": _get_layer},
    "ILayer": {"precision": (lambda f, s: _state(s)["precision"], _set_precision), "set_output_type": _set_output_type},
    "IOptimizationProfile": {"set_shape": _set_shape,
                             "get_shape": lambda f, s, input: [_dims(f, d) for d in _state(s)["shapes"][input]]},
    "ITimingCache": {"serialize": lambda f, s: _host_memory(f, b"timing-cache")},
    "Runtime": {"__init__": _runtime_init, "deserialize_cuda_engine": _deserialize},
    "ICudaEngine": {
        "num_io_tensors": lambda f, s: 2, "get_tensor_name": lambda f, s, index: _engine_names(s)[index],
        "get_tensor_mode": _tensor_mode, "get_tensor_profile_shape": _tensor_profile_shape,
        "num_bindings": lambda f, s: 2, "get_binding_name": lambda f, s, index: _engine_names(s)[index],
        "binding_is_input": lambda f, s, index: index == 0, "get_profile_shape": _profile_shape,
        "num_optimization_profiles": lambda f, s: 1, "create_execution_context": _context,
        "serialize": lambda f, s: _host_memory(f, PLAN_MAGIC + json.dumps(
            {k: v for k, v in _state(s).items()}).encode()),
    },
    "IExecutionContext": {
        "set_input_shape": _set_input_shape, "get_tensor_shape": _tensor_shape, "set_tensor_address": _set_address,
        "execute_async_v3": _execute_v3, "set_binding_shape": _set_binding_shape,
        "get_binding_shape": _binding_shape, "execute_async_v2": _execute_v2,
        "execute_v2": lambda f, s, bindings: _execute_v2(f, s, bindings), "engine": lambda f, s: _state(s)["engine"],
    },
    "IInt8Calibrator": {"__init__": _calibrator_init},
    "IInt8EntropyCalibrator2": {"__init__": _calibrator_init},
    "Dims": {"__init__": _dims_init, "__len__": lambda f, s: len(_state(s)["shape"]),
             "__getitem__": lambda f, s, i: _state(s)["shape"][i],
             "__eq__": lambda f, s, o: tuple(s) == tuple(o), "__repr__": lambda f, s: repr(_state(s)["shape"]),
             "__str__": lambda f, s: str(_state(s)["shape"]), "MAX_DIMS": lambda f, s: 8},
}


class HostCuda:
    """Host memory posing as device memory, with the method surface of ``targets/tensorrt/cudart.py``'s
    ``CudaRuntime`` (and nothing else: an unknown call fails like a missing libcudart symbol would)."""

    __slots__ = ("buffers", "capability", "freed", "name", "streams")

    def __init__(self, name: str = "Orin", capability: tuple = (8, 7)) -> None:
        self.buffers: dict = {}
        self.freed: list = []
        self.streams: list = []
        self.name, self.capability = name, capability

    def device_count(self) -> int:
        return 1

    def device_name(self, device: int = 0) -> str:
        return self.name

    def compute_capability(self, device: int = 0) -> tuple:
        return self.capability

    def malloc(self, nbytes: int) -> int:
        import ctypes

        buf = ctypes.create_string_buffer(nbytes)
        self.buffers[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def free(self, ptr: int) -> None:
        self.freed.append(ptr)

    def stream_create(self) -> int:
        self.streams.append(len(self.streams) + 7)
        return self.streams[-1]

    def stream_destroy(self, stream: int) -> None:
        self.streams.remove(stream)

    def copy_async(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        import ctypes

        assert kind in (1, 2) and stream in self.streams
        ctypes.memmove(dst, src, nbytes)

    def synchronize(self, stream: int) -> None:
        assert stream in self.streams
