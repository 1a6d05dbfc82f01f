"""attend() (models/ops/attention.py): every backend computes plain SDPA's attention, the choice among them follows
the inputs and the oneDNN mode, and the dropout paths are exact (gradients) and unbiased (values)."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

from perspective_unet.models.integrator import CrossScaleAttention
from perspective_unet.models.ops import (
    ATTENTION_BACKENDS,
    attend,
    attention_backend,
    attention_with_dropout,
    chunked_attention,
    onednn_linear,
)
from perspective_unet.models.ops._torch_private import HAS_ONEDNN_MATMUL
from perspective_unet.models.ops.dropout import draw_seed, keep_mask, keep_scale

attention_module = importlib.import_module("perspective_unet.models.ops.attention")

LONG, SHORT = 1024, 1000  # 1024 x 1024 scores per sample and head is MIN_CHUNKED_SCORES


def _qkv(lead: tuple[int, ...], n: int, m: int, d: int = 16, e: int = 16, seed: int = 0, **kwargs) -> list:
    g = torch.Generator().manual_seed(seed)
    # Scaled q and k give peaked softmax rows, where a wrong maximum or normalization would show.
    return [
        3 * torch.randn(*lead, n, d, generator=g, **kwargs),
        3 * torch.randn(*lead, m, d, generator=g, **kwargs),
        torch.randn(*lead, m, e, generator=g, **kwargs),
    ]


@pytest.mark.parametrize("backend", ATTENTION_BACKENDS)
@pytest.mark.parametrize(("lead", "n", "m", "e"), [((2, 3), 130, 150, 24), ((1,), 1030, 1030, 16)])
def test_every_backend_equals_plain_sdpa(backend, lead, n, m, e):
    if backend == "onednn" and not HAS_ONEDNN_MATMUL:
        pytest.skip("PyTorch built without oneDNN")
    q, k, v = _qkv(lead, n, m, e=e)
    with torch.no_grad():
        out = attend(q, k, v, backend=backend)
        reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    assert out.shape == (*lead, n, e)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_automatic_choice_equals_plain_sdpa_with_and_without_autograd():
    q, k, v = (t.requires_grad_() for t in _qkv((1, 2), LONG, LONG, d=8, e=8))
    reference = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attend(q, k, v), reference)
    with torch.no_grad():
        torch.testing.assert_close(attend(q, k, v), reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("grad", "dropout_p", "fast_dropout", "n", "mode", "expected"),
    [
        (False, 0.0, True, LONG, "inference", "onednn"),
        (False, 0.0, False, LONG, "always", "onednn"),
        (False, 0.0, True, LONG, "off", "sdpa"),
        (False, 0.0, True, SHORT, "inference", "sdpa"),
        (True, 0.0, True, LONG, "always", "sdpa"),
        (True, 0.1, True, LONG, "inference", "blockwise"),
        (False, 0.1, True, LONG, "inference", "blockwise"),
        (True, 0.1, False, LONG, "inference", "sdpa"),
        (True, 0.1, True, SHORT, "inference", "sdpa"),
    ],
)
def test_backend_choice(grad, dropout_p, fast_dropout, n, mode, expected):
    if expected == "onednn" and not HAS_ONEDNN_MATMUL:
        pytest.skip("PyTorch built without oneDNN")
    q = torch.randn(1, 2, n, 8)
    with torch.set_grad_enabled(grad), onednn_linear(mode):
        assert attention_backend(q, q, q, dropout_p, fast_dropout=fast_dropout) == expected


def test_other_dtypes_and_devices_stay_with_sdpa():
    with torch.no_grad():
        long64 = torch.randn(1, 1, LONG, 8, dtype=torch.float64)
        assert attention_backend(long64, long64, long64) == "sdpa"
        meta = torch.empty(1, 1, LONG, 8, device="meta")  # no CPU kernel applies off the CPU
        assert attention_backend(meta, meta, meta, 0.1) == "sdpa"
        assert attention_backend(meta, meta, meta) == "sdpa"


def _spy_on_kernels(monkeypatch) -> list[str]:
    calls = []
    for name in ("chunked_attention", "onednn_attention"):
        original = getattr(attention_module, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(attention_module, name, spy)
    return calls


@pytest.mark.skipif(not HAS_ONEDNN_MATMUL, reason="PyTorch built without oneDNN")
def test_attend_runs_the_kernel_it_chooses(monkeypatch):
    calls = _spy_on_kernels(monkeypatch)
    q = torch.randn(1, 2, LONG, 8)
    with torch.no_grad():
        attend(q, q, q)
    attend(q, q, q, 0.1)
    attend(q, q, q)
    attend(q, q, q, 0.1, fast_dropout=False)
    with torch.no_grad(), onednn_linear("off"):
        attend(q, q, q)
    assert calls == ["onednn_attention", "chunked_attention"]


def test_bad_backend_arguments_are_clear_errors():
    q = torch.randn(1, 1, 16, 4)
    with pytest.raises(ValueError, match="'sdpa', 'blockwise', 'onednn'"):
        attend(q, q, q, backend="flash")
    with pytest.raises(ValueError, match="no dropout"):
        attend(q, q, q, 0.1, backend="onednn")


def test_chunked_attention_equals_sdpa_without_dropout():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 70, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = chunked_attention(q, k, v, 0.0, chunk=16)
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(a, b)


def test_blockwise_attention_with_dropout_has_exact_gradients():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 30, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def fn(q, k, v):
        torch.manual_seed(7)  # the same masks on every call
        return chunked_attention(q, k, v, 0.25, chunk=8)

    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert not torch.equal(fn(q, k, v), chunked_attention(q, k, v, 0.0))
    # attend's block-wise backend is this kernel at its default block size: the same masks, values and gradients.
    torch.manual_seed(7)
    direct = chunked_attention(q, k, v, 0.25)
    torch.manual_seed(7)
    routed = attend(q, k, v, 0.25, backend="blockwise")
    assert torch.equal(routed, direct)
    grad = torch.randn_like(direct)
    for a, b in zip(torch.autograd.grad(routed, (q, k, v), grad), torch.autograd.grad(direct, (q, k, v), grad)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["blockwise", "sdpa"])
def test_attention_with_dropout_is_unbiased(backend):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 1, 40, 4, dtype=torch.float64) for _ in range(3))
    exact = F.scaled_dot_product_attention(q, k, v)
    mean = sum(attend(q, k, v, 0.5, backend=backend) for _ in range(400)) / 400
    assert ((mean - exact).abs().mean() / exact.abs().mean()) < 0.1


def _largest_saved(fn) -> int:
    largest = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        largest[0] = max(largest[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return largest[0]


def test_training_attention_with_dropout_keeps_no_n_by_n_tensor():
    torch.manual_seed(0)
    tokens = 1100  # above MIN_CHUNKED_SCORES, so the block-wise path runs
    attn = CrossScaleAttention(16, 2, dropout=0.1).train()
    x = torch.randn(1, tokens, 16, requires_grad=True)
    assert _largest_saved(lambda: attn(x)) < tokens * tokens // 10
    plain = CrossScaleAttention(16, 2, dropout=0.1, fast_dropout=False).train()
    assert _largest_saved(lambda: plain(x)) >= tokens * tokens  # SDPA's math path: the reason for the fast path
    q = torch.randn(1, 2, tokens, 8)
    assert attention_with_dropout(q, q, q, 0.0).shape == q.shape


def test_blockwise_dropout_is_the_explicit_attention_with_each_blocks_mask():
    """The kernel with dropout equals dropout(softmax(q k^T / sqrt(d))) v written out, with the masks it documents:
    block b of group g takes its own stretch of one stream, seeded from torch's generator."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 30, 4, dtype=torch.float64) for _ in range(3))
    torch.manual_seed(7)
    out = chunked_attention(q, k, v, 0.25, chunk=8)
    torch.manual_seed(7)
    seed = draw_seed()
    probs = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)[0]
    words_per_block, blocks = (8 * 30 + 3) // 4, 4
    keep = torch.cat(
        [
            torch.cat(
                [
                    keep_mask((min(8, 30 - 8 * b), 30), 0.25, seed=seed, offset=(g * blocks + b) * words_per_block)[0]
                    for b in range(blocks)
                ]
            )
            for g in range(2)
        ]
    ).view(2, 30, 30)
    expected = (probs * keep * keep_scale(0.25)) @ v[0]
    torch.testing.assert_close(out[0], expected)
    assert 0.6 < keep.double().mean().item() < 0.9
