"""What the search has tried outside the causes it knows: the pairs and triples of levels.

A pair of levels of two factors (a continuous factor in strata, as in the cover,
:mod:`nansearch.search.pairwise`), or a triple of three, counts as tried once a run that no
known cause explains has held it; one that every configuration holding it matches a known
cause is left out, since nothing new can be learned there. Focus goes after what is
untried (:class:`nansearch.search.set_aside.SetAsideSampler`), and the stopping rule waits
for it: every pair, and every triple when the queue's trials left could hold them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from nansearch.analysis.causes import ABOVE, BELOW, EQUALS, Cause
from nansearch.search import pairwise
from nansearch.trial.runner import TrialResult


class Space:
    """The factors' pairs and triples of levels, a continuous factor in strata, as the cover
    has them."""

    def __init__(self, factors: Sequence[Any]):
        self.factors = list(factors)
        self.cols = pairwise.columns(self.factors)
        self.all = pairwise.pairs(self.cols)
        self._triples: set[pairwise.Triple] | None = None

    @property
    def triples(self) -> set[pairwise.Triple]:
        if self._triples is None:
            self._triples = pairwise.triples(self.cols)
        return self._triples

    def row(self, params: dict[str, Any]) -> list[int] | None:
        out = []
        for col in self.cols:
            if col.name not in params:
                return None
            value = params[col.name]
            if col.continuous is None:
                names = [str(v) for v in col.levels]
                if str(value) not in names:
                    return None
                out.append(names.index(str(value)))
            else:
                out.append(pairwise.stratum(float(value), col.continuous, len(col.levels)))
        return out

    def row_pairs(self, row: Sequence[int]) -> set[tuple[int, int, int, int]]:
        size = len(row)
        return {(i, row[i], j, row[j]) for i in range(size) for j in range(i + 1, size)}

    def _bounds(self, k: int, stratum: int) -> tuple[float, float]:
        col = self.cols[k]
        dist = col.continuous
        if dist.log:
            low, high = math.log(dist.low), math.log(dist.high)
            width = (high - low) / len(col.levels)
            return math.exp(low + width * stratum), math.exp(low + width * (stratum + 1))
        width = (dist.high - dist.low) / len(col.levels)
        return dist.low + width * stratum, dist.low + width * (stratum + 1)

    def inside(self, levels: Sequence[int], causes: Sequence[Cause]) -> bool:
        """Whether every configuration holding the levels (a pair or a triple, as
        (factor, level) indices) matches a known cause."""
        held = dict(zip(levels[::2], levels[1::2], strict=True))
        names = {self.cols[k].name: k for k in held}
        for cause in causes:
            if all(
                c.factor in names and self._always(c, names[c.factor], held)
                for c in cause.conditions
            ):
                return True
        return False

    def _always(self, condition: Any, k: int, held: dict[int, int]) -> bool:
        col = self.cols[k]
        if col.continuous is None:
            return condition.op == EQUALS and str(col.levels[held[k]]) == str(condition.value)
        low, high = self._bounds(k, held[k])
        if condition.op == ABOVE:
            return low >= condition.value
        if condition.op == BELOW:
            return high <= condition.value
        return False


def unexplored(
    results: Sequence[TrialResult], factors: Sequence[Any], causes: Sequence[Cause]
) -> set[tuple[int, int, int, int]]:
    """The pairs of levels outside the known causes that no unexplained run has held."""
    space = Space(factors)
    return unexplored_in(space, results, causes)


def unexplored_in(space: Space, results: Sequence[TrialResult], causes: Sequence[Cause]) -> set:
    return _untried(space, results, causes, space.all, space.row_pairs)


def untried(
    results: Sequence[TrialResult], factors: Sequence[Any], causes: Sequence[Cause]
) -> set[pairwise.Triple]:
    """The triples of levels outside the known causes that no unexplained run has held."""
    return untried_in(Space(factors), results, causes)


def untried_in(space: Space, results: Sequence[TrialResult], causes: Sequence[Cause]) -> set:
    return _untried(space, results, causes, space.triples, pairwise.row_triples)


def _untried(
    space: Space,
    results: Sequence[TrialResult],
    causes: Sequence[Cause],
    every: set,
    held_by: Callable[[Sequence[int]], set],
) -> set:
    """The members of ``every`` (pairs or triples) outside the known causes that no
    unexplained run has held; ``held_by`` gives those a run's row holds."""
    seen: set = set()
    for result in results:
        if result.outcome == "error" or any(c.holds(result.params) for c in causes):
            continue
        row = space.row(result.params)
        if row is not None:
            seen |= held_by(row)
    return {levels for levels in every - seen if not space.inside(levels, causes)}


def triples_wait(missing: set, left: int | None) -> bool:
    """Whether the search goes after the untried triples ``missing`` before it settles:
    the ``left`` trials of the queue could hold them all (:func:`pairwise.least_rows`).
    When they cannot (or ``left`` is unknown), focus steers toward instability as it does
    without them."""
    return bool(missing) and left is not None and pairwise.least_rows(missing) <= left
