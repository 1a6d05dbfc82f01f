"""The guarded private PyTorch APIs (models/ops/_torch_private.py): what they compute, and what happens without them."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from perspective_unet.models.ops import _torch_private, attend, attention_backend

attention_module = importlib.import_module("perspective_unet.models.ops.attention")
needs_onednn = pytest.mark.skipif(not _torch_private.HAS_ONEDNN_MATMUL, reason="PyTorch built without oneDNN")


@needs_onednn
def test_onednn_matmul_is_a_matrix_product_with_the_transposed_weight():
    g = torch.Generator().manual_seed(0)
    x, weight = torch.randn(70, 33, generator=g), torch.randn(19, 33, generator=g)
    torch.testing.assert_close(_torch_private.onednn_matmul(x, weight), x @ weight.T, rtol=1e-5, atol=1e-5)


def test_a_missing_onednn_matmul_is_a_clear_error_and_attention_falls_back_to_sdpa(monkeypatch):
    monkeypatch.setattr(_torch_private, "_linear_pointwise", None)
    with pytest.raises(RuntimeError, match=r"torch\.ops\.mkldnn\._linear_pointwise is not available"):
        _torch_private.onednn_matmul(torch.randn(2, 2), torch.randn(2, 2))
    monkeypatch.setattr(attention_module, "HAS_ONEDNN_MATMUL", False)
    q = torch.randn(1, 1, 1024, 8)
    with torch.no_grad():
        assert attention_backend(q, q, q) == "sdpa"
        torch.testing.assert_close(attend(q, q, q), F.scaled_dot_product_attention(q, q, q))


def test_a_changed_signature_names_the_operator_and_the_switch(monkeypatch):
    def changed(*args):
        raise TypeError("unexpected arguments")

    monkeypatch.setattr(_torch_private, "_linear_pointwise", changed)
    with pytest.raises(RuntimeError, match="PERSPECTIVE_UNET_ONEDNN_LINEAR=off") as info:
        _torch_private.onednn_matmul(torch.randn(2, 2), torch.randn(2, 2))
    assert "_linear_pointwise" in str(info.value) and isinstance(info.value.__cause__, TypeError)


@pytest.mark.parametrize(
    "module",
    [nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3), nn.SyncBatchNorm(3), nn.LazyBatchNorm2d()],
)
def test_every_batchnorm_is_recognized(module):
    assert _torch_private.is_batchnorm(module)


@pytest.mark.parametrize("module", [nn.LayerNorm(3), nn.GroupNorm(1, 3), nn.InstanceNorm2d(3), nn.Conv2d(3, 3, 1)])
def test_other_layers_are_not_batchnorm(module):
    assert not _torch_private.is_batchnorm(module)


def test_the_public_fallback_lists_the_same_classes(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_private_base(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "torch.nn.modules.batchnorm" and fromlist and "_BatchNorm" in fromlist:
            raise ImportError("no _BatchNorm in this PyTorch")
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", without_private_base)
    public = _torch_private._batchnorm_types()
    monkeypatch.undo()
    assert len(public) > 1
    for module in (nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.BatchNorm3d(2), nn.SyncBatchNorm(2)):
        assert isinstance(module, public)
    assert not isinstance(nn.LayerNorm(2), public)
