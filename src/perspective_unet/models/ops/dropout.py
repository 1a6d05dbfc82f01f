"""Fast dropout on the CPU: masks from 16-bit random integers and one-byte masks kept for backward.

PyTorch's CPU ``bernoulli_`` draws on one thread; :func:`keep_mask` draws four 16-bit uniform integers from every 64
random bits instead and compares them with a threshold. Backward keeps that one-byte mask (or, for
:func:`relu_dropout`, only the output) instead of torch's float mask. Under ``torch.compile`` the mask comes from the
opaque operator ``perspective_unet::keep_mask``, registered when this module is imported. Figures:
docs/performance.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "dropout", "keep_mask", "relu_dropout"]

# Fast dropout compares uniform 16-bit integers with a threshold, so its rate is rounded to a multiple of 2^-16.
_MASK_LEVELS = 1 << 16


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    device: torch.device | str | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """A boolean dropout mask (``True`` = kept) and the scale ``1 / P(kept)`` of the kept values.

    On the CPU the mask is drawn as 16-bit uniform integers, four from every 64 random bits, which is much faster
    than ``bernoulli_`` (PyTorch's CPU generator runs on one thread); the drop rate is then ``round(p * 2^16) / 2^16``
    and the returned scale uses that exact rate, so the dropout stays unbiased. Elsewhere it is ``rand >= p``.

    Args:
        shape: Shape of the mask.
        p: Drop probability.
        device: Device of the mask; ``None`` is the CPU.
        generator: Generator to draw from; ``None`` is the default one.

    Returns:
        The mask and the scale of the kept values.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cpu":
        return torch.rand(shape, device=device, generator=generator) >= p, 1.0 / (1.0 - p)
    threshold, scale = _mask_threshold(p)
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)
    bits = words.view(torch.int16)[:numel].view(shape)
    return bits >= threshold - _MASK_LEVELS // 2, scale


def _mask_threshold(p: float) -> tuple[int, float]:
    """The 16-bit threshold of the fast CPU mask for drop rate ``p``, and the scale of the kept values."""
    threshold = min(round(p * _MASK_LEVELS), _MASK_LEVELS - 1)
    return threshold, _MASK_LEVELS / (_MASK_LEVELS - threshold)


@torch.library.custom_op("perspective_unet::keep_mask", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def _keep_mask_op(shape: list[int], p: float, device: torch.device) -> torch.Tensor:
    return keep_mask(tuple(shape), p, device)[0]


@_keep_mask_op.register_fake
def _(shape: list[int], p: float, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.bool, device=device)


def _compiled_keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    # Under torch.compile the mask comes from an opaque operator, so the compiler neither traces the generator nor
    # regenerates masks with its own (per-element Philox, much slower on a CPU); the rest of the dropout is plain
    # element-wise arithmetic that it fuses and, when it saves memory, recomputes in backward from the 1-byte mask.
    return _keep_mask_op(list(x.shape), p, x.device), _mask_threshold(p)[1]


class _MaskedDropout(torch.autograd.Function):
    """Dropout that keeps a one-byte mask for backward instead of torch's float mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # noqa: ANN001
        keep, scale = keep_mask(x.shape, p, x.device)
        drop = keep.logical_not_()
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.masked_fill(drop, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (drop,) = ctx.saved_tensors
        return grad.masked_fill(drop, 0.0).mul_(ctx.scale), None


class _ReluDropout(torch.autograd.Function):
    """``dropout(relu(x))`` keeping only its output for backward: the gradient passes where the output is positive.

    The output is also what the next linear layer keeps, so the pair holds one tensor instead of three.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # noqa: ANN001
        keep, scale = keep_mask(x.shape, p, x.device)
        out = x.masked_fill(keep.logical_not_(), 0.0).clamp_min_(0.0).mul_(scale)
        ctx.save_for_backward(out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (out,) = ctx.saved_tensors
        return grad.masked_fill(out <= 0.0, 0.0).mul_(ctx.scale), None


def _fast_path(x: torch.Tensor, p: float, training: bool, fast: bool) -> bool:
    return training and p > 0.0 and fast and x.device.type == "cpu"


def dropout(x: torch.Tensor, p: float, training: bool, fast: bool = True) -> torch.Tensor:
    """Dropout; with ``fast`` on the CPU, masks come from :func:`keep_mask` and backward keeps a one-byte mask.

    Off the CPU, or with ``fast=False``, this is ``torch.nn.functional.dropout``. In eval mode it returns ``x``.

    Args:
        x: Input.
        p: Drop probability.
        training: Drop only when true.
        fast: Take the fast CPU path.

    Returns:
        ``x`` with elements zeroed at rate ``p`` and the rest scaled by ``1 / (1 - p)``.
    """
    if not training or p == 0.0:
        return x
    if not _fast_path(x, p, training, fast):
        return F.dropout(x, p, training=True)
    if torch.compiler.is_compiling():
        keep, scale = _compiled_keep_mask(x, p)
        return x * keep * scale
    return _MaskedDropout.apply(x, p)


def relu_dropout(x: torch.Tensor, p: float, training: bool, fast: bool = True) -> torch.Tensor:
    """``dropout(relu(x))``; with ``fast`` on the CPU it is one autograd node that keeps only its output."""
    if not _fast_path(x, p, training, fast):
        return dropout(F.relu(x), p, training, fast=False)
    if torch.compiler.is_compiling():
        keep, scale = _compiled_keep_mask(x, p)
        return F.relu(x) * keep * scale
    return _ReluDropout.apply(x, p)


class Dropout(nn.Module):
    """Element-wise dropout, by default through the fast CPU path of :func:`dropout`.

    Args:
        p: Probability of zeroing an element.
        fast: Use the fast CPU path (16-bit thresholds, one-byte mask); ``False`` is ``nn.Dropout``'s maths and RNG use.
    """

    def __init__(self, p: float = 0.0, fast: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p}.")
        self.p = float(p)
        self.fast = bool(fast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.fast)

    def extra_repr(self) -> str:
        return f"p={self.p}, fast={self.fast}"
