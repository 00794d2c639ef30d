"""The phases of a search, each with its share of the trial budget.

1. **cover**: every pair of levels of every two factors at least once, the learning
   rate in strata (a pairwise covering design, :mod:`nansearch.search.pairwise`, queued first).
2. **focus**: Optuna's sampler steers toward instability. The cover and focus trials
   are the study's queue, which every worker shares.
3. **confirm**: the failing configurations least certain yet (a cause not all of whose
   runs went NaN, the NaN runs no cause explains, then the surest causes) rerun with
   fresh seeds: deterministic, or flaky with a rate.
4. **isolate**: delta debugging from each confirmed failure toward its nearest passing
   run finds the smallest set of values it needs (:mod:`nansearch.search.isolate`); a probe of
   a flaky failure is repeated before it counts as passing.

Focus sets the causes found aside (:mod:`nansearch.search.set_aside`): it suggests no
configuration a known cause explains, and goes first where nothing has been tried
outside them. The stopping rule: focus ends early once the causes found
(:func:`nansearch.analysis.causes.find_causes`) have not changed for
``search.patience`` trials, the cover being done and the space outside them covered
(a NaN run that a completed isolation holds counts as explained there).
What focus leaves unspent is not spent elsewhere: a settled search ends sooner.

Confirm and isolate do not wait for the search: the first NaN run of a kind that
nothing found so far explains is confirmed and isolated at once, between two queued
trials (:class:`Early`), so that a rare cause is named from its first failure, within
the same confirm and isolate shares. What those shares have left once the queue is done
goes to the top failing configurations no probe looked at yet. Probes run in the process
that owns the sweep; with several workers, it runs the same probes once they are done.
Each probe is a trial of the study (phase ``confirm`` or ``isolate``, with the number of
the trial it probes), so it is tracked and ranked like any other; a resumed sweep makes
the same choices again and replays the probes it already recorded instead of running
them again.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from nansearch.analysis.causes import MIN_NAN, find_causes
from nansearch.search.confirm import Confirmation, confirm
from nansearch.search.isolate import Isolation, isolate
from nansearch.search.queue import (
    FINISHED,
    ORIGIN_ATTR,
    OWNER_ATTR,
    PHASE_ATTR,
    QUEUED,
    RESULT_ATTR,
    create_running,
    owner,
    queued,
)
from nansearch.search.records import Stop, SweepCallbacks, recorded
from nansearch.trial.runner import PROBES, TrialResult

if TYPE_CHECKING:
    from nansearch.config import SweepConfig
    from nansearch.factors import Factor

log = logging.getLogger(__name__)

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
            f"{self.focus}, confirm {self.confirm}, isolate {self.isolate}"
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
    return Plan(cover, queued - cover, confirm, isolate, design, pairwise.strata(factors))


def continuous_names(factors: Sequence[Factor]) -> list[str]:
    return [f.name for f in factors if isinstance(f.distribution(), FloatDistribution)]


class StopRule:
    """Focus is done once the causes found have stayed the same for ``patience`` trials,
    they explain the NaN runs, all but fewer than a cause needs (``MIN_NAN``), and the
    space outside them is covered: every pair of levels that a configuration outside
    the known causes can hold has been held by a run no cause explains
    (:func:`nansearch.search.set_aside.unexplored`).

    A range counts as the same cause while its side holds (``lr above`` stays ``lr
    above`` as its edge moves with more runs). NaN runs that no cause explains yet may
    be a cause still forming, so the search goes on while there are enough of them.
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
        self, results: Sequence[TrialResult], isolations: Sequence[Isolation] = ()
    ) -> str | None:
        """The settled causes as text once the rule holds, else None. A NaN run that a
        completed isolation holds counts as explained, as one a cause holds does."""
        from nansearch.search.set_aside import settled_only, unexplored

        causes = find_causes(results, self.names, self.continuous)
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
        loose = sum(
            r.is_nan
            and not any(c.holds(r.params) for c in causes)
            and not any(i.holds(r.params) for i in done)
            for r in results
        )
        if loose >= MIN_NAN or unexplored(results, self.factors, settled_only(causes)):
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


