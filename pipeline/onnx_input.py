"""Start a build from an FP32 ONNX classifier someone else exported (``build --onnx``): no torch stages.

The graph is checked to be what the rest of the chain takes (one NCHW float input, (batch, classes) logits,
the ops a ResNet-family classifier is made of), then given the bundle's input/output names, a free batch
and a fixed height and width. Batch-norm is folded in the graph and checked on real images, and the graph
as given (unfolded) is the FP32 reference every row is compared with: there is no PyTorch model to ask.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.qdq import MIN_OPSET
from resnet_deploy.errors import CheckpointError, ConfigError
from resnet_deploy.pipeline.export import INPUT_NAME, OUTPUT_NAME, ExportCheck, compare_outputs, finish_onnx, run_onnx
from resnet_deploy.pipeline.fold import FoldCheck, compare_folded
from resnet_deploy.pipeline.loaded_model import LoadedModel
from resnet_deploy.pipeline.onnx_batchnorm import fold_batchnorm_graph
from resnet_deploy.pipeline.onnx_fold import fold_constants
from resnet_deploy.targets import onnx_session, onnx_session_runtime

FLAG = "--onnx"
# What a ResNet-family classifier is made of, under the TorchScript and dynamo exporters and the usual
# graph tools: convolutions, norms, activations, pools, the SE block's Sigmoid/Mul, the classifier, and the
# shape plumbing around Flatten. The quantizers put INT8 on Conv/Gemm/MatMul and carry the rest in float;
# anything else (attention, recurrence, control flow, custom domains) is refused rather than half-supported.
CLASSIFIER_OPS = frozenset({
    "Conv", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Add",
    "Sub", "Mul", "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "Pad",
    "Gemm", "MatMul", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Slice", "Shape",
    "Gather", "Cast", "Constant", "ConstantOfShape", "Identity", "Dropout", "Softmax",
})
# Inputs of these ops that are learned tensors (a BatchNormalization's running mean and variance are not).
_LEARNED_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1), "BatchNormalization": (1, 2)}
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PROBE_BATCH = 2  # more than one image: a graph exported with a fixed batch of 1 shows itself here


@dataclass(frozen=True)
class OnnxModel(LoadedModel):
    """A model that came as an FP32 ONNX file: ``graph`` is it, prepared (input/output names of the bundle,
    free batch, fixed height and width), batch-norm not yet folded."""

    path: Path = Path()
    graph: Any = None
    learned: int = 0  # elements of the graph's learned tensors: the parameters PyTorch would count

    @property
    def parameter_count(self) -> int:
        return self.learned


def _fail(path: Path, what: str, fix: str) -> CheckpointError:
    return CheckpointError(f"{FLAG} {path}: {what}. {fix}")


def load_onnx(path: Path, *, input_size: tuple[int, int] | None = None, mean: tuple[float, ...] | None = None,
              std: tuple[float, ...] | None = None, num_classes: int | None = None) -> OnnxModel:
    """Read and check ``path``, and say how its input is made: flags first, then the preprocessing record
    this tool writes into ONNX metadata; the graph's own fixed height and width must agree with both."""
    proto = _read(path)
    inp, out = _signature(proto, path)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    channels, fixed = dims[1], (dims[2], dims[3])
    if channels not in (1, 3):
        raise _fail(path, f"its input {inp.name!r} has {channels or 'a free number of'} channels",
                    "resnet-deploy takes 1-channel (grayscale) or 3-channel (RGB) image classifiers.")
    saved = _saved_preprocessing(proto, path)
    size = input_size or (saved.input_size if saved else None)
    if None not in fixed and size is not None and tuple(size) != fixed:
        where = "--input-size" if input_size else "its metadata resnet_deploy.preprocessing says"
        raise ConfigError(f"{where} {size[0]}x{size[1]} does not match {FLAG} {path}, whose input is fixed at "
                          f"{fixed[0]}x{fixed[1]}: leave out --input-size, or export the model with a free "
                          "height and width.")
    if size is None:
        h, w = fixed
        if h is None or w is None:
            raise _fail(path, f"its input {inp.name!r} has a free height or width and the file carries no "
                        "preprocessing record", "Pass --input-size (the size the model was trained at).")
        size = (h, w)
    mean = mean or (saved.mean if saved else None)
    std = std or (saved.std if saved else None)
    if mean is None or std is None:
        raise ConfigError(f"{FLAG} {path} carries no preprocessing record (ONNX metadata resnet_deploy.preprocessing): "
                          "pass --mean and --std, the normalisation the model was trained with (on [0, 1] pixels, "
                          "e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for ImageNet).")
    prep = Preprocessing(size, channels, mean, std, crop_ratio=saved.crop_ratio if saved else 1.0,
                         class_names=saved.class_names if saved else ())
    graph = _prepare(proto, inp.name, out.name, size)
    _check_ops(graph, path)
    classes = _probe(graph, prep, path)
    if num_classes is not None and num_classes != classes:
        raise ConfigError(f"--num-classes {num_classes} does not match {FLAG} {path}, which gives {classes} logits: "
                          "leave out --num-classes.")
    # A name for the report and the default --out folder: the one this tool recorded, if a plain word.
    arch = next((p.value for p in proto.metadata_props if p.key == "resnet_deploy.arch"), "")
    return OnnxModel(
        model=None, learned=_learned_count(graph), arch=arch if _PLAIN_NAME.fullmatch(arch) else path.stem,
        num_classes=classes, in_channels=channels, shortcut="", source=f"onnx:{path}",
        meta={"preprocessing": prep.to_dict()}, path=path, graph=graph,
    )


