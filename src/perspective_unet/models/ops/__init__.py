"""The model's CPU backends, apart from its maths: where an operation runs, not what it computes.

- :mod:`~perspective_unet.models.ops.config`: the switches (the oneDNN route's mode, from
  ``PERSPECTIVE_UNET_ONEDNN_LINEAR``, a setter and a context manager).
- :mod:`~perspective_unet.models.ops.linear`: linear layers with the oneDNN route.
- :mod:`~perspective_unet.models.ops.dropout`: fast CPU dropout and its custom operator.
- :mod:`~perspective_unet.models.ops.checkpoint`: activation checkpointing.
- :mod:`~perspective_unet.models.ops.precision`: numeric precision: the processor's capabilities, what
  ``fp32``/``bf16``/``auto`` mean on a device, the autocast context.
- :mod:`~perspective_unet.models.ops.attention`: :func:`attend`, the one place an attention backend is chosen, and
  :mod:`~perspective_unet.models.ops.attention_kernels`, the block-wise and oneDNN kernels it chooses among.
- :mod:`~perspective_unet.models.ops._torch_private`: the private PyTorch APIs used, each behind a guard.

Every operation here computes what its plain PyTorch counterpart computes (up to float rounding, or with the same
dropout distribution); ``tests/models/test_ops_*.py``, ``test_linear.py`` and ``test_onednn_attention.py`` check it.

``ops.linear`` and ``ops.dropout`` are the functions, which hide the modules of the same name as attributes of this
package; reach a module with ``importlib.import_module("perspective_unet.models.ops.linear")`` (to patch it, say).
"""

from perspective_unet.models.ops.attention import (
    ATTENTION_BACKENDS,
    MIN_CHUNKED_SCORES,
    attend,
    attention_backend,
    attention_with_dropout,
    onednn_attention_route,
)
from perspective_unet.models.ops.attention_kernels import (
    CHUNK_SCORES,
    ONEDNN_BLOCK_SCORES,
    chunked_attention,
    onednn_attention,
)
from perspective_unet.models.ops.checkpoint import frozen_batchnorm_statistics, maybe_checkpoint
from perspective_unet.models.ops.concat import concat_conv
from perspective_unet.models.ops.config import (
    ONEDNN_LINEAR_ENV,
    ONEDNN_MODES,
    get_onednn_linear,
    onednn_linear,
    onednn_route,
    set_onednn_linear,
)
from perspective_unet.models.ops.dropout import Dropout, dropout, keep_mask, relu_dropout
from perspective_unet.models.ops.linear import Linear, linear

__all__ = [
    "ATTENTION_BACKENDS",
    "CHUNK_SCORES",
    "MIN_CHUNKED_SCORES",
    "ONEDNN_BLOCK_SCORES",
    "ONEDNN_LINEAR_ENV",
    "ONEDNN_MODES",
    "Dropout",
    "Linear",
    "attend",
    "attention_backend",
    "attention_with_dropout",
    "chunked_attention",
    "concat_conv",
    "dropout",
    "frozen_batchnorm_statistics",
    "get_onednn_linear",
    "keep_mask",
    "linear",
    "maybe_checkpoint",
    "onednn_attention",
    "onednn_attention_route",
    "onednn_linear",
    "onednn_route",
    "relu_dropout",
    "set_onednn_linear",
]
