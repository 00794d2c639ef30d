"""Focus with the causes found set aside: the budget goes where NaN is still unexplained.

Once a cause is named (:func:`nansearch.analysis.causes.find_causes` on the trials so far) and
nearly all of its runs went NaN, a configuration that matches it teaches nothing new: it goes NaN for a known reason,
and its NaN hides whatever else it carries (``amp-fp16`` with a high learning rate,
tried only alongside a batch whose labels are all ignored, was never seen to fail on
its own). :class:`SetAsideSampler` wraps the focus sampler, an Optuna sampler like
any other, and suggests no such configuration:

1. **What nothing has tried yet.** A pair of levels of two factors (a range in
   strata, as in the cover, :mod:`nansearch.pairwise`) counts as explored once a run
   that no cause explains has held it. While some pair outside the known causes is
   unexplored, focus suggests the configuration that explores the most of them.
2. **What a cause not yet sure holds.** A named cause some of whose runs stayed finite
   is not set aside: focus tries it with the levels of the other factors its runs have
   not held, so that ``lr above 0.5`` becomes ``lr above 0.5 with dtype=amp-fp16`` or
   stays as it is.
3. **What a suspect holds.** A rule whose runs went NaN where no cause explains them,
   too few yet to be named (the rule the naming stopped at, or one its final test
   dropped: :func:`nansearch.analysis.causes.causes_and_suspects`), is tested
   sequentially: focus draws inside it, outside every named cause, at the levels whose
   runs inside it went NaN most surely or were never tried there, while its runs are
   no more than those it is tested against, until it, or a narrower rule inside it, is
   named, or its NaN runs stop pointing at it.
4. **What no triple has tried yet.** Once every pair is explored, a triple of levels
   of three factors is next, the same way (each configuration the one that holds the
   most triples no unexplained run has held), as long as the queue's trials left could
   hold them all (:func:`nansearch.search.coverage.triples_wait`): a cause of three
   values, each pair of which stays finite, is tried before the search may settle.
5. **The nearest miss.** Then the finite run no named cause explains with the highest
   instability score (its largest logit nearest its dtype's range) is tried again, its
   continuous values drawn anew inside their strata, until ``MIN_NAN`` runs have held
   its cell: where a NaN no run has shown yet is likeliest (``amp-fp16`` at a learning
   rate just under the one its weights overflow from, in the stratum above it).
6. **Where NaN is unexplained.** Then the wrapped sampler (TPE) steers toward
   instability, reading a history in which the runs a known cause explains score 0,
   so that it is drawn to the NaN runs and near misses still unexplained rather than
   to the causes it found first. A draw that matches a known cause is drawn again.

:func:`unexplored` and :func:`untried` (:mod:`nansearch.search.coverage`) are also what
the stopping rule waits on: the search settles only once the space outside the known
causes has been covered.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nansearch.analysis.causes import (
    ABOVE,
    EQUALS,
    MIN_NAN,
    Cause,
    causes_and_suspects,
    find_causes,
)
from nansearch.analysis.stats import wilson
from nansearch.search import optuna_internals as private
from nansearch.search import pairwise
from nansearch.search.coverage import Space, triples_wait, unexplored_in, untried_in
from nansearch.search.coverage import unexplored as unexplored
from nansearch.search.coverage import untried as untried
from nansearch.search.queue import queued
from nansearch.trial.runner import TrialResult

log = logging.getLogger(__name__)

REDRAWS = 32  # draws of the wrapped sampler before falling back to a random one outside
SURE = 0.9  # a cause is set aside once at least this share of its runs went NaN


def _continuous(factors: Sequence[Any]) -> list[str]:
    return [f.name for f in factors if not isinstance(f.distribution(), CategoricalDistribution)]


def known_causes(results: Sequence[TrialResult], factors: Sequence[Any]) -> list[Cause]:
    """The causes to set aside: those named so far whose runs go NaN nearly always.

    A cause that only raises the NaN rate (``init=uninitialized-missing``, 16/19, when
    the truth is that init with one checkpoint) is not set aside: the finite runs inside
    it are what would narrow it down, so focus may still go there.
    """
    return settled_only(named(results, factors))


def named(results: Sequence[TrialResult], factors: Sequence[Any]) -> list[Cause]:
    return find_causes(results, [f.name for f in factors], _continuous(factors))


def settled_only(causes: Sequence[Cause]) -> list[Cause]:
    return [c for c in causes if c.nan >= MIN_NAN and c.nan >= SURE * c.total]


def _result(trial: FrozenTrial) -> TrialResult:
    return TrialResult(
        dict(trial.params),
        0,
        0,
        trial.user_attrs.get("outcome", "finite"),
        score=trial.value,
        number=trial.number,
    )


class SetAsideSampler(BaseSampler):
    """The focus sampler with the causes already found set aside (see the module).

    ``inner`` is the sampler that steers toward instability (TPE); ``factors`` the
    search's factors. Trials with fixed values (the cover) never reach it.
    """

    def __init__(self, inner: BaseSampler, factors: Sequence[Any], seed: int | None = None):
        self.inner = inner
        self.factors = list(factors)
        self.space = Space(self.factors)
        self.rng = random.Random(seed)
        self._known: tuple[int, list[TrialResult], list[Cause], list[Cause]] | None = None
        self._suspects: list[Cause] = []

    # -- what the study holds ----------------------------------------------------------

    def _finished(self, study: optuna.Study) -> list[FrozenTrial]:
        return [
            t
            for t in private.trials_inside_sampler(study, (TrialState.COMPLETE,))
            if "outcome" in t.user_attrs
        ]

    def known(self, study: optuna.Study) -> tuple[list[TrialResult], list[Cause], list[Cause]]:
        """The finished trials as results, the causes they name, and those set aside
        (kept per count of trials)."""
        trials = self._finished(study)
        if self._known is None or self._known[0] != len(trials):
            results = [_result(t) for t in trials]
            causes, self._suspects = causes_and_suspects(
                results, [f.name for f in self.factors], _continuous(self.factors)
            )
            self._known = (len(trials), results, causes, settled_only(causes))
        return self._known[1], self._known[2], self._known[3]

    # -- the sampler interface ---------------------------------------------------------

    def reseed_rng(self) -> None:
        self.rng = random.Random()
        self.inner.reseed_rng()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {f.name: f.distribution() for f in self.factors}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if set(search_space) != {f.name for f in self.factors}:
            return {}
        results, found, causes = self.known(study)
        missing = unexplored_in(self.space, results, causes) if results else set()
        if missing:
            params = self._explore(missing, causes)
            if params is not None:
                return params
        for cause in found:
            if cause not in causes:
                params = self._refine(cause, results, causes)
                if params is not None:
                    return params
        for suspect in self._suspects:
            params = self._test(suspect, results, found)
            if params is not None:
                return params
        if results and not missing:
            left = self._left(study)
            untried_ = untried_in(self.space, results, causes)
            if triples_wait(untried_, left):
                params = self._explore(untried_, causes, triples=True)
                if params is not None:
                    return params
            params = self._near(results, found)
            if params is not None:
                return params
        view, asking = self._view(study, trial, causes)
        for _ in range(REDRAWS if causes else 1):
            drawn = self._draw(view, asking, search_space)
            if not any(c.holds(drawn) for c in causes):
                return drawn
        return self._outside(causes, search_space) or drawn

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    # -- how a configuration is chosen -------------------------------------------------

    def _left(self, study: optuna.Study) -> int:
        """The queued trials left, the one being sampled among them."""
        waiting = private.trials_inside_sampler(study, (TrialState.WAITING,))
        return 1 + sum(queued(t) for t in waiting)

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
            for _ in range(4):  # a value inside its stratum that no cause holds
                params = self._values(row)
                if not any(c.holds(params) for c in causes):
                    break
            else:
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
        suspect, or is probed at once."""
        finite = [
            r
            for r in results
            if r.outcome == "finite"
            and r.score is not None
            and not any(c.holds(r.params) for c in named)
        ]
        if not finite:
            return None
        top = max(finite, key=lambda r: (r.score, -(r.number or 0)))
        row = self.space.row(top.params)
        if row is None:
            return None
        held = sum(self.space.row(r.params) == row for r in results if r.outcome != "error")
        if held >= MIN_NAN:
            return None
        for _ in range(4):
            params = self._values(row)
            if not any(c.holds(params) for c in named):
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

    def _view(
        self, study: optuna.Study, trial: FrozenTrial, causes: Sequence[Cause]
    ) -> tuple[optuna.Study, FrozenTrial]:
        """The study as the wrapped sampler reads it, the runs a cause explains scoring 0,
        and the trial being sampled as a trial of that view."""
        if not causes:
            return study, trial
        storage = optuna.storages.InMemoryStorage()
        storage.create_new_study([StudyDirection.MAXIMIZE], "set-aside")
        view = optuna.Study("set-aside", storage, sampler=self.inner)
        trials = []
        for t in private.trials_inside_sampler(study, (TrialState.COMPLETE,)):
            value = 0.0 if any(c.holds(t.params) for c in causes) else t.value
            trials.append(
                optuna.trial.create_trial(
                    params=t.params, distributions=t.distributions, value=value
                )
            )
        view.add_trials(trials)
        asking = storage.create_new_trial(private.study_id(view))
        return view, storage.get_trial(asking)

    def _draw(
        self, view: optuna.Study, trial: FrozenTrial, space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        with warnings.catch_warnings():
            # the wrapped sampler's notes on how it samples are about this view
            warnings.simplefilter("ignore")
            inner_space = self.inner.infer_relative_search_space(view, trial)
            params = dict(self.inner.sample_relative(view, trial, inner_space))
            for name, dist in space.items():
                if name not in params:
                    params[name] = self.inner.sample_independent(view, trial, name, dist)
        return params

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
