"""Speed and memory of the network and its attention kernels: latency, throughput, achieved FLOP rate, peak memory.

Every measurement compares two *paths* of the same network with the same weights:

- ``baseline``: the straightforward float32 path: eager mode, default layout, BatchNorm as separate layers,
  ``torch.nn.functional.linear`` (MKL on a CPU), SDPA for attention, ``torch.nn.functional.dropout`` (and SDPA's
  own dropout), no activation checkpointing, default allocator settings.
- ``optimized``: what this package offers that changes no eval-mode output beyond float rounding: BatchNorm folded
  into the convolutions (``fuse_for_inference``), channels-last layout, linear layers (and, without autograd, the
  token attention) through oneDNN on a CPU, fast dropout, optional activation checkpointing, an allocator profile
  (:data:`ALLOCATOR_PROFILES`); optionally ``torch.compile`` (with an activation memory budget for training) and
  autocast.

On the CPU each measurement runs in a fresh Python process, so that its peak resident memory (Linux ``VmHWM``, reset
when a measurement starts; ``ru_maxrss`` elsewhere) is its own and its allocator settings cannot leak into the other
path. On CUDA the peak is ``max_memory_allocated``.
Latency is the median of ``runs`` timed calls after ``warmup`` untimed ones (min and max are kept too).

Achieved FLOP rates count what one call executes (``torch.utils.flop_counter``, a multiply-add = 2 FLOPs, the CPU
attention kernel included; recomputation under checkpointing included) and are set against this machine's dense
float32 matrix-product rate, measured in the same run.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from perspective_unet.engine.runtime import compile_model
from perspective_unet.engine.summary import count_flops_mode, model_parts
from perspective_unet.models.attention import (
    exact_softmax_attention,
    gaussian_orthogonal_random_matrix,
    kernel_attention,
)
from perspective_unet.models.integrator import SpatialCrossScaleIntegrator
from perspective_unet.models.layers import set_onednn_linear
from perspective_unet.models.perspective_unet import PerspectiveUNet
from perspective_unet.models.registry import create_model
from perspective_unet.table import format_table

__all__ = [
    "AttentionPoint",
    "BenchmarkResult",
    "MachineInfo",
    "PathSettings",
    "ScsiPoint",
    "Timing",
    "attention_table",
    "baseline_settings",
    "benchmark_attention",
    "benchmark_model",
    "benchmark_scsi_memory",
    "comparison_table",
    "machine_info",
    "matmul_gflops",
    "measure_attention_point",
    "measure_inference",
    "measure_scsi_point",
    "measure_train_step",
    "measure_volume",
    "optimized_settings",
    "output_fidelity",
    "profile_parts",
    "run_isolated",
    "time_function",
    "train_settings",
    "tune_glibc_malloc",
]

MODES = ("inference", "train", "volume")
# Allocator profiles of the optimized CPU path, set in its process's environment before Python starts.
# "reuse": glibc keeps every freed block for reuse (mmap and trim thresholds at their maximum), so large tensors are
#   not unmapped and faulted back in at every step: fastest, but the heap fragments and resident memory grows well
#   past what the live tensors use.
# "release": glibc maps every block of 128 KiB or more on its own and unmaps it when freed (a fixed threshold; by
#   default it rises to 32 MiB), and PyTorch aligns blocks of 2 MiB or more to 2 MiB and asks for transparent huge
#   pages, so each fresh mapping costs few page faults. Resident memory follows the live tensors; the kernel still
#   zeroes every fresh page, which costs time.
ALLOCATOR_PROFILES: dict[str, dict[str, str]] = {
    "reuse": {"MALLOC_MMAP_THRESHOLD_": str(2**31 - 1), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
    "release": {"MALLOC_MMAP_THRESHOLD_": "131072", "THP_MEM_ALLOC_ENABLE": "1"},
}
_RESULT_TAG = "@@BENCHMARK-RESULT@@"


# --------------------------------------------------------------------------------------------------------- machine


@dataclass
class MachineInfo:
    """Where a benchmark ran."""

    cpu_model: str
    cores: int
    threads: int
    device: str
    torch_version: str
    python_version: str
    date: str
    platform: str


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device | str = "cpu") -> MachineInfo:
    """CPU model (from /proc/cpuinfo), cores, torch threads, the accelerator's name, versions and the date."""
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return MachineInfo(
        cpu_model=_cpu_model(),
        cores=os.cpu_count() or 0,
        threads=torch.get_num_threads(),
        device=name,
        torch_version=torch.__version__,
        python_version=platform.python_version(),
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        platform=platform.platform(),
    )


def tune_glibc_malloc(profile: str = "reuse") -> bool:
    """Apply the glibc part of an allocator profile to this process (``mallopt``); returns whether glibc accepted it.

    ``"reuse"`` raises the mmap and trim thresholds to their maximum; ``"release"`` fixes the mmap threshold at
    128 KiB. Only allocations made afterwards are affected. The huge-page half of ``"release"``
    (``THP_MEM_ALLOC_ENABLE=1``) must be in the environment before Python starts, as must, ideally, the whole
    profile: :data:`ALLOCATOR_PROFILES` holds the environment variables.
    """
    if profile not in ALLOCATOR_PROFILES:
        raise ValueError(f"profile must be one of {sorted(ALLOCATOR_PROFILES)}, got {profile!r}.")
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold, m_mmap_threshold = -1, -3
    if profile == "release":
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024))
    return bool(libc.mallopt(m_mmap_threshold, 2**31 - 1)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="utf-8") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    # VmHWM can be reset (see _reset_cpu_peak); ru_maxrss, the fallback, covers the whole process.
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status", encoding="utf-8") as handle:
        return int(handle.read().split("VmHWM:")[1].split()[0]) / 2**10
    # Linux reports kilobytes, macOS bytes.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _reset_cpu_peak() -> None:
    # Linux: writing 5 to clear_refs resets this process's resident high-water mark (VmHWM) to its current RSS.
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="utf-8") as handle:
        handle.write("5")


