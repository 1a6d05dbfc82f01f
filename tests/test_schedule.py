"""Tests of perspective_unet.schedule.poly_lr."""

from __future__ import annotations

import pytest

from perspective_unet.schedule import poly_lr


def test_values_of_the_papers_schedule():
    assert poly_lr(0.05, 0, 1000) == 0.05
    assert poly_lr(0.05, 500, 1000) == pytest.approx(0.05 * 0.5**0.9, rel=1e-15)
    assert poly_lr(0.05, 999, 1000) == pytest.approx(0.05 * 0.001**0.9, rel=1e-15)
    assert poly_lr(0.01, 250, 1000, power=1.0) == pytest.approx(0.0075, rel=1e-15)
    assert poly_lr(0.01, 250, 1000, power=0.0) == 0.01


def test_zero_at_and_past_the_end():
    assert poly_lr(0.05, 1000, 1000) == 0.0
    assert poly_lr(0.05, 1001, 1000) == 0.0
    assert poly_lr(0.05, 10**6, 1000) == 0.0


def test_monotonically_decreasing():
    rates = [poly_lr(0.05, i, 200) for i in range(0, 201)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert isinstance(rates[10], float)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((-0.1, 0, 10), "base_lr"),
        ((float("nan"), 0, 10), "base_lr"),
        ((0.1, -1, 10), "iteration"),
        ((0.1, 0, 0), "max_iterations"),
        ((0.1, 0, -5), "max_iterations"),
        ((0.1, 0, 10, -0.9), "power"),
    ],
)
def test_bad_arguments_raise_value_error(args, message):
    with pytest.raises(ValueError, match=message):
        poly_lr(*args)