@dataclass
class Probes:
    """What the confirm and isolate phases found."""

    confirmations: list[Confirmation] = field(default_factory=list)
    isolations: list[Isolation] = field(default_factory=list)
    ran: int = 0  # probe trials run now (not replayed)
    early: list[int] = field(default_factory=list)  # failing trials probed during the search
    unspent: dict[str, Any] | None = None  # what the probe shares left, and why


def unspent(prober: Prober, budgets: Plan, picked: int, seeds: int) -> dict[str, Any] | None:
    """The probe budget left once the probes are done, and why nothing spent it: the
    confirm share confirms as many failing configurations as it holds seeds for, and
    isolation only starts from those (or from the first NaN run of each kind), so a
    share outlives its work when those are few or their isolations are short."""
    left = {phase: max(0, prober.left[phase]) for phase in PROBES}
    if not any(left.values()):
        return None
    planned = {"confirm": budgets.confirm, "isolate": budgets.isolate}
    parts = [f"{phase} {left[phase]} of {planned[phase]}" for phase in PROBES if left[phase]]
    if not picked:
        why = "no NaN run to probe"
    else:
        why = (
            f"every failing configuration picked ({picked}: the first NaN run of each kind "
            f"nothing explained yet, then as many more as the confirm share had {seeds} fresh "
            "seeds left for) was confirmed and isolated, or held by an isolation found already"
        )
    return {**left, "text": f"probes left unspent: {', '.join(parts)}; {why}"}


class ProbeHost(Protocol):
    """What the probes need of the study loop (:class:`nansearch.search.study.Search`):
    its study, factors, config and plan, and a way to run one taken trial."""

    study: optuna.Study
    factors: list[Factor]
    cfg: SweepConfig
    plan: Plan

    def run_one(self, trial: optuna.Trial, callbacks: SweepCallbacks) -> TrialResult | None: ...


class Prober:
    """Runs probe trials within their phase's budget; replays those already recorded.

    A probe is asked for by phase, the trial it probes and its values. The algorithms
    are deterministic given the answers, so after a restart they ask again, in order,
    for the probes they asked for before: those come back from the study.
    """

    def __init__(
        self,
        search: ProbeHost,
        budgets: Plan,
        callbacks: SweepCallbacks | None = None,
        stop: Stop | None = None,
    ):
        self.search, self.stop = search, stop
        self.callbacks = callbacks or SweepCallbacks()
        self.earlier: dict[tuple[str, int], list[TrialResult]] = {}
        probes = [r for r in recorded(search.study) if r.phase in PROBES]
        for result in probes:
            self.earlier.setdefault((result.phase, result.origin), []).append(result)
        spent = Counter(result.phase for result in probes)
        self.left = {
            "confirm": budgets.confirm - spent["confirm"],
            "isolate": budgets.isolate - spent["isolate"],
        }
        self.cursor: Counter[tuple[str, int]] = Counter()
        self.asked: Counter[tuple[str, int]] = Counter()  # results given, replayed or run
        self.ran = 0

    def can(self, phase: str, origin: int) -> bool:
        """Whether a probe of ``phase`` for ``origin`` may be asked for: the phase has budget
        left, or such probes were recorded before (a resumed sweep replays them)."""
        key = (phase, origin)
        return self.left[phase] > 0 or self.cursor[key] < len(self.earlier.get(key, []))

    def run(self, phase: str, origin: int, params: dict[str, Any]) -> TrialResult | None:
        """The probe's result; None when the phase's budget is spent or the sweep stops."""
        key = (phase, origin)
        earlier, at = self.earlier.get(key, []), self.cursor[key]
        if at < len(earlier) and _same(earlier[at].params, params):
            self.cursor[key] += 1
            self.asked[key] += 1
            return earlier[at]
        if self.left[phase] <= 0 or (self.stop is not None and self.stop.is_set()):
            return None
        trial = probe_trial(self.search, params, phase, origin)
        result = self.search.run_one(trial, self.callbacks)
        self.left[phase] -= 1
        self.ran += 1
        if result is not None:
            self.asked[key] += 1
        return result


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k], rel_tol=1e-9) if isinstance(a[k], float) else a[k] == b[k]
        for k in a
    )