class _RssSampler:
    """Samples this process's resident memory every millisecond on a thread; ``peak_mb`` is the largest sample."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, _current_rss_mb())
            time.sleep(self.interval_s)

    def __enter__(self) -> _RssSampler:
        self.peak_mb = _current_rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _current_rss_mb())


def _release_free_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------------- timing


@dataclass
class Timing:
    """Seconds per call: median, min and max of the timed runs, and the runs themselves."""

    median_s: float
    min_s: float
    max_s: float
    runs_s: list[float]

    @classmethod
    def from_runs(cls, runs: Sequence[float]) -> Timing:
        if not runs:
            raise ValueError("no timed runs")
        return cls(float(np.median(runs)), float(min(runs)), float(max(runs)), [float(r) for r in runs])


def time_function(
    fn: Callable[[], Any], *, runs: int = 5, warmup: int = 1, device: torch.device | str = "cpu"
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed (synchronising CUDA around each call)."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs} and {warmup}.")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _synchronize(device)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        samples.append(time.perf_counter() - start)
    return Timing.from_runs(samples)


def matmul_gflops(device: torch.device | str = "cpu", size: int | None = None, runs: int = 5) -> float:
    """This machine's dense float32 matrix-product rate (GFLOP/s): the median of ``runs`` ``size x size`` products."""
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


# ----------------------------------------------------------------------------------------------------------- paths


@dataclass
class PathSettings:
    """How a path runs the network.

    Attributes:
        name: ``"baseline"``, ``"optimized"`` or any label.
        channels_last: Channels-last layout for weights and feature maps.
        fuse_batchnorm: Fold BatchNorm into convolutions (inference only).
        fast_dropout: ``ModelConfig.fast_dropout`` (training only).
        onednn_linear: Linear layers through oneDNN on the CPU (:func:`~perspective_unet.models.layers.linear`),
            and without autograd the token attention
            (:func:`~perspective_unet.models.chunked_attention.onednn_attention`); ``False`` is ``F.linear`` (MKL)
            and SDPA.
        gradient_checkpointing: Parts recomputed in backward (training only).
        allocator: A key of :data:`ALLOCATOR_PROFILES` (CPU), or ``None`` for the defaults. Applied to isolated
            measurements only, through the environment of their process.
        compile: ``torch.compile`` the model.
        activation_memory_budget: With ``compile``, the share of activations a compiled training step keeps for
            backward (:func:`~perspective_unet.engine.runtime.compile_model`); ``None``: torch's default.
        amp: ``"bfloat16"`` or ``"float16"`` autocast, or ``None`` for float32.
    """

    name: str = "baseline"
    channels_last: bool = False
    fuse_batchnorm: bool = False
    fast_dropout: bool = False
    onednn_linear: bool = False
    gradient_checkpointing: tuple[str, ...] = ()
    allocator: str | None = None
    compile: bool = False
    activation_memory_budget: float | None = None
    amp: str | None = None

    def __post_init__(self) -> None:
        self.gradient_checkpointing = tuple(self.gradient_checkpointing)
        if self.allocator is not None and self.allocator not in ALLOCATOR_PROFILES:
            raise ValueError(f"allocator must be None or one of {sorted(ALLOCATOR_PROFILES)}, got {self.allocator!r}.")
        if self.amp not in (None, "bfloat16", "float16"):
            raise ValueError(f"amp must be None, 'bfloat16' or 'float16', got {self.amp!r}.")

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return getattr(torch, self.amp) if self.amp else None


def baseline_settings() -> PathSettings:
    """The straightforward float32 eager path."""
    return PathSettings(name="baseline")


def optimized_settings(
    device: torch.device | str = "cpu",
    *,
    gradient_checkpointing: Sequence[str] = (),
    allocator: str | None = "reuse",
    compile: bool = False,
    activation_memory_budget: float | None = None,
    amp: str | None = None,
    channels_last: bool = True,
) -> PathSettings:
    """Every same-output change: folded BatchNorm, channels-last, fast dropout, the oneDNN route, and
    as asked checkpointing and an allocator profile (CPU only).

    The defaults favour speed in eager mode. For a training step both faster and leaner on a CPU, compile with an
    ``activation_memory_budget`` of 0.4 (:func:`train_settings`); without compile, checkpoint ``("cnn", "enltb")``
    and use the ``"release"`` allocator for memory.
    """
    return PathSettings(
        name="optimized",
        channels_last=channels_last,
        fuse_batchnorm=True,
        fast_dropout=True,
        onednn_linear=True,
        gradient_checkpointing=tuple(gradient_checkpointing),
        allocator=allocator if torch.device(device).type == "cpu" else None,
        compile=compile,
        activation_memory_budget=activation_memory_budget,
        amp=amp,
    )


def train_settings(device: torch.device | str = "cpu", *, activation_memory_budget: float = 0.4) -> PathSettings:
    """The optimized training path: compiled, with an activation memory budget, fast dropout, channels-last and
    the ``reuse`` allocator profile on the CPU (measured: docs/performance.md)."""
    return dataclasses.replace(
        optimized_settings(device, compile=True, activation_memory_budget=activation_memory_budget),
        name="optimized (compiled)",
    )


def _settings_from(data: PathSettings | dict[str, Any]) -> PathSettings:
    return data if isinstance(data, PathSettings) else PathSettings(**data)


def _build_model(
    model_name: str, settings: PathSettings, *, train: bool, device: torch.device, overrides: dict[str, Any]
) -> nn.Module:
    # Process-wide: the path being built decides (each measurement builds its model before it runs anything).
    set_onednn_linear("always" if settings.onednn_linear else "off")
    torch.manual_seed(0)
    model = create_model(
        model_name,
        **{
            **overrides,
            "fast_dropout": settings.fast_dropout,
            "gradient_checkpointing": settings.gradient_checkpointing if train else (),
        },
    ).to(device)
    if train:
        model.train()
        if settings.channels_last:
            model.to_channels_last()
    else:
        model.eval()
        if settings.fuse_batchnorm:
            model = model.fuse_for_inference(channels_last=settings.channels_last, inplace=True)
        elif settings.channels_last:
            model.to_channels_last()
    if settings.compile:
        if not train:
            import torch._inductor.config as inductor_config

            # Weights become constants of the inference graph (folded, pre-packed); only graphs without autograd.
            inductor_config.freezing = True
        model = compile_model(model, activation_memory_budget=settings.activation_memory_budget if train else None)
    return model


