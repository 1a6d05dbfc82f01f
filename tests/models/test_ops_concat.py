"""concat_conv (models/ops/concat.py): the plain expression's outputs and gradients bit for bit, without keeping the
concatenation for backward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perspective_unet.models.blocks import BiPathResidualBlock
from perspective_unet.models.ops import concat_conv


def _saved_bytes(fn) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation", "bias", "dtype", "channels_last"),
    [
        (1, 1, 0, 1, True, torch.float64, False),
        (3, 2, 1, 1, False, torch.float64, False),
        (3, 1, 2, 2, True, torch.float32, True),
    ],
)
def test_concat_conv_equals_the_plain_expression_bit_for_bit(
    kernel, stride, padding, dilation, bias, dtype, channels_last
):
    torch.manual_seed(0)
    conv = nn.Conv2d(7, 5, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias).to(dtype)
    parts = [torch.randn(2, c, 11, 9, dtype=dtype) for c in (3, 4)]
    if channels_last:
        conv.to(memory_format=torch.channels_last)
        parts = [p.contiguous(memory_format=torch.channels_last) for p in parts]
    grad = None
    results = []
    for fn in (lambda ps: concat_conv(conv, ps), lambda ps: conv(torch.cat(ps, dim=1))):
        leaves = [p.clone().requires_grad_(True) for p in parts]
        conv.zero_grad(set_to_none=True)
        out = fn(leaves)
        grad = torch.randn_like(out) if grad is None else grad
        out.backward(grad)
        results.append([out, *[p.grad for p in leaves], *[p.grad for p in conv.parameters()]])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_bipath_block_keeps_less_for_backward_and_trains_as_before():
    torch.manual_seed(0)
    block = BiPathResidualBlock(3, 16).double().train()
    x = torch.randn(2, 3, 24, 20, dtype=torch.float64, requires_grad=True)
    kept = _saved_bytes(lambda: block(x))

    def plain_forward(inp):
        local = block.local_path(inp)
        wide = block.dilated_path(inp)
        return block.act(block.fuse_bn(block.fuse(torch.cat([local, wide], dim=1))))

    kept_plain = _saved_bytes(lambda: plain_forward(x))
    concatenation = 2 * 2 * 16 * 24 * 20 * 8
    assert kept_plain - kept == concatenation
    out = block(x)
    out.sum().backward()
    grads = [p.grad.clone() for p in block.parameters()] + [x.grad.clone()]
    block.zero_grad()
    x.grad = None
    # Same batch statistics again: the running averages moved, the batch's own statistics did not.
    plain_forward(x).sum().backward()
    for a, b in zip(grads, [p.grad for p in block.parameters()] + [x.grad]):
        assert torch.equal(a, b)


def test_concat_conv_is_plain_without_autograd():
    conv = nn.Conv2d(4, 2, 1)
    parts = [torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)]
    with torch.no_grad():
        out = concat_conv(conv, parts)
    assert out.grad_fn is None and torch.equal(out, conv(torch.cat(parts, dim=1)))
