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


def test_paired_t_test_matches_scipy_and_handles_identical_differences() -> None:
    from scipy import stats as sp

    from clbench.evaluators.stats import paired_t_test

    a, b = [0.61, 0.58, 0.66, 0.70], [0.55, 0.57, 0.60, 0.61]
    assert paired_t_test(a, b) == pytest.approx(float(sp.ttest_rel(a, b).pvalue), rel=1e-12)
    # paired beats unpaired when seeds move both methods together
    assert paired_t_test(a, b) < float(sp.ttest_ind(a, b, equal_var=False).pvalue)
    assert paired_t_test([0.5, 0.6], [0.4, 0.5]) == 0.0 and paired_t_test([0.5, 0.6], [0.5, 0.6]) == 1.0
    assert math.isnan(paired_t_test([0.5], [0.4])) and math.isnan(paired_t_test([0.5, 0.6], [0.4]))


def test_holm_adjusts_in_order_and_keeps_undefined_tests_out() -> None:
    from clbench.evaluators.stats import holm

    # m = 3: 0.01·3 = 0.03, 0.02·2 = 0.04, 0.04·1 = 0.04 (monotone), in the input's order
    assert holm([0.04, 0.01, 0.02, float("nan")])[:3] == pytest.approx([0.04, 0.03, 0.04])
    assert math.isnan(holm([0.5, float("nan")])[1]) and holm([0.5, float("nan")])[0] == 0.5
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_wilson_interval_matches_scipy() -> None:
    from scipy import stats as sp

    from clbench.evaluators.stats import wilson_interval

    low, high = wilson_interval(150 / 300, 300)
    ci = sp.binomtest(150, 300).proportion_ci(method="wilson")
    assert (low, high) == pytest.approx((ci.low, ci.high), abs=1e-4)  # scipy uses the exact 0.975 quantile
    assert wilson_interval(0.0, 50)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(0.0, 50)[1] > 0.05


def test_accuracy_intervals_count_the_test_sets_own_error() -> None:
    from clbench.evaluators.stats import accuracy_half_width, ci_half_width, effective_n

    one_seed = accuracy_half_width([0.5], 300)
    assert one_seed == pytest.approx(1.959964 * math.sqrt(0.25 / 300), rel=1e-5)  # ±0.057, not "no interval"
    seeds = [0.55, 0.6, 0.65]
    both = accuracy_half_width(seeds, 300)
    assert both**2 == pytest.approx(ci_half_width(seeds) ** 2 + 1.959964**2 * 0.6 * 0.4 / 300, rel=1e-5)
    assert effective_n([0.5, 0.5], [100, 100]) == pytest.approx(200)  # two equal halves: the sizes add
    assert effective_n([0.9, 0.5], [400, 300]) == pytest.approx(0.7 * 0.3 / ((0.09 / 400 + 0.25 / 300) / 4))
