"""Statistics across seeds: mean, standard deviation, t-based 95% confidence interval, Welch's t-test.

For a sample x_1..x_n:

    mean = (1/n) Σ x_i
    std  = sqrt(Σ (x_i − mean)² / (n − 1))                       (ddof = 1; NaN for n < 2)
    CI half-width = t_{1−(1−level)/2, n−1} · std / sqrt(n)        (Student's t; NaN for n < 2)

so the interval is mean ± half-width. With n = 1 there is no spread estimate: std and the CI are NaN and the
report shows the single value without an interval. NaN values are not dropped: a diverged seed makes the
summary NaN, and the caller decides whether to exclude it.

Welch's t-test (unequal variances) for two samples a, b:

    t  = (mean_a − mean_b) / sqrt(s_a²/n_a + s_b²/n_b)
    ν  = (s_a²/n_a + s_b²/n_b)² / ((s_a²/n_a)²/(n_a − 1) + (s_b²/n_b)²/(n_b − 1))   (Welch–Satterthwaite)
    p  = 2 · P(T_ν > |t|)

References:
    B. L. Welch. The generalization of "Student's" problem when several different population variances are
    involved. Biometrika, 1947.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray


def _sample(values: Iterable[float]) -> NDArray[np.float64]:
    return np.asarray(list(values), dtype=np.float64).reshape(-1)


def mean(values: Iterable[float]) -> float:
    """Arithmetic mean (1/n) Σ x_i; NaN for an empty sample."""
    x = _sample(values)
    return float(x.mean()) if x.size else float("nan")


def std(values: Iterable[float]) -> float:
    """Sample standard deviation with ddof = 1; NaN for n < 2."""
    x = _sample(values)
    return float(x.std(ddof=1)) if x.size >= 2 else float("nan")


def ci_half_width(values: Iterable[float], level: float = 0.95) -> float:
    """Half-width of the two-sided t confidence interval for the mean: t_{1−(1−level)/2, n−1} · s / sqrt(n).

    Args:
        values: The sample (e.g. one metric over seeds).
        level: Confidence level in (0, 1).

    Returns:
        The half-width; NaN for n < 2 (no spread estimate from a single seed).
    """
    from scipy import stats  # imported here: scipy is slow to import and only the report needs it

    x = _sample(values)
    if x.size < 2:
        return float("nan")
    quantile = float(stats.t.ppf(1.0 - (1.0 - level) / 2.0, df=x.size - 1))
    return quantile * float(x.std(ddof=1)) / math.sqrt(x.size)


class Summary(NamedTuple):
    """One scalar summarised across seeds."""

    mean: float
    std: float  # ddof = 1, NaN for n < 2
    ci95: float  # half-width of the 95% t interval, NaN for n < 2
    n: int


def summarize(values: Iterable[float]) -> Summary:
    """Mean, std (ddof = 1), 95% t-interval half-width and sample size of one scalar across seeds."""
    x = _sample(values)
    return Summary(mean(x), std(x), ci_half_width(x, 0.95), int(x.size))


def welch_t_test(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p-value of Welch's unequal-variance t-test for equal means.

    Matches ``scipy.stats.ttest_ind(a, b, equal_var=False)`` where that is defined, and also handles zero
    variance in both samples (identical seeds, common for deterministic runs): p = 1 if the means are equal,
    else 0.

    Args:
        a: First sample.
        b: Second sample.

    Returns:
        The p-value; NaN if either sample has fewer than 2 values or contains NaN.
    """
    from scipy import stats

    xa, xb = _sample(a), _sample(b)
    if xa.size < 2 or xb.size < 2 or np.isnan(xa).any() or np.isnan(xb).any():
        return float("nan")
    va, vb = float(xa.var(ddof=1)) / xa.size, float(xb.var(ddof=1)) / xb.size
    diff = float(xa.mean() - xb.mean())
    if va + vb == 0.0:
        return 1.0 if diff == 0.0 else 0.0
    t = diff / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))
    return float(2.0 * stats.t.sf(abs(t), dof))


def significantly_different(a: Iterable[float], b: Iterable[float], alpha: float = 0.05) -> bool:
    """Whether Welch's t-test rejects equal means at level ``alpha`` (p < alpha).

    False when the test is undefined (fewer than 2 seeds on either side, or NaN values): without evidence
    the report marks the difference as not significant.

    Args:
        a: One method's values across seeds.
        b: Another method's values across seeds.
        alpha: Significance level.

    Returns:
        True if the difference in means is significant.
    """
    p = welch_t_test(a, b)
    return not math.isnan(p) and p < alpha
