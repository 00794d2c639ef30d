"""The phase budgets and the rule that ends focus early.

How many trials each phase of a search may take (:class:`Plan`, :func:`plan`), and
when focus has found what it will find (:class:`StopRule`). The phases themselves are
described in :mod:`nansearch.search.phases`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial

from nansearch.analysis.causes import MIN_NAN, causes_and_suspects
from nansearch.search.isolate import Isolation
from nansearch.search.queue import FINISHED, PHASE_ATTR, RESULT_ATTR, queued
from nansearch.trial.runner import TrialResult

if TYPE_CHECKING:
    from nansearch.config import SweepConfig
    from nansearch.factors import Factor

SMALL = 20  # below this many trials, the budget holds no confirm or isolate share


@dataclass(frozen=True)
class Plan:
    """How many trials each phase may take; focus is what the others leave."""

    cover: int
    focus: int
    confirm: int
    isolate: int
    design: int = 0  # the configurations a pairwise design of the factors takes
    strata: int = 0  # the strata of a continuous factor in that design
    triples: int = 0  # the configurations a greedy design holding every triple takes

    @property
    def queued(self) -> int:
        return self.cover + self.focus

    @property
    def total(self) -> int:
        return self.queued + self.confirm + self.isolate

    @property
    def text(self) -> str:
        return (
            f"{self.total} trials: cover {self.cover}{self.cover_note}, focus up to "
            f"{self.focus}{self.triples_note}, confirm {self.confirm}, isolate {self.isolate}"
        )

    @property
    def triples_note(self) -> str:
        """What reaching every triple of levels takes, and whether focus waits for it."""
        if not self.triples or not self.focus:
            return ""
        if self.triples <= self.queued:
            return (
                f" (before it settles, every triple of levels outside the causes found: "
                f"a design of {self.triples} trials holds them all)"
            )
        return (
            f" (every triple of levels would take a design of {self.triples} trials, more "
            "than cover and focus hold: not waited for)"
        )

    @property
    def cover_note(self) -> str:
        if not self.design:
            return ""
        what = f"every pair of levels in {self.design} trials, a range in {self.strata} strata"
        if self.cover < self.design:
            return f" (of the {self.design} that reach every pair of levels: budget too small)"
        return f" ({what})"

    def to_json(self) -> dict[str, int]:
        return asdict(self)


def plan(cfg: SweepConfig, factors: Sequence[Factor]) -> Plan:
    """The phase budgets: those the sweep file sets, shares of ``trials`` for the rest.

    By default confirm takes a tenth and isolate a fifth of the trials (none under
    ``SMALL`` trials), and the cover is one pairwise design of the factors (every pair
    of levels of every two factors at least once), or what the queue holds when that
    is less.
    """
    from nansearch.search import pairwise

    trials, search = cfg.trials, cfg.search
    confirm = search.confirm if search.confirm >= 0 else (trials // 10 if trials >= SMALL else 0)
    isolate = search.isolate if search.isolate >= 0 else (trials // 5 if trials >= SMALL else 0)
    queued = max(trials - confirm - isolate, 0)
    design = pairwise.size(factors, cfg.seed)
    cover = min(search.cover if search.cover >= 0 else design, queued)
    return Plan(
        cover,
        queued - cover,
        confirm,
        isolate,
        design,
        pairwise.strata(factors),
        pairwise.triple_size(factors, cfg.seed),
    )


def continuous_names(factors: Sequence[Factor]) -> list[str]:
    return [f.name for f in factors if isinstance(f.distribution(), FloatDistribution)]


class StopRule:
    """Focus is done once the causes found have stayed the same for ``patience`` trials,
    they explain the NaN runs, all but fewer than a cause needs (``MIN_NAN``), and the
    space outside them is covered: every pair of levels that a configuration outside
    the known causes can hold has been held by a run no cause explains
    (:func:`nansearch.search.coverage.unexplored`), and so has every such triple of
    levels, when the ``left`` trials of the queue could still hold them all
    (:func:`nansearch.search.coverage.triples_wait`): a cause of three values whose pairs
    all stay finite is tried before the search settles, whenever the budget allows it.

    A range counts as the same cause while its side holds (``lr above`` stays ``lr
    above`` as its edge moves with more runs). NaN runs that no cause explains yet may
    be a cause still forming, so the search goes on while there are enough of them, or
    while a suspect (:func:`causes_and_suspects`) with as many NaN runs of its own as a
    cause needs holds one of them: focus is testing it.
    With no cause at all, focus runs ``patience`` trials past the cover before it ends.
    Each process keeps its own count; it starts over when the sweep resumes.
    """

    def __init__(self, factors: Sequence[Factor], cover: int, patience: int):
        self.factors = list(factors)
        self.names = [f.name for f in factors]
        self.continuous = continuous_names(factors)
        self.cover = cover
        self.patience = patience
        self.leaders: tuple | None = None
        self.since = 0

    def update(
        self,
        results: Sequence[TrialResult],
        isolations: Sequence[Isolation] = (),
        left: int | None = None,
    ) -> str | None:
        """The settled causes as text once the rule holds, else None. A NaN run that a
        completed isolation holds counts as explained, as one a cause holds does.
        ``left``: the queue's trials not yet run (None: triples are not waited for)."""
        from nansearch.search.coverage import triples_wait, unexplored, untried
        from nansearch.search.set_aside import settled_only

        causes, suspects = causes_and_suspects(results, self.names, self.continuous)
        key = tuple(
            tuple((c.factor, c.op, c.value if c.op == "=" else None) for c in cause.conditions)
            for cause in causes
        )
        count = len(results)
        if key != self.leaders:
            self.leaders, self.since = key, count
        since = self.since if causes else max(self.since, self.cover)
        if count < self.cover or count - since < self.patience:
            return None
        done = [i for i in isolations if i.complete]
        unexplained = [
            r
            for r in results
            if r.is_nan
            and not any(c.holds(r.params) for c in causes)
            and not any(i.holds(r.params) for i in done)
        ]
        aside = settled_only(causes)
        if len(unexplained) >= MIN_NAN or unexplored(results, self.factors, aside):
            return None
        if any(s.own_nan >= MIN_NAN and s.holds(r.params) for s in suspects for r in unexplained):
            return None  # a suspect with a cause's NaN runs, not yet named or cleared
        if left and triples_wait(untried(results, self.factors, aside), left):
            return None
        return "; ".join(cause.text for cause in causes) if causes else "no cause"


def light_results(trials: Sequence[FrozenTrial]) -> list[TrialResult]:
    """The recorded queued trials as bare results (values and outcome), without parsing
    each one's step history: what the stopping rule needs, after every trial."""
    return [
        TrialResult(
            dict(t.params),
            0,
            0,
            t.user_attrs.get("outcome", "finite"),
            number=t.number,
            phase=t.user_attrs.get(PHASE_ATTR, "focus"),
        )
        for t in trials
        if t.state in FINISHED and RESULT_ATTR in t.user_attrs and queued(t)
    ]
