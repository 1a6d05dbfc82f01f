"""The network's two repeated blocks: the bi-path residual block (BPRB) and the efficient non-local transformer
block (ENLTB)."""

from __future__ import annotations

import torch
from torch import nn

from perspective_unet.models.attention import EfficientNonLocalAttention
from perspective_unet.models.layers import DropPath, fold_batchnorm, to_feature_map, to_tokens
from perspective_unet.models.ops import Dropout, Linear, concat_conv

__all__ = ["BiPathResidualBlock", "EfficientNonLocalTransformerBlock", "FeedForward", "ResidualPath"]


class ResidualPath(nn.Module):
    """A 1x1 projection to the output width, then a residual block of two 3x3 convolutions.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        dilation: Dilation (and padding) of both 3x3 convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = self.proj(x)
        y = self.act(self.bn1(self.conv1(identity)))
        y = self.bn2(self.conv2(y))
        return self.act(y + identity)

    def fold_batchnorm_(self) -> None:
        """Fold both BatchNorms into their convolutions (inference only)."""
        if isinstance(self.bn1, nn.BatchNorm2d):
            self.conv1, self.bn1 = fold_batchnorm(self.conv1, self.bn1), nn.Identity()
            self.conv2, self.bn2 = fold_batchnorm(self.conv2, self.bn2), nn.Identity()


class BiPathResidualBlock(nn.Module):
    """BPRB: a local 3x3 residual path and a dilated residual path side by side, fused by a 1x1 convolution.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        dilation: Dilation of the wide path.
        use_bipath: Without it (the paper's ablation) the dilated path is not built and the fusion sees the
            local path twice.

    Attributes:
        lean_concatenation: The fusion keeps the two paths for backward, not their concatenation
            (:func:`~perspective_unet.models.ops.concat_conv`; same values and gradients); ``False`` keeps the
            concatenation as the released code does.

    Example:
        >>> block = BiPathResidualBlock(1, 16)
        >>> block(torch.randn(2, 1, 20, 28)).shape
        torch.Size([2, 16, 20, 28])
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 2, use_bipath: bool = True) -> None:
        super().__init__()
        self.local_path = ResidualPath(in_channels, out_channels, dilation=1)
        self.dilated_path = ResidualPath(in_channels, out_channels, dilation=dilation) if use_bipath else None
        self.fuse = nn.Conv2d(2 * out_channels, out_channels, 1)
        self.fuse_bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.lean_concatenation = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local_path(x)
        wide = self.dilated_path(x) if self.dilated_path is not None else local
        if self.lean_concatenation:
            return self.act(self.fuse_bn(concat_conv(self.fuse, (local, wide))))
        return self.act(self.fuse_bn(self.fuse(torch.cat([local, wide], dim=1))))

    def fold_batchnorm_(self) -> None:
        """Fold the fusion's BatchNorm into its convolution (inference only); the paths fold their own."""
        if isinstance(self.fuse_bn, nn.BatchNorm2d):
            self.fuse, self.fuse_bn = fold_batchnorm(self.fuse, self.fuse_bn), nn.Identity()


class FeedForward(nn.Sequential):
    """Linear, GELU, dropout, linear, dropout: the ENLTB feed-forward layer (``fast_dropout``: see :class:`Dropout`)."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, fast_dropout: bool = True) -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = Dropout(dropout, fast_dropout)
        self.fc2 = Linear(hidden_dim, dim)
        self.drop2 = Dropout(dropout, fast_dropout)


class EfficientNonLocalTransformerBlock(nn.Module):
    """ENLTB: pre-norm transformer block whose attention is ENLSA, on a (B, C, H, W) feature map.

    Args:
        dim: Channels ``c`` of the feature map.
        heads: ENLSA heads.
        num_features: ENLSA random features per head; ``None`` uses the head size.
        kernel: ENLSA kernel, ``"softmax"`` or ``"relu"``.
        redraw_interval: Training steps between redraws of the random projection; 0 never.
        mlp_ratio: Feed-forward hidden width relative to ``dim``.
        dropout: Dropout after attention and in the feed-forward layer.
        drop_path: Stochastic-depth rate of both residual branches.
        fast_dropout: Draw dropout masks the fast way on the CPU (see :class:`~perspective_unet.models.ops.Dropout`).

    Example:
        >>> block = EfficientNonLocalTransformerBlock(32)
        >>> block(torch.randn(2, 32, 7, 9)).shape
        torch.Size([2, 32, 7, 9])
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        num_features: int | None = None,
        kernel: str = "softmax",
        redraw_interval: int = 0,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        drop_path: float = 0.1,
        fast_dropout: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientNonLocalAttention(dim, heads, num_features, kernel, redraw_interval)
        self.attn_drop = Dropout(dropout, fast_dropout)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, int(dim * mlp_ratio), dropout, fast_dropout)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The block on tokens of shape (B, N, dim)."""
        x = x + self.drop_path(self.attn_drop(self.attn(self.norm1(x))))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        return to_feature_map(self.forward_tokens(to_tokens(x)), height, width)
