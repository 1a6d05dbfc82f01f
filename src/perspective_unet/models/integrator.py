"""SCSI, the spatial cross-scale integrator: one transformer over the tokens of three scales at once."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perspective_unet.config.checks import SCSI_INITS
from perspective_unet.models.layers import to_feature_map, to_tokens
from perspective_unet.models.ops import Dropout, Linear, attend, linear, maybe_checkpoint, relu_dropout

__all__ = ["ATTENTION_MODES", "CrossScaleAttention", "IntegratorLayer", "SpatialCrossScaleIntegrator"]

ATTENTION_MODES = ("tokens", "released", "official")


class CrossScaleAttention(nn.Module):
    """Multi-head self-attention over a token sequence, through ``scaled_dot_product_attention``.

    ``mode="tokens"`` attends across the token sequence of each sample, as the paper describes; memory stays
    linear in the tokens wherever SDPA has a memory-efficient kernel. ``mode="released"`` is the released code's
    function for any batch: its ``nn.MultiheadAttention`` is built sequence-first but fed (B, N, dim), so at every
    token position it attends across the samples of the batch (attention dropout included); a sample's output then
    depends on the other samples of its batch, and at batch size 1 it is out(v(s)). ``mode="official"`` is that
    batch-size-1 function applied to every sample on its own: out(v(s)) for every token, with the attention dropout
    falling on the single weight per token and head.

    ``mode="tokens"`` computes its attention through :func:`~perspective_unet.models.ops.attend`, which picks the
    backend: in training with dropout on the CPU, where SDPA has no fused kernel and would build (B, heads, N, N)
    matrices, ``fast_dropout`` lets it run block by block with recomputation, in memory linear in N; without autograd
    on the CPU, long sequences take the oneDNN route unless it is set ``"off"``. The other two modes are the released
    code's maths and keep their own computation.

    Args:
        dim: Token width.
        heads: Attention heads; must divide ``dim``.
        dropout: Dropout on the attention weights (training only).
        mode: ``"tokens"``, ``"released"`` or ``"official"``.
        fast_dropout: Fast dropout masks and the memory-lean attention-dropout path on the CPU.
        init: ``"linear"`` (``nn.Linear``'s defaults) or ``"released"`` (``nn.MultiheadAttention``'s, see
            :meth:`reset_parameters`).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dropout: float = 0.0,
        mode: str = "tokens",
        fast_dropout: bool = True,
        init: str = "linear",
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim}).")
        if mode not in ATTENTION_MODES:
            raise ValueError(f"mode must be one of {ATTENTION_MODES}, got {mode!r}.")
        if init not in SCSI_INITS:
            raise ValueError(f"init must be one of {SCSI_INITS}, got {init!r}.")
        self.dim = dim
        self.heads = heads
        self.dropout = dropout
        self.mode = mode
        self.fast_dropout = fast_dropout
        self.init = init
        if init == "linear":
            self.qkv = Linear(dim, 3 * dim)
            self.out = Linear(dim, dim)
        else:
            # Nothing is drawn for q/k/v here: reset_parameters draws in nn.MultiheadAttention's order.
            self.qkv = torch.nn.utils.skip_init(Linear, dim, 3 * dim)
            self.out = torch.nn.utils.skip_init(Linear, dim, dim)
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw the projections' initial weights as the module's ``init`` says.

        ``"released"`` draws as ``nn.MultiheadAttention(dim, heads)`` does when it is built: the output projection
        as ``nn.Linear`` (its weight, then its bias, which is then zeroed), then the stacked (3 dim, dim) q/k/v
        weight from a xavier-uniform distribution; the q/k/v bias is zero. From the same generator state the tensors
        equal that module's. ``"linear"`` draws as ``nn.Linear`` does, q/k/v first.
        """
        if self.init == "linear":
            self.qkv.reset_parameters()
            self.out.reset_parameters()
            return
        self.out.reset_parameters()
        nn.init.xavier_uniform_(self.qkv.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over tokens ``x`` of shape (B, N, dim); returns (B, N, dim)."""
        batch, tokens, _ = x.shape
        dropout = self.dropout if self.training else 0.0
        if self.mode == "official":
            v = linear(x, self.qkv.weight[2 * self.dim :], self.qkv.bias[2 * self.dim :])
            if dropout > 0.0:
                keep = F.dropout(x.new_ones(batch, tokens, self.heads, 1), dropout, training=True)
                v = (v.unflatten(-1, (self.heads, -1)) * keep).flatten(2)
            return self.out(v)
        if self.mode == "released":
            # (B, N, 3, heads, d) -> (N, heads, B, d): each token position is a sequence of the batch's samples.
            q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 1, 3, 0, 4).unbind(0)
            attended = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
            return self.out(attended.permute(2, 0, 1, 3).flatten(2))
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)
        attended = attend(q, k, v, dropout, fast_dropout=self.fast_dropout)
        return self.out(attended.transpose(1, 2).flatten(2))


