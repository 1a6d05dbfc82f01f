"""Statistics for comparing trained models: spread over seeds, bootstrap intervals over cases, paired tests.

The functions take plain arrays and know nothing of runs or files; :mod:`perspective_unet.engine.experiment_report`
gathers the numbers. SciPy does the statistics (``scipy.stats.bootstrap``, ``scipy.stats.wilcoxon``); only Holm's
step-down correction, which SciPy lacks, is written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Comparison", "Spread", "bootstrap_interval", "holm", "paired_wilcoxon", "spread"]


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation (``ddof=1``; NaN for a single value) of ``n`` values."""

    mean: float
    std: float
    n: int


def spread(values: Sequence[float]) -> Spread:
    """Mean and sample standard deviation of the finite values (NaN values are left out).

    Example:
        >>> spread([0.8, 0.9, 1.0])
        Spread(mean=0.9, std=0.09999999999999998, n=3)
    """
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return Spread(math.nan, math.nan, 0)
    std = float(np.std(array, ddof=1)) if array.size > 1 else math.nan
    return Spread(float(np.mean(array)), std, int(array.size))


def bootstrap_interval(
    values: Sequence[float], *, confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (resampled with replacement).

    ``scipy.stats.bootstrap`` with ``method="percentile"`` and a generator seeded with ``seed``, so the same numbers
    and seed give the same interval. Fewer than two finite values give ``(nan, nan)``; all-equal values give that
    value twice.
    """
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size < 2:
        return (math.nan, math.nan)
    if np.all(array == array[0]):
        return (float(array[0]), float(array[0]))
    result = stats.bootstrap(
        (array,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
        vectorized=True,
    )
    return (float(result.confidence_interval.low), float(result.confidence_interval.high))


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of a configuration with the reference.

    Attributes:
        n: Pairs compared (units with a finite value on both sides).
        mean_difference: Mean of ``values - reference``.
        p_value: Two-sided Wilcoxon signed-rank p-value (NaN when it cannot be computed: fewer than two pairs, or
            every difference zero).
        p_holm: ``p_value`` after Holm's correction across the comparisons of one report (filled by the report).
    """

    n: int
    mean_difference: float
    p_value: float
    p_holm: float = math.nan


def paired_wilcoxon(values: Sequence[float], reference: Sequence[float]) -> Comparison:
    """Two-sided Wilcoxon signed-rank test of paired values against the reference's.

    Pairs where either side is NaN are left out. ``scipy.stats.wilcoxon`` with its defaults (exact distribution for
    small samples without ties, zero differences dropped as Wilcoxon proposed).
    """
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths, got {a.shape} and {b.shape}.")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size == 0:
        return Comparison(0, math.nan, math.nan)
    difference = a - b
    if a.size < 2 or np.all(difference == 0):
        return Comparison(int(a.size), float(difference.mean()), math.nan)
    p_value = float(stats.wilcoxon(a, b).pvalue)
    return Comparison(int(a.size), float(difference.mean()), p_value)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values for several comparisons; NaN stays NaN and is not counted.

    The i-th smallest of m p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(p_values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = np.full(p.shape, math.nan)
    m = finite.size
    running = 0.0
    for rank, index in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return [float(v) for v in adjusted]
