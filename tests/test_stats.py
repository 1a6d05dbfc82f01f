"""The report's statistics against values computed by hand, with NumPy or SciPy called directly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from perspective_unet.stats import bootstrap_interval, holm, paired_wilcoxon, spread

VALUES = [0.81, 0.77, 0.92, 0.64, 0.88, 0.71, 0.95, 0.83]


def test_spread_is_the_mean_and_sample_std_of_the_finite_values():
    result = spread([*VALUES, math.nan])
    assert result.n == 8
    assert result.mean == pytest.approx(sum(VALUES) / 8)
    by_hand = math.sqrt(sum((v - result.mean) ** 2 for v in VALUES) / 7)
    assert result.std == pytest.approx(by_hand)
    single = spread([0.5])
    assert single.mean == 0.5 and math.isnan(single.std)
    assert spread([]).n == 0


def test_bootstrap_interval_equals_resampling_by_hand_with_the_same_seed():
    low, high = bootstrap_interval(VALUES, resamples=2000, seed=7)
    rng = np.random.default_rng(7)
    values = np.asarray(VALUES)
    means = values[rng.integers(0, len(values), (2000, len(values)))].mean(axis=1)
    expected = np.percentile(means, [2.5, 97.5])
    assert (low, high) == pytest.approx(tuple(expected), abs=1e-9)
    assert low < np.mean(VALUES) < high
    assert bootstrap_interval(VALUES, resamples=2000, seed=7) == (low, high), "same seed, same interval"
    assert all(math.isnan(v) for v in bootstrap_interval([0.5])), "one value has no interval"
    assert bootstrap_interval([0.4, 0.4, 0.4]) == (0.4, 0.4)


def test_paired_wilcoxon_equals_scipy_on_the_same_numbers_and_leaves_out_missing_pairs():
    reference = [v - d for v, d in zip(VALUES, [0.02, -0.01, 0.05, 0.03, 0.04, 0.01, 0.06, -0.02])]
    result = paired_wilcoxon([*VALUES, math.nan], [*reference, 0.5])
    assert result.n == 8
    assert result.p_value == pytest.approx(scipy_stats.wilcoxon(VALUES, reference).pvalue)
    assert result.mean_difference == pytest.approx(np.mean(np.subtract(VALUES, reference)))
    assert math.isnan(paired_wilcoxon(VALUES, VALUES).p_value), "no difference at all: no test"
    assert math.isnan(paired_wilcoxon([0.5], [0.4]).p_value)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_wilcoxon([0.1, 0.2], [0.1])


def test_holm_correction_by_hand():
    # Sorted: 0.001 (x4), 0.01 (x3), 0.02 (x2), 0.04 (x1), each at least the one before.
    assert holm([0.04, 0.001, 0.02, 0.01]) == pytest.approx([0.04, 0.004, 0.04, 0.03])
    assert holm([0.3, 0.6]) == pytest.approx([0.6, 0.6]), "monotone: the larger p never falls below the smaller"
    adjusted = holm([0.01, math.nan, 0.02])
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