class IntegratorLayer(nn.Module):
    """Post-norm transformer layer (attention, then a ReLU feed-forward layer), each followed by LayerNorm.

    With ``fast_dropout`` the ReLU and the dropout after it are one autograd node that keeps only its output
    (which ``fc2`` keeps anyway), a third of the feed-forward activations otherwise saved for backward.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn_dim: int,
        dropout: float = 0.1,
        mode: str = "tokens",
        fast_dropout: bool = True,
        init: str = "linear",
    ) -> None:
        super().__init__()
        self.attn = CrossScaleAttention(dim, heads, dropout, mode, fast_dropout, init)
        self.norm1 = nn.LayerNorm(dim)
        self.fc1 = Linear(dim, ffn_dim)
        self.fc2 = Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.drop_attn = Dropout(dropout, fast_dropout)
        self.drop_hidden = Dropout(dropout, fast_dropout)
        self.drop_ffn = Dropout(dropout, fast_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop_attn(self.attn(x)))
        hidden = relu_dropout(self.fc1(x), self.drop_hidden.p, self.training, self.drop_hidden.fast)
        return self.norm2(x + self.drop_ffn(self.fc2(hidden)))


class SpatialCrossScaleIntegrator(nn.Module):
    """SCSI: project each scale to ``dim`` tokens, concatenate, run a transformer, split and project back.

    Args:
        in_channels: Channels of each input scale, finest first.
        dim: Token width.
        heads: Attention heads.
        depth: Transformer layers.
        ffn_dim: Feed-forward hidden width.
        dropout: Dropout of attention and feed-forward layers.
        attention: ``"tokens"`` (paper), ``"released"`` (the released code, across the batch) or ``"official"``
            (the released code at batch size 1, per sample).
        fast_dropout: Fast CPU dropout (see :class:`IntegratorLayer` and :class:`CrossScaleAttention`).
        init: Initial weights of the attention projections, ``"linear"`` or ``"released"`` (see
            :class:`CrossScaleAttention`).

    Attributes:
        gradient_checkpointing: Recompute each layer's activations in backward instead of keeping them.

    Example:
        >>> scsi = SpatialCrossScaleIntegrator((16, 32), dim=16, heads=2, depth=1, ffn_dim=32)
        >>> [t.shape for t in scsi([torch.randn(2, 16, 8, 6), torch.randn(2, 32, 4, 3)])]
        [torch.Size([2, 16, 8, 6]), torch.Size([2, 32, 4, 3])]
    """

    def __init__(
        self,
        in_channels: tuple[int, ...] | list[int],
        dim: int = 256,
        heads: int = 8,
        depth: int = 6,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        attention: str = "tokens",
        fast_dropout: bool = True,
        init: str = "linear",
    ) -> None:
        super().__init__()
        self.gradient_checkpointing = False
        self.in_proj = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in in_channels)
        self.layers = nn.ModuleList(
            IntegratorLayer(dim, heads, ffn_dim, dropout, attention, fast_dropout, init) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.out_proj = nn.ModuleList(nn.Conv2d(dim, c, 1) for c in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.in_proj):
            raise ValueError(f"expected {len(self.in_proj)} feature maps, got {len(features)}.")
        sizes = [f.shape[-2:] for f in features]
        tokens = torch.cat([to_tokens(proj(f)) for proj, f in zip(self.in_proj, features)], dim=1)
        for layer in self.layers:
            tokens = maybe_checkpoint(layer, tokens, enabled=self.gradient_checkpointing and self.training)
        tokens = self.norm(tokens)
        pieces = tokens.split([h * w for h, w in sizes], dim=1)
        return [proj(to_feature_map(p, h, w)) for proj, p, (h, w) in zip(self.out_proj, pieces, sizes)]
