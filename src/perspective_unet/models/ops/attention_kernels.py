"""Exact softmax attention kernels for the CPU: block-wise with dropout, and a oneDNN inference route.

:func:`chunked_attention`: PyTorch's CPU kernels for ``scaled_dot_product_attention`` support no dropout: with
``dropout_p > 0`` SDPA falls back to its math path, which builds and keeps several ``(B, heads, N, N)`` matrices for
backward and is much slower than the fused kernel. This kernel computes the same quantity query block by query block
and recomputes each block in backward (the flash-attention scheme written with PyTorch operations), so only ``O(N)``
tensors are kept: q, k and v and the output. Dropout masks come from a counter-based generator
(:func:`~perspective_unet.models.ops.dropout.keep_mask`) and are regenerated in backward from a per-call seed, so
forward and backward use the same mask.

:func:`onednn_attention`: without autograd (inference), exact attention block by block through oneDNN's matrix
products, faster than SDPA's CPU flash-attention kernel on a CPU whose MKL takes AVX2 kernels while oneDNN uses
AVX-512 (figures: docs/performance.md).

Which kernel runs where is decided by :func:`~perspective_unet.models.ops.attention.attend`.
"""

from __future__ import annotations

import torch

from perspective_unet.models.ops._torch_private import HAS_ONEDNN_MATMUL, onednn_matmul
from perspective_unet.models.ops.dropout import draw_seed, keep_mask, keep_scale

__all__ = ["CHUNK_SCORES", "ONEDNN_BLOCK_SCORES", "chunked_attention", "onednn_attention"]

# Scores per block of the block-wise kernel (4 MB in float32): a block's element-wise passes stay in the cache while
# the Python loop runs few enough blocks that its overhead is small (at 4,116 tokens: 254 query rows per block).
CHUNK_SCORES = 1024 * 1024
# Scores per block of the oneDNN route (6 MB in float32): large enough for oneDNN's efficient shapes, small enough to
# stay in the cache and below glibc's trim threshold after the first block (larger blocks were returned to the system
# and page-faulted in again at every block, much slower).
ONEDNN_BLOCK_SCORES = 1536 * 1024


class _ChunkedAttention(torch.autograd.Function):
    # q, k, v arrive as (G, N, d) with G = batch * heads; blocks are (rows, M) per group so they stay in cache. The
    # softmax is recomputed in backward by the same kernel on the same scores, so it is the forward's bit for bit and
    # no log-sum-exp is kept. The keep scale of dropout multiplies v instead of every block of weights. Each
    # (group, block) draws its mask from its own stretch of one SplitMix64 stream, which backward recomputes.

    @staticmethod
    def forward(ctx, q, k, v, dropout_p: float, chunk: int, seed: int):  # noqa: ANN001
        groups, n, _ = q.shape
        scaled_q = q * q.shape[-1] ** -0.5
        values = v * keep_scale(dropout_p) if dropout_p > 0.0 else v
        out = q.new_empty(groups, n, v.shape[-1])
        for g in range(groups):
            k_t = k[g].t()
            for block, start in enumerate(range(0, n, chunk)):
                probs = torch.mm(scaled_q[g, start : start + chunk], k_t)
                torch.softmax(probs, -1, out=probs)
                if dropout_p > 0.0:
                    probs.mul_(_block_mask(probs.shape, dropout_p, seed, g, block, n, chunk, k.shape[1]))
                torch.mm(probs, values[g], out=out[g, start : start + chunk])
        # Backward needs q and v only as the products use them, so the scaled copies are kept instead.
        ctx.save_for_backward(scaled_q, k, values, out)
        ctx.dropout_p, ctx.chunk, ctx.seed = dropout_p, chunk, seed
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001
        scaled_q, k, values, out = ctx.saved_tensors
        dropout_p, chunk, seed = ctx.dropout_p, ctx.chunk, ctx.seed
        scale = scaled_q.shape[-1] ** -0.5
        groups, n, _ = scaled_q.shape
        mask_scale = keep_scale(dropout_p) if dropout_p > 0.0 else 1.0
        values_t = values.transpose(1, 2).contiguous()
        grad_out = grad_out.contiguous()
        # sum_j P_ij dP_ij = dO_i . O_i, also with dropout on P.
        delta = (grad_out * out).sum(dim=-1, keepdim=True)
        grad_q = torch.empty_like(scaled_q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(values)
        for g in range(groups):
            k_t = k[g].t()
            for block, start in enumerate(range(0, n, chunk)):
                stop = min(start + chunk, n)
                d_out = grad_out[g, start:stop]
                probs = torch.mm(scaled_q[g, start:stop], k_t)
                torch.softmax(probs, -1, out=probs)
                d_probs = torch.mm(d_out, values_t[g])
                if dropout_p > 0.0:
                    keep = _block_mask(probs.shape, dropout_p, seed, g, block, n, chunk, k.shape[1])
                    d_probs.mul_(keep)
                d_scores = d_probs.sub_(delta[g, start:stop]).mul_(probs)
                if dropout_p > 0.0:
                    probs.mul_(keep)
                grad_v[g].addmm_(probs.t(), d_out, alpha=mask_scale)
                torch.mm(d_scores, k[g], out=grad_q[g, start:stop])
                grad_k[g].addmm_(d_scores.t(), scaled_q[g, start:stop])
        grad_q.mul_(scale)
        return grad_q, grad_k, grad_v, None, None, None


def _block_mask(
    shape: torch.Size, p: float, seed: int, group: int, block: int, n: int, chunk: int, m: int
) -> torch.Tensor:
    # Every (group, block) owns the stretch of the stream a full block would take, so no two overlap.
    words = (chunk * m + 3) // 4
    blocks = -(-n // chunk)
    return keep_mask(shape, p, seed=seed, offset=(group * blocks + block) * words)[0]


# Runs eagerly under torch.compile: its autograd function regenerates dropout masks from a seed it draws itself.
@torch.compiler.disable
def chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, chunk: int | None = None
) -> torch.Tensor:
    """Softmax attention ``dropout(softmax(q k^T / sqrt(d))) v`` computed block by block, with recomputation.

    Args:
        q: Queries ``(..., N, d)``.
        k: Keys ``(..., M, d)``.
        v: Values ``(..., M, e)``.
        dropout_p: Dropout probability on the attention weights (rounded to a multiple of 2^-16).
        chunk: Query rows per block; memory is O(chunk * M) at a time, never O(N * M). ``None``: as many rows as
            make ``CHUNK_SCORES`` scores (at least 16).

    Returns:
        ``(..., N, e)``, equal to ``F.scaled_dot_product_attention(q, k, v)`` when ``dropout_p == 0``.
    """
    if chunk is None:
        chunk = max(16, CHUNK_SCORES // k.shape[-2])
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}.")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must lie in [0, 1), got {dropout_p}.")
    seed = draw_seed() if dropout_p > 0.0 else 0
    lead = q.shape[:-2]
    flat = [t.reshape(-1, *t.shape[-2:]) for t in (q, k, v)]
    out = _ChunkedAttention.apply(*flat, float(dropout_p), int(chunk), seed)
    return out.reshape(*lead, *out.shape[-2:])


