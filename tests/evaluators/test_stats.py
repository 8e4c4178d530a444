"""Seed statistics against hand computations and scipy."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from clbench.evaluators import ci_half_width, mean, significantly_different, std, summarize, welch_t_test

SAMPLE = [0.70, 0.72, 0.74, 0.76]  # mean 0.73, Σ(x − mean)² = 0.002


def test_mean_std_ci_hand_computed() -> None:
    assert mean(SAMPLE) == pytest.approx(0.73)
    s = math.sqrt(0.002 / 3)
    assert std(SAMPLE) == pytest.approx(s)
    # t_{0.975, 3} = 3.182446305 (standard table value).
    assert ci_half_width(SAMPLE) == pytest.approx(3.182446305 * s / 2.0, rel=1e-8)
    # 90% interval: t_{0.95, 3} = 2.353363435.
    assert ci_half_width(SAMPLE, level=0.90) == pytest.approx(2.353363435 * s / 2.0, rel=1e-8)


def test_ci_two_samples() -> None:
    # n = 2: t_{0.975, 1} = 12.70620474, s = |a − b| / sqrt(2), half-width = t · s / sqrt(2) = t · |a − b| / 2.
    assert ci_half_width([1.0, 2.0]) == pytest.approx(12.70620474 * 0.5, rel=1e-8)


def test_single_seed_has_no_spread() -> None:
    summary = summarize([0.9])
    assert summary.mean == 0.9 and summary.n == 1
    assert math.isnan(summary.std) and math.isnan(summary.ci95)
    assert math.isnan(mean([]))


def test_nan_propagates() -> None:
    assert math.isnan(summarize([0.5, float("nan"), 0.7]).mean)


def test_welch_matches_scipy() -> None:
    a, b = [0.61, 0.64, 0.60, 0.66], [0.55, 0.70, 0.52]
    expected = scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    assert welch_t_test(a, b) == pytest.approx(float(expected), rel=1e-10)


def test_significantly_different() -> None:
    assert significantly_different([0.90, 0.91, 0.92], [0.50, 0.51, 0.52])
    assert not significantly_different([0.90, 0.70, 0.80], [0.85, 0.75, 0.72])
    assert not significantly_different([0.9], [0.1])  # one seed: no evidence either way
    assert math.isnan(welch_t_test([0.9], [0.1, 0.2]))
    # Zero variance on both sides (deterministic seeds).
    assert welch_t_test([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert significantly_different([0.5, 0.5], [0.6, 0.6])
