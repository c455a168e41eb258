"""The explicit Q/DQ graph (``calibration/qdq.py``, TensorRT's placement) in the form ONNX Runtime's CPU fuses.

ONNX Runtime runs DQ -> Conv -> Q as one QLinearConv only when the Conv's output is quantized too and its input
and output codes have one type. TensorRT's placement quantizes conv inputs and shortcuts, never a conv's own
output (TensorRT fuses it), with int8 codes. Run as is, ONNX Runtime found nothing to fuse and ran float
convolutions between Q/DQ pairs: 18.3 ms against FP32's 5.8 ms on the CIFAR SE-ResNeXt-50. ``qlinear_form``
(the form of the QLinear* kernels) changes two things:

- every activation pair gets uint8 codes: a tensor that a Relu made non-negative (through max pooling) zero
  point 0 and a step of amax/255, twice int8's resolution, which also lets ONNX Runtime drop the Relu; any
  other tensor zero point 128 and amax/127, the same grid as int8;
- each quantized Conv whose output has no pair, and no Relu after it, gets one, its range from the same
  calibration table (the SE block's expansion conv before its Sigmoid included: without it ONNX Runtime
  ran that conv in float and the model at 5.1 ms instead of 3.6 ms).

In that SE-ResNeXt's default build (the four downsample convs in float, the fallback's choice) the result agreed
with FP32 on 98.80 % of the 10,000 test images, p50 4.04 ms against FP32's 6.72 ms; ONNX Runtime's own quantizer,
which also quantizes the SE block's Sigmoid and Mul and the residual Add, reached 97.57 %
(benchmarks/results/int8_agreement_cifar.md).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from resnet_deploy.calibration.activation_ranges import MIN_AMAX

_NON_NEGATIVE = ("Relu",)
_SIGN_KEEPING = ("MaxPool",)
SIGNED_ZERO_POINT = 128


def qlinear_form(model, amax: Mapping[str, float], *, seven_bit: bool = False) -> dict[str, int]:
    """Rewrite ``model`` (made by ``make_qdq_onnx``, weights not yet folded) in place as the module docstring
    says; ``amax``: the calibration table it was made with. ``seven_bit``: weights of convs reading a signed
    (zero point 128) input get 7-bit codes, for CPUs without VNNI, where u8 x s8 pairs with large codes
    saturate 16-bit sums. Returns counts of what changed."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)

    def non_negative(tensor: str) -> bool:
        node = producer.get(tensor)
        while node is not None and node.op_type in _SIGN_KEEPING:
            node = producer.get(node.input[0])
        return node is not None and node.op_type in _NON_NEGATIVE

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    unsigned = signed = 0
    done: set[str] = set()
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or node.input[1] in done:
            continue  # a weight (an initializer), or a scale already rewritten
        scale_name, zero_name = node.input[1], node.input[2]
        done.add(scale_name)
        scale = numpy_helper.to_array(inits[scale_name]).astype(np.float32)
        if non_negative(node.input[0]):
            put(scale_name, (scale * np.float32(127.0 / 255.0)).astype(np.float32))
            put(zero_name, np.zeros(scale.shape, np.uint8))
            unsigned += 1
        else:
            put(zero_name, np.full(scale.shape, SIGNED_ZERO_POINT, np.uint8))
            signed += 1

    def quantized_weight(conv) -> str | None:
        dq = producer.get(conv.input[1]) if len(conv.input) > 1 else None
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return q.input[0] if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inits else None

    added = 0
    new_inits = []
    for conv in [n for n in graph.node if n.op_type == "Conv" and quantized_weight(n)]:
        out = conv.output[0]
        readers = consumers.get(out, [])
        if not readers or out not in amax or any(r.op_type in ("QuantizeLinear", *_NON_NEGATIVE) for r in readers):
            continue
        scale_name, zero_name = f"{out}_qdq_scale", f"{out}_qdq_zero_point"
        new_inits += [numpy_helper.from_array(np.asarray(max(float(amax[out]), MIN_AMAX) / 127.0, np.float32),
                                              scale_name),
                      numpy_helper.from_array(np.asarray(SIGNED_ZERO_POINT, np.uint8), zero_name)]
        q = helper.make_node("QuantizeLinear", [out, scale_name, zero_name], [f"{out}_quantized"],
                             name=f"{out}_QuantizeLinear")
        dq = helper.make_node("DequantizeLinear", [f"{out}_quantized", scale_name, zero_name],
                              [f"{out}_dequantized"], name=f"{out}_DequantizeLinear")
        for reader in readers:
            for k, t in enumerate(reader.input):
                if t == out:
                    reader.input[k] = f"{out}_dequantized"
        at = list(graph.node).index(conv) + 1
        graph.node.insert(at, dq)
        graph.node.insert(at, q)
        added += 1
    graph.initializer.extend(new_inits)
    inits.update({t.name: t for t in new_inits})

    narrowed = 0
    if seven_bit:
        for conv in [n for n in graph.node if n.op_type == "Conv" and quantized_weight(n)]:
            feed = producer.get(conv.input[0])
            if feed is None or feed.op_type != "DequantizeLinear" or len(feed.input) < 3:
                continue
            if int(np.asarray(numpy_helper.to_array(inits[feed.input[2]])).reshape(-1)[0]) != SIGNED_ZERO_POINT:
                continue
            weight_scale = producer[conv.input[1]].input[1]
            if weight_scale in done:
                continue
            done.add(weight_scale)
            wider = numpy_helper.to_array(inits[weight_scale]) * np.float32(127.0 / 63.0)
            put(weight_scale, wider.astype(np.float32))
            narrowed += 1
    return {"uint8_zero_point_0": unsigned, "uint8_zero_point_128": signed, "conv_outputs_quantized": added,
            "seven_bit_weights": narrowed}
