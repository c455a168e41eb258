#!/usr/bin/env python3
"""Make the embedded Fashion-MNIST ResNet-20 hard for INT8 post-training quantization, FP32 unchanged.

One block's first convolution gets a heavy outlier channel: its batch-norm output for channel ``c`` is
multiplied by ``FACTOR`` (the ReLU after it commutes with a positive scale) and the block's second
convolution divides its input weights for that channel by ``FACTOR``, so every logit is what it was
(checked on real images before the file is written). Per-tensor INT8 of that activation then spends its
levels on one channel and rounds the others away: the model fails the gate unless that layer is kept
in float, which is what ``--fallback auto`` has to find. The tests make it the same way (in well under
a second).

    python scripts/make_hard_model.py --out /tmp/hard.safetensors
    resnet-deploy build --checkpoint /tmp/hard.safetensors --target all --fallback off   # exits 4
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

BLOCK = "layer2.1"  # a middle block: the outlier reaches half the network
CHANNEL = 0
FACTOR = 1000.0  # measured: x1000 takes ONNX Runtime, NNCF and the Q/DQ graph to 65-77 % agreement; x100 barely hurts
CHECK_IMAGES = 256


def make_hard(model: nn.Module, *, block: str = BLOCK, channel: int = CHANNEL, factor: float = FACTOR) -> nn.Module:
    """A copy of ``model`` (a CIFAR-style ResNet with ``bn1``/``conv2`` blocks) whose ``block`` has an outlier
    channel between its two convolutions, compensated in the second one."""
    if factor <= 0:
        raise ValueError("factor must be positive: ReLU commutes with a positive scale only")
    hard = copy.deepcopy(model).eval()
    target = hard.get_submodule(block)
    with torch.no_grad():
        target.bn1.weight[channel] *= factor
        target.bn1.bias[channel] *= factor
        target.conv2.weight[:, channel] /= factor
    return hard


def max_relative_change(original: nn.Module, hard: nn.Module, images: np.ndarray) -> tuple[float, bool]:
    """max |logit difference| over the logits' scale, and whether every top-1 is unchanged."""
    x = torch.from_numpy(images)
    with torch.inference_mode():
        a, b = original.eval()(x), hard.eval()(x)
    scale = float(a.abs().max().clamp_min(1e-12))
    return float((a - b).abs().max()) / scale, bool((a.argmax(1) == b.argmax(1)).all())


def main(argv: list[str] | None = None) -> int:
    from resnet_deploy.calibration.preprocess import Preprocessing
    from resnet_deploy.calibration.sampling import choose, decode
    from resnet_deploy.calibration.sources import open_source
    from resnet_deploy.pipeline.checkpoint import load_model, save_safetensors
    from resnet_deploy.pipeline.settings import EMBEDDED_MODEL

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--block", default=BLOCK)
    parser.add_argument("--channel", type=int, default=CHANNEL)
    parser.add_argument("--factor", type=float, default=FACTOR)
    args = parser.parse_args(argv)

    loaded = load_model(EMBEDDED_MODEL)
    hard = make_hard(loaded.model, block=args.block, channel=args.channel, factor=args.factor)
    prep = Preprocessing.from_dict(loaded.meta["preprocessing"])
    source = open_source("fashion-mnist", "test", flag="--eval-data")
    images = decode(source, choose(len(source), CHECK_IMAGES, seed=0), prep, flag="--eval-data").inputs(prep)
    change, same_top1 = max_relative_change(loaded.model, hard, images)
    if change > 1e-4 or not same_top1:
        print(f"the outlier changed FP32: max |diff| {change:.2e} of the logit scale, top-1 same: {same_top1}",
              file=sys.stderr)
        return 1
    meta = {**loaded.meta, "hard_model": {"block": args.block, "channel": args.channel, "factor": args.factor}}
    save_safetensors(args.out, hard, meta)
    print(f"{args.out}: {args.block} channel {args.channel} x{args.factor:g}; FP32 max |diff| {change:.1e} of the "
          f"logit scale on {len(images)} Fashion-MNIST test images, top-1 unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
