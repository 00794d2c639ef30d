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
outside them. The stopping rule (:class:`nansearch.search.plan.StopRule`): focus ends
early once the causes found (:func:`nansearch.analysis.causes.find_causes`) have not
changed for ``search.patience`` trials, the cover being done and the space outside them
covered (a NaN run that a completed isolation holds counts as explained there). What
focus leaves unspent is not spent elsewhere: a settled search ends sooner.

Confirm and isolate do not wait for the search: the first NaN run of a kind that nothing
found so far explains is confirmed and isolated at once, between two queued trials
(:class:`nansearch.search.early.Early`), so that a rare cause is named from its first
failure, within the same confirm and isolate shares. What those shares have left once
the queue is done goes to the top failing configurations no probe looked at yet. Probes
run in the process that owns the sweep; with several workers, it runs the same probes
once they are done. Each probe is a trial of the study (phase ``confirm`` or
``isolate``, with the number of the trial it probes), so it is tracked and ranked like
any other; a resumed sweep makes the same choices again and replays the probes it
already recorded instead of running them again.
"""

from __future__ import annotations

import logging

from nansearch.search.choose import isolate_confirmed, to_confirm
from nansearch.search.confirm import Confirmation, confirm
from nansearch.search.early import Early
from nansearch.search.plan import Plan, continuous_names
from nansearch.search.prober import ProbeHost, Prober, Probes, unspent
from nansearch.search.queue import QUEUED
from nansearch.search.records import Stop, SweepCallbacks, recorded
from nansearch.trial.runner import TrialResult

log = logging.getLogger(__name__)


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
        isolation = isolate_confirmed(searched, prober, confirmed, continuous)
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