def _read(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise _fail(path, "does not exist or is not a file", "Check the path.")
    try:
        proto = onnx.load(str(path))
    except Exception as err:  # protobuf's DecodeError, a missing external-data file, ...
        raise _fail(path, f"cannot be read as an ONNX model ({err.__class__.__name__})",
                    "Give an .onnx file exported from an FP32 classifier.") from None
    if not proto.graph.node:
        raise _fail(path, "holds no ONNX graph", "Give an .onnx file exported from an FP32 classifier.")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise _fail(path, f"fails onnx.checker ({str(err).splitlines()[0]})", "Export the model again.") from None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise _fail(path, f"uses ONNX opset {opset}, and per-channel INT8 needs opset {MIN_OPSET} or newer",
                    "Export it again with opset 17, or convert it with onnx.version_converter.")
    return proto


def _signature(proto: Any, path: Path) -> tuple[Any, Any]:
    """The graph's one image input (N, C, H, W) and one logits output (N, classes), both float32."""
    from onnx import TensorProto

    inits = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in inits]
    fix = "resnet-deploy takes an image classifier: one float32 NCHW input, one (batch, classes) output."
    if len(inputs) != 1 or len(proto.graph.output) != 1:
        raise _fail(path, f"has {len(inputs)} input(s) and {len(proto.graph.output)} output(s)", fix)
    inp, out = inputs[0], proto.graph.output[0]
    for tensor, role, rank in ((inp, "input", 4), (out, "output", 2)):
        kind = tensor.type.tensor_type
        if kind.elem_type != TensorProto.FLOAT:
            raise _fail(path, f"its {role} {tensor.name!r} is not float32 "
                        f"({TensorProto.DataType.Name(kind.elem_type)})", fix)
        if kind.HasField("shape") and len(kind.shape.dim) != rank:
            raise _fail(path, f"its {role} {tensor.name!r} has rank {len(kind.shape.dim)}, not {rank}", fix)
    if not inp.type.tensor_type.HasField("shape"):
        raise _fail(path, f"its input {inp.name!r} has no declared shape", fix)
    return inp, out


def _saved_preprocessing(proto: Any, path: Path) -> Preprocessing | None:
    """The record this tool writes into ONNX metadata (``resnet_deploy.preprocessing``), when present."""
    text = next((p.value for p in proto.metadata_props if p.key == "resnet_deploy.preprocessing"), None)
    if text is None:
        return None
    origin = f"{FLAG} {path}: metadata resnet_deploy.preprocessing"
    try:
        return Preprocessing.from_dict(json.loads(text), origin=origin)
    except (ValueError, ConfigError) as err:
        raise CheckpointError(f"{err if isinstance(err, ConfigError) else origin + ' is not JSON.'} Pass --input-size, "
                              "--mean and --std, or remove the metadata entry.") from None


