"""Learning-rate schedules as pure functions of the iteration number."""

from __future__ import annotations

import math

__all__ = ["poly_lr"]


def poly_lr(base_lr: float, iteration: int, max_iterations: int, power: float = 0.9) -> float:
    """Polynomial decay, ``base_lr * (1 - iteration / max_iterations) ** power``, set every iteration.

    The paper's recipe uses ``base_lr = 0.05`` and ``power = 0.9``. The rate reaches 0 at ``max_iterations`` and
    stays 0 past it.

    Args:
        base_lr: Learning rate at iteration 0 (>= 0).
        iteration: Iterations done so far (>= 0).
        max_iterations: Total number of iterations (> 0).
        power: Exponent of the decay (>= 0).

    Returns:
        The learning rate for this iteration.

    Raises:
        ValueError: For a negative or non-finite ``base_lr``, ``iteration`` or ``power``, or ``max_iterations <= 0``.

    Example:
        >>> poly_lr(0.05, 0, 1000)
        0.05
        >>> round(poly_lr(0.05, 500, 1000), 6)
        0.026794
        >>> poly_lr(0.05, 1200, 1000)
        0.0
    """
    if not math.isfinite(base_lr) or base_lr < 0:
        raise ValueError(f"base_lr must be a finite number >= 0, got {base_lr!r}.")
    if not math.isfinite(iteration) or iteration < 0:
        raise ValueError(f"iteration must be >= 0, got {iteration!r}.")
    if not math.isfinite(max_iterations) or max_iterations <= 0:
        raise ValueError(f"max_iterations must be > 0, got {max_iterations!r}.")
    if not math.isfinite(power) or power < 0:
        raise ValueError(f"power must be a finite number >= 0, got {power!r}.")
    remaining = 1.0 - iteration / max_iterations
    if remaining <= 0.0:
        return 0.0
    return float(base_lr * remaining**power)
