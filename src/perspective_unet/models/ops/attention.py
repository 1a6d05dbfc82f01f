"""Softmax attention through the fastest backend that computes it: the one place where the backend is chosen.

:func:`attend` computes ``dropout(softmax(q k^T / sqrt(d))) v`` and picks among

- ``"onednn"``: :func:`~perspective_unet.models.ops.attention_kernels.onednn_attention`, without dropout and without
  autograd, on float32 CPU tensors of long sequences, unless the oneDNN route is ``"off"``
  (:mod:`~perspective_unet.models.ops.config`);
- ``"blockwise"``: :func:`~perspective_unet.models.ops.attention_kernels.chunked_attention`, for dropout on the CPU
  on long sequences with ``fast_dropout``, where SDPA has no fused kernel and would keep N x N matrices;
- ``"sdpa"``: ``F.scaled_dot_product_attention`` everywhere else (no dropout, CUDA, short sequences, and dropout
  without ``fast_dropout``, SDPA's math path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from perspective_unet.models.ops._torch_private import HAS_ONEDNN_MATMUL
from perspective_unet.models.ops.attention_kernels import chunked_attention, onednn_attention
from perspective_unet.models.ops.config import onednn_route

__all__ = [
    "ATTENTION_BACKENDS",
    "MIN_CHUNKED_SCORES",
    "attend",
    "attention_backend",
    "attention_with_dropout",
    "onednn_attention_route",
]

ATTENTION_BACKENDS = ("sdpa", "blockwise", "onednn")
# Below this many scores per sample and head (N * M), SDPA's math path is cheap in memory and faster than blocks.
# The oneDNN inference route uses the same bound (measured at 4,116 tokens; not tuned for shorter sequences).
MIN_CHUNKED_SCORES = 1024 * 1024


def _long(q: torch.Tensor, k: torch.Tensor) -> bool:
    return q.shape[-2] * k.shape[-2] >= MIN_CHUNKED_SCORES


def onednn_attention_route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the oneDNN attention applies now: no autograd, the oneDNN route not ``"off"``
    (:func:`~perspective_unet.models.ops.config.set_onednn_linear`), float32 CPU tensors, oneDNN's matrix product
    present, and at least ``MIN_CHUNKED_SCORES`` scores per sample and head (shorter sequences stay with SDPA)."""
    return HAS_ONEDNN_MATMUL and _long(q, k) and onednn_route(q, k, v, inference_only=True)


def _blockwise_applies(q: torch.Tensor, k: torch.Tensor, dropout_p: float) -> bool:
    return dropout_p > 0.0 and q.device.type == "cpu" and _long(q, k)


def attention_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, *, fast_dropout: bool = True
) -> str:
    """The backend :func:`attend` takes for these inputs now (one of :data:`ATTENTION_BACKENDS`)."""
    if dropout_p == 0.0 and onednn_attention_route(q, k, v):
        return "onednn"
    if fast_dropout and _blockwise_applies(q, k, dropout_p):
        return "blockwise"
    return "sdpa"


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    *,
    fast_dropout: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Softmax attention ``dropout(softmax(q k^T / sqrt(d))) v``, through the backend that suits the inputs.

    Every backend computes the same function: without dropout they agree up to float rounding; with dropout, the
    block-wise kernel draws its masks the fast way (rate rounded to a multiple of 2^-16, unbiased) and SDPA with its
    own generator.

    Args:
        q: Queries ``(..., N, d)``.
        k: Keys ``(..., M, d)``.
        v: Values ``(..., M, e)``.
        dropout_p: Dropout on the attention weights; pass 0 in evaluation.
        fast_dropout: Allow the block-wise kernel for dropout on the CPU (memory linear in N); ``False`` keeps SDPA.
        backend: Force ``"sdpa"``, ``"blockwise"`` or ``"onednn"``; ``None`` chooses by :func:`attention_backend`.

    Returns:
        ``(..., N, e)``.

    Raises:
        ValueError: An unknown ``backend``, or ``"onednn"`` with dropout.

    Example:
        >>> q = torch.randn(1, 2, 64, 8)
        >>> attend(q, q, q, backend="blockwise").shape
        torch.Size([1, 2, 64, 8])
    """
    if backend is None:
        backend = attention_backend(q, k, v, dropout_p, fast_dropout=fast_dropout)
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
    if backend == "blockwise":
        return chunked_attention(q, k, v, dropout_p)
    if backend == "onednn":
        if dropout_p != 0.0:
            raise ValueError(f"the oneDNN attention has no dropout; got dropout_p={dropout_p}.")
        return onednn_attention(q, k, v)
    raise ValueError(f"backend must be one of {ATTENTION_BACKENDS} or None, got {backend!r}.")


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Softmax attention with dropout on the weights that never holds an N x N matrix for backward.

    :func:`attend` without the oneDNN route: the block-wise kernel for dropout on the CPU on long sequences (at least
    ``MIN_CHUNKED_SCORES`` scores per sample and head), SDPA otherwise.
    """
    return attend(q, k, v, dropout_p, backend="blockwise" if _blockwise_applies(q, k, dropout_p) else "sdpa")
