"""Efficient non-local self-attention (ENLSA): linear-cost attention with random features (Performer / FAVOR+).

The softmax kernel exp(q.k) is replaced by an unbiased estimate phi(q).phi(k) with positive random features, so
attention over N tokens costs O(N m d) time and O(N m + m d) memory instead of O(N^2). No N x N tensor is ever
built. The maths lives in pure functions; :class:`EfficientNonLocalAttention` holds the projection and the
q/k/v projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perspective_unet.models.ops import Linear

__all__ = [
    "EfficientNonLocalAttention",
    "exact_softmax_attention",
    "gaussian_orthogonal_random_matrix",
    "kernel_attention",
    "linear_attention",
    "random_feature_map",
]

# Added to every feature so the normalizer never reaches zero; part of the released kernel.
FEATURE_EPS = 1e-4
# q and k are L2-normalized with this floor on the norm, as released.
QK_NORM_EPS = 5e-5
# Tokens per block in kernel_attention: a block's features stay in the CPU cache, so time grows linearly in N.
TOKEN_CHUNK = 4096


def gaussian_orthogonal_random_matrix(
    num_rows: int,
    dim: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw a Gaussian orthogonal random projection of shape ``(num_rows, dim)``.

    Rows come in blocks of ``dim`` mutually orthogonal unit vectors (the transposed Q of a QR decomposition of a
    standard-normal ``dim x dim`` matrix); row ``i`` is then scaled by the norm of an independent ``dim``-dimensional
    standard-normal vector, so each row has the length distribution of a Gaussian vector.

    Args:
        num_rows: Number of random features ``m``.
        dim: Dimension of the vectors to project.
        generator: Optional generator for reproducible draws.
        device: Device of the result.
        dtype: Floating type of the result.

    Example:
        >>> w = gaussian_orthogonal_random_matrix(8, 4, generator=torch.Generator().manual_seed(0))
        >>> w.shape
        torch.Size([8, 4])
    """
    if num_rows < 1 or dim < 1:
        raise ValueError(f"num_rows and dim must be positive, got {num_rows} and {dim}.")
    blocks = []
    for start in range(0, num_rows, dim):
        gaussian = torch.randn(dim, dim, generator=generator, dtype=torch.float32)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.T[: min(dim, num_rows - start)])
    matrix = torch.cat(blocks, dim=0)
    lengths = torch.randn(num_rows, dim, generator=generator, dtype=torch.float32).norm(dim=1)
    return (lengths[:, None] * matrix).to(device=device, dtype=dtype)


def random_feature_map(x: torch.Tensor, projection: torch.Tensor, kernel: str = "softmax") -> torch.Tensor:
    """Map vectors to positive random features whose dot products estimate a kernel.

    ``softmax``: phi(x) = m^(-1/2) * (exp(x W^T - |x|^2 / 2) + 1e-4), so that E[phi(q).phi(k)] ~ exp(q.k).
    ``relu``: phi(x) = m^(-1/2) * (relu(x W^T) + 1e-4).

    Args:
        x: Vectors of shape ``(..., N, d)``.
        projection: Random projection ``W`` of shape ``(m, d)``.
        kernel: ``"softmax"`` or ``"relu"``.

    Returns:
        Features of shape ``(..., N, m)``.
    """
    if x.shape[-1] != projection.shape[-1]:
        raise ValueError(f"x has dimension {x.shape[-1]} but the projection expects {projection.shape[-1]}.")
    scale = projection.shape[0] ** -0.5
    projected = x @ projection.to(x.dtype).T
    if kernel == "softmax":
        half_sq_norm = 0.5 * (x * x).sum(dim=-1, keepdim=True)
        return scale * (torch.exp(projected - half_sq_norm) + FEATURE_EPS)
    if kernel == "relu":
        return scale * (F.relu(projected) + FEATURE_EPS)
    raise ValueError(f"kernel must be 'softmax' or 'relu', got {kernel!r}.")


