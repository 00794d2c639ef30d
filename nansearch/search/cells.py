"""The configurations focus chooses itself, cell by cell, before it asks TPE.

A cell is a row of levels, one per factor (a range: one of its strata, as in the
cover, :mod:`nansearch.search.pairwise`). :class:`Cells` turns rows into values and
holds the targeted choices of :class:`nansearch.search.set_aside.SetAsideSampler`, in the
order it makes them: the configuration that explores the most untried pairs or
triples (:meth:`Cells._explore`), one inside a cause not yet sure (:meth:`Cells._refine`),
one inside a suspect under test (:meth:`Cells._test`), the nearest miss again
(:meth:`Cells._near`), and a uniform draw outside the known causes
(:meth:`Cells._outside`). Each needs only the search space and a random generator.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution

from nansearch.analysis.causes import ABOVE, EQUALS, MIN_NAN, Cause
from nansearch.analysis.stats import wilson
from nansearch.search import pairwise
from nansearch.search.coverage import Space
from nansearch.trial.runner import TrialResult

REDRAWS = 32  # draws of the wrapped sampler before falling back to a random one outside


class Cells:
    """Rows of levels made into configurations, and the choices made with them."""

    space: Space
    rng: random.Random

    def _explore(
        self, missing: set, causes: Sequence[Cause], triples: bool = False
    ) -> dict[str, Any] | None:
        """The configuration outside the known causes that explores the most pairs (or
        triples): each candidate starts from one not yet tried and takes, factor by factor,
        the level that holds the most others; then, should every candidate fall inside a
        cause, configurations that hold one and draw the other factors at random."""
        used: list[Counter[int]] = [Counter() for _ in self.space.cols]
        best, most = None, 0
        cols = self.space.cols
        held = pairwise.row_triples if triples else self.space.row_pairs
        # a triple of the three factors with the most left first: each trial then brings
        # the least that they all need down by one
        start = pairwise.bottleneck(missing) if triples else None
        for attempt in range(2 * pairwise.CANDIDATES):
            if attempt < pairwise.CANDIDATES:
                if triples:
                    row = pairwise.triple_row(cols, missing, used, self.rng, start)
                else:
                    row = pairwise._candidate(cols, missing, used, self.rng)
            elif best is not None:
                break
            else:
                row = [self.rng.randrange(len(c.levels)) for c in cols]
                start = self.rng.choice(sorted(missing))
                for k in range(0, len(start), 2):
                    row[start[k]] = start[k + 1]
            params = self._clear_of(row, causes)
            if params is None:
                continue
            gain = len(held(row) & missing)
            if gain > most:
                best, most = params, gain
        return best

    def _refine(
        self, cause: Cause, results: Sequence[TrialResult], aside: Sequence[Cause]
    ) -> dict[str, Any] | None:
        """A configuration inside a cause not yet sure (some of its runs stayed finite)
        that holds levels of the other factors its runs have not held: what tells
        ``lr above 0.5`` from ``lr above 0.5 with dtype=amp-fp16``."""
        inside = [
            r
            for r in results
            if r.outcome != "error"
            and cause.holds(r.params)
            and not any(c.holds(r.params) for c in aside)
        ]
        own = {c.factor for c in cause.conditions}
        seen = {(name, str(value)) for r in inside for name, value in r.params.items()}
        missing = {
            (col.name, str(level))
            for col in self.space.cols
            if col.continuous is None and col.name not in own
            for level in col.levels
            if (col.name, str(level)) not in seen
        }
        if not missing:
            return None
        best, most = None, 0
        for _ in range(pairwise.CANDIDATES):
            params = self._values([self.rng.randrange(len(c.levels)) for c in self.space.cols])
            for col in self.space.cols:
                if col.continuous is None and col.name not in own:
                    options = [lv for lv in col.levels if (col.name, str(lv)) in missing]
                    if options:
                        params[col.name] = self.rng.choice(options)
            for condition in cause.conditions:
                params[condition.factor] = self._inside(condition)
            if not cause.holds(params) or any(c.holds(params) for c in aside):
                continue
            gain = sum((k, str(v)) in missing for k, v in params.items())
            if gain > most:
                best, most = params, gain
        return best

    def _test(
        self, suspect: Cause, results: Sequence[TrialResult], named: Sequence[Cause]
    ) -> dict[str, Any] | None:
        """A configuration inside a suspect, outside every named cause: a sequential test
        of the suspect, steered by its own runs, while they are no more than the runs
        it is tested against (the runs no named cause explains outside it). Per factor, the level (a range: the
        stratum) whose runs inside the suspect have the highest upper bound on their
        NaN rate (a Wilson 95% interval; a level not yet run there: 1), so that the runs
        go where the suspect's NaN is, and to what has not been tried inside it, until
        the suspect or a narrower rule inside it is named or its NaN runs no longer
        point at it (``lr above 0.16``, whose NaN runs no other cause explains are all
        ``amp-fp16``, becomes ``lr above 0.16 with dtype=amp-fp16``, or is cleared)."""
        inside: list[tuple[list[int], bool]] = []  # the suspect's own runs, as rows
        outside = 0  # the runs it is tested against: no named cause, not the suspect
        for r in results:
            if r.outcome == "error" or any(c.holds(r.params) for c in named):
                continue
            held = self.space.row(r.params)
            if not suspect.holds(r.params):
                outside += 1
            elif held is not None:
                inside.append((held, r.is_nan))
        if not inside or len(inside) > outside:
            return None  # a test needs runs on both sides: the others go outside it
        for attempt in range(pairwise.CANDIDATES):
            row = []
            for k, col in enumerate(self.space.cols):
                options = [lv for lv in range(len(col.levels)) if self._meets(suspect, k, lv)]
                if not options:
                    return None
                bounds = {}
                for lv in options:
                    held = [nan for levels, nan in inside if levels[k] == lv]
                    bounds[lv] = wilson(sum(held), len(held))[1]
                if attempt == 0:  # the highest bound, a tie drawn at random
                    top = max(bounds.values())
                    row.append(self.rng.choice([lv for lv in options if bounds[lv] == top]))
                else:  # drawn in proportion to it, should the first fall inside a cause
                    row.append(self.rng.choices(options, [bounds[lv] for lv in options])[0])
            params = self._values(row)
            for condition in suspect.conditions:
                if not condition.holds(params):
                    params[condition.factor] = self._inside(condition, row)
            if suspect.holds(params) and not any(c.holds(params) for c in named):
                return params
        return None

    def _near(
        self, results: Sequence[TrialResult], named: Sequence[Cause]
    ) -> dict[str, Any] | None:
        """The configuration of the nearest miss again, its continuous values drawn anew
        inside their strata: of the finite runs no named cause explains, the one with the
        highest instability score (its largest logit nearest the dtype's range) says
        where a NaN no run has shown yet is likeliest (``amp-fp16`` at a learning rate
        near the edge its weights overflow from). Its cell (its levels, a range's
        stratum) is tried until ``MIN_NAN`` runs have held it; a NaN there then makes a
        suspect, or is probed at once.

        A NaN run that no named cause explains is nearer than any finite one: its cell
        comes first, tried the same way. A failure near an edge may go NaN on one seed
        and not on the next (``amp-fp16`` at 0.14, where the edge is 0.22: NaN in 1 of 4
        runs); drawn anew in its stratum, its learning rate lands above the edge as
        often as not, and the runs there make a suspect the counts can test."""
        for loose in sorted(
            (
                r
                for r in results
                if r.is_nan and r.outcome != "error" and not any(c.holds(r.params) for c in named)
            ),
            key=lambda r: r.number or 0,
        ):
            params = self._again(loose, results, named)
            if params is not None:
                return params
        finite = [
            r
            for r in results
            if r.outcome == "finite"
            and r.score is not None
            and not any(c.holds(r.params) for c in named)
        ]
        if not finite:
            return None
        top = max(finite, key=lambda r: (r.score or 0.0, -(r.number or 0)))
        return self._again(top, results, named)

    def _again(
        self, run: TrialResult, results: Sequence[TrialResult], named: Sequence[Cause]
    ) -> dict[str, Any] | None:
        """A run's cell once more, its continuous values drawn anew inside their strata,
        outside every named cause, while fewer than ``MIN_NAN`` runs have held it."""
        row = self.space.row(run.params)
        if row is None:
            return None
        held = sum(self.space.row(r.params) == row for r in results if r.outcome != "error")
        if held >= MIN_NAN:
            return None
        return self._clear_of(row, named)

    def _clear_of(self, row: Sequence[int], causes: Sequence[Cause]) -> dict[str, Any] | None:
        """A row's configuration, its continuous values drawn inside their strata, that no
        cause holds: four draws, else None."""
        for _ in range(4):
            params = self._values(row)
            if not any(c.holds(params) for c in causes):
                return params
        return None

    def _meets(self, suspect: Cause, k: int, level: int) -> bool:
        """Whether a level of column ``k`` (a stratum of a range) can meet the suspect."""
        col = self.space.cols[k]
        for c in suspect.conditions:
            if c.factor != col.name:
                continue
            if col.continuous is None:
                return str(col.levels[level]) == str(c.value)
            low, high = self.space._bounds(k, level)
            return high > c.value if c.op == ABOVE else low < c.value
        return True

    def _inside(self, condition: Any, row: Sequence[int] | None = None) -> Any:
        """A value that meets ``condition``: its level, or a draw from its side of a range."""
        if condition.op == EQUALS:
            col = next(c for c in self.space.cols if c.name == condition.factor)
            return next(lv for lv in col.levels if str(lv) == str(condition.value))
        dist = next(c for c in self.space.cols if c.name == condition.factor).continuous
        low, high = (
            (condition.value, dist.high) if condition.op == ABOVE else (dist.low, condition.value)
        )
        low, high = max(low, dist.low), min(high, dist.high)
        if row is not None:  # inside the stratum the row holds, where it meets the range
            k = next(k for k, c in enumerate(self.space.cols) if c.name == condition.factor)
            lo, hi = self.space._bounds(k, row[k])
            if max(lo, low) < min(hi, high):
                low, high = max(lo, low), min(hi, high)
        if dist.log and low > 0:
            return math.exp(self.rng.uniform(math.log(low), math.log(high)))
        return self.rng.uniform(low, high)

    def _values(self, row: Sequence[int]) -> dict[str, Any]:
        out = {}
        for k, col in enumerate(self.space.cols):
            if col.continuous is None:
                out[col.name] = col.levels[row[k]]
            else:
                low, high = self.space._bounds(k, row[k])
                dist = col.continuous
                if dist.log:
                    value = math.exp(self.rng.uniform(math.log(low), math.log(high)))
                else:
                    value = self.rng.uniform(low, high)
                out[col.name] = min(max(value, dist.low), dist.high)
        return out

    def _outside(
        self, causes: Sequence[Cause], space: dict[str, BaseDistribution]
    ) -> dict[str, Any] | None:
        """A uniform draw outside the known causes, if one turns up."""
        cols = self.space.cols
        for _ in range(REDRAWS):
            row = [self.rng.randrange(len(c.levels)) for c in cols]
            params = self._values(row)
            if not any(c.holds(params) for c in causes):
                return params
        return None
