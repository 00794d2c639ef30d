"""Ranges of a continuous factor: where to cut it, and its edge per level of another factor.

A continuous factor (the learning rate) enters a rule as one side of a cut,
``lr above 0.3``, never as a point. :func:`thresholds` gives the cuts worth trying;
:func:`per_level` says, once a range is a cause, where its edge lies for each level
of the other factors when they disagree. Levels beside a range are compared where the
range's runs actually failed (:func:`failed_from`): within ``lr above 5`` one level's
runs may sit at 8 and another's at 5.5, and an lr difference is no level effect.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from nansearch.analysis.evidence import ABOVE, BELOW, Condition, Evidence
from nansearch.analysis.stats import fisher_greater

EDGE_APART = 1.5  # per-level edges this many times apart are reported apart


def midpoint(a: float, b: float) -> float:
    return math.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2


def thresholds(values: np.ndarray, nan: np.ndarray) -> list[tuple[str, float]]:
    """Ranges worth trying: a cut wherever the outcome changes between neighbouring values.

    Going up, a change from finite to NaN suggests ``above``; from NaN to finite, ``below``.
    """
    order = np.argsort(values, kind="stable")
    values, nan = values[order], nan[order]
    change = np.flatnonzero((nan[:-1] != nan[1:]) & (values[:-1] < values[1:]))
    return [
        (ABOVE if nan[i + 1] else BELOW, midpoint(float(values[i]), float(values[i + 1])))
        for i in change
    ]


def failed_from(condition: Condition, column: np.ndarray, nan: np.ndarray) -> Condition | None:
    """A range from its first NaN run on: ``condition`` (``lr above 5``) with its edge moved
    to the lowest value among the NaN runs ``nan`` (``lr above 8.1``; for ``below``, the
    highest); None when ``nan`` holds no run with a value.

    This is where the levels of another factor are compared beside a range: a level's
    NaN runs inside it say that the level matters only when, at the same or a higher
    value, the other levels' runs pass. A level whose runs inside the range happen to sit
    further in than the others' would otherwise look worse for its learning rate."""
    values = column[nan & ~np.isnan(column)]
    if not len(values):
        return None
    edge = values.min() if condition.op == ABOVE else values.max()
    return Condition(condition.factor, condition.op, float(edge))


def per_level(
    ev: Evidence,
    conditions: Sequence[Condition],
    condition: Condition,
    background: np.ndarray,
) -> dict[str, list[dict[str, Any]]]:
    """A range's edge per level of each other factor, where the levels disagree: one has
    finite runs inside the range, or none inside it at all, or its edge lies apart.

    ``conditions`` is the whole rule, ``condition`` its range. Each level's edge is the
    value from which all its runs (no other cause, the rule's other conditions met) went
    NaN: the midpoint of its last finite run below its lowest such NaN run and that run.
    Each level's counts are of its runs inside the range from the range's first NaN run
    on (:func:`failed_from`), so that the levels are compared at the same values: a
    level whose runs inside the range all lie before that run has no entry, since it was
    neither seen to fail nor seen to pass where the others failed. For a range cut from
    the runs themselves the first run inside it is NaN, and the counts are the range's.
    """
    above = condition.op == ABOVE
    column = ev.columns[condition.factor]
    rest = ev.mask([c for c in conditions if c is not condition])
    scope = background & rest & ~np.isnan(column)
    inside = ~np.isnan(column) & (
        (column >= condition.value) if above else (column <= condition.value)
    )
    inside &= rest
    ranged = inside.copy()
    failed = failed_from(condition, column, scope & inside & ev.nan)
    if failed is not None:
        inside &= ev.mask((failed,))
    own = {c.factor for c in conditions}
    out: dict[str, list[dict[str, Any]]] = {}
    for name in ev.factors:
        if name in own or name in ev.continuous:
            continue
        entries: list[dict[str, Any]] = []
        for level in ev.levels(name, scope):
            at = scope & (ev.columns[name] == level)
            counts = ev.counts(at & inside)
            if not counts["total"] and (ranged & (ev.columns[name] == level)).any():
                continue  # its runs inside are another cause's, or all before its first NaN
            entries.append({"value": level, **counts, "edge": _edge(column[at], ev.nan[at], above)})
        if len(entries) < 2:
            continue
        edges: list[float] = [e["edge"] for e in entries if e["edge"] is not None]
        apart = len(edges) > 1 and max(edges) > EDGE_APART * min(edges) > 0
        uneven = any(e["nan"] < e["total"] or not e["total"] for e in entries)
        if apart or uneven:
            out[name] = entries
    return out


def clearest_splits(
    by_level: dict[str, list[dict[str, Any]]],
) -> list[tuple[str, list[dict[str, Any]], list[dict[str, Any]]]]:
    """The factors whose levels split a range's runs most clearly: per factor, the levels
    with a NaN run inside the range against those whose runs there all stayed finite,
    kept when both exist. Of those, the ones with the smallest one-sided Fisher p of the
    NaN levels' runs against the others' (several when they split as clearly), as
    ``(factor, nan levels, finite levels)``. A flaky range (some runs NaN at the edge)
    reads as the levels it fails at: ``lr above 0.16`` NaN only with ``dtype=amp-fp16``."""
    found = []
    for factor, entries in by_level.items():
        bad = [e for e in entries if e["nan"]]
        good = [e for e in entries if e["total"] and not e["nan"]]
        if bad and good:
            p = fisher_greater(
                sum(e["nan"] for e in bad),
                sum(e["total"] for e in bad),
                0,
                sum(e["total"] for e in good),
            )
            found.append((p, factor, bad, good))
    if not found:
        return []
    clearest = min(p for p, *_ in found)
    return [(factor, bad, good) for p, factor, bad, good in found if p <= clearest * (1 + 1e-9)]


def _edge(values: np.ndarray, nan: np.ndarray, above: bool) -> float | None:
    """Where one level's runs turn NaN for good along the range's side, if they do."""
    order = np.argsort(values if above else -values, kind="stable")
    values, nan = values[order], nan[order]
    if not len(values) or not nan[-1]:
        return None
    start = len(nan)
    while start > 0 and nan[start - 1]:
        start -= 1
    if start == 0:
        return float(values[0])
    return midpoint(float(values[start - 1]), float(values[start]))
