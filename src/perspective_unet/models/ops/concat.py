"""A convolution of a channel concatenation that keeps the parts for backward, not the concatenation.

``conv(torch.cat(parts, 1))`` in autograd keeps the concatenation for the convolution's backward, while the parts are
usually kept anyway (the bi-path block's two paths end in in-place ReLUs, which keep their outputs): the same values
twice, at the full resolution of the first stages. :func:`concat_conv` keeps the parts only and joins them again in
backward, which costs one copy; outputs and gradients are those of the plain expression, bit for bit (the same
convolution kernels run on the same tensors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["concat_conv"]


class _ConcatConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None, *parts: torch.Tensor):  # noqa: ANN001
        out = F.conv2d(torch.cat(parts, dim=1), weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.save_for_backward(weight, *parts)
        ctx.geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001
        weight, *parts = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        needs = ctx.needs_input_grad
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad,
            torch.cat(parts, dim=1),
            weight,
            [weight.shape[0]] if ctx.has_bias else None,
            stride,
            padding,
            dilation,
            False,
            [0] * len(stride),
            groups,
            [any(needs[3:]), needs[1], ctx.has_bias and needs[2]],
        )
        if grad_input is None:
            return (None, grad_weight, grad_bias, *[None] * len(parts))
        return (None, grad_weight, grad_bias, *grad_input.split([p.shape[1] for p in parts], dim=1))


def concat_conv(conv: nn.Conv2d, parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``conv(torch.cat(parts, dim=1))``, keeping ``parts`` rather than their concatenation for backward.

    Plain PyTorch where nothing needs a gradient, under ``torch.compile`` (whose partitioner decides what to keep)
    and for a convolution this does not cover (string padding, another padding mode).

    Args:
        conv: A 2-D convolution.
        parts: Feature maps of equal batch and spatial size, concatenated along the channels in this order.

    Example:
        >>> conv = nn.Conv2d(5, 4, 1)
        >>> parts = [torch.randn(2, 2, 6, 7, requires_grad=True), torch.randn(2, 3, 6, 7, requires_grad=True)]
        >>> torch.equal(concat_conv(conv, parts), conv(torch.cat(parts, dim=1)))
        True
    """
    plain = (
        not torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or isinstance(conv.padding, str)
        or conv.padding_mode != "zeros"
        or not any(t.requires_grad for t in (*parts, *conv.parameters()))
    )
    if plain:
        return conv(torch.cat(list(parts), dim=1))
    return _ConcatConv.apply(conv, conv.weight, conv.bias, *parts)
