"""Small building blocks shared by the network's parts: conv-norm-activation, dropout and stochastic depth, token
layout helpers, BatchNorm folding and activation checkpointing."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ConvNormAct",
    "DropPath",
    "Dropout",
    "Linear",
    "dropout",
    "fold_batchnorm",
    "frozen_batchnorm_statistics",
    "keep_mask",
    "linear",
    "maybe_checkpoint",
    "onednn_linear",
    "onednn_route",
    "relu_dropout",
    "set_onednn_linear",
    "to_feature_map",
    "to_tokens",
]

# Fast dropout compares uniform 16-bit integers with a threshold, so its rate is rounded to a multiple of 2^-16.
_MASK_LEVELS = 1 << 16

# Below this many rows a linear layer stays with F.linear: the convolution's set-up cost is not worth it.
_ONEDNN_MIN_ROWS = 256
_ONEDNN_MODES = {"0": "off", "off": "off", "1": "inference", "inference": "inference", "always": "always"}


# The routes were measured on x86-64 (where oneDNN has AVX-512 kernels and MKL may not use them); elsewhere (ARM,
# where oneDNN runs through other kernels) they stay off unless asked for.
def _default_onednn_mode() -> str:
    return "inference" if platform.machine().lower() in ("x86_64", "amd64") else "off"


_DEFAULT_ONEDNN_MODE = _default_onednn_mode()


def _onednn_mode_from_environment() -> str:
    value = os.environ.get("PERSPECTIVE_UNET_ONEDNN_LINEAR", _DEFAULT_ONEDNN_MODE)
    if value not in _ONEDNN_MODES:
        warnings.warn(
            f"PERSPECTIVE_UNET_ONEDNN_LINEAR={value!r} is not one of {sorted(_ONEDNN_MODES)}; "
            f"using {_DEFAULT_ONEDNN_MODE!r}.",
            stacklevel=2,
        )
    return _ONEDNN_MODES.get(value, _DEFAULT_ONEDNN_MODE)


_onednn_linear_mode = _onednn_mode_from_environment()
_ONEDNN_AVAILABLE = torch.backends.mkldnn.is_available()


def set_onednn_linear(mode: bool | str) -> str:
    """Set where :func:`linear` takes the oneDNN route for this process; returns the previous mode.

    The same setting governs the oneDNN route of the token attention
    (:func:`~perspective_unet.models.chunked_attention.onednn_attention`), which has no backward and so is only taken
    without autograd, under any mode but ``"off"``.

    Args:
        mode: ``"inference"`` (the default on x86-64: only without autograd, so training keeps ``F.linear``'s
            rounding and a training run gives the same weights as before this route existed), ``"always"``
            (training too: an eager training step of the paper model 1.3x faster, docs/performance.md), ``"off"``
            (the default elsewhere); ``True`` means ``"always"`` and ``False`` ``"off"``.
    """
    global _onednn_linear_mode
    if isinstance(mode, bool):
        mode = "always" if mode else "off"
    if mode not in ("inference", "always", "off"):
        raise ValueError(f"mode must be 'inference', 'always' or 'off', got {mode!r}.")
    previous = _onednn_linear_mode
    _onednn_linear_mode = mode
    return previous


@contextlib.contextmanager
def onednn_linear(enabled: bool | str) -> Iterator[None]:
    """Within the block, :func:`linear` routes large CPU float32 products through oneDNN as ``enabled`` says
    (see :func:`set_onednn_linear`).

    The default is ``"inference"`` on x86-64 and ``"off"`` elsewhere (measured on x86-64 only); the environment
    variable ``PERSPECTIVE_UNET_ONEDNN_LINEAR`` (``0``/``off``, ``inference``, ``always``) sets it for a process.

    Example:
        >>> with onednn_linear(False):
        ...     y = linear(torch.randn(300, 8), torch.randn(4, 8))
    """
    previous = set_onednn_linear(enabled)
    try:
        yield
    finally:
        set_onednn_linear(previous)


def onednn_route(x: torch.Tensor, *others: torch.Tensor, inference_only: bool = False) -> bool:
    """Whether a matrix product of ``x`` (and ``others``) may take the oneDNN route now (see :func:`set_onednn_linear`).

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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on a CPU in float32, large inputs run as a 1x1 convolution through oneDNN.

    PyTorch's CPU matrix products call MKL, which takes its AVX2 kernels on AMD processors; its CPU convolutions
    call oneDNN, which uses AVX-512 wherever the processor has it. A token-wise linear layer is a 1x1 convolution
    over a channels-last view of the tokens (no copy), and on an AMD EPYC (Zen 5) that runs 1.6-2.2x faster forward
    and 1.8-2x forward+backward than ``F.linear``. The result equals ``F.linear``'s up to float rounding (a different
    summation order). By default the route is taken without autograd only (see :func:`set_onednn_linear`: the
    different rounding changes a training run's trajectory). Elsewhere (other devices and dtypes, autocast, small
    inputs, the route off) this is ``F.linear``, and so it is while ``torch.compile`` traces a training graph even
    under ``"always"``: there the convolution route gave the same step time (5.6 s, paper model, batch 2) and kept
    0.56 GB more for backward (docs/performance.md).
    """
    if x.numel() < _ONEDNN_MIN_ROWS * x.shape[-1] or not onednn_route(x, weight):
        return F.linear(x, weight, bias)
    features = x.shape[-1]
    rows = x.numel() // features
    # (rows, features) seen as one NHWC image of rows x 1 pixels: a channels-last (1, features, rows, 1) tensor.
    image = x.reshape(1, rows, 1, features).permute(0, 3, 1, 2)
    out = F.conv2d(image, weight[:, :, None, None], bias)
    return out.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) computed by :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class ConvNormAct(nn.Sequential):
    """Convolution without bias, BatchNorm, ReLU.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel side.
        stride: Convolution stride.
        padding: Zero padding; ``None`` keeps the size for odd kernels at stride 1.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None
    ) -> None:
        if padding is None:
            padding = kernel_size // 2
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def fold_batchnorm_(self) -> None:
        """Fold the BatchNorm into the convolution (inference only; the norm becomes an identity)."""
        if isinstance(self.norm, nn.BatchNorm2d):
            self.conv = fold_batchnorm(self.conv, self.norm)
            self.norm = nn.Identity()


