"""Fast dropout on the CPU: masks from a counter-based generator, recomputed in backward instead of kept.

PyTorch's CPU ``bernoulli_`` and ``random_`` draw on one thread from a sequential generator. :func:`random_words`
computes SplitMix64's stream instead, whose n-th output is a fixed mixing function of ``seed + n * golden``: any
stretch of it comes from vectorized integer operations on all cores, and backward can regenerate a mask from the
seed and an offset instead of keeping it. :func:`keep_mask` cuts every 64 random bits into four 16-bit uniform
integers and compares them with a threshold into a mask of zeros and ones. :func:`dropout` makes that mask stretch
by stretch in the cache, multiplies, and keeps only the seed for backward (torch keeps a float mask);
:func:`relu_dropout` keeps only its output. A boolean mask would go through ``masked_fill``, several times slower on
a CPU than a multiplication. Under ``torch.compile`` the mask comes from the opaque operator
``perspective_unet::keep_mask``, registered when this module is imported. Figures: docs/performance.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Dropout", "draw_seed", "dropout", "keep_mask", "keep_scale", "random_words", "relu_dropout"]

# Fast dropout compares uniform 16-bit integers with a threshold, so its rate is rounded to a multiple of 2^-16.
_MASK_LEVELS = 1 << 16
# 64-bit words generated at a time (2 MB): one pass over a larger tensor would go to memory at every step.
_WORDS_PER_PASS = 1 << 18


def _int64(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits (torch's integer products wrap modulo 2^64)."""
    return value - (1 << 64) if value >= 1 << 63 else value


