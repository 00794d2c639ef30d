"""Probe trials: run within their phase's share of the budget, replayed when recorded.

A probe is a trial of the study in phase ``confirm`` or ``isolate`` that reruns a failing
configuration or a step of its isolation (:mod:`nansearch.search.phases`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from nansearch.search.confirm import Confirmation
from nansearch.search.isolate import Isolation
from nansearch.search.plan import Plan
from nansearch.search.queue import ORIGIN_ATTR, OWNER_ATTR, PHASE_ATTR, create_running, owner
from nansearch.search.records import Stop, SweepCallbacks, recorded
from nansearch.trial.runner import PROBES, TrialResult

if TYPE_CHECKING:
    from nansearch.config import SweepConfig
    from nansearch.factors import Factor


@dataclass
class Probes:
    """What the confirm and isolate phases found."""

    confirmations: list[Confirmation] = field(default_factory=list)
    isolations: list[Isolation] = field(default_factory=list)
    ran: int = 0  # probe trials run now (not replayed)
    early: list[int | None] = field(default_factory=list)  # failing trials probed during the search
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
        self.earlier: dict[tuple[str, int | None], list[TrialResult]] = {}
        probes = [r for r in recorded(search.study) if r.phase in PROBES]
        for result in probes:
            self.earlier.setdefault((result.phase, result.origin), []).append(result)
        spent = Counter(result.phase for result in probes)
        self.left = {
            "confirm": budgets.confirm - spent["confirm"],
            "isolate": budgets.isolate - spent["isolate"],
        }
        self.cursor: Counter[tuple[str, int | None]] = Counter()
        self.asked: Counter[tuple[str, int | None]] = Counter()  # results given, replayed or run
        self.ran = 0

    def can(self, phase: str, origin: int | None) -> bool:
        """Whether a probe of ``phase`` for ``origin`` may be asked for: the phase has budget
        left, or such probes were recorded before (a resumed sweep replays them)."""
        key = (phase, origin)
        return self.left[phase] > 0 or self.cursor[key] < len(self.earlier.get(key, []))

    def run(self, phase: str, origin: int | None, params: dict[str, Any]) -> TrialResult | None:
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


def probe_trial(
    search: ProbeHost, params: dict[str, Any], phase: str, origin: int | None
) -> optuna.Trial:
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
