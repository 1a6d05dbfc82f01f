"""The precision switch: what the processor's flags mean, which autocast type each setting gives, the context."""

from __future__ import annotations

import pytest
import torch

from perspective_unet.config.checks import PRECISIONS
from perspective_unet.models.ops import precision
from perspective_unet.models.ops.precision import (
    CpuCapabilities,
    autocast,
    capabilities_from_flags,
    cpu_capabilities,
    inference_dtype,
    training_dtype,
)

# Flags as /proc/cpuinfo lists them on the processor families the project documents (abridged to the ones read).
FAMILIES = {
    "Intel Xeon Sapphire Rapids": (
        {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni"},
        ("AVX2", "AVX-512", "AVX512-BF16", "AMX", "VNNI"),
        True,
    ),
    "AMD EPYC Zen 5": (
        {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni"},
        ("AVX2", "AVX-512", "AVX512-BF16", "VNNI"),
        True,
    ),
    "Intel Xeon Skylake": ({"avx2", "fma", "avx512f"}, ("AVX2", "AVX-512"), False),
    "AMD EPYC Zen 3": ({"avx2", "fma"}, ("AVX2",), False),
    "Intel Alder Lake laptop": ({"avx2", "fma", "avx_vnni"}, ("AVX2", "VNNI"), False),
    "ARM Graviton 3": ({"fp", "asimd", "bf16", "sve"}, (), False),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_flags_name_the_capabilities_and_native_bfloat16(family):
    flags, names, native = FAMILIES[family]
    caps = capabilities_from_flags(flags, family, "x86_64", "DEFAULT")
    assert caps.names == names
    assert caps.native_bf16 is native
    assert family in caps.describe()


def test_torch_dispatch_level_fills_in_unknown_flags():
    caps = capabilities_from_flags(set(), "unknown", "x86_64", "AVX512")
    assert (caps.avx2, caps.avx512, caps.avx512_bf16, caps.amx) == (True, True, False, False)
    assert capabilities_from_flags(set(), "unknown", "x86_64", "AVX2").names == ("AVX2",)


def test_this_machine_is_read_from_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 fma avx512f amx_bf16\n\n"
        "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 fma avx512f amx_bf16\n"
    )
    monkeypatch.setattr(precision, "_CPUINFO", cpuinfo)
    cpu_capabilities.cache_clear()
    try:
        caps = cpu_capabilities()
        assert caps.model_name == "Test CPU 9000"
        assert caps.names == ("AVX2", "AVX-512", "AMX")
    finally:
        cpu_capabilities.cache_clear()


def _with_native_bf16(monkeypatch, native: bool) -> None:
    flags = {"avx2", "fma", "avx512f"} | ({"avx512_bf16"} if native else set())
    monkeypatch.setattr(precision, "cpu_capabilities", lambda: capabilities_from_flags(flags, "cpu", "x86_64", "AVX2"))


@pytest.mark.parametrize("native", [True, False])
def test_inference_auto_follows_the_processor_and_fixed_settings_do_not(monkeypatch, native):
    _with_native_bf16(monkeypatch, native)
    cpu = torch.device("cpu")
    assert inference_dtype("auto", cpu) == (torch.bfloat16 if native else None)
    assert inference_dtype("bf16", cpu) == torch.bfloat16
    assert inference_dtype("fp32", cpu) is None
    # MPS has no native-bfloat16 rule: auto stays in float32 there.
    assert inference_dtype("auto", "mps") is None


@pytest.mark.parametrize("native", [True, False])
def test_training_auto_stays_in_float32_on_a_cpu(monkeypatch, native):
    _with_native_bf16(monkeypatch, native)
    assert training_dtype("auto", "cpu") is None
    assert training_dtype("bf16", "cpu") == torch.bfloat16
    assert training_dtype("fp32", "cpu") is None
    assert training_dtype("fp32", "cuda", amp=True) is None
    assert training_dtype("auto", "cuda", amp=False) is None


def test_unknown_precision_is_refused():
    assert PRECISIONS == ("auto", "fp32", "bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        inference_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        training_dtype("half", "cpu")


def test_autocast_context_runs_products_in_bfloat16_and_none_in_float32():
    a = torch.randn(8, 8)
    with autocast("cpu", torch.bfloat16):
        assert torch.mm(a, a).dtype == torch.bfloat16
        # Autocast keeps reductions such as softmax in float32.
        assert torch.softmax(a, dim=1).dtype == torch.float32
    with autocast(torch.device("cpu"), None):
        assert torch.mm(a, a).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


def test_capabilities_are_a_frozen_record():
    caps = CpuCapabilities("cpu", "x86_64", "AVX2", avx2=True)
    with pytest.raises(AttributeError):
        caps.avx2 = False  # type: ignore[misc]