def probe_trial(search: ProbeHost, params: dict[str, Any], phase: str, origin: int) -> optuna.Trial:
    """A running trial with the probe's values, created in the study: no worker can take
    it, unlike a queued one, and its number gives it a fresh seed."""
    dists = {f.name: f.distribution() for f in search.factors}
    template = FrozenTrial(
        number=-1,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=None,
        datetime_complete=None,
        params={k: _in_range(v, dists[k]) for k, v in params.items()},
        distributions={k: dists[k] for k in params},
        user_attrs={PHASE_ATTR: phase, ORIGIN_ATTR: origin, OWNER_ATTR: owner()},
        system_attrs={},
        intermediate_values={},
        trial_id=-1,
    )
    return create_running(search.study, template)


def _in_range(value: Any, dist: Any) -> Any:
    if isinstance(dist, FloatDistribution):
        return min(max(float(value), dist.low), dist.high)
    return value


def to_confirm(results: Sequence[TrialResult], factors: Sequence[Factor], most: int) -> list:
    """The failing trials worth confirming, the least certain first: the earliest-failing
    run of each cause that not all of its runs confirm yet (the isolation may narrow it:
    ``lr above 0.5`` to ``lr above 0.5 with dtype=amp-fp16``), then the NaN runs that no
    cause explains, the earliest first, then the earliest-failing run of each cause
    whose runs all went NaN, those that explain the fewest NaN runs no other cause does
    first (a pair that only travelled with a narrower cause). One per configuration."""
    nan = sorted((r for r in results if r.is_nan), key=lambda r: (-(r.score or 0), r.number))
    causes = find_causes(results, [f.name for f in factors], continuous_names(factors))
    unsure = [c for c in causes if not c.sufficient]

    def alone(cause) -> int:  # the NaN runs this cause explains and no other does
        return sum(
            cause.holds(r.params) and not any(c.holds(r.params) for c in causes if c is not cause)
            for r in nan
        )

    sure = sorted((c for c in causes if c.sufficient), key=alone)
    picked: list[TrialResult] = []

    def first_of(cause) -> None:
        match = next((r for r in nan if cause.holds(r.params)), None)
        if match is not None and match not in picked:
            picked.append(match)

    for cause in unsure:
        first_of(cause)
    loose = sorted(
        (r for r in nan if not any(c.holds(r.params) for c in causes)), key=lambda r: r.number
    )
    picked += loose
    for cause in sure:
        first_of(cause)
    seen, unique = set(), []
    for result in picked:
        key = repr(sorted(result.params.items()))
        if key not in seen:
            seen.add(key)
            unique.append(result)
    return unique[:most]


def nearest_passing(
    failing: TrialResult, results: Sequence[TrialResult], continuous: Sequence[str]
) -> TrialResult | None:
    """The finite run that differs from ``failing`` in fewest values, then least in its
    continuous ones (on a log scale); a run with the same values is no reference."""

    def distance(other: TrialResult) -> tuple[int, float]:
        apart, spread = 0, 0.0
        for name, value in failing.params.items():
            got = other.params.get(name)
            if name in continuous and got is not None and value > 0 and got > 0:
                spread += abs(math.log(value / got))
                apart += not math.isclose(value, got, rel_tol=1e-9)
            else:
                apart += str(got) != str(value)
        return apart, spread

    passing = [r for r in results if r.outcome == "finite" and distance(r)[0] > 0]
    return min(passing, key=lambda r: (*distance(r), r.number), default=None)


def alternatives(
    failing: dict[str, Any],
    results: Sequence[TrialResult],
    continuous: Sequence[str],
    factors: Sequence[Factor] = (),
) -> dict[str, Any]:
    """Per categorical factor, its most common other value among the finite runs: what a
    value both configurations share is changed to, to see whether it is needed too.

    A factor no finite run has held at another value yet (early in the search, when the
    failing run and its reference share ``init=uninitialized-missing`` and so does every
    finite run) takes another of its levels, one that no NaN run has held if there is
    one: a shared value that is never changed can never be found needed, and the
    isolation would name half of a pair as the whole cause."""
    counts: dict[str, Counter] = {}
    for result in results:
        if result.outcome != "finite":
            continue
        for name, value in result.params.items():
            if name not in continuous and str(value) != str(failing.get(name)):
                counts.setdefault(name, Counter())[value] += 1
    out = {name: c.most_common(1)[0][0] for name, c in counts.items()}
    failed = {(name, str(v)) for r in results if r.is_nan for name, v in r.params.items()}
    for factor in factors:
        name, dist = factor.name, factor.distribution()
        if name in out or name in continuous or name not in failing:
            continue
        others = [v for v in getattr(dist, "choices", ()) if str(v) != str(failing[name])]
        if others:
            out[name] = min(others, key=lambda v: (name, str(v)) in failed)
    return out


