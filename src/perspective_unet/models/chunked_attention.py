"""Exact softmax attention kernels for the CPU: a compatibility module.

The kernels moved to :mod:`perspective_unet.models.ops.attention_kernels` and the choice among them to
:func:`perspective_unet.models.ops.attend`; this module keeps the names it had, so existing imports keep working.
"""

from __future__ import annotations

from perspective_unet.models.ops.attention import MIN_CHUNKED_SCORES, attention_with_dropout, onednn_attention_route
from perspective_unet.models.ops.attention_kernels import (
    DEFAULT_CHUNK,
    ONEDNN_BLOCK_SCORES,
    chunked_attention,
    onednn_attention,
)

__all__ = [
    "DEFAULT_CHUNK",
    "MIN_CHUNKED_SCORES",
    "ONEDNN_BLOCK_SCORES",
    "attention_with_dropout",
    "chunked_attention",
    "onednn_attention",
    "onednn_attention_route",
]
