"""Statistics across seeds: mean, standard deviation, t-based 95% confidence interval, Welch's and the paired
t-test with Holm's correction, and the test set's own sampling error (Wilson interval).

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


def paired_t_test(a: Iterable[float], b: Iterable[float]) -> float:
    """Two-sided p-value of the paired t-test on a_i − b_i (Student 1908): t = mean(d) / (s_d / sqrt(n)), n − 1
    degrees of freedom.

    For methods run on the same seeds: seed i of both shares the first task, the data order and the
    evaluation examples, so their differences, not their spreads, carry the evidence. Matches
    ``scipy.stats.ttest_rel(a, b)`` where that is defined; with identical differences (zero spread) p = 1 if
    they are all 0, else 0.

    Returns:
        The p-value; NaN with fewer than 2 pairs, unequal lengths or NaN values.
    """
    from scipy import stats

    xa, xb = _sample(a), _sample(b)
    if xa.size != xb.size or xa.size < 2 or np.isnan(xa).any() or np.isnan(xb).any():
        return float("nan")
    d = xa - xb
    spread = float(d.std(ddof=1))
    if spread == 0.0:
        return 1.0 if float(d.mean()) == 0.0 else 0.0
    t = float(d.mean()) / (spread / math.sqrt(d.size))
    return float(2.0 * stats.t.sf(abs(t), d.size - 1))


def holm(pvalues: Iterable[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979): sort ascending, p_(k) ← max_{j ≤ k} min(1, (m − j + 1)·p_(j)).

    Rejecting where the adjusted p < α keeps the family-wise error rate at α over the m comparisons. NaN
    p-values (undefined tests) stay NaN and do not count towards m.
    """
    values = list(pvalues)
    defined = sorted((p, i) for i, p in enumerate(values) if not math.isnan(p))
    m = len(defined)
    out = [float("nan")] * len(values)
    running = 0.0
    for rank, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def wilson_interval(accuracy: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) of an accuracy measured on n examples: the test set's own sampling
    error, centred at (p + z²/2n)/(1 + z²/n) with half-width z·sqrt(p(1−p)/n + z²/4n²)/(1 + z²/n)."""
    if n <= 0 or math.isnan(accuracy):
        return float("nan"), float("nan")
    denominator = 1.0 + z * z / n
    centre = (accuracy + z * z / (2 * n)) / denominator
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / denominator
    return centre - half, centre + half


def accuracy_half_width(values: Iterable[float], n_test: float, level: float = 0.95) -> float:
    """Half-width of an interval for a mean accuracy that counts both sources of error: the spread over seeds
    (t-interval, `ci_half_width`) and the test set's own sampling error, sqrt(p(1−p)/n) at the mean p, which a
    fixed test set shares across seeds and so does not average away. The two are combined in quadrature;
    with one seed only the test-set term remains.

    Args:
        values: The accuracy over seeds.
        n_test: Examples it was measured on (for an average over tasks, the effective n with the same binomial
            variance: `effective_n`).
        level: Confidence level.
    """
    from scipy import stats

    x = _sample(values)
    if not x.size or np.isnan(x).any():
        return float("nan")
    p = float(x.mean())
    z = float(stats.norm.ppf(1.0 - (1.0 - level) / 2.0))
    test = z * math.sqrt(max(p * (1 - p), 0.0) / n_test) if n_test > 0 else float("nan")
    seeds = ci_half_width(x, level) if x.size >= 2 else 0.0
    return math.sqrt(seeds**2 + test**2)


def effective_n(accuracies: Iterable[float], sizes: Iterable[int]) -> float:
    """n such that p̄(1−p̄)/n equals the variance of a mean of T accuracies p_j measured on n_j examples,
    Var = (1/T²) Σ p_j(1−p_j)/n_j (independent test sets). Used for ACC's test-set error."""
    p, n = _sample(accuracies), _sample(sizes)
    if not p.size or p.size != n.size or (n <= 0).any():
        return float("nan")
    variance = float(np.sum(p * (1 - p) / n)) / p.size**2
    mean_p = float(p.mean())
    return mean_p * (1 - mean_p) / variance if variance > 0 else float("inf")