def _autocast(device: torch.device, settings: PathSettings) -> contextlib.AbstractContextManager:
    dtype = settings.amp_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _count_flops(fn: Callable[[], Any]) -> int:
    counter = count_flops_mode()
    with counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------------------- results


@dataclass
class BenchmarkResult:
    """One path measured in one mode.

    Attributes:
        mode: ``"inference"``, ``"train"`` (one optimiser step) or ``"volume"`` (whole-volume evaluation).
        items: Slices per timed call (the batch, or the volume's depth).
        flops_per_call: FLOPs one timed call executes (recomputation included); 0 where not counted.
        peak_memory_mb: Peak resident memory of the measuring process (CPU) or peak CUDA memory allocated.
        memory_kind: ``"cpu_rss"`` or ``"cuda_max_allocated"``.
        model_memory_mb: Resident memory (CPU) or CUDA memory allocated once the model was built.
        extra: Mode-specific facts (volume shape, label agreement, loss, ...).
    """

    mode: str
    path: str
    model: str
    img_size: tuple[int, int]
    batch_size: int
    device: str
    settings: dict[str, Any]
    parameters: int
    items: int
    timing: Timing
    flops_per_call: int
    peak_memory_mb: float
    memory_kind: str
    model_memory_mb: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.items / self.timing.median_s

    @property
    def achieved_gflops(self) -> float:
        return self.flops_per_call / self.timing.median_s / 1e9

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["items_per_s"] = self.items_per_s
        out["achieved_gflops"] = self.achieved_gflops
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        data = {k: v for k, v in data.items() if k not in ("items_per_s", "achieved_gflops")}
        data["timing"] = Timing(**data["timing"])
        data["img_size"] = tuple(data["img_size"])
        return cls(**data)


def _memory_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_cpu_peak()


def _memory_now(device: torch.device) -> float:
    return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else _current_rss_mb()


def _memory_peak(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return _peak_rss_mb(), "cpu_rss"


def _prepare(settings: PathSettings | dict[str, Any], device: torch.device | str) -> tuple[PathSettings, torch.device]:
    settings = _settings_from(settings)
    device = torch.device(device)
    _memory_start(device)
    return settings, device


def _time_and_record(
    mode: str,
    call: Callable[[], Any],
    *,
    model: torch.nn.Module,
    model_name: str,
    model_memory: float,
    settings: PathSettings,
    device: torch.device,
    img_size: Sequence[int],
    batch_size: int,
    items: int,
    runs: int,
    warmup: int,
    count_flops: bool,
) -> BenchmarkResult:
    """Time ``call``, read the peak memory, then (optionally) count its FLOPs, into one result.

    A compiled path first compiles (its first call, timed apart as ``extra["compile_s"]``); the peak memory is then
    reset, so it covers the steady state that a long run sees, not the compiler's own work.
    """
    extra: dict[str, Any] = {}
    if settings.compile:
        start = time.perf_counter()
        call()
        _synchronize(device)
        extra["compile_s"] = time.perf_counter() - start
        _memory_start(device)
    timing = time_function(call, runs=runs, warmup=warmup, device=device)
    peak, kind = _memory_peak(device)
    # Counted last: under the counter's dispatch mode a call holds far more memory than a plain one.
    flops = _count_flops(call) if count_flops and not settings.compile else 0
    return BenchmarkResult(
        mode,
        settings.name,
        model_name,
        tuple(img_size),
        batch_size,
        str(device),
        dataclasses.asdict(settings),
        sum(p.numel() for p in model.parameters()),
        items,
        timing,
        flops,
        peak,
        kind,
        model_memory,
        extra=extra,
    )


def measure_inference(
    model_name: str = "perspective_unet",
    *,
    img_size: Sequence[int] = (224, 224),
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    settings: PathSettings | dict[str, Any] | None = None,
    runs: int = 5,
    warmup: int = 2,
    model_overrides: dict[str, Any] | None = None,
) -> BenchmarkResult:
    """Latency of one forward pass (eval mode, ``inference_mode``) of a batch, in this process."""
    settings, device = _prepare(settings or baseline_settings(), device)
    model = _build_model(model_name, settings, train=False, device=device, overrides=dict(model_overrides or {}))
    model_memory = _memory_now(device)
    x = torch.randn(batch_size, 1, *img_size, generator=torch.Generator().manual_seed(1)).to(device)

    @torch.inference_mode()
    def call() -> torch.Tensor:
        with _autocast(device, settings):
            return model(x)

    return _time_and_record(
        "inference", call, model=model, model_name=model_name, model_memory=model_memory, settings=settings,
        device=device, img_size=img_size, batch_size=batch_size, items=batch_size, runs=runs, warmup=warmup,
        count_flops=True,
    )


def measure_train_step(
    model_name: str = "perspective_unet",
    *,
    img_size: Sequence[int] = (224, 224),
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    settings: PathSettings | dict[str, Any] | None = None,
    runs: int = 3,
    warmup: int = 1,
    model_overrides: dict[str, Any] | None = None,
) -> BenchmarkResult:
    """Latency of one training step: forward, cross-entropy, backward, SGD with momentum (the paper's optimiser).

    Peak memory covers the ``warmup`` and timed steps (the first step allocates the momentum buffers); FLOPs are
    counted afterwards on one more step.
    """
    settings, device = _prepare(settings or baseline_settings(), device)
    model = _build_model(model_name, settings, train=True, device=device, overrides=dict(model_overrides or {}))
    model_memory = _memory_now(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch_size, 1, *img_size, generator=generator).to(device)
    num_classes = model.config.num_classes if hasattr(model, "config") else 9
    target = torch.randint(0, num_classes, (batch_size, *img_size), generator=generator).to(device)
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, settings):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    result = _time_and_record(
        "train", step, model=model, model_name=model_name, model_memory=model_memory, settings=settings,
        device=device, img_size=img_size, batch_size=batch_size, items=batch_size, runs=runs, warmup=warmup,
        count_flops=True,
    )
    result.extra["losses"] = losses
    return result


