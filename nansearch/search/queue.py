"""The trial budget as a queue inside the study, shared by every worker on every machine.

A study holds one waiting trial per trial of its budget: the covering design's
configurations first, then empty ones whose values the sampler picks when a worker
takes them. A worker takes a waiting trial with the storage's compare-and-set from
WAITING to RUNNING (the step Optuna itself uses to hand out enqueued trials) and never
creates one, so any number of workers run exactly the budget, with no lock and no
overshoot.

A trial whose worker died (killed, or silent past its heartbeat's grace period) is
failed and its place is put back in the queue: its configuration runs once more, and
if that run is lost too, a fresh configuration takes its place.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from nansearch.search import optuna_internals as private
from nansearch.trial.runner import QUEUED

log = logging.getLogger(__name__)

RESULT_ATTR = "result"  # the TrialResult, written just before the trial is told
PHASE_ATTR = "phase"  # cover | focus, queued; confirm | isolate, probes (nansearch.search.phases)
DRAWN_ATTR = "drawn_by"  # a focus trial's step, causes named and set aside (search.set_aside)
ORIGIN_ATTR = "probes"  # a probe's failing trial: the one it reruns or varies
SKIPPED_ATTR = "skipped"  # a queued trial the search ended before: why
OWNER_ATTR = "worker"  # {"host": ..., "pid": ...} of the process running the trial
LIMIT_ATTR = "time_limit"  # seconds the trial may run (nansearch.trial.limit)
FINISHED = (TrialState.COMPLETE, TrialState.FAIL)


def owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid()}


@dataclass
class Tally:
    done: int  # finished with a recorded result
    running: int
    waiting: int


def queued(trial: FrozenTrial) -> bool:
    """Whether the trial is one of the queue's (cover, focus), not a probe."""
    return trial.user_attrs.get(PHASE_ATTR, "focus") in QUEUED


def tally(study: optuna.Study) -> Tally:
    """The queue's trials: probes are run by the sweep itself and count apart."""
    trials = [t for t in study.get_trials(deepcopy=False) if queued(t)]
    return Tally(
        done=sum(t.state in FINISHED and RESULT_ATTR in t.user_attrs for t in trials),
        running=sum(t.state == TrialState.RUNNING for t in trials),
        waiting=sum(t.state == TrialState.WAITING for t in trials),
    )


def ran_by(study: optuna.Study, pids: Iterable[int]) -> int:
    """How many recorded trials this machine's processes ``pids`` ran."""
    host, pids = socket.gethostname(), set(pids)
    return sum(
        t.state in FINISHED
        and RESULT_ATTR in t.user_attrs
        and t.user_attrs.get(OWNER_ATTR, {}).get("host") == host
        and t.user_attrs.get(OWNER_ATTR, {}).get("pid") in pids
        for t in study.get_trials(deepcopy=False)
    )


def enqueue(study: optuna.Study, plan: list[dict[str, Any]], count: int) -> None:
    """Queue ``count`` trials: ``plan``'s configurations (the cover), then empty ones."""
    for params in plan[:count]:
        study.enqueue_trial(params, user_attrs={PHASE_ATTR: "cover"})
    for _ in range(count - len(plan[:count])):
        study.enqueue_trial({}, user_attrs={PHASE_ATTR: "focus"})


def top_up(study: optuna.Study, budget: int) -> int:
    """Queue what the budget still needs beyond the trials done, running and queued."""
    now = tally(study)
    missing = budget - now.done - now.running - now.waiting
    if missing > 0:
        enqueue(study, [], missing)
    return max(missing, 0)


def claimed(study: optuna.Study) -> Iterator[FrozenTrial]:
    """The waiting trials this process takes, one at a time, each now RUNNING and its own.

    Each is taken with the storage's compare-and-set from WAITING to RUNNING; one that
    another worker took first is passed over.
    """
    storage = private.storage(study)
    for frozen in storage.get_all_trials(
        private.study_id(study), deepcopy=False, states=(TrialState.WAITING,)
    ):
        try:
            if storage.set_trial_state_values(private.trial_id(frozen), state=TrialState.RUNNING):
                yield frozen
        except UpdateFinishedTrialError:
            continue


def take(study: optuna.Study, distributions: dict[str, BaseDistribution]) -> optuna.Trial | None:
    """Take one queued trial and give it its values, or None when the queue is empty."""
    storage = private.storage(study)
    for frozen in claimed(study):
        if heartbeat_interval(storage) is not None:
            record_heartbeat(storage, private.trial_id(frozen))
        trial = optuna.Trial(study, private.trial_id(frozen))
        trial.set_user_attr(OWNER_ATTR, owner())
        for name, distribution in distributions.items():
            suggest(trial, name, distribution)
        return trial
    return None


