"""The token attention's oneDNN route equals SDPA up to float rounding, is taken only where it may be (no autograd,
float32 CPU, long sequences, the route not off), and keeps a compiled model in one graph."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from perspective_unet import create_model
from perspective_unet.models.integrator import CrossScaleAttention
from perspective_unet.models.ops import onednn_attention, onednn_attention_route, onednn_linear
from perspective_unet.models.ops._torch_private import HAS_ONEDNN_MATMUL

kernels = importlib.import_module("perspective_unet.models.ops.attention_kernels")

pytestmark = pytest.mark.skipif(not HAS_ONEDNN_MATMUL, reason="PyTorch built without oneDNN")


@pytest.mark.parametrize(
    ("lead", "n", "m", "d", "e"),
    [((1, 2), 1030, 1030, 16, 16), ((3,), 517, 2100, 8, 24), ((2, 1, 2), 1500, 1100, 32, 32)],
)
def test_equals_sdpa_for_odd_shapes(lead, n, m, d, e):
    g = torch.Generator().manual_seed(0)
    # Scaled inputs give peaked softmax rows, where a wrong maximum or normalization would show.
    q = 3 * torch.randn(*lead, n, d, generator=g)
    k = 3 * torch.randn(*lead, m, d, generator=g)
    v = torch.randn(*lead, m, e, generator=g)
    with torch.no_grad():
        out = onednn_attention(q, k, v)
        reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
    assert out.shape == (*lead, n, e)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_block_boundaries_do_not_matter(monkeypatch):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 1100, 16, generator=g) for _ in range(3))
    with torch.no_grad():
        whole = kernels._onednn_blocks(q, k, v, 1100)
        for rows in (16, 333, 1099):
            torch.testing.assert_close(kernels._onednn_blocks(q, k, v, rows), whole, rtol=1e-5, atol=1e-6)


def test_refuses_autograd():
    q = torch.randn(1, 1024, 8, requires_grad=True)
    with pytest.raises(RuntimeError, match="no backward"):
        onednn_attention(q, q, q)


def test_route_is_taken_only_where_it_may_be():
    long = torch.randn(1, 2, 1024, 8)
    short = torch.randn(1, 2, 1000, 8)
    with torch.no_grad():
        assert onednn_attention_route(long, long, long)
        assert not onednn_attention_route(short, short, short), "short sequences stay with SDPA"
        assert not onednn_attention_route(long.double(), long.double(), long.double())
        with onednn_linear("off"):
            assert not onednn_attention_route(long, long, long)
        with onednn_linear("always"):
            assert onednn_attention_route(long, long, long)
    for mode in ("inference", "always"):
        with onednn_linear(mode):
            assert not onednn_attention_route(long, long, long), "no backward: never with autograd on"


def _spy_on_blocks(monkeypatch) -> list[int]:
    calls = []
    original = kernels._onednn_blocks

    def spy(*args):
        calls.append(args[-1])
        return original(*args)

    monkeypatch.setattr(kernels, "_onednn_blocks", spy)
    return calls


def test_cross_scale_attention_takes_the_route_in_inference_only(monkeypatch):
    calls = _spy_on_blocks(monkeypatch)
    torch.manual_seed(0)
    attention = CrossScaleAttention(32, 4, dropout=0.1).eval()
    x = torch.randn(2, 1030, 32)
    with torch.no_grad():
        routed = attention(x)
        assert calls, "eval without autograd on a long sequence takes the oneDNN route"
        with onednn_linear("off"):
            plain = attention(x)
    assert len(calls) == 1
    torch.testing.assert_close(routed, plain, rtol=1e-4, atol=1e-5)
    attention(x).sum().backward()
    assert len(calls) == 1, "with autograd the attention stays with SDPA"
    assert all(p.grad is not None for p in attention.parameters())


def test_model_in_inference_matches_the_plain_path(monkeypatch):
    calls = _spy_on_blocks(monkeypatch)
    torch.manual_seed(0)
    model = create_model("perspective_unet_tiny", num_classes=4).eval()
    x = torch.randn(2, 1, 112, 128)  # 1,176 SCSI tokens
    with torch.no_grad():
        fast = model(x)
        with onednn_linear("off"):
            plain = model(x)
    assert calls, "the model's SCSI attention took the oneDNN route"
    assert (fast - plain).abs().max() <= 1e-4 * plain.abs().max()


def test_compiled_inference_keeps_one_graph_with_the_route():
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = create_model("perspective_unet_tiny", num_classes=3).eval()
    torch.compiler.reset()
    try:
        with torch.no_grad():
            torch.compile(model, backend=capture)(torch.randn(1, 1, 112, 128))
    finally:
        torch.compiler.reset()
    assert len(graphs) == 1, "a graph break splits the compiled model"
    targets = [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert any("onednn_attention" in t for t in targets)
