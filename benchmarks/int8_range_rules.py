"""Which activation range rule suits a model, and which part of its Q/DQ plan costs the agreement?

Builds Q/DQ variants of a bundle's FP32 ONNX (calibration/qdq.py's plan, the one the TensorRT and Jetson rows
use) and runs them under ONNX Runtime on labelled test images: every range rule with the whole plan, then, with
the ``--rule`` ranges, the plan cut down: weights only, activations only, no Q/DQ on the residual Adds'
shortcuts (only the Adds' own pairs, as the fallback keeps them; then the tensors they read, at every use), and each
stage's activations left in float. Prints top-1 agreement with FP32 and the SQNR of the
logits (each image's mean logit removed: a shift of all logits changes no label). ``--openvino`` adds the
OpenVINO target's own NNCF quantization (``targets.openvino.nncf_quantize``) with each named range estimator,
all INT8 and with the residual shortcuts in float (the fallback's entry). ``--tensors K`` lists the K activation
tensors that lose the most to rounding under the ``--rule`` ranges: the share of their non-zero values that
round to zero, and how spiky their channels are (the median channel's peak over the tensor's), after the count
of tensors whose channels run 30x or more apart (``calibration/channel_spread.py``).

    python benchmarks/int8_range_rules.py runs/bundle-resnext50_32x4d --data ../shared/datasets/cifar10 -n 1000 \
        --openvino max,histogram
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

from resnet_deploy.calibration.activation_ranges import METHODS
from resnet_deploy.calibration.channel_spread import MAX_IMAGES, UNEVEN, activation_spread, uneven
from resnet_deploy.calibration.preprocess import Preprocessing
from resnet_deploy.calibration.qdq import QdqPlan, cached_ranges, insert_qdq, keep_float, plan_qdq, quantizable_layers
from resnet_deploy.calibration.sampling import choose, decode
from resnet_deploy.calibration.sensitivity import sqnr_db
from resnet_deploy.calibration.sources import open_source
from resnet_deploy.targets import onnx_session


def images(data: str, split: str, n: int, prep: Preprocessing, seed: int) -> np.ndarray:
    source = open_source(data, split, flag="--data")
    chosen = decode(source, choose(len(source), min(n, len(source)), seed=seed), prep, flag="--data")
    return chosen.inputs(prep).astype(np.float32)


def logits(model: Path | bytes, x: np.ndarray, batch: int = 50) -> np.ndarray:
    session = onnx_session(model)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)])


def compare(reference: np.ndarray, out: np.ndarray) -> dict[str, float]:
    def centred(v: np.ndarray) -> np.ndarray:
        return v - v.mean(1, keepdims=True)

    return {"agreement": round(float((out.argmax(1) == reference.argmax(1)).mean()), 4),
            "sqnr_db": round(sqnr_db(centred(reference), centred(out)), 2)}


def openvino_row(fp32: Path, calib: np.ndarray, test: np.ndarray, reference: np.ndarray, method: str,
                 float_layers: list[str]) -> dict[str, float]:
    """The OpenVINO target's NNCF quantization of ``fp32`` (its default 300 calibration images), run by OpenVINO."""
    import openvino as ov

    from resnet_deploy.targets.openvino import nncf_quantize, shared_core

    with tempfile.TemporaryDirectory() as work:
        xml = Path(work) / "fp32.xml"
        ov.save_model(ov.convert_model(str(fp32)), str(xml), compress_to_fp16=False)
        nncf_quantize(xml, Path(work) / "int8.xml", calib, method=method, float_layers=float_layers)
        compiled = shared_core().compile_model(str(Path(work) / "int8.xml"), "CPU")
        out = np.concatenate([compiled(test[i:i + 50])[0] for i in range(0, len(test), 50)])
    return compare(reference, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--data", required=True, help="a folder with train/ and test/ (calibration from train/)")
    parser.add_argument("-n", type=int, default=1000, help="test images (a seeded draw)")
    parser.add_argument("--calib", type=int, default=512, help="calibration images from the train split")
    parser.add_argument("--rule", default="mse", choices=METHODS, help="the ranges of the cut-down plans")
    parser.add_argument("--openvino", default="", help="NNCF range estimators to run too, e.g. max,histogram "
                                                           "(the --calib-method names of --target openvino)")
    parser.add_argument("--tensors", type=int, default=0, help="also list the K tensors that lose most to rounding")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import onnx

    fp32 = args.bundle / "model_fp32.onnx"
    prep = Preprocessing.from_dict(json.loads((args.bundle / "preprocessing.json").read_text()))
    calib = images(args.data, "train", args.calib, prep, seed=1)
    test = images(args.data, "test", args.n, prep, seed=0)
    reference = logits(fp32, test)
    model = onnx.load(str(fp32))
    graph = model.graph
    plan = plan_qdq(graph)
    ops = {n.name: n.op_type for n in graph.node}
    ranges = cached_ranges(fp32, model, calib, session=onnx_session, methods=METHODS)

    def variant(table: dict[str, float], activations: dict | None = None, weights: bool = True) -> dict[str, float]:
        cut = QdqPlan(plan.activations if activations is None else activations,
                      plan.weights if weights else {}, plan.weight_uses if weights else {})
        q = copy.deepcopy(model)
        insert_qdq(q, cut, table)
        return compare(reference, logits(q.SerializeToString(), test))

    def activations_without(drop) -> dict:
        return {t: uses for t, uses in plan.activations.items() if not drop(t, uses)}

    rows: dict[str, dict[str, float]] = {f"all, {rule}": variant(ranges[rule]) for rule in METHODS}
    table = ranges[args.rule]
    rows[f"weights only ({len(plan.weights)} tensors)"] = variant(table, activations={})
    rows[f"activations only ({len(plan.activations)} tensors), {args.rule}"] = variant(table, weights=False)
    shortcuts = [name for name in quantizable_layers(graph) if ops[name] == "Add"]
    floated = keep_float(plan, graph, shortcuts).activations  # the Adds' own Q/DQ only: the fallback's entry
    rows[f"shortcuts in float, {args.rule}"] = variant(table, floated)
    read = {t for t, uses in plan.activations.items() if len(floated.get(t, ())) < len(uses)}
    rows[f"shortcut tensors in float at every use, {args.rule}"] = variant(table, activations_without(
        lambda t, _u: t in read))
    for stage in sorted({t.split("/")[1] for t in plan.activations if t.startswith("/layer")}):
        inside = activations_without(lambda t, _u, s=stage: t.startswith(f"/{s}/"))
        name = f"{stage} activations in float ({len(plan.activations) - len(inside)}), {args.rule}"
        rows[name] = variant(table, inside)

    for method in filter(None, args.openvino.split(",")):
        for name, kept in ((f"openvino all, {method}", []), (f"openvino shortcuts in float, {method}", shortcuts)):
            rows[name] = openvino_row(fp32, calib[:300], test, reference, method, kept)

    width = max(map(len, rows))
    print(f"{args.bundle}: {len(test)} test images, {len(calib)} calibration images")
    for name, figures in rows.items():
        print(f"{name:{width}s}  agreement {figures['agreement'] * 100:6.2f} %  SQNR {figures['sqnr_db']:6.2f} dB")
    spread = activation_spread(model, {t: table[t] for t in plan.activations}, test,
                               session=onnx_session) if args.tensors else []
    losses = sorted(spread, key=lambda r: -r.rounded_to_zero)[: args.tensors]
    if losses:
        print(f"tensors with channels {1 / UNEVEN:.0f}x or more apart: {len(uneven(spread))} of {len(spread)}")
        print(f"tensors losing most to rounding ({args.rule} ranges, {min(len(test), MAX_IMAGES)} test images):")
    for r in losses:
        print(f"  {r.tensor:{width}s}  non-zero values rounded to 0 {r.rounded_to_zero * 100:5.1f} %, clipped "
              f"{r.clipped * 100:4.1f} %  median channel peak {r.median_channel_range:.3f} of the tensor's")
    if args.json:
        args.json.write_text(json.dumps({"bundle": str(args.bundle), "images": len(test), "calibration": len(calib),
                                         "rows": rows, "spread": [dataclasses.asdict(r) for r in spread]}, indent=1))


if __name__ == "__main__":
    main()
