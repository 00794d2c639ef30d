"""Probes during the search: a failure of a new kind is confirmed and isolated at once."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from nansearch.analysis.causes import find_causes
from nansearch.search.choose import isolate_confirmed, nearest_passing
from nansearch.search.confirm import confirm
from nansearch.search.plan import continuous_names
from nansearch.search.prober import ProbeHost, Prober, Probes
from nansearch.trial.runner import TrialResult

log = logging.getLogger(__name__)


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
        self.looked: set[int | None] = set()  # NaN runs decided on: probed, or explained already
        self.probed: list[int | None] = []  # the failing trials probed, in order

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
        isolation = isolate_confirmed(self.searched, self.prober, confirmed, self.continuous)
        if isolation is not None:
            self.found.isolations.append(isolation)
            say = log.info if self.prober.ran > ran else log.debug
            say("isolate trial %d during the search: %s", origin, isolation.text or "nothing")
