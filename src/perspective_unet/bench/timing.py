"""Timing a call: untimed warm-up calls, then timed ones, summarized as median, min and max."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from perspective_unet.bench.machine import synchronize

__all__ = ["Timing", "time_function"]


@dataclass
class Timing:
    """Seconds per call over the timed runs.

    Attributes:
        median_s: The figure tables report: robust to a run slowed by other load on the machine.
        runs_s: Every timed run, in order.
    """

    median_s: float
    min_s: float
    max_s: float
    runs_s: list[float]

    @classmethod
    def from_runs(cls, runs: Sequence[float]) -> Timing:
        """Summarize timed runs (seconds each).

        Raises:
            ValueError: Without any run.
        """
        if not runs:
            raise ValueError("no timed runs")
        return cls(float(np.median(runs)), float(min(runs)), float(max(runs)), [float(r) for r in runs])


def time_function(
    fn: Callable[[], Any],
    *,
    runs: int = 5,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed.

    Args:
        fn: The call to time; its result is discarded.
        device: Where ``fn`` queues its work: on CUDA each timed call ends with a synchronization, so the time
            covers the work, not only its launch.
        clock: Seconds as a float; a monotonic high-resolution clock unless a test substitutes one.

    Raises:
        ValueError: For ``runs < 1`` or ``warmup < 0``.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got {runs} and {warmup}.")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples = []
    for _ in range(runs):
        start = clock()
        fn()
        synchronize(device)
        samples.append(clock() - start)
    return Timing.from_runs(samples)
