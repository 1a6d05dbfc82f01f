"""Every private PyTorch API the model's CPU backends use, looked up once, here, behind a guard.

PyTorch renames or drops underscore names and ``torch.ops`` overloads between releases without notice. Each one the
backends need is looked up in this module only, inside a guard, and comes with a public fallback or a clear error,
so a PyTorch without it loses a speed path, never a result:

================================================  ==========================================================
Private API                                       Without it
================================================  ==========================================================
``torch.ops.mkldnn._linear_pointwise``            :data:`HAS_ONEDNN_MATMUL` is ``False``: the token attention
                                                  stays with SDPA; :func:`onednn_matmul` raises RuntimeError.
``torch.nn.modules.batchnorm._BatchNorm``         :data:`BATCHNORM_TYPES` lists the public BatchNorm classes.
================================================  ==========================================================

The in-place softmax of the oneDNN attention used ``torch.ops.aten._softmax.out``; the public
``torch.softmax(x, dim, out=x)`` reaches the same kernel, so no private name is needed there.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BATCHNORM_TYPES", "HAS_ONEDNN_MATMUL", "is_batchnorm", "onednn_matmul"]

_LINEAR_POINTWISE_NAME = "torch.ops.mkldnn._linear_pointwise"

try:
    # oneDNN's fused linear operator (the one inductor uses for CPU linear layers); absent from builds without oneDNN.
    _linear_pointwise = torch.ops.mkldnn._linear_pointwise
except (AttributeError, RuntimeError):
    _linear_pointwise = None

HAS_ONEDNN_MATMUL: bool = _linear_pointwise is not None
"""Whether :func:`onednn_matmul` can run in this PyTorch."""


def onednn_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for 2-D float32 CPU tensors through oneDNN (``torch.ops.mkldnn._linear_pointwise``).

    Args:
        x: ``(rows, k)``.
        weight: ``(cols, k)``, contiguous.

    Returns:
        ``(rows, cols)``.

    Raises:
        RuntimeError: This PyTorch has no such operator (check :data:`HAS_ONEDNN_MATMUL` first), or its signature
            changed; the message names the operator and how to switch the route off.
    """
    if _linear_pointwise is None:
        raise RuntimeError(
            f"{_LINEAR_POINTWISE_NAME} is not available in this PyTorch {torch.__version__} (a build without oneDNN?); "
            "the oneDNN attention route cannot run. Check HAS_ONEDNN_MATMUL before calling."
        )
    try:
        return _linear_pointwise(x, weight, None, "none", [], "")
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, TypeError) as exc:
        # A private operator may change its arguments in any release: say which one failed and how to avoid it.
        raise RuntimeError(
            f"{_LINEAR_POINTWISE_NAME} failed in PyTorch {torch.__version__} ({exc}); if its private signature "
            "changed, set PERSPECTIVE_UNET_ONEDNN_LINEAR=off (or set_onednn_linear('off')) to avoid this route."
        ) from exc


def _batchnorm_types() -> tuple[type[nn.Module], ...]:
    try:
        from torch.nn.modules.batchnorm import _BatchNorm
    except ImportError:
        # The public classes that derive from the private base today.
        return (
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.BatchNorm3d,
            nn.LazyBatchNorm1d,
            nn.LazyBatchNorm2d,
            nn.LazyBatchNorm3d,
            nn.SyncBatchNorm,
        )
    return (_BatchNorm,)


BATCHNORM_TYPES: tuple[type[nn.Module], ...] = _batchnorm_types()
"""The classes of BatchNorm layers (running statistics, momentum), for ``isinstance``."""


def is_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer of any dimension (including ``SyncBatchNorm``)."""
    return isinstance(module, BATCHNORM_TYPES)
