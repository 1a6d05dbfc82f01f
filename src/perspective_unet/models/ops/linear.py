"""Linear layers with a oneDNN route on the CPU: ``F.linear`` computed as a 1x1 convolution.

PyTorch's CPU matrix products call MKL, which takes its AVX2 kernels on AMD processors; its CPU convolutions call
oneDNN, which uses AVX-512 wherever the processor has it. A token-wise linear layer is a 1x1 convolution over a
channels-last view of the tokens (no copy), so large layers run faster that way (figures: docs/performance.md).
Where the route is taken is set in :mod:`~perspective_unet.models.ops.config`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from perspective_unet.models.ops.config import onednn_route

__all__ = ["Linear", "linear"]

# Below this many rows a linear layer stays with F.linear: the convolution's set-up cost is not worth it.
_ONEDNN_MIN_ROWS = 256


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` as one oneDNN 1x1 convolution (the route itself, without the decision)."""
    features = x.shape[-1]
    rows = x.numel() // features
    # (rows, features) seen as one NHWC image of rows x 1 pixels: a channels-last (1, features, rows, 1) tensor.
    image = x.reshape(1, rows, 1, features).permute(0, 3, 1, 2)
    out = F.conv2d(image, weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


def _convolution_reaches_onednn() -> bool:
    # PyTorch sends a one-image 1x1 convolution to oneDNN only while more than one thread runs; on one thread it takes
    # the slow im2col convolution instead, which would make the route slower than F.linear.
    return torch.compiler.is_compiling() or torch.get_num_threads() > 1


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on a CPU in float32, large inputs run as a 1x1 convolution through oneDNN.

    The result equals ``F.linear``'s up to float rounding (a different summation order). Where the route is taken
    (training too by default on x86-64) is set with :func:`~perspective_unet.models.ops.config.set_onednn_linear`.
    Elsewhere (other devices and dtypes, autocast, small inputs, a single thread, the route off) this is
    ``F.linear``, and so it is while ``torch.compile`` traces a training graph even under ``"always"``: there the
    convolution route was no faster and kept more memory for backward (docs/performance.md).

    Args:
        x: Inputs ``(..., in_features)``.
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)`` or ``None``.

    Returns:
        ``(..., out_features)``.
    """
    if x.numel() < _ONEDNN_MIN_ROWS * x.shape[-1] or not onednn_route(x, weight) or not _convolution_reaches_onednn():
        return F.linear(x, weight, bias)
    return _onednn_linear(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
