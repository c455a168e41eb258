"""Quantization-aware training in its consistency form: teach the weights to keep their decisions under INT8.

Post-training INT8 gives each activation tensor one scale. A model whose channels run 30x apart (the build's
diagnosis, calibration/channel_spread.py) loses predictions to it that no range rule or float layer recovers.
Here each training batch also runs fake-quantized (weights symmetric INT8 per output channel, activations one
scale per tensor, wherever one of the targets quantizes them), and a loss term (KL, and cross-entropy against
the FP32 top-1) pulls that pass toward the FP32 one; batch-norm layers use their running statistics throughout,
as the folded model does, so it fine-tunes a trained model. The weights stay a plain FP32 state_dict: the build
calibrates and quantizes them like any other.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from resnet_deploy.models.squeeze_excite import SqueezeExcite

QMAX = 127  # symmetric INT8, as TensorRT and the Q/DQ rows quantize activations

# Tensors rounded at their output: each ReLU's and SE block's (they reach the next convs and the residual add), each
# batch-norm's (a folded conv's output: ONNX Runtime quantizes it where it meets the add or the SE block) and each
# SE gate's sigmoid (ONNX Runtime quantizes it before the Mul).
_ROUNDED_OUTPUTS = (nn.ReLU, SqueezeExcite, nn.modules.batchnorm._BatchNorm, nn.Sigmoid)


def fake_int8_weight(w: torch.Tensor, qmax: int = QMAX) -> torch.Tensor:
    """``w`` on the symmetric INT8 grid of its own output channel (dim 0), as every target quantizes weights.
    Batch-norm folding scales each output channel by one factor, which scales that channel's grid with it, so
    rounding the unfolded weight rounds the folded one the same way."""
    amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-12)
    zero = torch.zeros(len(amax), dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(w, amax / qmax, zero, 0, -qmax, qmax)


class FakeInt8:
    """Hooks on ``model`` at every tensor the targets quantize: the outputs in ``_ROUNDED_OUTPUTS`` (so a block's
    output reaches the next convs and the residual add already rounded, as in a Q/DQ graph), every Conv2d and
    Linear input not rounded there (the image, the pooled features), and those layers' weights. A module called
    several times in a forward pass (a block's one ReLU) has a range per call. Outside :meth:`active` the hooks
    track each tensor's largest magnitude (an exponential moving average over the FP32 training passes); inside
    it they replace the tensor by its INT8 fake quantization at that range times ``clip``, drawn per pass from
    [min_clip, 1] so the weights learn to bear both the rounding of a wide range and the clipping of a narrow
    one."""

    def __init__(self, model: nn.Module, *, momentum: float = 0.9, min_clip: float = 0.5,
                 gen: torch.Generator | None = None) -> None:
        self.momentum, self.min_clip, self.gen = momentum, min_clip, gen
        self.amax: dict[tuple[nn.Module, int], float] = {}
        self.on = self._tracking = False
        self.clip = 1.0
        self._calls: dict[nn.Module, int] = {}
        self._rounded: dict[int, torch.Tensor] = {}  # this pass's rounded outputs by id (held, so no id is reused)
        self.handles = [model.register_forward_pre_hook(self._start)]
        self._layers: list[nn.Conv2d | nn.Linear] = []
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                self.handles.append(m.register_forward_pre_hook(self._on_input))
                m.forward = self._weight_rounding(m)  # type: ignore[method-assign,assignment]  # remove() undoes it
                self._layers.append(m)
            elif isinstance(m, _ROUNDED_OUTPUTS):
                self.handles.append(m.register_forward_hook(self._on_output))

    def _weight_rounding(self, layer: nn.Conv2d | nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
        """``layer``'s forward, with its weight rounded inside :meth:`active` (straight-through gradients)."""
        plain = layer.forward  # the class's, bound

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not self.on:
                return plain(x)
            # A layer reading a signed input (the stem, an SE squeeze) gets 7-bit weights, as ONNX Runtime gives it
            # on a CPU without VNNI (targets/onnxruntime.py); elsewhere 8 bits.
            w = fake_int8_weight(layer.weight, QMAX if bool((x.detach() >= 0).all()) else QMAX // 2)
            if isinstance(layer, nn.Conv2d):
                return layer._conv_forward(x, w, layer.bias)
            return F.linear(x, w, layer.bias)

        return forward

    def _start(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        self._tracking = module.training  # the training passes only: not the held-out top-1 after each epoch
        self._calls.clear()
        self._rounded.clear()

    def _round(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        call = self._calls.get(module, 0)
        self._calls[module] = call + 1
        key = (module, call)
        if not self.on:
            if self._tracking:
                peak = float(x.detach().abs().amax())
                old = self.amax.get(key)
                self.amax[key] = peak if old is None else self.momentum * old + (1 - self.momentum) * peak
            return x
        amax = self.amax.get(key, 0.0) * self.clip
        if amax <= 0.0:
            return x
        return torch.fake_quantize_per_tensor_affine(x, amax / QMAX, 0, -QMAX, QMAX)

    def _on_input(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        if id(args[0]) in self._rounded:
            return None
        x = self._round(module, args[0])
        return None if x is args[0] else (x, *args[1:])

    def _on_output(self, module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        out = self._round(module, out)
        self._rounded[id(out)] = out
        return out

    @contextmanager
    def active(self) -> Iterator[None]:
        """Tensors fake-quantized for the length of the block."""
        self.clip = self.min_clip + (1 - self.min_clip) * float(torch.rand((), generator=self.gen))
        self.on = True
        try:
            yield
        finally:
            self.on = False

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for m in self._layers:
            del m.forward


def freeze_bn(model: nn.Module) -> None:
    """Every batch-norm layer in eval mode: it normalises with its running statistics, as the folded model the
    targets quantize does, and they stay as the trained model left them. (In train mode batch statistics tame the
    rare large activations that per-tensor INT8 has to hold at deployment, and the fake-INT8 pass would learn the
    wrong ranges.) The affine weights still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def consistency_loss(model: nn.Module, fake: FakeInt8, x: torch.Tensor,
                     fp32_logits: torch.Tensor) -> torch.Tensor:
    """KL(FP32 || fake INT8) of the same batch, plus the fake-INT8 pass's cross-entropy against the FP32 pass's
    top-1 (hard-label distillation). Agreement is decided at the top-1, and the KL alone barely weighs the close
    calls where INT8 flips it; the hard label widens the margin of each decision, which also sharpens the FP32
    model's own (measured on the CIFAR SE-ResNeXt: median top-2 margin 0.80 -> 1.44 after one epoch). The FP32
    side is the target, so the weights move to make the INT8 pass agree with it."""
    with fake.active():
        int8_logits = model(x)
    target = fp32_logits.detach()
    kl = F.kl_div(F.log_softmax(int8_logits, 1), F.softmax(target, 1), reduction="batchmean")
    return kl + F.cross_entropy(int8_logits, target.argmax(1))