def cancel(study: optuna.Study, reason: str) -> int:
    """Take every waiting trial and fail it, marked ``skipped``: the queue is closed.

    Taken the way a worker takes one, so a trial a worker took meanwhile runs on.
    """
    storage, count = private.storage(study), 0
    for frozen in claimed(study):
        storage.set_trial_user_attr(private.trial_id(frozen), SKIPPED_ATTR, reason)
        storage.set_trial_state_values(private.trial_id(frozen), state=TrialState.FAIL)
        count += 1
    return count


def suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    if isinstance(distribution, FloatDistribution):
        return trial.suggest_float(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(
            name, distribution.low, distribution.high, step=distribution.step, log=distribution.log
        )
    raise TypeError(f"factor {name!r}: unsupported distribution {distribution!r}")


class Requeue:
    """Put a lost trial's place back in the queue; the RDB storage calls it for stale trials.

    The lost configuration runs once more; when the retry is lost too, a fresh
    configuration takes its place, so the budget is still met. A trial whose result was
    already written (its worker died between writing it and finishing the trial) is done.
    """

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if RESULT_ATTR in trial.user_attrs:
            return
        if not queued(trial):
            log.warning("probe trial %d did not finish; the sweep runs it again", trial.number)
            return
        first = retried_from(trial)
        if first is None:
            log.warning("trial %d did not finish; it runs again", trial.number)
            self.retry(study, trial)
        else:
            log.warning(
                "trial %d, a retry of trial %d, did not finish either; "
                "a fresh configuration takes its place",
                trial.number,
                first,
            )
            study.enqueue_trial({}, user_attrs={PHASE_ATTR: "focus"})


def retried_from(trial: FrozenTrial) -> int | None:
    """The number of the lost trial that ``trial`` runs again, if it is a retry."""
    return trial.system_attrs.get("failed_trial")


def fail(study: optuna.Study, trials: Iterable[FrozenTrial]) -> int:
    """Fail running trials that will never finish and requeue each; returns how many.

    Safe with several processes doing it at once: only the one whose change from
    RUNNING to FAIL lands requeues the trial.
    """
    requeue, count = Requeue(), 0
    for trial in trials:
        try:
            if not private.storage(study).set_trial_state_values(
                private.trial_id(trial), state=TrialState.FAIL
            ):
                continue
        except UpdateFinishedTrialError:
            continue
        requeue(study, private.storage(study).get_trial(private.trial_id(trial)))
        count += 1
    return count


def fail_taken(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail and requeue a trial this process took (its run was interrupted)."""
    fail(study, [private.storage(study).get_trial(private.trial_id(trial))])


def create_running(study: optuna.Study, template: FrozenTrial) -> optuna.Trial:
    """A running trial made from ``template`` in the study, owned by this process: no
    worker can take it, as it could a queued one."""
    trial_id = private.storage(study).create_new_trial(
        private.study_id(study), template_trial=template
    )
    if heartbeat_interval(private.storage(study)) is not None:
        record_heartbeat(private.storage(study), trial_id)
    return optuna.Trial(study, trial_id)


def recover(study: optuna.Study) -> None:
    """When a sweep resumes: fail and requeue what stopped processes left running.

    Without heartbeats (the journal file, one machine), the sweep starts alone, so every
    running trial is a dead process's; with them, those whose heartbeat stopped.
    """
    if heartbeat_interval(private.storage(study)) is not None:
        reap(study)
    else:
        fail(study, study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def fail_orphans(study: optuna.Study, pids: Iterable[int]) -> int:
    """Fail and requeue the running trials of this machine's processes ``pids``, which died."""
    host, dead = socket.gethostname(), set(pids)
    orphans = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if t.user_attrs.get(OWNER_ATTR, {}).get("host") == host
        and t.user_attrs.get(OWNER_ATTR, {}).get("pid") in dead
    ]
    return fail(study, orphans)


def reap(study: optuna.Study) -> None:
    """Fail and requeue trials whose heartbeat stopped (RDB storages; a no-op otherwise)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def heartbeat_interval(storage: optuna.storages.BaseStorage) -> int | None:
    getter = getattr(storage, "get_heartbeat_interval", None)
    return getter() if getter else None


def record_heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """One heartbeat of a running trial, in a storage that :func:`heartbeat_interval` found
    keeping them (Optuna's heartbeat base class lives in a private module)."""
    storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]


@contextmanager
def heartbeat(study: optuna.Study, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every interval while it runs (RDB storages only)."""
    storage = private.storage(study)
    interval = heartbeat_interval(storage)
    if interval is None:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                record_heartbeat(storage, trial_id)
            except Exception as exc:  # a missed beat; the grace period allows for some
                log.warning("heartbeat of trial id %d not recorded: %s", trial_id, exc)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
