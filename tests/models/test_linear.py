"""Linear layers through oneDNN equal F.linear up to float rounding, in values and gradients, and compile cleanly."""

import importlib

import pytest
import torch
import torch.nn.functional as F

from perspective_unet import create_model
from perspective_unet.models.ops import Linear, linear, onednn_linear

# The module, not the function of the same name that perspective_unet.models.ops exports.
linear_module = importlib.import_module("perspective_unet.models.ops.linear")

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")


@pytest.fixture(autouse=True)
def two_threads():
    """The route needs more than one thread (on one, PyTorch's 1x1 convolution is not oneDNN's); the test workers run
    on one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def _spy_on_route(monkeypatch) -> list[tuple[int, ...]]:
    """Record the input shape of every call that takes the oneDNN route."""
    calls = []
    original = linear_module._onednn_linear

    def spy(x, weight, bias):
        calls.append(tuple(x.shape))
        return original(x, weight, bias)

    monkeypatch.setattr(linear_module, "_onednn_linear", spy)
    return calls


@needs_onednn
@pytest.mark.parametrize("lead", [(300,), (2, 257), (3, 5, 41)])
def test_onednn_linear_equals_f_linear(lead, monkeypatch):
    calls = _spy_on_route(monkeypatch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, 37, generator=g, requires_grad=True)
    weight = torch.randn(19, 37, generator=g, requires_grad=True)
    bias = torch.randn(19, generator=g, requires_grad=True)
    upstream = torch.randn(*lead, 19, generator=g)
    with onednn_linear(True):
        out = linear(x, weight, bias)
    assert calls == [lead + (37,)], "'always' takes the route with autograd on"
    grads = torch.autograd.grad(out, (x, weight, bias), upstream)
    reference = F.linear(x, weight, bias)
    expected = torch.autograd.grad(reference, (x, weight, bias), upstream)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _ops_run(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


@needs_onednn
def test_linear_module_keeps_nn_linear_parameters(monkeypatch):
    calls = _spy_on_route(monkeypatch)
    layer = Linear(64, 24)
    assert isinstance(layer, torch.nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(512, 64)
    with onednn_linear("inference"), torch.no_grad():  # "inference" takes the route without autograd only
        routed_ops = _ops_run(lambda: layer(x))
        routed = layer(x)
        assert len(calls) == 2, "a large float32 CPU input without autograd takes the oneDNN route"
        with onednn_linear(False):
            plain_ops = _ops_run(lambda: layer(x))
            plain = layer(x)
        assert len(calls) == 2, "the route off is F.linear"
    assert "aten::mkldnn_convolution" in routed_ops and "aten::linear" not in routed_ops
    assert "aten::linear" in plain_ops and "aten::mkldnn_convolution" not in plain_ops
    torch.testing.assert_close(routed, plain, rtol=1e-5, atol=1e-6)
    assert torch.equal(plain, F.linear(x, layer.weight, layer.bias).detach())
    with torch.no_grad():
        layer(x[:100])
    assert len(calls) == 2, "fewer than 256 rows stay with F.linear"
    with onednn_linear("inference"):
        layer(x)
    assert len(calls) == 2, "with autograd on, 'inference' keeps F.linear"
    layer(x)
    assert len(calls) == 3, "with autograd on, 'always' (the AVX-512 default, as the tests run) takes the route"


@needs_onednn
def test_one_thread_keeps_f_linear(monkeypatch):
    calls = _spy_on_route(monkeypatch)
    x, weight = torch.randn(512, 64), torch.randn(24, 64)
    with torch.no_grad(), onednn_linear("always"):
        linear(x, weight)
        assert len(calls) == 1
        torch.set_num_threads(1)
        ops = _ops_run(lambda: linear(x, weight))
    assert len(calls) == 1, "on one thread the convolution would not reach oneDNN"
    assert "aten::linear" in ops and "aten::_slow_conv2d_forward" not in ops


def test_model_compiles_to_one_graph_in_training_and_inference():
    graphs = []

    def capture(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    model = create_model("perspective_unet_tiny", num_classes=3, scsi_attention="official")
    x = torch.randn(2, 1, 64, 64)
    linear_calls = {}
    for training in (True, False):
        graphs.clear()
        torch.compiler.reset()
        compiled = torch.compile(model.train(training), backend=capture)
        with torch.set_grad_enabled(training):
            compiled(x)
        assert len(graphs) == 1, "a graph break splits the compiled model"
        torch.compiler.reset()
        targets = [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]
        linear_calls[training] = sum("linear" in t for t in targets)
    # Training graphs keep F.linear (less to save for backward); inference graphs send the large layers to oneDNN.
    assert linear_calls[False] < linear_calls[True]