# SplitMix64 (Steele, Lea and Flood 2014, with Stafford's "Mix13" finalizer as in java.util.SplittableRandom and
# Vigna's xoshiro seeding): state n is seed + n * golden, its output three xor-shift / multiply rounds of it.
_GOLDEN = _int64(0x9E3779B97F4A7C15)
_ROUNDS = ((30, _int64(0xBF58476D1CE4E5B9)), (27, _int64(0x94D049BB133111EB)), (31, None))


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A seed for :func:`random_words` from a torch generator (the default one when ``None``).

    Drawing it from torch's generator keeps runs reproducible under ``torch.manual_seed``, and activation
    checkpointing, which restores that generator before recomputing, recomputes the same masks.
    """
    return int(torch.randint(0, 2**62, (), dtype=torch.int64, generator=generator).item())


def random_words(count: int, seed: int, offset: int = 0, device: torch.device | str | None = None) -> torch.Tensor:
    """Outputs ``offset`` to ``offset + count - 1`` of SplitMix64 seeded with ``seed``, as ``int64``.

    Output ``n`` is ``mix(seed + (n + 1) * 0x9E3779B97F4A7C15)``, bit for bit the reference generator's ``n``-th
    output read as a signed integer, so disjoint offsets give independent stretches of one stream.

    Args:
        count: Number of 64-bit words.
        seed: The stream, any integer in ``[0, 2^63)``.
        offset: Index of the first word in the stream.
        device: Device of the result; ``None`` is the CPU.

    Returns:
        ``(count,)`` ``int64`` tensor of uniformly distributed bits.

    Example:
        >>> hex(random_words(1, 0)[0].item() % 2**64)  # SplitMix64's first output from seed 0
        '0xe220a8397b1dcdaf'
    """
    words = torch.arange(offset + 1, offset + count + 1, dtype=torch.int64, device=device)
    words.mul_(_GOLDEN).add_(seed)
    shifted = torch.empty_like(words)
    for shift, multiplier in _ROUNDS:
        # int64 shifts are arithmetic: the mask makes them logical, as the reference's unsigned shifts.
        torch.bitwise_right_shift(words, shift, out=shifted)
        words.bitwise_xor_(shifted.bitwise_and_((1 << (64 - shift)) - 1))
        if multiplier is not None:
            words.mul_(multiplier)
    return words


def keep_mask(
    shape: torch.Size | tuple[int, ...],
    p: float,
    device: torch.device | str | None = None,
    *,
    seed: int | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, float]:
    """A ``uint8`` dropout mask (1 = kept, 0 = dropped) and the scale ``1 / P(kept)`` of the kept values.

    On the CPU the mask is cut from :func:`random_words`, four 16-bit uniform integers from every 64 bits, so the
    drop rate is ``round(p * 2^16) / 2^16`` and the returned scale uses that exact rate: the dropout stays
    unbiased. Elsewhere it is ``rand >= p`` from a torch generator seeded with ``seed``.

    Args:
        shape: Shape of the mask.
        p: Drop probability.
        device: Device of the mask; ``None`` is the CPU.
        seed: The random stream; ``None`` draws one from torch's default generator (:func:`draw_seed`).
        offset: First 64-bit word of the stream to use (CPU), so that blocks of one stream do not overlap.

    Returns:
        The mask and the scale of the kept values.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if seed is None:
        seed = draw_seed()
    if device.type != "cpu":
        generator = torch.Generator(device=device).manual_seed(seed)
        return (torch.rand(shape, device=device, generator=generator) >= p).to(torch.uint8), 1.0 / (1.0 - p)
    threshold, scale = _mask_threshold(p)
    numel = math.prod(shape)
    keep = torch.empty(numel, dtype=torch.uint8, device=device)
    for start, stop, lanes in _lane_stretches(numel, seed, offset, device):
        torch.ge(lanes, threshold - _MASK_LEVELS // 2, out=keep[start:stop])
    return keep.view(shape), scale


def _lane_stretches(
    numel: int, seed: int, offset: int, device: torch.device | str | None
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, lanes)``: the 16-bit lanes of elements ``start:stop`` of a mask, a cache-sized stretch at a
    time (the generator's passes then cost no memory traffic); element ``i`` is lane ``i`` from word ``offset``."""
    per_pass = 4 * _WORDS_PER_PASS
    for start in range(0, numel, per_pass):
        stop = min(numel, start + per_pass)
        words = random_words((stop - start + 3) // 4, seed, offset + start // 4, device)
        yield start, stop, words.view(torch.int16)[: stop - start]


def _mask_threshold(p: float) -> tuple[int, float]:
    """The 16-bit threshold of the fast CPU mask for drop rate ``p``, and the scale of the kept values."""
    threshold = min(round(p * _MASK_LEVELS), _MASK_LEVELS - 1)
    return threshold, _MASK_LEVELS / (_MASK_LEVELS - threshold)


def keep_scale(p: float) -> float:
    """The scale :func:`keep_mask` returns on the CPU for rate ``p``: ``1 / P(kept)`` after rounding to 2^-16."""
    return _mask_threshold(p)[1]


@torch.library.custom_op("perspective_unet::keep_mask", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def _keep_mask_op(shape: list[int], p: float, device: torch.device) -> torch.Tensor:
    return keep_mask(tuple(shape), p, device)[0]


@_keep_mask_op.register_fake
def _(shape: list[int], p: float, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.uint8, device=device)


def _compiled_keep_mask(x: torch.Tensor, p: float) -> tuple[torch.Tensor, float]:
    # Under torch.compile the mask comes from an opaque operator, so the compiler neither traces the generator nor
    # regenerates masks with its own (per-element Philox, much slower on a CPU); the rest of the dropout is plain
    # element-wise arithmetic that it fuses and, when it saves memory, recomputes in backward from the mask.
    return _keep_mask_op(list(x.shape), p, x.device), keep_scale(p)


def _masked(x: torch.Tensor, p: float, seed: int, relu: bool = False) -> torch.Tensor:
    """``x * keep * scale`` (then ``relu`` if asked) with ``keep = keep_mask(x.shape, p, seed=seed)[0]`` (CPU).

    The mask is made stretch by stretch into a small buffer of ``x``'s dtype and never exists whole: multiplying by
    a mask of another dtype would first convert all of it, and a stretch of the stream costs less to recompute in
    backward than a one-byte mask costs to keep.
    """
    threshold, scale = _mask_threshold(p)
    source = x.contiguous().view(-1)
    out = torch.empty_like(source)
    buffer = torch.empty(min(source.numel(), 4 * _WORDS_PER_PASS), dtype=x.dtype, device=x.device)
    for start, stop, lanes in _lane_stretches(source.numel(), seed, 0, x.device):
        keep = torch.ge(lanes, threshold - _MASK_LEVELS // 2, out=buffer[: stop - start])
        piece = torch.mul(source[start:stop], keep, out=out[start:stop])
        if relu:
            piece.clamp_min_(0.0)
        piece.mul_(scale)
    return out.view(x.shape)


class _MaskedDropout(torch.autograd.Function):
    """Dropout that keeps nothing for backward but its seed: backward recomputes the mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # noqa: ANN001
        ctx.p, ctx.seed = p, draw_seed()
        return _masked(x, p, ctx.seed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return _masked(grad, ctx.p, ctx.seed), None


class _ReluDropout(torch.autograd.Function):
    """``dropout(relu(x))`` keeping only its output for backward: the gradient passes where the output is positive.

    The output is also what the next linear layer keeps, so the pair holds one tensor instead of three.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # noqa: ANN001
        out = _masked(x, p, draw_seed(), relu=True)
        ctx.save_for_backward(out)
        ctx.scale = keep_scale(p)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        (out,) = ctx.saved_tensors
        # ReLU's own backward kernel: the gradient where out > 0, else 0, in one pass without a boolean mask.
        return torch.ops.aten.threshold_backward(grad, out, 0.0).mul_(ctx.scale), None


def _fast_path(x: torch.Tensor, p: float, training: bool, fast: bool) -> bool:
    return training and p > 0.0 and fast and x.device.type == "cpu"


def dropout(x: torch.Tensor, p: float, training: bool, fast: bool = True) -> torch.Tensor:
    """Dropout; with ``fast`` on the CPU, masks come from :func:`keep_mask`'s stream and backward recomputes them.

    Off the CPU, or with ``fast=False``, this is ``torch.nn.functional.dropout``. In eval mode it returns ``x``.

    Args:
        x: Input.
        p: Drop probability.
        training: Drop only when true.
        fast: Take the fast CPU path.

    Returns:
        ``x`` with elements zeroed at rate ``p`` and the rest scaled by ``1 / (1 - p)``.
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
        fast: Use the fast CPU path (16-bit thresholds, masks recomputed in backward); ``False`` is
            ``nn.Dropout``'s maths and RNG use.
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
