"""Series of measurements gathered into one JSON-ready report: the network over paths and modes, the attention
kernels over sequence lengths, the SCSI's memory over input sizes.

On the CPU each measurement runs in its own process by default (:mod:`perspective_unet.bench.isolate`); on CUDA
the peak is ``max_memory_allocated``. Latency is the median of ``runs`` timed calls after ``warmup`` untimed ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from perspective_unet.bench.isolate import run_isolated, run_measurement
from perspective_unet.bench.kernels import ATTENTION_KERNELS, matmul_gflops
from perspective_unet.bench.machine import ALLOCATOR_PROFILES, machine_info
from perspective_unet.bench.measure import MODES
from perspective_unet.bench.settings import PathSettings, baseline_settings, optimized_settings

__all__ = ["benchmark_attention", "benchmark_model", "benchmark_scsi_memory"]

Log = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default log: says nothing."""


@dataclass
class _Runner:
    """What every measurement of one :func:`benchmark_model` call shares.

    Attributes:
        common: The measuring functions' arguments that every measurement shares (model, size, device).
    """

    common: dict[str, Any]
    device: torch.device
    isolate: bool
    memory_limit_mb: float | None
    say: Log

    def run(
        self, function: str, settings: PathSettings, *, limit_memory: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        kwargs = {**self.common, "settings": dataclasses.asdict(settings), **kwargs}
        limit = self.memory_limit_mb if limit_memory else None
        return run_measurement(
            function, kwargs, settings, isolate=self.isolate, device=self.device, memory_limit_mb=limit
        )


def _mode_kwargs(mode: str, settings: PathSettings, config: dict[str, Any]) -> dict[str, Any]:
    # A training step always warms up once (its first step allocates the optimizer's buffers); a volume is predicted
    # once, the baseline one slice at a time as TransUNet did.
    runs, warmup = config["runs"], config["warmup"]
    if mode == "inference":
        return {"batch_size": config["batch_size"], "runs": runs, "warmup": warmup}
    if mode == "train":
        return {"batch_size": config["train_batch_size"], "runs": max(1, runs), "warmup": max(1, min(warmup, 1))}
    batch = 1 if settings.name == "baseline" else config["volume_batch_size"]
    return {"batch_size": batch, "volume_shape": list(config["volume_shape"]), "runs": 1, "warmup": 0}


def _measure_modes(
    report: dict[str, Any], paths: Sequence[PathSettings], modes: Sequence[str], runner: _Runner
) -> None:
    config, say = report["config"], runner.say
    rounds = config["rounds"]
    for mode in modes:
        for round_index in range(rounds):
            # Alternating the order makes load from other processes fall on every path alike.
            order = paths if round_index % 2 == 0 else list(reversed(paths))
            for settings in order:
                say(f"{mode}: {settings.name} (round {round_index + 1}/{rounds})")
                result = runner.run(mode, settings, limit_memory=True, **_mode_kwargs(mode, settings, config))
                result.setdefault("mode", mode)
                result.setdefault("path", settings.name)
                result["round"] = round_index
                report["results"].append(result)
                if "error" in result:
                    say(f"  failed: {result['error']}")
                else:
                    say(f"  median {result['timing']['median_s']:.3f} s, peak memory {result['peak_memory_mb']:.0f} MB")


def _measure_fidelity(report: dict[str, Any], paths: Sequence[PathSettings], runner: _Runner) -> None:
    for settings in paths:
        if settings.name != "baseline":
            runner.say(f"fidelity of {settings.name} against the plain float32 path")
            report["fidelity"][settings.name] = runner.run("fidelity", settings, batch_size=1)


def _measure_profiles(
    report: dict[str, Any], paths: Sequence[PathSettings], modes: Sequence[str], runner: _Runner
) -> None:
    config = report["config"]
    for mode in [m for m in modes if m in ("inference", "train")]:
        batch = config["batch_size"] if mode == "inference" else config["train_batch_size"]
        for settings in paths:
            runner.say(f"profiling {mode}: {settings.name}")
            report["profiles"].append(runner.run("profile", settings, mode=mode, batch_size=batch))


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
    log: Log | None = None,
) -> dict[str, Any]:
    """Measure every path in every mode and gather a report.

    Args:
        modes: Among :data:`~.measure.MODES`.
        paths: ``None``: the baseline and the default optimized path.
        batch_size: Inference batch (and the batch profiled for inference).
        volume_batch_size: Slices per forward pass of the non-baseline paths in ``"volume"`` mode.
        rounds: Repeat each (mode, path) measurement, alternating the paths; every round's result is kept and the
            tables use the round with the median latency.
        isolate: Each measurement in its own process (:func:`~.isolate.run_isolated`).
        fidelity: Compare each non-baseline path's logits with the baseline's (:func:`~.fidelity.output_fidelity`).
        profile: Add a ``torch.profiler`` breakdown per path for inference and training
            (:func:`~.profile.profile_path`).
        memory_limit_mb: Caps each isolated measurement's address space.
        log: Receives a line per step.

    Returns:
        ``{"machine", "config", "results": [...], "fidelity": {...}, "profiles": [...], "matmul_gflops"}``.

    Raises:
        ValueError: For a mode outside :data:`~.measure.MODES`.
    """
    device = torch.device(device)
    paths = list(paths or [baseline_settings(), optimized_settings(device)])
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"mode must be among {MODES}, got {mode!r}.")
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
    common = {"model_name": model_name, "img_size": list(img_size), "device": str(device), "model_overrides": overrides}
    runner = _Runner(common, device, isolate, memory_limit_mb, log or _quiet)
    runner.say("measuring the dense matrix-product rate")
    report["matmul_gflops"] = matmul_gflops(device)
    _measure_modes(report, paths, modes, runner)
    if fidelity:
        _measure_fidelity(report, paths, runner)
    if profile:
        _measure_profiles(report, paths, modes, runner)
    return report