def synthetic_ct_volume(depth: int = 100, height: int = 512, width: int = 512, seed: int = 0) -> np.ndarray:
    """A (depth, height, width) float32 volume in [0, 1] with smooth blobs, a stand-in for a windowed CT."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, max(2, depth // 8), 16, 16, generator=generator)
    smooth = F.interpolate(coarse, size=(depth, height, width), mode="trilinear", align_corners=False)[0, 0]
    noise = 0.05 * torch.randn(depth, height, width, generator=generator)
    return (smooth + noise).clamp_(0, 1).numpy().astype(np.float32)


def measure_volume(
    model_name: str = "perspective_unet",
    *,
    img_size: Sequence[int] = (224, 224),
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    settings: PathSettings | dict[str, Any] | None = None,
    volume_shape: Sequence[int] = (100, 512, 512),
    resampler: str | None = None,
    runs: int = 1,
    warmup: int = 0,
    model_overrides: dict[str, Any] | None = None,
    labels_out: str | None = None,
) -> BenchmarkResult:
    """Whole-volume evaluation through ``predict_volume``: resampling, batched prediction, labels back on the grid.

    The baseline path is the lineage's loop (one slice at a time, scipy resampling) unless ``resampler`` and
    ``batch_size`` say otherwise. ``labels_out`` saves the predicted labels (``.npy``) for comparing paths.
    """
    from perspective_unet.engine.inference import predict_volume

    settings, device = _prepare(settings or baseline_settings(), device)
    if resampler is None:
        resampler = "scipy" if settings.name == "baseline" else "torch"
    model = _build_model(model_name, settings, train=False, device=device, overrides=dict(model_overrides or {}))
    model_memory = _memory_now(device)
    depth, height, width = (int(s) for s in volume_shape)
    volume = synthetic_ct_volume(depth, height, width)
    labels: list[np.ndarray] = []

    def call() -> None:
        labels[:] = [
            predict_volume(
                model,
                volume,
                img_size=img_size,
                batch_size=batch_size,
                device=device,
                resampler=resampler,
                amp_dtype=settings.amp_dtype,
            )
        ]

    result = _time_and_record(
        "volume", call, model=model, model_name=model_name, model_memory=model_memory, settings=settings,
        device=device, img_size=img_size, batch_size=batch_size, items=depth, runs=runs, warmup=warmup,
        count_flops=False,
    )
    if labels_out:
        np.save(labels_out, labels[0])
    result.extra = {
        "volume_shape": [depth, height, width],
        "resampler": resampler,
        "label_counts": np.bincount(labels[0].ravel(), minlength=9).tolist(),
    }
    return result


@torch.no_grad()
def output_fidelity(
    model_name: str = "perspective_unet",
    *,
    img_size: Sequence[int] = (224, 224),
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    settings: PathSettings | dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Eval-mode logits of a path against the plain float32 path with the same weights, both without autograd.

    A randomly initialised network's logits are small (about 0.04 for the paper model: its decoder shrinks the
    signal), which can hide a difference inside the encoder, so each part's output is compared too.

    Returns:
        ``max_abs_diff``, ``max_abs_logit`` and their ratio ``relative`` (the test bound is 1e-4), the fraction of
        pixels whose argmax label agrees, and ``parts``: per part of
        :func:`~perspective_unet.engine.summary.model_parts`, the largest difference of its outputs relative to
        their largest value (eager paths only: a compiled model runs its parts inside one graph).
    """
    settings = _settings_from(settings or optimized_settings(device))
    device = torch.device(device)
    overrides = dict(model_overrides or {})
    x = torch.randn(batch_size, 1, *img_size, generator=torch.Generator().manual_seed(2)).to(device)
    reference_model = _build_model(model_name, baseline_settings(), train=False, device=device, overrides=overrides)
    reference, reference_parts = _outputs_by_part(reference_model, x, contextlib.nullcontext())
    del reference_model
    model = _build_model(model_name, settings, train=False, device=device, overrides=overrides)
    out, parts = _outputs_by_part(model, x, _autocast(device, settings))
    diff = float((out - reference).abs().max())
    scale = float(reference.abs().max())
    agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
    part_relative = {
        name: max(_relative_difference(a, b) for a, b in zip(got, reference_parts[name]))
        for name, got in parts.items()
        if name in reference_parts
    }
    return {
        "max_abs_diff": diff,
        "max_abs_logit": scale,
        "relative": diff / scale,
        "label_agreement": agree,
        "parts": part_relative,
    }


