"""The analysis's statistics agree with scipy's own implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, fisher_exact

from nansearch.analysis.stats import (
    fisher_greater,
    fisher_greater_each,
    fisher_greater_strata,
    fisher_two_sided,
    wilson,
    wilson_low,
)

TABLES = [
    (a_nan, a_total, b_nan, b_total)
    for a_total in (1, 2, 5, 9)
    for b_total in (1, 3, 8)
    for a_nan in range(a_total + 1)
    for b_nan in range(b_total + 1)
]


def test_wilson_is_scipys_wilson_interval():
    for n in (1, 2, 7, 30, 200):
        for k in range(0, n + 1, max(1, n // 7)):
            ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
            low, high = wilson(k, n)
            assert math.isclose(low, ci.low, rel_tol=1e-9, abs_tol=1e-12), (k, n)
            assert math.isclose(high, ci.high, rel_tol=1e-9, abs_tol=1e-12), (k, n)
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_low_element_by_element_is_the_scalar_lower_end():
    hits, inside = np.array([0, 3, 5, 0]), np.array([4, 9, 5, 0])
    expected = [wilson(int(k), int(n))[0] if n else 0.0 for k, n in zip(hits, inside, strict=True)]
    assert np.allclose(wilson_low(hits, inside), expected, rtol=1e-12, atol=1e-15)


def test_one_sided_fisher_is_scipys_greater_alternative():
    for a_nan, a_total, b_nan, b_total in TABLES:
        table = [[a_nan, a_total - a_nan], [b_nan, b_total - b_nan]]
        expected = fisher_exact(table, alternative="greater").pvalue
        got = fisher_greater(a_nan, a_total, b_nan, b_total)
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-15), table
    assert fisher_greater(0, 0, 3, 5) == 1.0


def test_one_sided_fisher_element_by_element_is_the_scalar_one():
    a_nan, a_total, b_nan, b_total = (np.array(c) for c in zip(*TABLES, strict=True))
    each = fisher_greater_each(a_nan, a_total, b_nan, b_total)
    assert list(each) == [fisher_greater(*t) for t in TABLES]


def test_two_sided_fisher_is_scipys_with_its_odds_ratio():
    for a_nan, a_total, b_nan, b_total in TABLES:
        table = [[a_nan, a_total - a_nan], [b_nan, b_total - b_nan]]
        expected = fisher_exact(table)
        ratio, p = fisher_two_sided(a_nan, a_total, b_nan, b_total)
        assert p == expected.pvalue
        if math.isfinite(expected.statistic):
            assert ratio == expected.statistic
        else:
            assert ratio is None
    assert fisher_two_sided(1, 2, 0, 0) == (None, 1.0)


def test_fisher_within_strata_is_fisher_on_one_stratum_and_ignores_strata_without_contrast():
    for table in [(3, 3, 0, 4), (2, 5, 1, 6), (0, 2, 3, 3), (4, 4, 4, 4)]:
        assert fisher_greater_strata([table]) == pytest.approx(fisher_greater(*table), rel=1e-12)
    # a stratum with runs on one side only, or all NaN, adds nothing
    alone = fisher_greater_strata([(3, 3, 0, 4)])
    assert fisher_greater_strata([(3, 3, 0, 4), (5, 5, 0, 0), (2, 2, 3, 3)]) == pytest.approx(alone)
    # the same NaN runs, split so that each stratum's contrast is weaker, are less sure
    assert fisher_greater_strata([(3, 3, 0, 4)]) < fisher_greater_strata(
        [(3, 3, 0, 0), (0, 0, 0, 4)]
    )
    # two strata that each lean the same way add up to more than either
    both = fisher_greater_strata([(2, 2, 0, 3), (2, 2, 0, 3)])
    assert both < fisher_greater(2, 2, 0, 3)
