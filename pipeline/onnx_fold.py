"""Constant folding of an exported ONNX graph: every node whose inputs are all constants is evaluated once
(with ONNX's own reference implementation) and replaced by its result.

The TorchScript exporter writes the option-A shortcut's zero padding as a small subgraph
(ConstantOfShape, Concat, Reshape, Slice, Transpose, Cast) that computes the Pad amounts at run time, so
TensorRT and DLA see a dynamic Pad; folded, the Pad takes a constant and every runtime sees a static one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Never folded: their result is not a function of their inputs.
_NONDETERMINISTIC = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


def _constant_value(node: Any) -> np.ndarray | None:
    from onnx import numpy_helper

    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
    return None


def fold_constants(model: Any) -> tuple[Any, int]:
    """A copy of ``model`` with constant subgraphs evaluated; returns it and the number of nodes removed."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    opsets = list(out.opset_import)
    known: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - set(known)
    keep = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        value = _constant_value(node) if node.op_type == "Constant" else None
        if value is not None:
            known[node.output[0]] = value
            continue
        foldable = (node.op_type not in _NONDETERMINISTIC and not node.domain and inputs
                    and all(name in known and name not in graph_inputs for name in inputs))
        if not foldable:
            keep.append(node)
            continue
        single = helper.make_graph(
            [node], "fold", [], [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                                 for o in node.output if o],
            [numpy_helper.from_array(known[name], name) for name in dict.fromkeys(inputs)])
        try:
            results = ReferenceEvaluator(helper.make_model(single, opset_imports=opsets)).run(None, {})
        except Exception:  # an op the reference evaluator lacks: leave it to the runtimes
            keep.append(node)
            continue
        for name, result in zip([o for o in node.output if o], results):
            known[name] = np.asarray(result)
    used = {name for node in keep for name in node.input} | {o.name for o in graph.output}
    removed = len(graph.node) - len(keep)
    graph.ClearField("node")
    graph.node.extend(keep)
    graph.ClearField("initializer")
    graph.initializer.extend(numpy_helper.from_array(known[name], name) for name in known if name in used)
    # value_info of folded tensors would now describe initializers: drop them, shape inference redoes it
    infos = [v for v in graph.value_info if v.name not in known]
    graph.ClearField("value_info")
    graph.value_info.extend(infos)
    return out, removed
