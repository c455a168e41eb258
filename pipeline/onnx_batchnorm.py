"""Fold batch-norm into the preceding convolution of an ONNX graph, for models that arrive as ONNX.

The same per-channel math as the PyTorch fold (``fold.fuse_conv_bn_weights``), applied to initializers:
a BatchNormalization whose input is a Conv's only use becomes that Conv's new weight and bias. The
caller's graph is not changed; a batch-norm that cannot be folded is left where it is and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from resnet_deploy.pipeline.fold import fuse_conv_bn_weights


@dataclass(frozen=True)
class GraphFold:
    """The folded graph, how many Conv+BN pairs were folded, and the names of the batch-norms left over."""

    model: Any
    folded: int
    leftover: tuple[str, ...]


def _attr(node: Any, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return float(a.i if a.type == a.INT else a.f)
    return default


def fold_batchnorm_graph(model: Any) -> GraphFold:
    """A copy of ``model`` with every Conv -> BatchNormalization pair folded into the Conv."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output if o}
    uses: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    drop: set[int] = set()  # indices of the folded batch-norm nodes
    new_inits, count, leftover = [], 0, []
    for index, bn in enumerate(graph.node):
        if bn.op_type != "BatchNormalization" or bn.domain not in ("", "ai.onnx"):
            continue
        conv = producer.get(bn.input[0])
        params = [inits.get(name) for name in bn.input[1:5]]
        foldable = (conv is not None and conv.op_type == "Conv" and conv.domain in ("", "ai.onnx")
                    and uses.get(bn.input[0]) == 1 and bn.input[0] not in graph_outputs
                    and conv.input[1] in inits and (len(conv.input) < 3 or not conv.input[2] or conv.input[2] in inits)
                    and all(p is not None for p in params) and _attr(bn, "training_mode", 0) == 0
                    and not any(bn.output[1:]))
        if conv is None or not foldable:
            leftover.append(bn.name or bn.output[0])
            continue
        gamma, beta, mean, var = (np.array(p, dtype=np.float32) for p in params)
        weight = inits[conv.input[1]].astype(np.float32)
        bias = inits[conv.input[2]].astype(np.float32) if len(conv.input) > 2 and conv.input[2] else None
        w, b = fuse_conv_bn_weights(weight, bias, mean, var, _attr(bn, "epsilon", 1e-5), gamma, beta)
        # New names: the conv's old weight may be shared, and the old tensors go when nothing uses them.
        stem = conv.name or conv.output[0]
        w_name, b_name = f"{stem}.weight_bn_folded", f"{stem}.bias_bn_folded"
        new_inits += [numpy_helper.from_array(w, w_name), numpy_helper.from_array(b, b_name)]
        data = conv.input[0]
        del conv.input[:]
        conv.input.extend([data, w_name, b_name])
        conv.output[0] = bn.output[0]
        drop.add(index)
        count += 1
    kept = [n for i, n in enumerate(graph.node) if i not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    produced = {o for n in graph.node for o in n.output}
    infos = [v for v in graph.value_info if v.name in produced]  # the folded convs' old outputs are gone
    del graph.value_info[:]
    graph.value_info.extend(infos)
    used = {name for n in graph.node for name in n.input}
    live = [t for t in graph.initializer if t.name in used or t.name in graph_outputs]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return GraphFold(out, count, tuple(leftover))
