"""Fold batch-norm into the preceding convolution, and prove the outputs did not change.

The tensor math (``fuse_conv_bn_weights``) is kept apart from the module handling
(``fold_batchnorm``), as in ``torch/nn/utils/fusion.py``. Folding returns a new model; the
caller's model is never mutated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from resnet_deploy.errors import VerificationError

if TYPE_CHECKING:  # torch is imported where a module is folded: the ONNX fold and FoldCheck need none of it
    from torch import Tensor, nn

# A folded model must match the original within this share of the output's scale (max |logit|).
FOLD_RTOL = 1e-5


def fuse_conv_bn_weights(conv_w: Any, conv_b: Any | None, bn_mean: Any, bn_var: Any, bn_eps: float,
                         bn_w: Any | None, bn_b: Any | None) -> tuple[Any, Any]:
    """W' = W * g / sqrt(var + eps) per output channel; b' = (b - mean) * g / sqrt(var + eps) + beta.

    On torch tensors (a module's) or numpy arrays (an ONNX graph's initializers), in the weight's dtype."""
    if conv_b is None:
        conv_b = bn_mean * 0
    if bn_w is None:
        bn_w = bn_mean * 0 + 1
    if bn_b is None:
        bn_b = bn_mean * 0
    var = bn_var + bn_eps
    scale = bn_w * (var.rsqrt() if hasattr(var, "rsqrt") else 1 / np.sqrt(var))
    shape = [-1] + [1] * (conv_w.ndim - 1)
    fused_w, fused_b = conv_w * scale.reshape(shape), (conv_b - bn_mean) * scale + bn_b
    if hasattr(fused_w, "to"):
        return fused_w.to(conv_w.dtype), fused_b.to(conv_w.dtype)
    return fused_w.astype(conv_w.dtype), fused_b.astype(conv_w.dtype)


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv equal to ``bn(conv(x))`` in eval mode."""
    from torch import nn

    if bn.training or conv.training:
        raise ValueError("folding needs both modules in eval mode")
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise ValueError("batch-norm without running statistics cannot be folded")
    fused = copy.deepcopy(conv)
    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    fused.weight = nn.Parameter(w.detach())
    fused.bias = nn.Parameter(b.detach())
    return fused


def _fold_in_place(module: nn.Module) -> int:
    """Fold every convN/bnN pair and every Sequential(conv, bn) below ``module``; return the count.

    convN may be a Sequential ending in a conv (the deep stem of ResNet-C/D): bnN folds into its last conv.
    """
    from torch import nn

    count = 0
    names = dict(module.named_children())
    for name, child in names.items():
        if not name.startswith("conv"):
            continue
        bn = names.get("bn" + name[len("conv"):])
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        if isinstance(child, nn.Conv2d):
            setattr(module, name, fuse_conv_bn(child, bn))
        elif isinstance(child, nn.Sequential) and len(child) and isinstance(child[-1], nn.Conv2d):
            child[-1] = fuse_conv_bn(child[-1], bn)
        else:
            continue
        setattr(module, "bn" + name[len("conv"):], nn.Identity())
        count += 1
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[i] = fuse_conv_bn(conv, norm)
                module[i + 1] = nn.Identity()
                count += 1
    for child in module.children():
        count += _fold_in_place(child)
    return count


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with every conv -> BN pair folded; and how many were folded."""
    from torch import nn

    folded = copy.deepcopy(model).eval()
    count = _fold_in_place(folded)
    leftover = [n for n, m in folded.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise VerificationError(
            f"BN folding left {len(leftover)} batch-norm layer(s) not preceded by a convolution ({leftover[0]})."
        )
    return folded, count


@dataclass(frozen=True)
class FoldCheck:
    folded_layers: int
    max_abs_diff: float
    output_scale: float
    top1_equal: bool

    @property
    def relative(self) -> float:
        return self.max_abs_diff / max(self.output_scale, 1e-12)

    @property
    def passed(self) -> bool:
        return self.relative <= FOLD_RTOL and self.top1_equal

    def to_dict(self) -> dict:
        return {"folded_layers": self.folded_layers, "max_abs_diff": self.max_abs_diff,
                "output_scale": self.output_scale, "relative": self.relative, "tolerance": FOLD_RTOL,
                "top1_equal": self.top1_equal, "passed": self.passed}


def verify_fold(original: nn.Module, folded: nn.Module, sample: Tensor, folded_layers: int) -> FoldCheck:
    """Compare logits of both models on real inputs; raise if folding changed them."""
    import torch

    with torch.inference_mode():
        ref = original.eval()(sample)
        out = folded.eval()(sample)
    return compare_folded(ref.numpy(), out.numpy(), folded_layers)


def compare_folded(ref: np.ndarray, out: np.ndarray, folded_layers: int) -> FoldCheck:
    """The folded model's logits ``out`` against the original's ``ref``; raise if folding changed them."""
    diff = float(np.abs(ref - out).max())
    check = FoldCheck(folded_layers, diff, float(np.abs(ref).max()), bool((ref.argmax(1) == out.argmax(1)).all()))
    if not check.passed:
        raise VerificationError(
            f"BN folding changed the outputs: max |diff| {diff:.3g} is {check.relative:.3g} of the output scale "
            f"(limit {FOLD_RTOL}); top-1 equal: {check.top1_equal}. The model may hold unusual layers; "
            "please report this with the checkpoint's architecture."
        )
    return check
