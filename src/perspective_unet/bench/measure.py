"""The measurements of the network: inference, a training step, whole-volume evaluation.

Each builds its model, input and device through :func:`prepare`, times a call (:func:`~.timing.time_function`),
reads the peak memory, and counts the FLOPs one call executes (``torch.utils.flop_counter``, a multiply-add =
2 FLOPs, the CPU attention kernel and recomputation under checkpointing included). Run in a fresh process
(:mod:`perspective_unet.bench.isolate`), a measurement's peak memory is its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from perspective_unet.bench.machine import memory_now, memory_peak, memory_start, synchronize
from perspective_unet.bench.settings import PathSettings, baseline_settings, build_model, path_autocast, settings_from
from perspective_unet.bench.timing import Timing, time_function
from perspective_unet.engine.summary import count_flops_mode

__all__ = [
    "MODES",
    "BenchmarkResult",
    "Prepared",
    "measure_inference",
    "measure_train_step",
    "measure_volume",
    "prepare",
    "synthetic_ct_volume",
]

MODES = ("inference", "train", "volume")


@dataclass
class BenchmarkResult:
    """One path measured in one mode.

    Attributes:
        mode: ``"inference"``, ``"train"`` (one optimizer step) or ``"volume"`` (whole-volume evaluation).
        path: The :class:`~.settings.PathSettings` name.
        settings: The path's settings as ``dataclasses.asdict`` gives them.
        items: Slices per timed call (the batch, or the volume's depth).
        flops_per_call: FLOPs one timed call executes (recomputation included); 0 where not counted.
        peak_memory_mb: Peak resident memory of the measuring process (CPU) or peak CUDA memory allocated.
        memory_kind: ``"cpu_rss"`` or ``"cuda_max_allocated"``.
        model_memory_mb: Resident memory (CPU) or CUDA memory allocated once the model was built.
        extra: Mode-specific facts (volume shape, label counts, losses, compile time).
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
        """Slices per second at the median latency."""
        return self.items / self.timing.median_s

    @property
    def achieved_gflops(self) -> float:
        """Counted FLOPs per second at the median latency, in GFLOP/s (0 where not counted)."""
        return self.flops_per_call / self.timing.median_s / 1e9

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the fields plus ``items_per_s`` and ``achieved_gflops``."""
        out = dataclasses.asdict(self)
        out["items_per_s"] = self.items_per_s
        out["achieved_gflops"] = self.achieved_gflops
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchmarkResult:
        """The inverse of :meth:`to_dict` (derived keys are dropped)."""
        data = {k: v for k, v in data.items() if k not in ("items_per_s", "achieved_gflops")}
        data["timing"] = Timing(**data["timing"])
        data["img_size"] = tuple(data["img_size"])
        return cls(**data)


@dataclass
class Prepared:
    """What :func:`prepare` set up for one measurement.

    Attributes:
        model: The network built for the path, or ``None`` where no model was asked for.
        model_memory_mb: Memory in use once the model was built (see :func:`~.machine.memory_now`).
        x: A seeded standard-normal batch of shape (batch_size, 1, *img_size) on the device, or ``None``.
        generator: The CPU generator ``x`` was drawn from, for further seeded inputs (labels, q/k/v).
    """

    settings: PathSettings
    device: torch.device
    model_name: str | None
    img_size: tuple[int, ...]
    batch_size: int
    model: nn.Module | None
    model_memory_mb: float
    x: torch.Tensor | None
    generator: torch.Generator


def prepare(
    device: torch.device | str = "cpu",
    settings: PathSettings | dict[str, Any] | None = None,
    *,
    model_name: str | None = None,
    img_size: Sequence[int] = (224, 224),
    batch_size: int = 1,
    train: bool = False,
    model_overrides: dict[str, Any] | None = None,
    draw_input: bool = False,
    seed: int = 1,
) -> Prepared:
    """Set up one measurement: start its peak-memory window, build the model for the path, draw a seeded input.

    The same seeds give every path the same weights (``torch.manual_seed(0)`` before building) and the same input,
    so paths differ in how they compute only.

    Args:
        device: Where the model and input live.
        settings: The path, as settings or their dict form; ``None`` is the baseline.
        model_name: A registered model; ``None`` builds none.
        img_size: (height, width) of the input.
        train: Build for a training step (train mode; checkpointing applies) rather than for eval.
        model_overrides: ``ModelConfig`` fields to override.
        draw_input: Draw ``x``.
        seed: Seed of the input generator.
    """
    settings = settings_from(settings or baseline_settings())
    device = torch.device(device)
    memory_start(device)
    model = None
    if model_name is not None:
        model = build_model(model_name, settings, train=train, device=device, overrides=dict(model_overrides or {}))
    model_memory = memory_now(device)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 1, *img_size, generator=generator).to(device) if draw_input else None
    return Prepared(settings, device, model_name, tuple(img_size), batch_size, model, model_memory, x, generator)


def _count_flops(fn: Callable[[], Any]) -> int:
    counter = count_flops_mode()
    with counter:
        fn()
    return int(counter.get_total_flops())


def _time_and_record(
    mode: str, call: Callable[[], Any], setup: Prepared, *, items: int, runs: int, warmup: int, count_flops: bool
) -> BenchmarkResult:
    # A compiled path first compiles (its first call, timed apart as extra["compile_s"]); the peak memory is then
    # reset, so it covers the steady state that a long run sees, not the compiler's own work.
    settings, device = setup.settings, setup.device
    extra: dict[str, Any] = {}
    if settings.compile:
        start = time.perf_counter()
        call()
        synchronize(device)
        extra["compile_s"] = time.perf_counter() - start
        memory_start(device)
    timing = time_function(call, runs=runs, warmup=warmup, device=device)
    peak, kind = memory_peak(device)
    # Counted last: under the counter's dispatch mode a call holds far more memory than a plain one.
    flops = _count_flops(call) if count_flops and not settings.compile else 0
    return BenchmarkResult(
        mode=mode,
        path=settings.name,
        model=setup.model_name,
        img_size=setup.img_size,
        batch_size=setup.batch_size,
        device=str(device),
        settings=dataclasses.asdict(settings),
        parameters=sum(p.numel() for p in setup.model.parameters()),
        items=items,
        timing=timing,
        flops_per_call=flops,
        peak_memory_mb=peak,
        memory_kind=kind,
        model_memory_mb=setup.model_memory_mb,
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
    """Latency of one forward pass (eval mode, ``inference_mode``) of a batch, in this process.

    Args:
        settings: The path; ``None`` is the baseline.
        model_overrides: ``ModelConfig`` fields to override.
    """
    setup = prepare(
        device,
        settings,
        model_name=model_name,
        img_size=img_size,
        batch_size=batch_size,
        model_overrides=model_overrides,
        draw_input=True,
    )
    model, x = setup.model, setup.x

    @torch.inference_mode()
    def call() -> torch.Tensor:
        with path_autocast(setup.device, setup.settings):
            return model(x)

    return _time_and_record("inference", call, setup, items=batch_size, runs=runs, warmup=warmup, count_flops=True)


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
    """Latency of one training step: forward, cross-entropy, backward, SGD with momentum (the paper's optimizer).

    Peak memory covers the ``warmup`` and timed steps (the first step allocates the momentum buffers); FLOPs are
    counted afterwards on one more step. ``extra["losses"]`` holds every step's loss.

    Args:
        settings: The path; ``None`` is the baseline.
        model_overrides: ``ModelConfig`` fields to override.
    """
    setup = prepare(
        device,
        settings,
        model_name=model_name,
        img_size=img_size,
        batch_size=batch_size,
        train=True,
        model_overrides=model_overrides,
        draw_input=True,
    )
    model, x = setup.model, setup.x
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    num_classes = model.config.num_classes if hasattr(model, "config") else 9
    target = torch.randint(0, num_classes, (batch_size, *img_size), generator=setup.generator).to(setup.device)
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with path_autocast(setup.device, setup.settings):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), target)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    result = _time_and_record("train", step, setup, items=batch_size, runs=runs, warmup=warmup, count_flops=True)
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

    Args:
        batch_size: Slices per forward pass.
        settings: The path; ``None`` is the baseline.
        volume_shape: (depth, height, width) of the synthetic volume (:func:`synthetic_ct_volume`).
        resampler: ``"scipy"`` or ``"torch"``; ``None``: scipy on the baseline path (TransUNet's loop, with
            ``batch_size=1``), torch on any other.
        model_overrides: ``ModelConfig`` fields to override.
        labels_out: Save the predicted labels here (``.npy``), for comparing paths.
    """
    from perspective_unet.engine.inference import predict_volume
    from perspective_unet.runtime.inference_settings import InferenceSettings

    setup = prepare(
        device,
        settings,
        model_name=model_name,
        img_size=img_size,
        batch_size=batch_size,
        model_overrides=model_overrides,
    )
    if resampler is None:
        resampler = "scipy" if setup.settings.name == "baseline" else "torch"
    inference = InferenceSettings(batch_size=batch_size, resampler=resampler, amp_dtype=setup.settings.amp_dtype)
    depth, height, width = (int(s) for s in volume_shape)
    volume = synthetic_ct_volume(depth, height, width)
    labels: list[np.ndarray] = []

    def call() -> None:
        labels[:] = [predict_volume(setup.model, volume, img_size, inference)]

    result = _time_and_record("volume", call, setup, items=depth, runs=runs, warmup=warmup, count_flops=False)
    if labels_out:
        np.save(labels_out, labels[0])
    result.extra = {
        "volume_shape": [depth, height, width],
        "resampler": resampler,
        "label_counts": np.bincount(labels[0].ravel(), minlength=9).tolist(),
    }
    return result