def _relative_difference(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def _outputs_by_part(
    model: nn.Module, x: torch.Tensor, context: contextlib.AbstractContextManager
) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    captured: dict[str, list[torch.Tensor]] = {}

    def keep(name: str) -> Callable[..., None]:
        def hook(module, args, output):  # noqa: ARG001
            tensors = [output] if isinstance(output, torch.Tensor) else list(output)
            captured[name] = [t.detach().float().clone() for t in tensors]

        return hook

    parts = model_parts(model) if isinstance(model, PerspectiveUNet) else {}
    handles = [module.register_forward_hook(keep(name)) for name, module in parts.items()]
    try:
        with context:
            logits = model(x).float()
    finally:
        for handle in handles:
            handle.remove()
    return logits, captured


# --------------------------------------------------------------------------------------------------------- profiling


def profile_parts(
    model: nn.Module,
    x: torch.Tensor,
    *,
    train: bool = False,
    top_operators: int = 10,
) -> dict[str, Any]:
    """Per-part forward time and the costliest operators of one call, from ``torch.profiler``.

    Each part of :func:`~perspective_unet.engine.summary.model_parts` runs inside a ``record_function`` range. With
    ``train`` the call is forward, cross-entropy against random labels and backward; backward time is reported as
    one row, since autograd does not run inside the parts' ranges.

    Returns:
        ``{"total_ms", "parts": [{"name", "ms", "percent"}], "operators": [{"name", "self_ms", "percent"}]}``.
    """
    from torch.autograd.profiler import record_function

    device = x.device
    parts = model_parts(model)
    ranges: dict[int, Any] = {}
    handles = []

    def _enter(name: str):
        def hook(module, args):  # noqa: ARG001
            ranges[id(module)] = record_function(name)
            ranges[id(module)].__enter__()

        return hook

    def _exit(module, args, output):  # noqa: ARG001
        ranges.pop(id(module)).__exit__(None, None, None)

    for name, module in parts.items():
        for member in module if isinstance(module, nn.ModuleList) else [module]:
            handles.append(member.register_forward_pre_hook(_enter(name)))
            handles.append(member.register_forward_hook(_exit))
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    target = None
    if train:
        target = torch.randint(0, 2, (x.shape[0], *x.shape[-2:]), device=device)

    def call() -> None:
        if train:
            with record_function("forward"):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), target.clamp_max(logits.shape[1] - 1))
            with record_function("backward"):
                loss.backward()
        else:
            with torch.inference_mode():
                model(x)

    try:
        call()  # warm-up
        _synchronize(device)
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            call()
            _synchronize(device)
            # Before the profiler stops: its teardown is not part of the call.
            total_ms = (time.perf_counter() - start) * 1e3
    finally:
        for handle in handles:
            handle.remove()
    use_device = device.type == "cuda"
    averages = prof.key_averages()

    def inclusive_ms(event) -> float:
        return (event.device_time_total if use_device else event.cpu_time_total) / 1e3

    def self_ms(event) -> float:
        return (event.self_device_time_total if use_device else event.self_cpu_time_total) / 1e3

    by_key = {event.key: event for event in averages}
    rows = [{"name": name, "ms": inclusive_ms(by_key[name])} for name in parts if name in by_key]
    if train and "backward" in by_key:
        rows.append({"name": "backward (all parts)", "ms": inclusive_ms(by_key["backward"])})
    measured = sum(r["ms"] for r in rows)
    # Time outside the parts: input checks, the loss, and the profiler's per-operator overhead.
    rows.append({"name": "other", "ms": max(0.0, total_ms - measured)})
    for r in rows:
        r["percent"] = 100.0 * r["ms"] / total_ms
    operators = sorted(
        (e for e in averages if e.key.startswith("aten::") or e.key.startswith("mkldnn")), key=self_ms, reverse=True
    )[:top_operators]
    total_self = sum(self_ms(e) for e in averages) or 1.0
    return {
        "total_ms": total_ms,
        "parts": rows,
        "operators": [
            {"name": e.key, "self_ms": self_ms(e), "percent": 100 * self_ms(e) / total_self} for e in operators
        ],
    }


def profile_path(
    model_name: str = "perspective_unet",
    *,
    mode: str = "inference",
    img_size: Sequence[int] = (224, 224),
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    settings: PathSettings | dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """:func:`profile_parts` on a model built for a path (``mode`` ``"inference"`` or ``"train"``)."""
    settings, device = _prepare(settings or baseline_settings(), device)
    train = mode == "train"
    model = _build_model(
        model_name,
        dataclasses.replace(settings, compile=False),
        train=train,
        device=device,
        overrides=dict(model_overrides or {}),
    )
    x = torch.randn(batch_size, 1, *img_size, generator=torch.Generator().manual_seed(1)).to(device)
    result = profile_parts(model, x, train=train)
    result.update(mode=mode, path=settings.name)
    return result


# --------------------------------------------------------------------------------------------------------- attention


@dataclass
class AttentionPoint:
    """One attention kernel at one sequence length: time per call and the peak memory it added."""

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

    One head of width ``dim``, unit-length q and k as ENLSA uses them. Memory is the peak above what the inputs
    occupy: CUDA peak allocation, or on the CPU the largest rise of resident memory sampled every millisecond
    (run each point in a fresh process with the ``"release"`` allocator profile, as :func:`benchmark_attention`
    does, so that resident memory follows the live tensors).
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(1, tokens, dim, generator=generator), dim=-1).to(device)
    k = F.normalize(torch.randn(1, tokens, dim, generator=generator), dim=-1).to(device)
    v = torch.randn(1, tokens, dim, generator=generator).to(device)
    projection = gaussian_orthogonal_random_matrix(dim, dim, generator=generator, device=device)
    if kernel == "enlsa":

        def call() -> torch.Tensor:
            return kernel_attention(q, k, v, projection)

    elif kernel == "exact":

        def call() -> torch.Tensor:
            return exact_softmax_attention(q[:, None], k[:, None], v[:, None])

    else:
        raise ValueError(f"kernel must be 'enlsa' or 'exact', got {kernel!r}.")
    timing, added, kind = _timed_with_added_memory(call, runs=runs, warmup=warmup, device=device, no_grad=True)
    return AttentionPoint(kernel, tokens, dim, timing, added, kind)


def _timed_with_added_memory(
    fn: Callable[[], Any], *, runs: int, warmup: int, device: torch.device, no_grad: bool
) -> tuple[Timing, float, str]:
    # Peak memory above what is allocated before the calls: CUDA's counters, or on the CPU resident memory sampled
    # on a thread after returning freed heap memory to the system (so reused free blocks do not hide growth).
    context = torch.inference_mode() if no_grad else contextlib.nullcontext()
    if device.type == "cuda":
        _memory_start(device)
        base = _memory_now(device)
        with context:
            timing = time_function(fn, runs=runs, warmup=warmup, device=device)
        peak, kind = _memory_peak(device)
        return timing, max(0.0, peak - base), kind
    _release_free_memory()
    base = _current_rss_mb()
    with context, _RssSampler() as sampler:
        timing = time_function(fn, runs=runs, warmup=warmup, device=device)
    return timing, max(0.0, sampler.peak_mb - base), "cpu_rss"


