"""Plain building blocks shared by the network's parts: conv-norm-activation, stochastic depth, token layout helpers
and BatchNorm folding.

The CPU backends (oneDNN linear layers, fast dropout, activation checkpointing and their switches) live in
:mod:`perspective_unet.models.ops`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvNormAct", "DropPath", "fold_batchnorm", "to_feature_map", "to_tokens"]


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

    def fold_batchnorm_(self) -> None:
        """Fold the BatchNorm into the convolution (inference only; the norm becomes an identity)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fold_batchnorm(self.conv, self.norm)
            self.norm = nn.Identity()


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


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution with bias equal to ``norm(conv(x))`` in eval mode (running statistics), computed in float64."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    inv_std = torch.rsqrt(norm.running_var.double() + norm.eps)
    factor = inv_std * norm.weight.double() if norm.affine else inv_std
    shift = norm.bias.double() if norm.affine else torch.zeros_like(inv_std)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv_std)
    fused.weight.copy_(conv.weight.double() * factor[:, None, None, None])
    fused.bias.copy_((bias - norm.running_mean.double()) * factor + shift)
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
    return fused
