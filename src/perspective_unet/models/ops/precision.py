"""Numeric precision as a backend choice: what the processor offers, which autocast type a setting means, the context.

A precision setting is ``"fp32"``, ``"bf16"`` or ``"auto"``:

- ``"fp32"``: no autocast; every operation in float32.
- ``"bf16"``: ``torch.autocast`` to bfloat16 on the model's device (matrix products and convolutions in bfloat16,
  reductions, softmax and the loss in float32, as autocast's own lists say).
- ``"auto"``: bfloat16 where the hardware computes it natively and float32 elsewhere. On a CPU "natively" means
  Intel's AMX (``amx_bf16``) or the AVX-512 BF16 instructions (``avx512_bf16``: Intel Cooper Lake / Sapphire Rapids
  and later, AMD Zen 4 and later); without them PyTorch emulates bfloat16 and is slower than float32. On CUDA it
  means ``torch.cuda.is_bf16_supported()`` (compute capability 8.0 and above). Training uses ``"auto"`` differently
  (:func:`training_dtype`): bfloat16 training on a CPU has not met the project's accuracy bar, so ``"auto"`` keeps
  float32 there.

Why inference may default to ``"auto"``: on the demo's held-out slices the bfloat16 labels agree with float32 on at
least 99.5% of the voxels and the mean Dice moves by less than 0.5 points (docs/performance.md gives the figures;
``tests/engine/test_precision.py`` checks the bar on a model it trains).

Example:
    >>> caps = cpu_capabilities()
    >>> isinstance(caps.native_bf16, bool)
    True
    >>> inference_dtype("fp32", torch.device("cpu")) is None
    True
    >>> inference_dtype("bf16", torch.device("cpu"))
    torch.bfloat16
"""

from __future__ import annotations

import contextlib
import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from perspective_unet.config.checks import PRECISIONS

__all__ = [
    "CpuCapabilities",
    "autocast",
    "check_precision",
    "cpu_capabilities",
    "inference_dtype",
    "training_dtype",
]

_CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class CpuCapabilities:
    """The vector and matrix instructions of this machine's processor that decide which backend paths pay off.

    Attributes:
        model_name: The processor's name (``/proc/cpuinfo``'s "model name", else :func:`platform.processor`).
        architecture: ``x86_64``, ``aarch64``, ... (:func:`platform.machine`).
        torch_capability: What PyTorch's own kernels were dispatched to (``torch.backends.cpu.get_cpu_capability()``:
            ``DEFAULT``, ``AVX2``, ``AVX512``, ``ZVECTOR``, ``SVE256``, ...).
        avx2: AVX2 with FMA.
        avx512: AVX-512 foundation (``avx512f``).
        avx512_bf16: The AVX-512 bfloat16 dot products (``avx512_bf16``).
        amx: Intel's tile matrix units for bfloat16 (``amx_bf16``).
        vnni: Integer dot products, AVX-512 VNNI or AVX-VNNI.
    """

    model_name: str
    architecture: str
    torch_capability: str
    avx2: bool = False
    avx512: bool = False
    avx512_bf16: bool = False
    amx: bool = False
    vnni: bool = False

    @property
    def native_bf16(self) -> bool:
        """Whether the processor computes bfloat16 products in hardware (AMX or AVX-512 BF16)."""
        return self.amx or self.avx512_bf16

    @property
    def names(self) -> tuple[str, ...]:
        """The capabilities present, as people name them (``("AVX2", "AVX-512", "AVX512-BF16", "VNNI")``)."""
        present = (
            ("AVX2", self.avx2),
            ("AVX-512", self.avx512),
            ("AVX512-BF16", self.avx512_bf16),
            ("AMX", self.amx),
            ("VNNI", self.vnni),
        )
        return tuple(name for name, has in present if has)

    def describe(self) -> str:
        """One line: the processor, its capabilities and PyTorch's dispatch level."""
        names = ", ".join(self.names) or "none of AVX2/AVX-512/AMX/VNNI"
        return f"{self.model_name} ({self.architecture}): {names}; PyTorch kernels: {self.torch_capability}"


def capabilities_from_flags(
    flags: set[str], model_name: str, architecture: str, torch_capability: str
) -> CpuCapabilities:
    """The capabilities that a set of ``/proc/cpuinfo`` flags and PyTorch's dispatch level name.

    PyTorch's level fills in AVX2 and AVX-512 where the flags are unknown (a machine without ``/proc/cpuinfo``).

    Example:
        >>> caps = capabilities_from_flags({"avx2", "fma", "avx512f", "amx_bf16"}, "Xeon", "x86_64", "AVX512")
        >>> caps.names, caps.native_bf16
        (('AVX2', 'AVX-512', 'AMX'), True)
    """
    return CpuCapabilities(
        model_name=model_name,
        architecture=architecture,
        torch_capability=torch_capability,
        avx2=("avx2" in flags and "fma" in flags) or torch_capability.startswith(("AVX2", "AVX512")),
        avx512="avx512f" in flags or torch_capability.startswith("AVX512"),
        avx512_bf16="avx512_bf16" in flags,
        amx="amx_bf16" in flags,
        vnni="avx512_vnni" in flags or "avx_vnni" in flags,
    )


@functools.cache
def cpu_capabilities() -> CpuCapabilities:
    """This machine's :class:`CpuCapabilities` (read once per process)."""
    flags: set[str] = set()
    model_name = ""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model_name:
            model_name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    model_name = model_name or platform.processor() or "unknown processor"
    return capabilities_from_flags(flags, model_name, platform.machine(), torch.backends.cpu.get_cpu_capability())


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`~perspective_unet.config.checks.PRECISIONS`.

    Raises:
        ValueError: It is not.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    return precision


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_capabilities().native_bf16
    return False


def inference_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast type of inference at ``precision`` on ``device``: ``torch.bfloat16`` or None (float32).

    ``"auto"`` gives bfloat16 where the device computes it natively (see the module docstring), on no other device
    type (MPS stays in float32).
    """
    device = torch.device(device)
    check_precision(precision)
    if precision == "bf16" or (precision == "auto" and _native_bf16(device)):
        return torch.bfloat16
    return None


def training_dtype(precision: str, device: torch.device | str, *, amp: bool = True) -> torch.dtype | None:
    """The autocast type of training at ``precision`` on ``device``: bfloat16, float16 or None (float32).

    ``"bf16"`` trains under bfloat16 autocast on any device. ``"auto"`` keeps what training did before the setting
    existed: on CUDA with ``amp`` bfloat16 where the GPU supports it, else float16 (with loss scaling, which the
    caller adds); float32 on a CPU, where bfloat16 training has not been shown to meet the accuracy bar
    (docs/performance.md), and on other devices.
    """
    device = torch.device(device)
    check_precision(precision)
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and amp and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op context for None (float32).

    Example:
        >>> with autocast("cpu", torch.bfloat16):
        ...     torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype
        torch.bfloat16
    """
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