class DropPath(nn.Module):
    """Stochastic depth: drops a whole residual branch per sample during training.

    Args:
        rate: Probability of dropping the branch; the kept branches are scaled by ``1 / (1 - rate)``.
    """

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = float(rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map to (B, H*W, C) tokens in row-major pixel order."""
    return x.flatten(2).transpose(1, 2)


def to_feature_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H*W, C) tokens back to a (B, C, H, W) feature map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    device: torch.device | str | None = None,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """A boolean dropout mask (``True`` = kept) and the scale ``1 / P(kept)`` of the kept values.

    On the CPU the mask is drawn as 16-bit uniform integers, four from every 64 random bits, which is about 4x faster
    than ``bernoulli_`` (PyTorch's CPU generator runs on one thread); the drop rate is then ``round(p * 2^16) / 2^16``
    and the returned scale uses that exact rate, so the dropout stays unbiased. Elsewhere it is ``rand >= p``.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cpu":
        return torch.rand(shape, device=device, generator=generator) >= p, 1.0 / (1.0 - p)
    threshold, scale = _mask_threshold(p)
    numel = math.prod(shape)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)
    bits = words.view(torch.int16)[:numel].view(shape)
    return bits >= threshold - _MASK_LEVELS // 2, scale


def _mask_threshold(p: float) -> tuple[int, float]:
    """The 16-bit threshold of the fast CPU mask for drop rate ``p``, and the scale of the kept values."""
    threshold = min(round(p * _MASK_LEVELS), _MASK_LEVELS - 1)
    return threshold, _MASK_LEVELS / (_MASK_LEVELS - threshold)


@torch.library.custom_op(
    "perspective_unet::keep_mask", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def _keep_mask_op(shape: list[int], p: float, device: torch.device) -> torch.Tensor:
    return keep_mask(tuple(shape), p, device)[0]


@_keep_mask_op.register_fake
def _(shape: list[int], p: float, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.bool, device=device)


def _compiled_keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    # Under torch.compile the mask comes from an opaque operator, so the compiler neither traces the generator nor
    # regenerates masks with its own (per-element Philox, about 4x slower on a CPU); the rest of the dropout is plain
    # element-wise arithmetic that it fuses and, when it saves memory, recomputes in backward from the 1-byte mask.
    return _keep_mask_op(list(x.shape), p, x.device), _mask_threshold(p)[1]


class _MaskedDropout(torch.autograd.Function):
    """Dropout that keeps a one-byte mask for backward instead of torch's float mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # noqa: ANN001
        keep, scale = keep_mask(x.shape, p, x.device)
        drop = keep.logical_not_()
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.masked_fill(drop, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (drop,) = ctx.saved_tensors
        return grad.masked_fill(drop, 0.0).mul_(ctx.scale), None


class _ReluDropout(torch.autograd.Function):
    """``dropout(relu(x))`` keeping only its output for backward: the gradient passes where the output is positive.

    The output is also what the next linear layer keeps, so the pair holds one tensor instead of three.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # noqa: ANN001
        keep, scale = keep_mask(x.shape, p, x.device)
        out = x.masked_fill(keep.logical_not_(), 0.0).clamp_min_(0.0).mul_(scale)
        ctx.save_for_backward(out)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (out,) = ctx.saved_tensors
        return grad.masked_fill(out <= 0.0, 0.0).mul_(ctx.scale), None


def _fast_path(x: torch.Tensor, p: float, training: bool, fast: bool) -> bool:
    return training and p > 0.0 and fast and x.device.type == "cpu"


def dropout(x: torch.Tensor, p: float, training: bool, fast: bool = True) -> torch.Tensor:
    """Dropout; with ``fast`` on the CPU, masks come from :func:`keep_mask` and backward keeps a one-byte mask.

    Off the CPU, or with ``fast=False``, this is ``torch.nn.functional.dropout``. In eval mode it returns ``x``.
    """
    if not training or p == 0.0:
        return x
    if not _fast_path(x, p, training, fast):
        return F.dropout(x, p, training=True)
    if torch.compiler.is_compiling():
        keep, scale = _compiled_keep_mask(x, p)
        return x * keep * scale
    return _MaskedDropout.apply(x, p)


def relu_dropout(x: torch.Tensor, p: float, training: bool, fast: bool = True) -> torch.Tensor:
    """``dropout(relu(x))``; with ``fast`` on the CPU it is one autograd node that keeps only its output."""
    if not _fast_path(x, p, training, fast):
        return dropout(F.relu(x), p, training, fast=False)
    if torch.compiler.is_compiling():
        keep, scale = _compiled_keep_mask(x, p)
        return F.relu(x) * keep * scale
    return _ReluDropout.apply(x, p)


class Dropout(nn.Module):
    """Element-wise dropout, by default through the fast CPU path of :func:`dropout`.

    Args:
        p: Probability of zeroing an element.
        fast: Use the fast CPU path (16-bit thresholds, one-byte mask); ``False`` is ``nn.Dropout``'s maths and RNG use.
    """

    def __init__(self, p: float = 0.0, fast: bool = True) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p}.")
        self.p = float(p)
        self.fast = bool(fast)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.fast)

    def extra_repr(self) -> str:
        return f"p={self.p}, fast={self.fast}"


