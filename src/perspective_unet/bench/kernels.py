"""Micro-benchmarks below the whole network: the dense matrix-product rate, one attention kernel, the paper's SCSI.

Attention and SCSI memory is the peak *above* what was in use before the calls, so that it is the kernel's own:
CUDA's peak allocation, or on the CPU the largest rise of resident memory sampled every millisecond. Run each
point in a fresh process with the ``"release"`` allocator profile (as :func:`~.suite.benchmark_attention` does),
so that resident memory follows the live tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from perspective_unet.bench.machine import (
    RssSampler,
    current_rss_mb,
    memory_now,
    memory_peak,
    memory_start,
    release_free_memory,
)
from perspective_unet.bench.measure import prepare
from perspective_unet.bench.timing import Timing, time_function
from perspective_unet.models.attention import (
    exact_softmax_attention,
    gaussian_orthogonal_random_matrix,
    kernel_attention,
)
from perspective_unet.models.integrator import SpatialCrossScaleIntegrator

__all__ = ["AttentionPoint", "ScsiPoint", "matmul_gflops", "measure_attention_point", "measure_scsi_point"]

ATTENTION_KERNELS = ("enlsa", "exact")
# The paper's SCSI: feature widths of the three ENLTB stages and their strides relative to the input.
_SCSI_WIDTHS = (256, 512, 1024)
_SCSI_STRIDES = (4, 8, 16)


def matmul_gflops(device: torch.device | str = "cpu", size: int | None = None, runs: int = 5) -> float:
    """This machine's dense float32 matrix-product rate in GFLOP/s: the median of ``runs`` square products.

    Args:
        size: The matrices' side; ``None``: 8192 on CUDA, 2048 on the CPU.
    """
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    if device.type == "cuda":
        # TF32 would report a rate float32 work does not get.
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        timing = time_function(lambda: a @ b, runs=runs, warmup=2, device=device)
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * size**3 / timing.median_s / 1e9


@dataclass
class AttentionPoint:
    """One attention kernel at one sequence length.

    Attributes:
        kernel: ``"enlsa"`` or ``"exact"``.
        timing: Seconds per call.
        peak_memory_mb: Peak memory above what the inputs occupy, in MiB.
        memory_kind: ``"cpu_rss"`` or ``"cuda_max_allocated"``.
    """

    kernel: str
    tokens: int
    dim: int
    timing: Timing
    peak_memory_mb: float
    memory_kind: str


def measure_attention_point(
    kernel: str, tokens: int, *, dim: int = 256, device: torch.device | str = "cpu", runs: int = 3, warmup: int = 1
) -> AttentionPoint:
    """Time ENLSA (``"enlsa"``, random features m = d) or exact softmax attention (``"exact"``, SDPA, scale 1).

    One head of width ``dim``, unit-length q and k as ENLSA uses them.

    Raises:
        ValueError: For another kernel.
    """
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f"kernel must be 'enlsa' or 'exact', got {kernel!r}.")
    setup = prepare(device, seed=0)
    device, generator = setup.device, setup.generator
    q = F.normalize(torch.randn(1, tokens, dim, generator=generator), dim=-1).to(device)
    k = F.normalize(torch.randn(1, tokens, dim, generator=generator), dim=-1).to(device)
    v = torch.randn(1, tokens, dim, generator=generator).to(device)
    projection = gaussian_orthogonal_random_matrix(dim, dim, generator=generator, device=device)
    if kernel == "enlsa":

        def call() -> torch.Tensor:
            return kernel_attention(q, k, v, projection)

    else:

        def call() -> torch.Tensor:
            return exact_softmax_attention(q[:, None], k[:, None], v[:, None])

    timing, added, kind = _timed_with_added_memory(call, runs=runs, warmup=warmup, device=device, no_grad=True)
    return AttentionPoint(kernel, tokens, dim, timing, added, kind)


@dataclass
class ScsiPoint:
    """The paper's SCSI at one input size.

    Attributes:
        img_size: Side of the square network input the SCSI's feature maps correspond to.
        tokens: Tokens over the three scales.
        train: Forward and backward in training mode, rather than one eval forward pass.
        depth: SCSI layers.
        peak_memory_mb: Peak memory above what the inputs occupy, in MiB.
        fast_dropout: The package's dropout rather than SDPA's own.
    """

    img_size: int
    tokens: int
    train: bool
    depth: int
    batch_size: int
    timing: Timing
    peak_memory_mb: float
    memory_kind: str
    fast_dropout: bool = True


def measure_scsi_point(
    img_size: int = 224,
    *,
    train: bool = False,
    depth: int = 6,
    batch_size: int = 1,
    fast_dropout: bool = True,
    device: torch.device | str = "cpu",
    runs: int = 2,
    warmup: int = 1,
) -> ScsiPoint:
    """The paper's SCSI (token attention, width 256, 8 heads, feed-forward 2048) on ENLTB-sized inputs.

    Args:
        train: Time forward and backward in training mode (dropout 0.1); otherwise one eval forward pass.
        fast_dropout: ``False`` runs SDPA's own dropout.
    """
    setup = prepare(device, seed=0)
    device = setup.device
    scsi = SpatialCrossScaleIntegrator(_SCSI_WIDTHS, depth=depth, fast_dropout=fast_dropout).to(device).train(train)
    features = [
        torch.randn(batch_size, c, img_size // s, img_size // s, generator=setup.generator)
        .to(device)
        .requires_grad_(train)
        for c, s in zip(_SCSI_WIDTHS, _SCSI_STRIDES)
    ]
    tokens = sum((img_size // s) ** 2 for s in _SCSI_STRIDES)

    def call() -> None:
        if train:
            outputs = scsi(features)
            sum(o.sum() for o in outputs).backward()
            for f in features:
                f.grad = None
            scsi.zero_grad(set_to_none=True)
        else:
            scsi(features)

    timing, added, kind = _timed_with_added_memory(call, runs=runs, warmup=warmup, device=device, no_grad=not train)
    return ScsiPoint(img_size, tokens, train, depth, batch_size, timing, added, kind, fast_dropout)


def _timed_with_added_memory(
    fn: Callable[[], Any], *, runs: int, warmup: int, device: torch.device, no_grad: bool
) -> tuple[Timing, float, str]:
    # Peak memory above what is allocated before the calls: CUDA's counters, or on the CPU resident memory sampled
    # on a thread after returning freed heap memory to the system (so reused free blocks do not hide growth).
    context = torch.inference_mode() if no_grad else contextlib.nullcontext()
    if device.type == "cuda":
        memory_start(device)
        base = memory_now(device)
        with context:
            timing = time_function(fn, runs=runs, warmup=warmup, device=device)
        peak, kind = memory_peak(device)
        return timing, max(0.0, peak - base), kind
    release_free_memory()
    base = current_rss_mb()
    with context, RssSampler() as sampler:
        timing = time_function(fn, runs=runs, warmup=warmup, device=device)
    return timing, max(0.0, sampler.peak_mb - base), "cpu_rss"
