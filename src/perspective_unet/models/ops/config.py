"""The switches of the model's CPU backends, in one place.

One switch, the oneDNN route, governs two operations: linear layers (:func:`~perspective_unet.models.ops.linear`)
and the token attention's inference path (:func:`~perspective_unet.models.ops.onednn_attention`). Its mode is

- ``"always"``: in training too (linear layers only: the attention route has no backward). The default on x86-64
  processors with AVX-512, where oneDNN's kernels beat MKL's: faster eager training and inference, at a different
  float rounding (docs/performance.md).
- ``"inference"``: only without autograd, so training keeps ``F.linear``'s rounding (a training run then gives the
  weights it gave before the route existed).
- ``"off"``: ``F.linear`` and SDPA everywhere. The default elsewhere: on x86-64 without AVX-512 (AVX2 only) the
  route made inference slower, and on ARM oneDNN runs other kernels, not measured.

The environment variable ``PERSPECTIVE_UNET_ONEDNN_LINEAR`` (``0``/``off``, ``1``/``inference``, ``always``) is read
once, when this module is first imported; afterwards :func:`set_onednn_linear` changes the mode for the process and
:func:`onednn_linear` for a block.

Example:
    >>> previous = set_onednn_linear("off")
    >>> with onednn_linear("always"):
    ...     get_onednn_linear()
    'always'
    >>> get_onednn_linear()
    'off'
    >>> _ = set_onednn_linear(previous)
"""

from __future__ import annotations

import contextlib
import os
import platform
import warnings
from collections.abc import Iterator

import torch

__all__ = [
    "ONEDNN_LINEAR_ENV",
    "ONEDNN_MODES",
    "get_onednn_linear",
    "onednn_linear",
    "onednn_route",
    "set_onednn_linear",
]

ONEDNN_LINEAR_ENV = "PERSPECTIVE_UNET_ONEDNN_LINEAR"
ONEDNN_MODES = ("inference", "always", "off")
# What the environment variable may say, and the mode each value means.
_ENVIRONMENT_VALUES = {"0": "off", "off": "off", "1": "inference", "inference": "inference", "always": "always"}


# The routes pay off where oneDNN has AVX-512 kernels and MKL may not use them (AMD processors); on an AVX2-only
# x86-64 processor they made inference slower, and elsewhere (ARM) they were not measured: off unless asked for.
def _default_onednn_mode() -> str:
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return "always" if x86 and "AVX512" in torch.backends.cpu.get_cpu_capability() else "off"


_DEFAULT_ONEDNN_MODE = _default_onednn_mode()


def _onednn_mode_from_environment() -> str:
    value = os.environ.get(ONEDNN_LINEAR_ENV, _DEFAULT_ONEDNN_MODE)
    if value not in _ENVIRONMENT_VALUES:
        warnings.warn(
            f"{ONEDNN_LINEAR_ENV}={value!r} is not one of {sorted(_ENVIRONMENT_VALUES)}; "
            f"using {_DEFAULT_ONEDNN_MODE!r}.",
            stacklevel=2,
        )
    return _ENVIRONMENT_VALUES.get(value, _DEFAULT_ONEDNN_MODE)


# The process-wide mode: read once from the environment, then changed only by set_onednn_linear.
_onednn_linear_mode = _onednn_mode_from_environment()
_ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available()


def get_onednn_linear() -> str:
    """The current mode of the oneDNN route: ``"inference"``, ``"always"`` or ``"off"``."""
    return _onednn_linear_mode


def set_onednn_linear(mode: bool | str) -> str:
    """Set where the oneDNN route is taken for this process; returns the previous mode.

    The same mode governs linear layers and the token attention's oneDNN route, which has no backward and so is only
    taken without autograd, under any mode but ``"off"``.

    Args:
        mode: ``"inference"``, ``"always"`` or ``"off"`` (see the module docstring); ``True`` means ``"always"`` and
            ``False`` ``"off"``.

    Raises:
        ValueError: ``mode`` is none of these.
    """
    global _onednn_linear_mode
    if isinstance(mode, bool):
        mode = "always" if mode else "off"
    if mode not in ONEDNN_MODES:
        raise ValueError(f"mode must be 'inference', 'always' or 'off', got {mode!r}.")
    previous = _onednn_linear_mode
    _onednn_linear_mode = mode
    return previous


@contextlib.contextmanager
def onednn_linear(enabled: bool | str) -> Iterator[None]:
    """Within the block, the oneDNN route is taken as ``enabled`` says (see :func:`set_onednn_linear`); the previous
    mode comes back on leaving it, also on an exception.

    Example:
        >>> from perspective_unet.models.ops import linear
        >>> with onednn_linear(False):
        ...     y = linear(torch.randn(300, 8), torch.randn(4, 8))
    """
    previous = set_onednn_linear(enabled)
    try:
        yield
    finally:
        set_onednn_linear(previous)


def onednn_route(x: torch.Tensor, *others: torch.Tensor, inference_only: bool = False) -> bool:
    """Whether a matrix product of ``x`` (and ``others``) may take the oneDNN route now.

    True for float32 CPU tensors with the route on for the current autograd state, oneDNN present and enabled, and no
    CPU autocast. ``inference_only`` is for routes without a backward (the token attention's): they need the autograd
    state off even under ``"always"``. Under ``torch.compile`` the decision uses only what the tracer can see, so it
    never breaks the graph.
    """
    grad = torch.is_grad_enabled()
    suitable = (
        _ONEDNN_AVAILABLE
        and _onednn_linear_mode != "off"
        and (_onednn_linear_mode == "always" or not grad)
        and not (inference_only and grad)
        and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (x, *others))
    )
    if torch.compiler.is_compiling():
        # Decided at trace time from what the compiler can see, without calls that would break the graph.
        return suitable and not grad
    return suitable and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")
