"""Squeeze-and-excitation after Hu et al., "Squeeze-and-Excitation Networks" (2018), as timm builds it.

Global average pool, a 1x1 conv down to 1/16 of the channels, ReLU, a 1x1 conv back up and a sigmoid
gate that rescales each channel. The parameter names (``fc1``, ``fc2``, both with bias) and the
rounding of the reduced width equal timm's ``SEModule``, so its seresnet/seresnext weights load unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """``v`` rounded to the nearest multiple of ``divisor`` and not below ``round_limit * v`` (timm's rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def se_channels(channels: int, ratio: float = 1.0 / 16) -> int:
    """The reduced width timm gives an SE block on ``channels``: ratio 1/16, multiples of 8, never rounded up."""
    return make_divisible(channels * ratio, 8, round_limit=0.0)


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(mean over H, W of x))))."""

    def __init__(self, channels: int, ratio: float = 1.0 / 16) -> None:
        super().__init__()
        reduced = se_channels(channels, ratio)
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))