def _onednn_blocks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_rows: int) -> torch.Tensor:
    groups, n, _ = q.shape
    scaled = q * q.shape[-1] ** -0.5
    out = q.new_empty(groups, n, v.shape[-1])
    for g in range(groups):
        keys, values_t = k[g].contiguous(), v[g].t().contiguous()
        for start in range(0, n, block_rows):
            scores = onednn_matmul(scaled[g, start : start + block_rows], keys)
            # In place: the softmax kernel reads each row's maximum and sum before it writes the row.
            torch.softmax(scores, -1, out=scores)
            out[g, start : start + block_rows] = onednn_matmul(scores, values_t)
    return out


# An opaque operator, so that a compiled model keeps one graph and calls the blocks as they are.
@torch.library.custom_op("perspective_unet::onednn_attention", mutates_args=())
def _onednn_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_rows: int) -> torch.Tensor:
    return _onednn_blocks(q, k, v, block_rows)


@_onednn_attention_op.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_rows: int) -> torch.Tensor:
    return q.new_empty(*q.shape[:-1], v.shape[-1])


def onednn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(d)) v`` without autograd, block by block through oneDNN.

    Each block of query rows gets its scores from one oneDNN matrix product, an in-place softmax over all keys (so no
    running rescaling is needed) and a second product with the values; memory is one block of scores at a time.
    The result equals ``F.scaled_dot_product_attention(q, k, v)`` up to float rounding. Take it where
    :func:`~perspective_unet.models.ops.attention.onednn_attention_route` says so: it has no backward.

    Args:
        q: Queries ``(..., N, d)``, float32 on the CPU.
        k: Keys ``(..., M, d)``.
        v: Values ``(..., M, e)``.

    Returns:
        ``(..., N, e)``.

    Raises:
        RuntimeError: This PyTorch has no oneDNN matrix product, or autograd would need a backward.

    Example:
        >>> q = torch.randn(1, 2, 1024, 16)
        >>> with torch.no_grad():
        ...     out = onednn_attention(q, q, q)
        >>> torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(q, q, q), atol=1e-5)
        True
    """
    if not HAS_ONEDNN_MATMUL:
        raise RuntimeError("onednn_attention needs a PyTorch build with oneDNN (torch.backends.mkldnn).")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError("onednn_attention has no backward; call it under torch.no_grad() or inference_mode().")
    lead = q.shape[:-2]
    block_rows = max(16, ONEDNN_BLOCK_SCORES // k.shape[-2])
    flat = [t.reshape(-1, *t.shape[-2:]) for t in (q, k, v)]
    out = _onednn_attention_op(*flat, block_rows)
    return out.reshape(*lead, *out.shape[-2:])
