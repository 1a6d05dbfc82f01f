"""ENLSA: the random-feature estimate, its cost, the projection buffer and its redraw."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from perspective_unet.models.attention import (
    EfficientNonLocalAttention,
    exact_softmax_attention,
    gaussian_orthogonal_random_matrix,
    linear_attention,
    random_feature_map,
)
from perspective_unet.models.blocks import EfficientNonLocalTransformerBlock

try:  # private: the only hook that sees every tensor an operator allocates, but it may move between releases
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:
    TorchDispatchMode = None


def _relative_error(num_features: int, dim: int = 32, tokens: int = 256, trials: int = 6) -> float:
    errors = []
    for seed in range(trials):
        g = torch.Generator().manual_seed(seed)
        q = torch.nn.functional.normalize(torch.randn(1, tokens, dim, generator=g), dim=-1)
        k = torch.nn.functional.normalize(torch.randn(1, tokens, dim, generator=g), dim=-1)
        v = torch.randn(1, tokens, dim, generator=g)
        w = gaussian_orthogonal_random_matrix(num_features, dim, generator=g)
        approx = linear_attention(random_feature_map(q, w), random_feature_map(k, w), v)
        exact = exact_softmax_attention(q, k, v)
        errors.append(((approx - exact).norm() / exact.norm()).item())
    return sum(errors) / len(errors)


def test_estimate_approaches_exact_softmax_attention_as_features_grow():
    e64, e256, e1024 = (_relative_error(m) for m in (64, 256, 1024))
    assert e64 > e256 > e1024
    assert e1024 < 0.1  # about 0.07 for unit-length q and k, as ENLSA uses
    assert e64 / e1024 > 2.5  # roughly the m^(-1/2) rate: sqrt(1024 / 64) = 4


def test_estimate_of_the_kernel_itself_is_unbiased():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    w = gaussian_orthogonal_random_matrix(16 * 4096, 16, generator=g)
    estimate = (random_feature_map(x, w) * random_feature_map(y, w)).sum(-1)
    torch.testing.assert_close(estimate, torch.exp((x * y).sum(-1)), rtol=0.03, atol=0.0)


def test_orthogonal_blocks_and_row_lengths():
    w = gaussian_orthogonal_random_matrix(40, 16, generator=torch.Generator().manual_seed(1))
    assert w.shape == (40, 16)
    block = w[:16] / w[:16].norm(dim=1, keepdim=True)
    torch.testing.assert_close(block @ block.T, torch.eye(16), atol=1e-5, rtol=0)
    assert 2.0 < w.norm(dim=1).mean() < 6.0  # lengths of 16-d Gaussian vectors: about 4


class _LargestTensor(TorchDispatchMode or object):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.skipif(TorchDispatchMode is None, reason="torch.utils._python_dispatch is not in this PyTorch")
def test_never_builds_an_n_by_n_tensor_at_65536_tokens():
    tokens, dim = 65_536, 64
    attn = EfficientNonLocalAttention(dim).eval()
    x = torch.randn(1, tokens, dim)
    with torch.no_grad(), _LargestTensor() as mode:
        out = attn(x)
    assert out.shape == (1, tokens, dim)
    assert mode.largest <= tokens * dim  # N x m with m = dim, vs N^2 = 4.3e9 elements


def test_65536_token_call_stays_far_below_n_squared_memory():
    script = textwrap.dedent(
        """
        import resource, torch
        from perspective_unet.models.attention import EfficientNonLocalAttention
        torch.set_num_threads(2)
        attn = EfficientNonLocalAttention(64).eval()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.no_grad():
            attn(torch.randn(1, 65536, 64))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
        """
    )
    grown_kib = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    n_squared_bytes = 65_536**2 * 4
    assert grown_kib * 1024 < n_squared_bytes / 50  # 17 GB of N^2 floats; the call stays under 350 MB


def test_projection_is_a_saved_buffer_and_redraws_only_in_training():
    attn = EfficientNonLocalAttention(16, redraw_interval=2)
    assert "projection" in attn.state_dict()
    assert "projection" not in dict(attn.named_parameters())
    x = torch.randn(1, 10, 16)
    first = attn.projection.clone()
    attn.eval()
    for _ in range(5):
        attn(x)
    assert torch.equal(attn.projection, first)
    attn.train()
    attn(x)
    attn(x)
    assert torch.equal(attn.projection, first)
    attn(x)  # the third training call is the first after two steps
    assert not torch.equal(attn.projection, first)


def test_no_redraw_by_default():
    attn = EfficientNonLocalAttention(16).train()
    first = attn.projection.clone()
    for _ in range(5):
        attn(torch.randn(1, 10, 16))
    assert torch.equal(attn.projection, first)


@pytest.mark.parametrize(("heads", "features", "kernel"), [(1, None, "softmax"), (4, 32, "softmax"), (2, 8, "relu")])
def test_heads_features_and_kernels(heads, features, kernel):
    block = EfficientNonLocalTransformerBlock(32, heads=heads, num_features=features, kernel=kernel).eval()
    assert block.attn.projection.shape == (features or 32 // heads, 32 // heads)
    out = block(torch.randn(2, 32, 6, 10))
    assert out.shape == (2, 32, 6, 10) and torch.isfinite(out).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="heads"):
        EfficientNonLocalAttention(30, heads=4)
    with pytest.raises(ValueError, match="kernel"):
        EfficientNonLocalAttention(32, kernel="cosine")
    with pytest.raises(ValueError, match="dimension"):
        random_feature_map(torch.randn(3, 8), torch.randn(8, 4))
