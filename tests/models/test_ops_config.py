"""The backend switch (models/ops/config.py): environment variable read once, setter, context manager, defaults,
and the decision it drives."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from perspective_unet.models import ops
from perspective_unet.models.ops import config


@pytest.mark.parametrize(
    ("value", "mode"),
    [("0", "off"), ("off", "off"), ("1", "inference"), ("inference", "inference"), ("always", "always")],
)
def test_environment_values_name_the_modes(monkeypatch, value, mode):
    monkeypatch.setenv(config.ONEDNN_LINEAR_ENV, value)
    assert config._onednn_mode_from_environment() == mode


def test_unset_environment_gives_the_platform_default(monkeypatch):
    monkeypatch.delenv(config.ONEDNN_LINEAR_ENV, raising=False)
    assert config._onednn_mode_from_environment() == config._DEFAULT_ONEDNN_MODE
    monkeypatch.setattr(config.platform, "machine", lambda: "arm64")
    assert config._default_onednn_mode() == "off", "measured on x86-64 only: off elsewhere unless asked for"
    monkeypatch.setattr(config.platform, "machine", lambda: "AMD64")
    monkeypatch.setattr(config.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert config._default_onednn_mode() == "always", "fast by default: training takes the route too"
    monkeypatch.setattr(config.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert config._default_onednn_mode() == "off", "slower on AVX2-only processors: off there"


def test_unknown_environment_value_warns_with_the_valid_ones_and_keeps_the_default(monkeypatch):
    monkeypatch.setenv(config.ONEDNN_LINEAR_ENV, "fast")
    with pytest.warns(UserWarning, match="PERSPECTIVE_UNET_ONEDNN_LINEAR='fast'") as record:
        assert config._onednn_mode_from_environment() == config._DEFAULT_ONEDNN_MODE
    message = str(record[0].message)
    for valid in ("'0'", "'1'", "'always'", "'inference'", "'off'"):
        assert valid in message


def test_environment_is_read_once_at_import():
    script = textwrap.dedent(
        """
        import os
        from perspective_unet.models.ops.linear import Linear
        from perspective_unet.models.ops import get_onednn_linear
        print(get_onednn_linear())
        os.environ["PERSPECTIVE_UNET_ONEDNN_LINEAR"] = "off"
        Linear(4, 4)
        print(get_onednn_linear())
        """
    )
    env = {**os.environ, "PERSPECTIVE_UNET_ONEDNN_LINEAR": "always"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["always", "always"]


def test_setter_returns_the_previous_mode_and_takes_booleans():
    previous = config.get_onednn_linear()
    try:
        assert ops.set_onednn_linear("always") == previous
        assert ops.set_onednn_linear(False) == "always"
        assert config.get_onednn_linear() == "off"
        assert ops.set_onednn_linear(True) == "off"
        assert config.get_onednn_linear() == "always"
    finally:
        ops.set_onednn_linear(previous)


@pytest.mark.parametrize("bad", ["sometimes", "1", 1, None])
def test_setter_refuses_unknown_modes_naming_the_valid_ones(bad):
    previous = config.get_onednn_linear()
    with pytest.raises(ValueError, match="'inference', 'always' or 'off'"):
        ops.set_onednn_linear(bad)
    assert config.get_onednn_linear() == previous


def test_context_manager_restores_the_previous_mode_also_after_an_error():
    assert config.get_onednn_linear() == "always"  # pinned by tests/conftest.py
    with ops.onednn_linear("off"):
        assert config.get_onednn_linear() == "off"
        with ops.onednn_linear("inference"):
            assert config.get_onednn_linear() == "inference"
        assert config.get_onednn_linear() == "off"
    assert config.get_onednn_linear() == "always"
    with pytest.raises(KeyError), ops.onednn_linear("inference"):
        raise KeyError("inside")
    assert config.get_onednn_linear() == "always"


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")
def test_route_decision_follows_mode_autograd_dtype_and_autocast():
    x = torch.randn(4, 4)
    with torch.no_grad():
        assert ops.onednn_route(x)
        assert not ops.onednn_route(x.double()), "float32 only"
        assert not ops.onednn_route(x, x.double())
        with ops.onednn_linear("off"):
            assert not ops.onednn_route(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not ops.onednn_route(x)
    with ops.onednn_linear("inference"):
        assert not ops.onednn_route(x), "'inference' leaves autograd to F.linear"
    with ops.onednn_linear("always"):
        assert ops.onednn_route(x)
        assert not ops.onednn_route(x, inference_only=True), "routes without a backward need autograd off"