@dataclass
class ScsiPoint:
    """The paper's SCSI at one input size: tokens, time and the peak memory it added."""

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

    ``train`` times forward and backward in training mode (dropout 0.1); otherwise one eval forward pass.
    """
    device = torch.device(device)
    widths = (256, 512, 1024)
    scsi = SpatialCrossScaleIntegrator(widths, depth=depth, fast_dropout=fast_dropout).to(device).train(train)
    generator = torch.Generator().manual_seed(0)
    features = [
        torch.randn(batch_size, c, img_size // s, img_size // s, generator=generator).to(device).requires_grad_(train)
        for c, s in zip(widths, (4, 8, 16))
    ]
    tokens = sum((img_size // s) ** 2 for s in (4, 8, 16))

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


# ------------------------------------------------------------------------------------------------------- isolation


def run_isolated(
    function: str,
    kwargs: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    memory_limit_mb: float | None = None,
) -> dict[str, Any]:
    """Run one of this module's ``measure_*``/``profile_path``/``output_fidelity`` functions in a fresh Python process.

    ``memory_limit_mb`` caps the child's address space (``RLIMIT_AS``), so a path that needs more memory than the
    machine can spare fails with an error instead of pushing the machine into swap or the OOM killer.

    Returns its result as a dict; on failure (including running out of memory) a dict with ``"error"``.
    """
    allowed = {
        "measure_inference",
        "measure_train_step",
        "measure_volume",
        "measure_attention_point",
        "measure_scsi_point",
        "profile_path",
        "output_fidelity",
    }
    if function not in allowed:
        raise ValueError(f"function must be one of {sorted(allowed)}, got {function!r}.")
    code = "from perspective_unet.engine.benchmark import _child_main; _child_main()"
    payload = json.dumps(
        {"function": function, "kwargs": kwargs, "threads": torch.get_num_threads(), "memory_limit_mb": memory_limit_mb}
    )
    child_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], input=payload, capture_output=True, text=True, env=child_env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG) :])
    tail = (proc.stderr or proc.stdout)[-2000:]
    if "DefaultCPUAllocator: can't allocate memory" in tail or "MemoryError" in tail:
        return {"error": f"out of memory (address space capped at {memory_limit_mb} MB)", "stderr_tail": tail[-500:]}
    return {
        "error": f"exit status {proc.returncode}" + (" (killed: out of memory?)" if proc.returncode < 0 else ""),
        "stderr_tail": tail,
    }


def _child_main() -> None:
    request = json.loads(sys.stdin.read())
    torch.set_num_threads(int(request.get("threads", torch.get_num_threads())))
    if request.get("memory_limit_mb"):
        limit = int(request["memory_limit_mb"] * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    result = globals()[request["function"]](**request["kwargs"])
    if dataclasses.is_dataclass(result):
        result = result.to_dict() if hasattr(result, "to_dict") else dataclasses.asdict(result)
    sys.stdout.write(_RESULT_TAG + json.dumps(result) + "\n")
    sys.stdout.flush()


def _measure(
    function: str,
    kwargs: dict[str, Any],
    settings: PathSettings,
    isolate: bool,
    device: torch.device,
    memory_limit_mb: float | None = None,
):
    if not isolate:
        fn = globals()[function]
        out = fn(**kwargs)
        return out.to_dict() if hasattr(out, "to_dict") else out
    env = dict(ALLOCATOR_PROFILES[settings.allocator]) if settings.allocator and device.type == "cpu" else {}
    return run_isolated(function, kwargs, env=env, memory_limit_mb=memory_limit_mb)


# ------------------------------------------------------------------------------------------------------- reporting


def benchmark_model(
    model_name: str = "perspective_unet",
    *,
    modes: Sequence[str] = ("inference", "train"),
    paths: Sequence[PathSettings] | None = None,
    img_size: Sequence[int] = (224, 224),
    batch_size: int = 1,
    train_batch_size: int = 2,
    volume_batch_size: int = 16,
    volume_shape: Sequence[int] = (100, 512, 512),
    device: torch.device | str = "cpu",
    runs: int = 5,
    warmup: int = 2,
    rounds: int = 1,
    isolate: bool = True,
    fidelity: bool = True,
    profile: bool = False,
    model_overrides: dict[str, Any] | None = None,
    memory_limit_mb: float | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every path in every mode and gather a report (JSON-ready dict).

    ``memory_limit_mb`` caps each isolated measurement's address space (see :func:`run_isolated`).

    ``rounds`` > 1 repeats each (mode, path) measurement, alternating the paths, so that load from other processes
    falls on both; every round's result is kept and the tables use the round with the median latency.

    Returns:
        ``{"machine", "matmul_gflops", "results": [...], "fidelity": {...}, "profiles": [...], "config": {...}}``.
    """
    device = torch.device(device)
    paths = list(paths or [baseline_settings(), optimized_settings(device)])
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be among {MODES}, got {mode!r}.")
    say = log or (lambda message: None)
    overrides = dict(model_overrides or {})
    report: dict[str, Any] = {
        "machine": dataclasses.asdict(machine_info(device)),
        "config": {
            "model": model_name,
            "img_size": list(img_size),
            "batch_size": batch_size,
            "train_batch_size": train_batch_size,
            "volume_batch_size": volume_batch_size,
            "volume_shape": list(volume_shape),
            "runs": runs,
            "warmup": warmup,
            "rounds": rounds,
            "model_overrides": overrides,
            "paths": [dataclasses.asdict(p) for p in paths],
        },
        "results": [],
        "fidelity": {},
        "profiles": [],
    }
    say("measuring the dense matrix-product rate")
    report["matmul_gflops"] = matmul_gflops(device)
    common = {"model_name": model_name, "img_size": list(img_size), "device": str(device), "model_overrides": overrides}
    for mode in modes:
        for round_index in range(rounds):
            order = paths if round_index % 2 == 0 else list(reversed(paths))
            for settings in order:
                kwargs = {**common, "settings": dataclasses.asdict(settings), "runs": runs, "warmup": warmup}
                if mode == "inference":
                    function, kwargs["batch_size"] = "measure_inference", batch_size
                elif mode == "train":
                    function, kwargs["batch_size"] = "measure_train_step", train_batch_size
                    kwargs["runs"], kwargs["warmup"] = max(1, runs), max(1, min(warmup, 1))
                else:
                    function = "measure_volume"
                    kwargs.update(
                        batch_size=1 if settings.name == "baseline" else volume_batch_size,
                        volume_shape=list(volume_shape),
                        runs=1,
                        warmup=0,
                    )
                say(f"{mode}: {settings.name} (round {round_index + 1}/{rounds})")
                result = _measure(function, kwargs, settings, isolate, device, memory_limit_mb)
                result.setdefault("mode", mode)
                result.setdefault("path", settings.name)
                result["round"] = round_index
                report["results"].append(result)
                if "error" in result:
                    say(f"  failed: {result['error']}")
                else:
                    say(f"  median {result['timing']['median_s']:.3f} s, peak memory {result['peak_memory_mb']:.0f} MB")
    if fidelity:
        for settings in paths:
            if settings.name == "baseline":
                continue
            say(f"fidelity of {settings.name} against the plain float32 path")
            kwargs = {**common, "settings": dataclasses.asdict(settings), "batch_size": 1}
            report["fidelity"][settings.name] = _measure("output_fidelity", kwargs, settings, isolate, device)
    if profile:
        for mode in [m for m in modes if m in ("inference", "train")]:
            for settings in paths:
                say(f"profiling {mode}: {settings.name}")
                kwargs = {
                    **common,
                    "mode": mode,
                    "settings": dataclasses.asdict(settings),
                    "batch_size": batch_size if mode == "inference" else train_batch_size,
                }
                report["profiles"].append(_measure("profile_path", kwargs, settings, isolate, device))
    return report