@torch.no_grad()
def fold_batchnorm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution with bias equal to ``norm(conv(x))`` in eval mode (running statistics), computed in float64."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    inv_std = torch.rsqrt(norm.running_var.double() + norm.eps)
    factor = inv_std * norm.weight.double() if norm.affine else inv_std
    shift = norm.bias.double() if norm.affine else torch.zeros_like(inv_std)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(inv_std)
    fused.weight.copy_(conv.weight.double() * factor[:, None, None, None])
    fused.bias.copy_((bias - norm.running_mean.double()) * factor + shift)
    if conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous():
        fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
    return fused


@contextlib.contextmanager
def frozen_batchnorm_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, BatchNorm layers of ``module`` in training mode leave their running statistics unchanged.

    Used while a checkpointed segment is recomputed, so its BatchNorms update their statistics once per step, not
    twice. Outputs are unaffected: in training mode BatchNorm normalises with the batch's own statistics.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch statistic, exactly
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


def maybe_checkpoint(fn: Callable[..., Any], *args: Any, enabled: bool, module: nn.Module | None = None) -> Any:
    """``fn(*args)``, through non-reentrant activation checkpointing when ``enabled`` and a graph is being recorded.

    The random-number state is restored before recomputing, so dropout draws the same masks twice. Pass the
    ``module`` that ``fn`` runs when it holds BatchNorm layers: their running statistics are then not updated again
    by the recomputation.
    """
    if not (enabled and torch.is_grad_enabled()):
        return fn(*args)
    if module is None:
        return checkpoint(fn, *args, use_reentrant=False)
    return checkpoint(
        fn,
        *args,
        use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), frozen_batchnorm_statistics(module)),
    )
