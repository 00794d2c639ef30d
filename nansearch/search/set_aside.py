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

The first five choices, and the uniform draw outside the causes that ends the sixth,
are made cell by cell in :mod:`nansearch.search.cells`. Each focus trial records the step
that drew it, with the causes named and those set aside when it was drawn (its user
attribute ``drawn_by``, :data:`STEPS`), so that a study tells which step went where.

:func:`unexplored` and :func:`untried` (:mod:`nansearch.search.coverage`) are also what
the stopping rule waits on: the search settles only once the space outside the known
causes has been covered.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from nansearch.analysis.causes import (
    MIN_NAN,
    Cause,
    causes_and_suspects,
    find_causes,
)
from nansearch.search import optuna_internals as private
from nansearch.search.cells import REDRAWS, Cells
from nansearch.search.coverage import Space, triples_wait, unexplored_in, untried_in
from nansearch.search.coverage import unexplored as unexplored
from nansearch.search.coverage import untried as untried
from nansearch.search.queue import DRAWN_ATTR, queued
from nansearch.trial.runner import TrialResult

log = logging.getLogger(__name__)

SURE = 0.9  # a cause is set aside once at least this share of its runs went NaN
# the steps of the module's docstring, as a focus trial's DRAWN_ATTR names the one that drew it:
# 1 pairs, 2 refine, 3 suspect, 4 triples, 5 nearest-miss, 6 tpe (or, should every one of
# its draws fall inside a cause, uniform outside them; anywhere when none turned up there)
STEPS = ("pairs", "refine", "suspect", "triples", "nearest-miss", "tpe", "uniform", "anywhere")


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


class SetAsideSampler(Cells, BaseSampler):
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
        step, params = self._choose(study, trial, search_space)
        _, found, causes = self.known(study)
        drawn = {
            "step": step,
            "named": [c.text for c in found],
            "set_aside": [c.text for c in causes],
        }
        private.storage(study).set_trial_user_attr(private.trial_id(trial), DRAWN_ATTR, drawn)
        return params

    def _choose(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> tuple[str, dict[str, Any]]:
        """The step that chose the configuration (one of :data:`STEPS`), and the configuration."""
        results, found, causes = self.known(study)
        missing = unexplored_in(self.space, results, causes) if results else set()
        if missing:
            params = self._explore(missing, causes)
            if params is not None:
                return "pairs", params
        for cause in found:
            if cause not in causes:
                params = self._refine(cause, results, causes)
                if params is not None:
                    return "refine", params
        for suspect in self._suspects:
            params = self._test(suspect, results, found)
            if params is not None:
                return "suspect", params
        if results and not missing:
            left = self._left(study)
            untried_ = untried_in(self.space, results, causes)
            if triples_wait(untried_, left):
                params = self._explore(untried_, causes, triples=True)
                if params is not None:
                    return "triples", params
            params = self._near(results, found)
            if params is not None:
                return "nearest-miss", params
        view, asking = self._view(study, trial, causes)
        for _ in range(REDRAWS if causes else 1):
            drawn = self._draw(view, asking, search_space)
            if not any(c.holds(drawn) for c in causes):
                return "tpe", drawn
        outside = self._outside(causes, search_space)
        return ("uniform", outside) if outside is not None else ("anywhere", drawn)

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