def linear_attention(q_features: torch.Tensor, k_features: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Kernelised attention in linear time: out_n = phi(q_n).sum_j phi(k_j) v_j^T / phi(q_n).sum_j phi(k_j).

    Args:
        q_features: ``(..., N, m)`` query features.
        k_features: ``(..., M, m)`` key features.
        v: ``(..., M, e)`` values.

    Returns:
        ``(..., N, e)``; memory is O(N m + m e), never O(N M).
    """
    context = k_features.transpose(-2, -1) @ v
    normalizer = q_features @ k_features.sum(dim=-2).unsqueeze(-1)
    return (q_features @ context) / normalizer


def kernel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    projection: torch.Tensor,
    kernel: str = "softmax",
    chunk_size: int = TOKEN_CHUNK,
) -> torch.Tensor:
    """ENLSA's core: :func:`linear_attention` of the random features of q and k, block by block over the tokens.

    The sums over keys (``sum_j phi(k_j) v_j^T`` and ``sum_j phi(k_j)``) are accumulated over blocks of
    ``chunk_size`` tokens, then each block of queries is mapped and attended. No (N, m) feature tensor is built at
    once, so the work stays in cache and the time grows linearly in N, also past the cache size. Sequences no
    longer than ``chunk_size`` take exactly the one-block path; longer ones differ only by float summation order.

    Args:
        q: Queries ``(..., N, d)``.
        k: Keys ``(..., M, d)``.
        v: Values ``(..., M, e)``.
        projection: Random projection ``(m, d)``.
        kernel: ``"softmax"`` or ``"relu"``.
        chunk_size: Tokens per block.

    Returns:
        ``(..., N, e)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}.")
    n, m = q.shape[-2], k.shape[-2]
    if n <= chunk_size and m <= chunk_size:
        return linear_attention(random_feature_map(q, projection, kernel), random_feature_map(k, projection, kernel), v)
    context = None
    key_sum = None
    for start in range(0, m, chunk_size):
        features = random_feature_map(k[..., start : start + chunk_size, :], projection, kernel)
        part = features.transpose(-2, -1) @ v[..., start : start + chunk_size, :]
        context = part if context is None else context + part
        key_sum = features.sum(dim=-2) if key_sum is None else key_sum + features.sum(dim=-2)
    normalizer_vector = key_sum.unsqueeze(-1)
    blocks = []
    for start in range(0, n, chunk_size):
        features = random_feature_map(q[..., start : start + chunk_size, :], projection, kernel)
        blocks.append((features @ context) / (features @ normalizer_vector))
    return torch.cat(blocks, dim=-2)


class EfficientNonLocalAttention(nn.Module):
    """ENLSA over a token sequence: q/k/v projections, L2-normalized q and k, random-feature linear attention.

    The random projection is a buffer (saved in checkpoints). As released it is drawn once; with
    ``redraw_interval=K`` it is drawn anew every K forward passes in training mode.

    Args:
        dim: Token width ``c``.
        heads: Attention heads; the released model uses one head of size ``c``.
        num_features: Random features ``m`` per head; ``None`` uses the head size (as released).
        kernel: ``"softmax"`` or ``"relu"``.
        redraw_interval: Training steps between redraws of the projection; 0 never redraws.

    Example:
        >>> attn = EfficientNonLocalAttention(32)
        >>> attn(torch.randn(2, 100, 32)).shape
        torch.Size([2, 100, 32])
    """

    def __init__(
        self,
        dim: int,
        heads: int = 1,
        num_features: int | None = None,
        kernel: str = "softmax",
        redraw_interval: int = 0,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads ({heads}) must divide dim ({dim}).")
        if kernel not in ("softmax", "relu"):
            raise ValueError(f"kernel must be 'softmax' or 'relu', got {kernel!r}.")
        self.dim = dim
        self.heads = heads
        self.head_dim = dim // heads
        self.num_features = num_features or self.head_dim
        self.kernel = kernel
        self.redraw_interval = int(redraw_interval)
        self._calls_since_redraw = 0
        self.to_q = Linear(dim, dim)
        self.to_k = Linear(dim, dim)
        self.to_v = Linear(dim, dim)
        self.register_buffer("projection", gaussian_orthogonal_random_matrix(self.num_features, self.head_dim))

    @torch.no_grad()
    def redraw_projection(self, generator: torch.Generator | None = None) -> None:
        """Draw a new random projection in place (same shape, device and type)."""
        fresh = gaussian_orthogonal_random_matrix(self.num_features, self.head_dim, generator=generator)
        self.projection.copy_(fresh)
        self._calls_since_redraw = 0

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        if self.heads == 1:
            return x.unsqueeze(1)
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over tokens ``x`` of shape (B, N, dim); returns (B, N, dim)."""
        if self.training and self.redraw_interval > 0:
            if self._calls_since_redraw >= self.redraw_interval:
                self.redraw_projection()
            self._calls_since_redraw += 1
        q = F.normalize(self._split_heads(self.to_q(x)), dim=-1, eps=QK_NORM_EPS)
        k = F.normalize(self._split_heads(self.to_k(x)), dim=-1, eps=QK_NORM_EPS)
        v = self._split_heads(self.to_v(x))
        out = kernel_attention(q, k, v, self.projection, self.kernel)
        return out.transpose(1, 2).flatten(2)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, heads={self.heads}, num_features={self.num_features}, kernel={self.kernel!r}, "
            f"redraw_interval={self.redraw_interval}"
        )


def exact_softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Exact attention with kernel exp(q.k) (scale 1), the quantity ENLSA estimates; through SDPA, so memory-lean."""
    return F.scaled_dot_product_attention(q, k, v, scale=1.0)
