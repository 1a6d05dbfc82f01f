"""Linear layers through oneDNN equal F.linear up to float rounding, in values and gradients, and compile cleanly."""

import pytest
import torch
import torch.nn.functional as F

from perspective_unet import create_model
from perspective_unet.models.layers import Linear, linear, onednn_linear


@pytest.mark.parametrize("lead", [(300,), (2, 257), (3, 5, 41)])
def test_onednn_linear_equals_f_linear(lead):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*lead, 37, generator=g, requires_grad=True)
    weight = torch.randn(19, 37, generator=g, requires_grad=True)
    bias = torch.randn(19, generator=g, requires_grad=True)
    upstream = torch.randn(*lead, 19, generator=g)
    with onednn_linear(True):
        out = linear(x, weight, bias)
    grads = torch.autograd.grad(out, (x, weight, bias), upstream)
    reference = F.linear(x, weight, bias)
    expected = torch.autograd.grad(reference, (x, weight, bias), upstream)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_linear_module_keeps_nn_linear_parameters():
    layer = Linear(8, 3)
    assert isinstance(layer, torch.nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(512, 8)
    with onednn_linear(False):
        plain = layer(x)
    torch.testing.assert_close(layer(x), plain, rtol=1e-5, atol=1e-6)


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
        torch._dynamo.reset()
        compiled = torch.compile(model.train(training), backend=capture)
        with torch.set_grad_enabled(training):
            compiled(x)
        assert len(graphs) == 1, "a graph break splits the compiled model"
        torch._dynamo.reset()
        targets = [str(node.target) for node in graphs[0].graph.nodes if node.op == "call_function"]
        linear_calls[training] = sum("linear" in t for t in targets)
    # Training graphs keep F.linear (less to save for backward); inference graphs send the large layers to oneDNN.
    assert linear_calls[False] < linear_calls[True]


def test_unknown_environment_value_warns_and_keeps_the_default(monkeypatch):
    from perspective_unet.models import layers

    monkeypatch.setenv("PERSPECTIVE_UNET_ONEDNN_LINEAR", "fast")
    with pytest.warns(UserWarning, match="PERSPECTIVE_UNET_ONEDNN_LINEAR='fast'"):
        assert layers._onednn_mode_from_environment() == layers._DEFAULT_ONEDNN_MODE
    monkeypatch.delenv("PERSPECTIVE_UNET_ONEDNN_LINEAR")
    assert layers._onednn_mode_from_environment() == layers._DEFAULT_ONEDNN_MODE
    monkeypatch.setattr(layers.platform, "machine", lambda: "arm64")
    assert layers._default_onednn_mode() == "off", "measured on x86-64 only: off elsewhere unless asked for"
    monkeypatch.setattr(layers.platform, "machine", lambda: "AMD64")
    assert layers._default_onednn_mode() == "inference"
    monkeypatch.setenv("PERSPECTIVE_UNET_ONEDNN_LINEAR", "0")
    assert layers._onednn_mode_from_environment() == "off"
    with pytest.raises(ValueError, match="inference"):
        layers.set_onednn_linear("sometimes")
