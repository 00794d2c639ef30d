"""The statistics the analysis rests on, in one place: the Wilson score interval and
Fisher's exact test, one-sided (are runs here NaN more often than the rest?) and
two-sided (the factor table's odds ratio and p-value).

Counts are NaN runs out of runs. The one-sided test comes in a scalar form and an
element-wise one over numpy arrays (the rule search tests thousands of rules at once);
both are the hypergeometric tail, so they agree to the last bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
from scipy.stats import fisher_exact, hypergeom

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for k successes in n trials (0, 1 when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson_low(hits: np.ndarray, inside: np.ndarray, z: float = Z95) -> np.ndarray:
    """The lower end of the Wilson interval, element by element (0 where empty)."""
    n = np.maximum(inside, 1)
    p = hits / n
    centre = p + z * z / (2 * n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.where(inside > 0, (centre - half) / (1 + z * z / n), 0.0)


def fisher_greater(a_nan: int, a_total: int, b_nan: int, b_total: int) -> float:
    """One-sided Fisher exact p-value that runs in a are NaN more often than runs in b."""
    size, nan = a_total + b_total, a_nan + b_nan
    return float(hypergeom.sf(a_nan - 1, size, nan, a_total)) if a_total else 1.0


def fisher_greater_each(
    hits: np.ndarray, inside: np.ndarray, other_hits: np.ndarray, other_inside: np.ndarray
) -> np.ndarray:
    """:func:`fisher_greater` element by element: runs inside vs the other runs."""
    size, nan = inside + other_inside, hits + other_hits
    return np.where(inside > 0, hypergeom.sf(hits - 1, size, nan, inside), 1.0)


def fisher_greater_strata(tables: Iterable[tuple[int, int, int, int]]) -> float:
    """:func:`fisher_greater` within strata: ``(a_nan, a_total, b_nan, b_total)`` per
    stratum, a compared only with b of the same stratum. The exact conditional test of a
    common odds ratio of 1: each stratum's NaN runs in a are hypergeometric given its
    margins, and the p-value is the upper tail of their sum, a convolution. A stratum
    where a or b has no run, or whose runs all went one way, says nothing and adds a
    constant; one stratum alone gives :func:`fisher_greater`."""
    pmf, low, seen = np.ones(1), 0, 0
    for a_nan, a_total, b_nan, b_total in tables:
        size, nan = a_total + b_total, a_nan + b_nan
        first, last = max(0, a_total - (size - nan)), min(a_total, nan)
        seen += a_nan
        low += first
        if last > first:
            pmf = np.convolve(pmf, hypergeom.pmf(np.arange(first, last + 1), size, nan, a_total))
    return float(min(1.0, pmf[max(0, seen - low) :].sum()))


def fisher_two_sided(
    a_nan: int, a_total: int, b_nan: int, b_total: int
) -> tuple[float | None, float]:
    """Odds ratio (None when infinite or undefined) and two-sided Fisher exact p-value."""
    if not a_total or not b_total:
        return None, 1.0
    result = fisher_exact([[a_nan, a_total - a_nan], [b_nan, b_total - b_nan]])
    ratio = float(result.statistic)
    return (ratio if math.isfinite(ratio) else None), float(result.pvalue)