def _median_results(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for result in report["results"]:
        if "error" not in result:
            groups.setdefault((result["mode"], result["path"]), []).append(result)
    chosen = {}
    for key, results in groups.items():
        results = sorted(results, key=lambda r: r["timing"]["median_s"])
        chosen[key] = results[(len(results) - 1) // 2]
    return chosen


def comparison_table(report: dict[str, Any], *, markdown: bool = False) -> str:
    """One row per (mode, path): latency, slices/s, GFLOP/s and its share of the matmul rate, memory, ratios.

    A compiled path's FLOPs are the baseline's (same maths at the same batch), the counter cannot see inside it.
    """
    chosen = _median_results(report)
    peak = report.get("matmul_gflops") or float("nan")
    rows = []
    for (mode, path), r in chosen.items():
        timing = r["timing"]
        base = chosen.get((mode, "baseline"))
        speedup = base["timing"]["median_s"] / timing["median_s"] if base else float("nan")
        memory_ratio = r["peak_memory_mb"] / base["peak_memory_mb"] if base else float("nan")
        flops = r["flops_per_call"]
        if not flops and base and base["batch_size"] == r["batch_size"]:
            flops = base["flops_per_call"]  # a compiled path runs the same maths; the counter cannot see inside it
        gflops = flops / timing["median_s"] / 1e9 if flops else float("nan")
        rows.append(
            [
                mode,
                path,
                r["batch_size"],
                f"{timing['median_s']:.3f}",
                f"{timing['min_s']:.3f}-{timing['max_s']:.3f}",
                f"{r['items'] / timing['median_s']:.2f}",
                f"{gflops:.0f}" if gflops == gflops else "-",
                f"{100 * gflops / peak:.0f}" if gflops == gflops else "-",
                f"{r['peak_memory_mb']:.0f}",
                f"{speedup:.2f}",
                f"{memory_ratio:.2f}",
            ]
        )
    for r in report["results"]:
        if "error" in r:
            rows.append([r["mode"], r["path"], "-", "failed", r["error"], "-", "-", "-", "-", "-", "-"])
    header = [
        "mode",
        "path",
        "batch",
        "median s",
        "min-max s",
        "slices/s",
        "GFLOP/s",
        "% matmul",
        "peak MB",
        "speed-up",
        "memory x",
    ]
    return format_table(header, rows, markdown=markdown)


def attention_table(points: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """ENLSA and exact attention side by side, with each kernel's growth from the previous length."""
    rows = []
    previous: dict[str, dict[str, Any]] = {}
    for p in sorted(points, key=lambda p: (p.get("kernel", ""), p.get("tokens", 0))):
        if "error" in p:
            rows.append([p.get("kernel", "?"), p.get("tokens", "?"), "failed", "-", "-", "-"])
            continue
        prev = previous.get(p["kernel"])
        growth = p["timing"]["median_s"] / prev["timing"]["median_s"] if prev else float("nan")
        token_ratio = p["tokens"] / prev["tokens"] if prev else float("nan")
        rows.append(
            [
                p["kernel"],
                p["tokens"],
                f"{1e3 * p['timing']['median_s']:.1f}",
                f"{1e9 * p['timing']['median_s'] / p['tokens']:.0f}",
                f"{p['peak_memory_mb']:.0f}",
                f"{growth:.2f} (x{token_ratio:.0f} tokens)" if prev else "-",
            ]
        )
        previous[p["kernel"]] = p
    return format_table(["kernel", "tokens", "ms", "ns/token", "peak MB", "time growth"], rows, markdown=markdown)


def _memory_env(device: torch.device) -> dict[str, str]:
    # Resident memory follows the live tensors only when freed blocks go back to the system.
    return dict(ALLOCATOR_PROFILES["release"]) if device.type == "cpu" else {}


def benchmark_attention(
    tokens: Sequence[int] = (1024, 4096, 16384, 65536),
    *,
    dim: int = 256,
    device: torch.device | str = "cpu",
    runs: int = 3,
    warmup: int = 1,
    exact_max_tokens: int = 65536,
    isolate: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """ENLSA against exact attention (SDPA) over sequence lengths; each point in its own process on the CPU.

    Exact attention above 16k tokens is timed once (``runs=1``, no warm-up); it takes tens of seconds on a CPU.

    Returns:
        ``{"machine", "points": [...], "enlsa_64k_over_16x_4k": ratio or None}``.
    """
    device = torch.device(device)
    say = log or (lambda message: None)
    points = []
    for kernel in ("enlsa", "exact"):
        for n in tokens:
            if kernel == "exact" and n > exact_max_tokens:
                continue
            slow = kernel == "exact" and n > 16384
            kwargs = {
                "kernel": kernel,
                "tokens": int(n),
                "dim": dim,
                "device": str(device),
                "runs": 1 if slow else runs,
                "warmup": 0 if slow else warmup,
            }
            say(f"attention: {kernel} at {n} tokens")
            if isolate:
                point = run_isolated("measure_attention_point", kwargs, env=_memory_env(device))
            else:
                point = dataclasses.asdict(measure_attention_point(**kwargs))
            point.setdefault("kernel", kernel)
            point.setdefault("tokens", int(n))
            points.append(point)
    by = {(p["kernel"], p["tokens"]): p for p in points if "error" not in p}
    ratio = None
    if ("enlsa", 65536) in by and ("enlsa", 4096) in by:
        ratio = by[("enlsa", 65536)]["timing"]["median_s"] / (16 * by[("enlsa", 4096)]["timing"]["median_s"])
    return {"machine": dataclasses.asdict(machine_info(device)), "points": points, "enlsa_64k_over_16x_4k": ratio}


def benchmark_scsi_memory(
    img_sizes: Sequence[int] = (224, 448),
    *,
    device: torch.device | str = "cpu",
    train_depth: int = 1,
    runs: int = 1,
    baseline_sizes: Sequence[int] = (224,),
    isolate: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Peak memory of the paper's SCSI (token attention) at several input sizes, batch 1: in eval mode (6 layers),
    and in training (forward and backward with dropout 0.1, ``train_depth`` layers) through the fast path and, at
    ``baseline_sizes``, through SDPA's own dropout (its N x N math path on the CPU).

    Memory linear in the tokens grows 4x from 224 to 448 (4,116 to 16,464 tokens); an N x N matrix would grow 16x.
    """
    device = torch.device(device)
    say = log or (lambda message: None)
    plan = [(False, True, size) for size in img_sizes] + [(True, True, size) for size in img_sizes]
    plan += [(True, False, size) for size in baseline_sizes]
    points = []
    for train, fast, size in plan:
        kwargs = {
            "img_size": int(size),
            "train": train,
            "depth": train_depth if train else 6,
            "fast_dropout": fast,
            "device": str(device),
            "runs": runs,
            "warmup": 1,
        }
        say(f"SCSI {'training' if train else 'eval'} at {size}x{size}{'' if fast else ' (SDPA dropout)'}")
        point = (
            run_isolated("measure_scsi_point", kwargs, env=_memory_env(device))
            if isolate
            else dataclasses.asdict(measure_scsi_point(**kwargs))
        )
        point.setdefault("img_size", int(size))
        point.setdefault("train", train)
        point.setdefault("fast_dropout", fast)
        points.append(point)
    return {"points": points}


def scsi_table(points: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    """SCSI memory per input size, with the growth over the smallest size next to the growth in tokens."""
    rows = []
    first: dict[tuple[bool, bool], dict[str, Any]] = {}
    for p in points:
        label = ("train" if p.get("train") else "eval") + ("" if p.get("fast_dropout", True) else " (SDPA dropout)")
        if "error" in p:
            rows.append([label, p.get("img_size"), "-", "failed", "-", "-"])
            continue
        ref = first.setdefault((p["train"], p.get("fast_dropout", True)), p)
        growth = p["peak_memory_mb"] / ref["peak_memory_mb"] if ref["peak_memory_mb"] else float("nan")
        rows.append(
            [
                label,
                p["img_size"],
                p["tokens"],
                f"{p['timing']['median_s']:.2f}",
                f"{p['peak_memory_mb']:.0f}",
                f"{growth:.2f} (tokens x{p['tokens'] / ref['tokens']:.1f})",
            ]
        )
    return format_table(["SCSI", "input", "tokens", "s", "peak MB", "memory growth"], rows, markdown=markdown)


def machine_markdown(machine: dict[str, Any]) -> str:
    """A one-paragraph description of the machine for a results README."""
    return (
        f"CPU: {machine['cpu_model']}, {machine['cores']} cores, {machine['threads']} torch threads; "
        f"device: {machine['device']}; torch {machine['torch_version']}, Python {machine['python_version']}; "
        f"{machine['platform']}; measured {machine['date']}."
    )


def report_markdown(report: dict[str, Any]) -> str:
    """A Markdown section for a report of :func:`benchmark_model`, :func:`benchmark_attention` or both."""
    lines = []
    if "machine" in report:
        lines += [machine_markdown(report["machine"]), ""]
    if report.get("results"):
        config = report["config"]
        lines += [
            f"Model `{config['model']}` at {config['img_size'][0]}x{config['img_size'][1]}, overrides "
            f"{config['model_overrides'] or 'none'}; inference batch {config['batch_size']}, training batch "
            f"{config['train_batch_size']}, volume {'x'.join(map(str, config['volume_shape']))}; median of "
            f"{config['runs']} runs after {config['warmup']} warm-up, {config['rounds']} round(s). Dense matmul "
            f"rate measured in the same run: {report['matmul_gflops']:.0f} GFLOP/s.",
            "",
            comparison_table(report, markdown=True),
            "",
        ]
        for name, fid in report.get("fidelity", {}).items():
            if "error" not in fid:
                parts = ", ".join(f"{part} {value:.1e}" for part, value in fid.get("parts", {}).items())
                lines.append(
                    f"- `{name}` eval logits vs plain float32: max |diff| {fid['max_abs_diff']:.2e} = "
                    f"{fid['relative']:.2e} of the largest logit; labels agree on {100 * fid['label_agreement']:.3f}%"
                    + (f"; each part's outputs, max |diff| over their largest value: {parts}." if parts else ".")
                )
        lines.append("")
    for profile in report.get("profiles", []):
        if "error" in profile:
            continue
        lines += [f"Profile, {profile['mode']}, {profile['path']} ({profile['total_ms']:.0f} ms):", ""]
        lines.append(
            format_table(
                ["part", "ms", "%"],
                [[r["name"], f"{r['ms']:.0f}", f"{r['percent']:.1f}"] for r in profile["parts"]],
                markdown=True,
            )
        )
        lines += [
            "",
            format_table(
                ["operator", "self ms", "%"],
                [[o["name"], f"{o['self_ms']:.0f}", f"{o['percent']:.1f}"] for o in profile["operators"]],
                markdown=True,
            ),
            "",
        ]
    if report.get("points"):
        lines += [attention_table(report["points"], markdown=True), ""]
        if report.get("enlsa_64k_over_16x_4k") is not None:
            lines += [
                f"ENLSA time at 64k tokens / (16 x time at 4k) = {report['enlsa_64k_over_16x_4k']:.2f} "
                "(target <= 1.3).",
                "",
            ]
    if report.get("scsi"):
        lines += [scsi_table(report["scsi"]["points"], markdown=True), ""]
    return "\n".join(lines)
