"""Small building blocks shared by the network's parts."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvNormAct", "DropPath", "to_tokens", "to_feature_map"]


class ConvNormAct(nn.Sequential):
    """Convolution without bias, BatchNorm, ReLU.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel side.
        stride: Convolution stride.
        padding: Zero padding; ``None`` keeps the size for odd kernels at stride 1.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None
    ) -> None:
        if padding is None:
            padding = kernel_size // 2
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample during training.

    Args:
        rate: Probability of dropping the branch; the kept branches are scaled by ``1 / (1 - rate)``.
    """

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map to (B, H*W, C) tokens in row-major pixel order."""
    return x.flatten(2).transpose(1, 2)


def to_feature_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) tokens back to a (B, C, H, W) feature map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)
