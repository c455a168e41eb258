"""Serving-system files for a bundle's models: a Triton model repository and DeepStream nvinfer configs.

Triton: one model folder per target (``triton/<model>/config.pbtxt`` with dynamic batching and the class
labels); the models themselves are not copied twice into the bundle: ``triton/fill.sh REPO`` copies each
model's files (listed in its ``sources.txt``) into a repository on the server, where a TensorRT plan must be
the engine ``device-build`` made with the server's own TensorRT.

DeepStream's nvinfer normalises with one scalar (``net-scale-factor``) and per-channel ``offsets``
(y = net-scale-factor * (x - offset)) and scales the whole frame to the network size. Where the bundle's
preprocessing fits that (one std for all channels), the config says so with exact numbers; otherwise
DeepStream gets a model that takes nvinfer's raw pixels (scale 1, offsets 0) and normalises in the graph,
so its predictions are the bundle's. A centre crop cannot be expressed: the config says what it costs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from resnet_deploy.calibration.preprocess import Preprocessing

TRITON = "triton"
DEEPSTREAM = "deepstream"
FILL_SCRIPT = """#!/bin/sh
# Fill a Triton model repository from this bundle: ./fill.sh /models
# Each model folder lists the bundle files it needs in sources.txt ("<destination> <bundle-relative source>").
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
bundle="$(dirname "$here")"
repo="${1:?usage: fill.sh MODEL_REPOSITORY}"
for model in "$here"/*/; do
    name="$(basename "$model")"
    mkdir -p "$repo/$name"
    cp "$model/config.pbtxt" "$model/labels.txt" "$repo/$name/"
    while read -r dest src; do
        [ -n "$dest" ] || continue
        # a pattern (an engine named after its TensorRT and GPU) means its newest match
        match="$(cd "$bundle" && ls -t $src 2>/dev/null | head -n 1 || true)"
        src="${match:-$src}"
        if [ ! -f "$bundle/$src" ]; then
            echo "fill.sh: $name needs $src, which is not in the bundle (for a TensorRT plan: run" \\
                 "resnet-deploy device-build on this server first)" >&2
            exit 2
        fi
        mkdir -p "$repo/$name/$(dirname "$dest")"
        cp "$bundle/$src" "$repo/$name/$dest"
    done < "$model/sources.txt"
    echo "$name -> $repo/$name"
done
"""


def triton_model(bundle: Path, name: str, *, prep: Preprocessing, num_classes: int, platform: str = "",
                 backend: str = "", sources: Mapping[str, str], max_batch: int = 32, kind: str = "KIND_CPU",
                 default_file: str = "", input_name: str = "input", output_name: str = "logits",
                 parameters: Mapping[str, str] | None = None) -> list[Path]:
    """``triton/<name>/``: config.pbtxt (Triton's ModelConfig text format), labels.txt, sources.txt, and the
    repository's shared fill.sh. ``sources``: destination in the model folder -> bundle-relative file."""
    folder = bundle / TRITON / name
    folder.mkdir(parents=True, exist_ok=True)
    c, h, w = prep.shape
    lines = [f'name: "{name}"']
    lines += [f'platform: "{platform}"'] if platform else [f'backend: "{backend}"']
    if default_file:
        lines.append(f'default_model_filename: "{default_file}"')
    lines += [
        f"max_batch_size: {max_batch}",
        f'input [ {{ name: "{input_name}" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ {c}, {h}, {w} ] }} ]',
        f'output [ {{ name: "{output_name}" data_type: TYPE_FP32 dims: [ {num_classes} ] '
        'label_filename: "labels.txt" } ]',
        "dynamic_batching { }",
        f"instance_group [ {{ count: 1 kind: {kind} }} ]",
    ]
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    (folder / "config.pbtxt").write_text("\n".join(lines) + "\n")
    (folder / "labels.txt").write_text("".join(f"{n}\n" for n in _labels(prep, num_classes)))
    (folder / "sources.txt").write_text("".join(f"{dest} {src}\n" for dest, src in sources.items()))
    script = bundle / TRITON / "fill.sh"
    script.write_text(FILL_SCRIPT)
    script.chmod(0o755)
    return [folder / "config.pbtxt", folder / "labels.txt", folder / "sources.txt", script]


def _labels(prep: Preprocessing, num_classes: int) -> list[str]:
    names = list(prep.class_names)
    return names if len(names) == num_classes else [str(i) for i in range(num_classes)]


def nvinfer_normalisation(prep: Preprocessing) -> tuple[float, tuple[float, ...], bool]:
    """(net-scale-factor, offsets, exact): nvinfer's y = s * (x - offset) for the bundle's (x/255 - mean)/std.
    Exact when every channel has the same std; otherwise (1, zeros, False): normalise in the graph."""
    if len(set(prep.std)) == 1:
        return 1.0 / (255.0 * prep.std[0]), tuple(255.0 * m for m in prep.mean), True
    return 1.0, (0.0,) * prep.channels, False


def with_normalisation(onnx_in: Path, onnx_out: Path, prep: Preprocessing) -> None:
    """``onnx_in`` behind (x/255 - mean)/std on its input, so it takes raw 0..255 pixels (nvinfer's with
    scale 1 and no offsets). The Mul/Add sit before everything else, Q/DQ nodes included."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_in))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    name = next(i.name for i in graph.input if i.name not in initializers)
    raw = f"{name}_pixels"
    scale = (1.0 / (255.0 * np.asarray(prep.std, np.float32))).reshape(1, -1, 1, 1).astype(np.float32)
    shift = (-np.asarray(prep.mean, np.float32) / np.asarray(prep.std, np.float32)).reshape(1, -1, 1, 1)
    graph.initializer.extend([numpy_helper.from_array(scale, "nvinfer_scale"),
                              numpy_helper.from_array(shift.astype(np.float32), "nvinfer_shift")])
    scaled = f"{raw}_scaled"
    nodes = [helper.make_node("Mul", [raw, "nvinfer_scale"], [scaled], name="nvinfer_normalise_scale"),
             helper.make_node("Add", [scaled, "nvinfer_shift"], [name], name="nvinfer_normalise_shift")]
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    for value in graph.input:
        if value.name == name:
            value.name = raw
    onnx.checker.check_model(model)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)  # deepstream/ may not exist yet: nvinfer_config makes it
    onnx.save(model, str(onnx_out))


def nvinfer_config(bundle: Path, target: str, *, prep: Preprocessing, num_classes: int, onnx_file: str,
                   network_mode: int, calib_file: str = "", engine_file: str = "", exact: bool,
                   scale: float, offsets: Sequence[float], batch: int = 1, input_name: str = "input",
                   output_name: str = "logits", notes: Sequence[str] = ()) -> list[Path]:
    """``deepstream/config_infer_<target>.txt`` (GLib key-file, nvinfer's format) and ``deepstream/labels.txt``.
    Paths in the config are relative to the config file, as nvinfer resolves them."""
    folder = bundle / DEEPSTREAM
    folder.mkdir(parents=True, exist_ok=True)
    c, h, w = prep.shape
    colour = 2 if c == 1 else (1 if prep.channel_order.upper() == "BGR" else 0)
    props: list[tuple[str, Any]] = [
        ("gpu-id", 0),
        ("net-scale-factor", repr(float(scale))),
        ("offsets", ";".join(repr(float(v)) for v in offsets)),
        ("model-color-format", colour),
        ("onnx-file", onnx_file),
        *([("int8-calib-file", calib_file)] if calib_file else []),
        *([("model-engine-file", engine_file)] if engine_file else []),
        ("labelfile-path", "labels.txt"),
        ("batch-size", batch),
        ("network-mode", network_mode),
        ("network-type", 1),
        ("process-mode", 1),
        ("infer-dims", f"{c};{h};{w}"),
        ("output-blob-names", output_name),
        ("maintain-aspect-ratio", 0),
        ("classifier-threshold", 0.0),
        ("gie-unique-id", 1),
    ]
    head = [f"# nvinfer config for the {target} model of this bundle (resnet-deploy).",
            "# nvinfer computes y = net-scale-factor * (x - offsets) on the frame scaled to infer-dims.",
            "# " + ("This equals the bundle's (x/255 - mean)/std exactly." if exact else
                    "The bundle's per-channel std does not fit one scale factor, so onnx-file is a copy of the "
                    "model that normalises in the graph and nvinfer passes raw pixels (scale 1, no offsets)."),
            *[f"# {n}" for n in notes]]
    body = [f"{k}={v}" for k, v in props]
    path = folder / f"config_infer_{target}.txt"
    path.write_text("\n".join([*head, "[property]", *body]) + "\n")
    labels = folder / "labels.txt"
    # nvinfer's classifier label file: one line of all labels, separated by ';'
    labels.write_text(";".join(_labels(prep, num_classes)) + "\n")
    return [path, labels]
