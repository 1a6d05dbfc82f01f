"""Fast CPU dropout (models/ops/dropout.py): the mask's rate and exact scale, unbiased values, exact gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perspective_unet.models.ops import Dropout, dropout, keep_mask, relu_dropout
from perspective_unet.models.ops.dropout import random_words


def _splitmix64(seed: int, count: int) -> list[int]:
    """The reference generator, written from its definition with Python's unbounded integers."""
    out, state, mask = [], seed, 2**64 - 1
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


@pytest.mark.parametrize("seed", [0, 1234567, 2**62 - 1])
def test_random_words_are_splitmix64_at_any_offset(seed):
    reference = _splitmix64(seed, 40)
    assert [w % 2**64 for w in random_words(40, seed).tolist()] == reference
    assert [w % 2**64 for w in random_words(13, seed, offset=21).tolist()] == reference[21:34]


def test_random_words_bits_are_uniform_and_independent_of_the_neighbor():
    words = random_words(1 << 16, 99)
    bits = (words.unsqueeze(1) >> torch.arange(64)) & 1
    frequency = bits.double().mean(0)
    assert ((frequency - 0.5).abs() < 0.01).all()  # 6 sigma of 2^16 fair bits: 0.0117
    lanes = words.view(torch.int16).double()
    assert abs(torch.corrcoef(torch.stack([lanes[:-1], lanes[1:]]))[0, 1].item()) < 0.01


def test_keep_mask_rate_and_scale():
    torch.manual_seed(0)
    keep, scale = keep_mask((1000, 1000), 0.1, "cpu")
    assert keep.dtype == torch.uint8 and set(keep.unique().tolist()) == {0, 1}
    rate = keep.float().mean().item()
    assert abs(rate - 0.9) < 2e-3
    # The scale uses the rate after rounding to 2^-16, so the expectation is exact.
    assert scale == pytest.approx(65536 / (65536 - round(0.1 * 65536)))
    assert abs(scale * (1 - round(0.1 * 65536) / 65536) - 1.0) < 1e-12


def test_keep_mask_follows_its_seed_and_offset():
    first = keep_mask((37, 5), 0.5, seed=3)[0]
    assert first.shape == (37, 5) and torch.equal(first, keep_mask((37, 5), 0.5, seed=3)[0])
    assert not torch.equal(first, keep_mask((37, 5), 0.5, seed=4)[0])
    # An offset of one word is the same stream four 16-bit values later.
    assert torch.equal(keep_mask((37, 5), 0.5, seed=3, offset=1)[0].flatten()[:-4], first.flatten()[4:])
    torch.manual_seed(5)
    drawn = keep_mask((37, 5), 0.5)[0]
    torch.manual_seed(5)
    assert torch.equal(drawn, keep_mask((37, 5), 0.5)[0])


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_fast_dropout_forward_and_backward(p):
    torch.manual_seed(0)
    x = torch.randn(200, 300, dtype=torch.float64, requires_grad=True)
    y = dropout(x, p, training=True)
    kept = y != 0
    ratio = (y[kept] / x[kept]).detach()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio))
    assert abs(kept.double().mean().item() - (1 - p)) < 0.01
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.double() * ratio[0])
    assert dropout(x, p, training=False) is x


def test_relu_dropout_gradient_matches_autograd_of_the_same_mask():
    torch.manual_seed(0)
    x = torch.randn(64, 80, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    y = relu_dropout(x, 0.3, training=True)
    torch.manual_seed(3)
    keep, scale = keep_mask(x.shape, 0.3, "cpu")
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = F.relu(x_ref) * keep * scale
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_slow_path_is_torch_dropout_with_the_same_random_stream():
    x = torch.randn(50, 60)
    torch.manual_seed(4)
    slow = dropout(x, 0.2, training=True, fast=False)
    torch.manual_seed(4)
    assert torch.equal(slow, F.dropout(x, 0.2, training=True))
    torch.manual_seed(4)
    slow_relu = relu_dropout(x, 0.2, True, fast=False)
    torch.manual_seed(4)
    assert torch.equal(slow_relu, F.dropout(F.relu(x), 0.2, training=True))


def test_dropout_module_checks_its_rate_and_is_identity_in_eval():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
    module = Dropout(0.3).eval()
    x = torch.randn(10, 10)
    assert module(x) is x
    assert "p=0.3, fast=True" in repr(module)
