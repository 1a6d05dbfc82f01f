"""The U-Net decoder, built from the encoder's list of skip channels, and the segmentation head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from perspective_unet.models.layers import ConvNormAct

__all__ = ["DoubleConv", "UNetDecoder"]


class DoubleConv(nn.Sequential):
    """Two 3x3 ConvBNReLU layers."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels)
        self.conv2 = ConvNormAct(out_channels, out_channels)


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Bilinear x2 up-sampling with ``align_corners=True``, as the released decoder does."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)


class UNetDecoder(nn.Module):
    """Decoder of Perspective+ Unet for skip channels ``c_0..c_n`` (finest first).

    A bottleneck DoubleConv maps the coarsest skip ``c_n`` to ``c_{n-1}``; each following block up-samples,
    concatenates the next finer skip and applies a DoubleConv to ``c_{i-1}``; the finest skip is not concatenated
    (as released): a last block up-samples to full size and refines at ``c_0`` channels.

    Args:
        encoder_channels: The encoder's ``out_channels``.

    Example:
        >>> dec = UNetDecoder([8, 16, 32, 64, 128])
        >>> feats = [torch.randn(1, c, 32 // 2**i, 48 // 2**i) for i, c in enumerate([8, 16, 32, 64, 128])]
        >>> dec(feats).shape
        torch.Size([1, 8, 32, 48])
    """

    def __init__(self, encoder_channels: Sequence[int]) -> None:
        super().__init__()
        channels = list(encoder_channels)
        if len(channels) < 2:
            raise ValueError(f"the decoder needs at least two skip levels, got {channels}.")
        self.out_channels = channels[0]
        self.bottleneck = DoubleConv(channels[-1], channels[-2])
        self.blocks = nn.ModuleList(
            DoubleConv(2 * channels[i], channels[i - 1]) for i in range(len(channels) - 2, 0, -1)
        )
        self.final_block = DoubleConv(channels[0], channels[0])

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottleneck(skips[-1])
        for block, skip in zip(self.blocks, reversed(skips[1:-1])):
            x = block(torch.cat([upsample2x(x), skip], dim=1))
        return self.final_block(upsample2x(x))