def _prepare(proto: Any, input_name: str, output_name: str, size: tuple[int, int]) -> Any:
    """A copy with the bundle's tensor names, a free batch, the given height and width, constants folded."""
    import onnx

    graph_model = onnx.ModelProto()
    graph_model.CopyFrom(proto)
    graph = graph_model.graph
    renames = {input_name: INPUT_NAME, output_name: OUTPUT_NAME}
    for node in graph.node:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                names[i] = renames.get(name, name)
    for tensor in (*graph.input, *graph.output):
        tensor.name = renames.get(tensor.name, tensor.name)
    inp = next(i for i in graph.input if i.name == INPUT_NAME)
    dims = inp.type.tensor_type.shape.dim
    dims[0].dim_param = "batch"
    dims[2].dim_value, dims[3].dim_value = size
    out_dims = graph.output[0].type.tensor_type.shape.dim
    if out_dims:
        out_dims[0].dim_param = "batch"
    del graph.value_info[:]  # shapes recorded for the old batch or size; the runtimes infer them again
    folded, _ = fold_constants(graph_model)
    return folded


def _check_ops(graph: Any, path: Path) -> None:
    unknown = sorted({f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                      for n in graph.graph.node
                      if n.domain not in ("", "ai.onnx") or n.op_type not in CLASSIFIER_OPS})
    if unknown:
        raise _fail(path, f"uses op(s) outside what resnet-deploy can quantize: {', '.join(unknown[:8])}",
                    "It takes ResNet-family image classifiers, made of " + ", ".join(sorted(CLASSIFIER_OPS)) + ".")


def _probe(graph: Any, prep: Preprocessing, path: Path) -> int:
    """Run the prepared graph on a small batch; the number of classes it answers with."""
    batch = np.zeros((_PROBE_BATCH, *prep.shape), dtype=np.float32)
    try:
        logits = np.asarray(_runner(graph)(batch))
    except Exception as err:  # the runtime's own error types; its message says what went wrong
        raise _fail(path, f"does not run on a batch of {_PROBE_BATCH} images of {prep.channels}x{prep.input_size[0]}x"
                    f"{prep.input_size[1]} ({str(err).splitlines()[0][:200]})",
                    "Export it with a dynamic batch axis, and check --input-size.") from None
    if logits.ndim != 2 or logits.shape[0] != _PROBE_BATCH or logits.shape[1] < 2:
        raise _fail(path, f"answers a batch of {_PROBE_BATCH} with shape {logits.shape}, not ({_PROBE_BATCH}, "
                    "classes)", "Give an image classifier whose output is the logits (batch, classes).")
    return int(logits.shape[1])


def _learned_count(graph: Any) -> int:
    inits = {t.name: tuple(t.dims) for t in graph.graph.initializer}
    names = {n.input[k]: None for n in graph.graph.node for k in _LEARNED_INPUTS.get(n.op_type, ())
             if k < len(n.input) and n.input[k] in inits}
    return sum(int(np.prod(inits[name], dtype=np.int64)) for name in names)


def _runner(graph: Any) -> Callable[[np.ndarray], np.ndarray]:
    session = onnx_session(graph.SerializeToString())
    return lambda batch: session.run(None, {INPUT_NAME: batch})[0]


def fold_onnx(model: OnnxModel, sample: np.ndarray) -> tuple[Any, FoldCheck]:
    """The graph with batch-norm folded into its convolutions, checked against the graph as given."""
    result = fold_batchnorm_graph(model.graph)
    if result.leftover:
        raise _fail(model.path, f"holds {len(result.leftover)} BatchNormalization node(s) that do not follow a "
                    f"convolution and cannot be folded (first: {result.leftover[0]})",
                    "resnet-deploy takes ResNet-family classifiers, whose batch-norms follow their convolutions.")
    return result.model, compare_folded(_runner(model.graph)(sample), _runner(result.model)(sample), result.folded)


def write_onnx(folded: Any, path: Path, *, sample: np.ndarray, metadata: dict[str, Any]) -> ExportCheck:
    """The bundle's FP32 ONNX from the folded graph (constants folded, metadata, checker), checked against it."""
    opset = next((o.version for o in folded.opset_import if o.domain in ("", "ai.onnx")), 0)
    finish_onnx(folded, path, metadata=metadata)
    return compare_outputs(_runner(folded)(sample), run_onnx(path, sample), against="the BN-folded input graph",
                           opset=opset)


def reference_runner(model: OnnxModel) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The FP32 reference of an ONNX input: its graph as given, in the pipeline's own ONNX session."""
    return onnx_session_runtime().name, _runner(model.graph)