class Early:
    """Probes during the search: the first NaN run of a kind that nothing found so far
    explains is confirmed and isolated at once, inside the confirm and isolate shares, so
    that a rare cause (one bad batch file among many) is named from its first failure
    rather than once the counts could name it.

    After each queued trial (:meth:`step`), every NaN run not yet looked at is taken in
    trial order. It is left alone when a completed isolation holds it, or a cause the
    counts name with nearly all of its runs NaN (``set_aside.settled_only``) does; it
    waits while no finite run exists to isolate it against. Otherwise it is confirmed
    with fresh seeds and, when a fresh seed failed too (or the plan confirms nothing),
    isolated against the nearest finite run seen so far. The search keeps part of each
    share for the end of the search (:meth:`cap`).

    Every choice rests on the queued trials numbered up to the one just finished: a
    single process takes them in trial order, so :meth:`catch_up` makes the same choices
    again from the study's record, and the probes come back from it (:class:`Prober`).
    """

    def __init__(self, search: ProbeHost, prober: Prober):
        self.search, self.prober = search, prober
        self.names = [f.name for f in search.factors]
        self.continuous = continuous_names(search.factors)
        self.seeds = max(1, search.cfg.search.seeds)
        self.found = Probes()
        self.searched: list[TrialResult] = []
        self.looked: set[int] = set()  # NaN runs decided on: probed, or explained already
        self.probed: list[int] = []  # the failing trials probed, in order

    @property
    def on(self) -> bool:
        plan = self.search.plan
        return bool(plan.confirm or plan.isolate)

    def catch_up(self, searched: Sequence[TrialResult]) -> None:
        """Make again, in trial order, the choices the search made over ``searched``."""
        for result in sorted(searched, key=lambda r: r.number or 0):
            if self.stopped:
                return
            self.step(result)

    @property
    def stopped(self) -> bool:
        return self.prober.stop is not None and self.prober.stop.is_set()

    def step(self, result: TrialResult) -> None:
        """A queued trial finished: probe the NaN runs of a kind nothing explains yet."""
        self.searched.append(result)
        if not self.on:
            return
        pending = [r for r in self.searched if r.is_nan and r.number not in self.looked]
        if not pending:
            return
        causes = None
        for failing in pending:
            if self.stopped:
                return
            if any(i.complete and i.holds(failing.params) for i in self.found.isolations):
                self.looked.add(failing.number)
                continue
            if causes is None:
                from nansearch.search.set_aside import settled_only

                causes = settled_only(find_causes(self.searched, self.names, self.continuous))
            if any(c.holds(failing.params) for c in causes):
                self.looked.add(failing.number)
                continue
            if nearest_passing(failing, self.searched, self.continuous) is None:
                continue  # nothing finite to isolate it against yet
            self.looked.add(failing.number)
            self.probe(failing)

    def used(self, phase: str) -> int:
        """The probes of ``phase`` spent during the search so far."""
        return sum(self.prober.asked[(phase, origin)] for origin in self.probed)

    def cap(self, phase: str) -> int:
        """What the search may spend of a probe share as it goes: all of the confirm share
        but one configuration's seeds (and at least those), half of the isolate share. The
        rest is kept for the failures the search ends least sure of (a NaN run no cause
        explains, a cause some of whose runs stayed finite), which the first failures of
        the loudest causes would otherwise leave unprobed."""
        share = getattr(self.search.plan, phase)
        if phase == "confirm":
            return max(share - self.seeds, self.seeds)
        return max(share - share // 2, 1)

    def probe(self, failing: TrialResult) -> None:
        origin, params = failing.number, failing.params
        confirms = self.search.plan.confirm > 0
        if confirms and not self.prober.can("confirm", origin):
            return  # the confirm share is spent: the failure cannot be checked
        if confirms and self.used("confirm") + self.seeds > self.cap("confirm"):
            return  # what is left of the share is kept for the end of the search
        if not confirms and self.used("isolate") >= self.cap("isolate"):
            return
        self.probed.append(origin)

        def rerun() -> TrialResult | None:
            return self.prober.run("confirm", origin, params)

        ran = self.prober.ran
        confirmed = confirm(origin, params, rerun, self.seeds if confirms else 0)
        say = log.info if self.prober.ran > ran else log.debug  # replayed: said before
        if confirmed.runs:
            self.found.confirmations.append(confirmed)
            say("confirm trial %d during the search: %s", origin, confirmed.text)
        if confirms and not confirmed.reproduced:
            return  # no fresh seed failed (or none ran): nothing steady enough to isolate
        if not self.prober.can("isolate", origin) or self.used("isolate") >= self.cap("isolate"):
            return
        ran = self.prober.ran
        isolation = _isolate(self.searched, self.prober, confirmed, self.continuous)
        if isolation is not None:
            self.found.isolations.append(isolation)
            say = log.info if self.prober.ran > ran else log.debug
            say("isolate trial %d during the search: %s", origin, isolation.text or "nothing")


def run_probes(
    search: ProbeHost,
    callbacks: SweepCallbacks | None = None,
    stop: Stop | None = None,
    budgets: Plan | None = None,
) -> Probes:
    """The probes of the whole sweep: those the search ran as it went (:class:`Early`),
    replayed from the study, then what the confirm and isolate shares have left for the
    top failing configurations no probe has looked at yet."""
    budgets = budgets or search.plan
    out = Probes()
    if not budgets.confirm and not budgets.isolate:
        return out
    # the search's own runs: what is confirmed and, not the probes, what isolation
    # starts from, so that a resumed sweep picks the same configurations
    searched = [r for r in recorded(search.study) if r.phase in QUEUED]
    prober = Prober(search, budgets, callbacks, stop)
    early = Early(search, prober)
    early.catch_up(searched)
    out.confirmations = list(early.found.confirmations)
    out.isolations = list(early.found.isolations)
    out.early = list(early.probed)
    if early.stopped:
        out.ran = prober.ran
        return out
    seeds = max(1, search.cfg.search.seeds)
    if budgets.confirm:  # as many configurations as the confirm share has seeds left for
        most = max(0, budgets.confirm - sum(len(c.runs) for c in out.confirmations)) // seeds
    else:
        most = max(1, budgets.isolate // 4)
    failing = [
        r
        for r in to_confirm(searched, search.factors, len(searched))
        if r.number not in early.probed
        and not any(i.complete and i.holds(r.params) for i in out.isolations)
    ][:most]
    later: list[Confirmation] = []
    for result in failing:
        params = result.params

        def rerun(origin: int = result.number, params: dict = params) -> TrialResult | None:
            return prober.run("confirm", origin, params)

        confirmed = confirm(result.number, params, rerun, seeds if budgets.confirm else 0)
        later.append(confirmed)
        out.confirmations.append(confirmed)
        log.info("confirm trial %d: %s", result.number, confirmed.text)
    continuous = continuous_names(search.factors)
    for confirmed in later:
        if confirmed.runs and not confirmed.reproduced:
            continue  # no fresh seed failed: nothing steady enough to isolate
        if any(i.complete and i.holds(confirmed.params) for i in out.isolations):
            continue  # the same minimal cause, found already
        isolation = _isolate(searched, prober, confirmed, continuous)
        if isolation is None:
            continue
        out.isolations.append(isolation)
        log.info("isolate trial %d: %s", confirmed.trial, isolation.text or "nothing")
        if not isolation.complete:
            break
    out.ran = prober.ran
    if not (stop is not None and stop.is_set()):
        out.unspent = unspent(prober, budgets, len(out.early) + len(later), seeds)
    return out


def _isolate(
    results: list[TrialResult], prober: Prober, confirmed: Confirmation, continuous: list[str]
) -> Isolation | None:
    failing = next(r for r in results if r.number == confirmed.trial)
    reference = nearest_passing(failing, results, continuous)
    if reference is None:
        return None
    repeats = confirmed.repeats()
    origin = confirmed.trial

    def probe(config: dict[str, Any]) -> bool | None:
        for _ in range(repeats):
            result = prober.run("isolate", origin, config)
            if result is None:
                return None
            if result.is_nan:
                return True
        return False

    isolation = isolate(
        failing.params,
        reference.params,
        probe,
        continuous,
        alternatives(failing.params, results, continuous, prober.search.factors),
    )
    isolation.trial, isolation.reference_trial = origin, reference.number
    return isolation