def memory_env(device: torch.device) -> dict[str, str]:
    """The environment of an isolated kernel measurement: the ``"release"`` allocator profile on the CPU."""
    # Resident memory follows the live tensors only when freed blocks go back to the system.
    return dict(ALLOCATOR_PROFILES["release"]) if device.type == "cpu" else {}


def _kernel_point(function: str, kwargs: dict[str, Any], *, isolate: bool, device: torch.device) -> dict[str, Any]:
    if isolate:
        return run_isolated(function, kwargs, env=memory_env(device))
    return run_measurement(function, kwargs, baseline_settings(), isolate=False, device=device)


def benchmark_attention(
    tokens: Sequence[int] = (1024, 4096, 16384, 65536),
    *,
    dim: int = 256,
    device: torch.device | str = "cpu",
    runs: int = 3,
    warmup: int = 1,
    exact_max_tokens: int = 65536,
    isolate: bool = True,
    log: Log | None = None,
) -> dict[str, Any]:
    """ENLSA against exact attention (SDPA) over sequence lengths (:func:`~.kernels.measure_attention_point`).

    Exact attention above 16k tokens is timed once (``runs=1``, no warm-up): it grows with the square of the
    length, and one call there is slow on a CPU.

    Args:
        tokens: Sequence lengths, for both kernels.
        dim: Width of the one head.
        exact_max_tokens: Exact attention is skipped above this length.
        isolate: Each point in its own process with the ``"release"`` allocator profile on the CPU.
        log: Receives a line per point.

    Returns:
        ``{"machine", "points": [...], "enlsa_64k_over_16x_4k"}``: the last is ENLSA's time at 65,536 tokens over
        16 times its time at 4,096 (1.0 where time grows linearly), or ``None`` without both lengths.
    """
    device = torch.device(device)
    say = log or _quiet
    points = []
    for kernel in ATTENTION_KERNELS:
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
            point = _kernel_point("attention", kwargs, isolate=isolate, device=device)
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
    log: Log | None = None,
) -> dict[str, Any]:
    """Peak memory of the paper's SCSI (token attention) at several input sizes, batch 1
    (:func:`~.kernels.measure_scsi_point`).

    Measured in eval mode (6 layers) and in training (forward and backward with dropout 0.1, ``train_depth``
    layers) through the fast path and, at ``baseline_sizes``, through SDPA's own dropout (its N x N math path on
    the CPU). Memory linear in the tokens grows as the tokens do (4x from 224 to 448); an N x N matrix grows with
    their square.

    Args:
        img_sizes: Input sides measured through the fast path, eval and training.
        baseline_sizes: Input sides measured in training through SDPA's own dropout.
        isolate: Each point in its own process with the ``"release"`` allocator profile on the CPU.
        log: Receives a line per point.

    Returns:
        ``{"points": [...]}``.
    """
    device = torch.device(device)
    say = log or _quiet
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
        point = _kernel_point("scsi", kwargs, isolate=isolate, device=device)
        point.setdefault("img_size", int(size))
        point.setdefault("train", train)
        point.setdefault("fast_dropout", fast)
        points.append(point)
    return {"points": points}
