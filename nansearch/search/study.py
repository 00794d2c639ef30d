"""The search: an Optuna study whose trials are short training runs.

The first trials cover every pair of levels of every two factors (a pairwise covering
design, :mod:`nansearch.search.pairwise`, enqueued into the study), so every cause of one or
two values is tried and every rate rests on data; then Optuna's sampler steers
toward instability by maximizing :func:`nansearch.trial.runner.instability_score` (focus),
with the causes found so far set aside (:mod:`nansearch.search.set_aside`), until the
budget is spent or the stopping rule holds. The first NaN run of a kind nothing found
so far explains is confirmed and isolated as soon as it appears, between two queued
trials; what the confirm and isolate shares have left follows the queue
(:mod:`nansearch.search.phases`).

The cover and focus budget is a queue of waiting trials in the study itself
(:mod:`nansearch.search.queue`), so workers in other processes and on other machines
share it through the storage (:mod:`nansearch.search.storage`).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError

from nansearch.analysis.ranking import Bins
from nansearch.analysis.warning import at_risk_score, horizon_of
from nansearch.config import (
    NansearchError,
    SweepConfig,
    save_config,
    to_yaml,
)
from nansearch.factors import Factor
from nansearch.search import pairwise
from nansearch.search import plan as budget
from nansearch.search import queue as trial_queue
from nansearch.search.early import Early
from nansearch.search.isolate import Isolation
from nansearch.search.optuna_internals import trial_id
from nansearch.search.prober import Prober
from nansearch.search.queue import LIMIT_ATTR, ORIGIN_ATTR, PHASE_ATTR, QUEUED, RESULT_ATTR
from nansearch.search.records import (  # noqa: F401  (re-exported: the sweep's records)
    Stop,
    SweepCallbacks,
    append_trial,
    read_trials,
    recorded,
    trial_line,
    write_trials,
)
from nansearch.search.set_aside import SetAsideSampler
from nansearch.search.storage import CONFIG_ATTR, open_storage, refuse_changed_trials, shown
from nansearch.trial.limit import limit_for
from nansearch.trial.runner import TrialResult, TrialRunner

log = logging.getLogger(__name__)

BUDGET_ATTR = "trials"  # the queue's budget (cover and focus), shared by every worker
PLAN_ATTR = "phase_budgets"  # every phase's budget, planned: what ran is in ranking.json
SETTLED_ATTR = "settled"  # the stopping rule held: {"after": trials, "causes": text}
POLL_SECONDS = 0.5  # how often a worker with nothing queued looks again


def durations(study: optuna.Study) -> list[float]:
    """How long each recorded trial ran, the ones that ended in an error aside (a trial
    that timed out among them): what the auto ``trial_timeout`` scales from."""
    found = []
    for trial in study.get_trials(deepcopy=False, states=trial_queue.FINISHED):
        result = trial.user_attrs.get(RESULT_ATTR)
        if result and result.get("outcome") != "error" and result.get("seconds"):
            found.append(float(result["seconds"]))
    return found


def trial_limit(cfg: SweepConfig, study: optuna.Study) -> float | None:
    """The time limit a trial of ``study`` starts with (:mod:`nansearch.trial.limit`)."""
    return limit_for(cfg.trial_timeout, durations(study) if cfg.trial_timeout < 0 else [])


def distributions(factors: list[Factor]) -> dict[str, optuna.distributions.BaseDistribution]:
    return {factor.name: factor.distribution() for factor in factors}


def rank_axes(factors: list[Factor]) -> list[tuple[str, list[Any] | Bins]]:
    """How the ranking groups each factor: its levels, or log-spaced ranges."""
    axes: list[tuple[str, list[Any] | Bins]] = []
    for factor in factors:
        dist = factor.distribution()
        if isinstance(dist, CategoricalDistribution):
            axes.append((factor.name, list(dist.choices)))
        elif isinstance(dist, FloatDistribution):
            axes.append((factor.name, Bins.log_spaced(dist.low, dist.high)))
    return axes


def make_sampler(
    cfg: SweepConfig, n_startup: int, seed: int | None = None, factors: list[Factor] | None = None
) -> optuna.samplers.BaseSampler:
    """The focus sampler; each worker seeds its own, so that workers do not draw the same
    values. With the factors, it sets the causes found aside (:mod:`nansearch.search.set_aside`)."""
    seed = cfg.seed if seed is None else seed
    if cfg.search.sampler == "random":
        inner: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)  # multivariate
            inner = optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=max(1, n_startup),
                multivariate=True,
            )
    return inner if factors is None else SetAsideSampler(inner, factors, seed)


class Search:
    """One study: its storage, its factors, and the loop that takes its queued trials.

    ``sweep`` opens a study (creating it, or resuming it with ``resume``) and queues its
    budget; a worker opens it with ``join`` and takes trials from the queue. Any number
    of them, in one process or many, share the budget through the study's storage.
    """

    def __init__(
        self,
        cfg: SweepConfig,
        factors: list[Factor],
        runner: TrialRunner | None,
        resume: bool = False,
        storage: optuna.storages.BaseStorage | None = None,
        join: bool = False,
        sampler_seed: int | None = None,
    ):
        self.cfg = cfg
        self.factors = factors
        self.runner = runner
        self.dir = cfg.study_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = storage or open_storage(cfg.storage, self.dir, cfg.heartbeat)
        self.plan = budget.plan(cfg, factors)
        self.sampler = make_sampler(cfg, self.plan.cover, sampler_seed, factors)
        patience = cfg.search.patience
        self.stop_rule = budget.StopRule(factors, self.plan.cover, patience) if patience else None
        self.joined = join
        self.study = self._join() if join else self._open(resume)

    def _open(self, resume: bool) -> optuna.Study:
        name = self.cfg.study
        exists = name in optuna.get_all_study_names(self.storage)
        if exists and not resume:
            raise NansearchError(
                f"study {name!r} already exists in its storage; add --resume to continue it, "
                "or choose another name with study=NAME"
            )
        if not exists and resume:
            log.info("study %r does not exist yet; starting it", name)
        study = optuna.create_study(
            study_name=name,
            storage=self.storage,
            direction="maximize",
            sampler=self.sampler,
            load_if_exists=True,
        )
        if exists:
            refuse_changed_trials(name, study.user_attrs.get(CONFIG_ATTR), self.cfg)
        study.set_user_attr(CONFIG_ATTR, to_yaml(self.cfg))
        study.set_user_attr(BUDGET_ATTR, self.plan.queued)
        study.set_user_attr(PLAN_ATTR, self.plan.to_json())
        if not exists:
            study.set_user_attr("config_seed", self.cfg.seed)
            plan = pairwise.cover_plan(self.factors, self.plan.cover, self.cfg.seed)
            trial_queue.enqueue(study, plan, self.plan.queued)
        else:
            trial_queue.recover(study)
            if SETTLED_ATTR not in study.user_attrs:
                trial_queue.top_up(study, self.plan.queued)
        save_config(self.cfg, self.dir / "config.yaml")
        return study

    def _join(self) -> optuna.Study:
        name = self.cfg.study
        if name not in optuna.get_all_study_names(self.storage):
            raise NansearchError(
                f"study {name!r} not found in storage {shown(self.cfg.storage or str(self.dir))}; "
                "start it with nansearch sweep first"
            )
        save_config(self.cfg, self.dir / "config.yaml")
        return optuna.load_study(study_name=name, storage=self.storage, sampler=self.sampler)

    @property
    def budget(self) -> int:
        """The study's budget: a resumed sweep may have raised it since a worker joined."""
        return int(self.study.user_attrs.get(BUDGET_ATTR, self.plan.queued))

    @property
    def settled(self) -> dict[str, Any] | None:
        """What the stopping rule said when it ended the focus phase, if it did."""
        return self.study.user_attrs.get(SETTLED_ATTR)

    @property
    def done(self) -> int:
        return len(recorded(self.study))

    def run(self, callbacks: SweepCallbacks | None = None, stop: Stop | None = None) -> int:
        """Take and run queued trials until the budget is met or ``stop`` is set.

        With nothing queued while another worker's trial runs, it waits: that trial
        may be lost and put back in the queue. Returns how many trials ran here.
        """
        if self.runner is None:
            raise ValueError("a Search without a runner cannot run trials")
        callbacks = callbacks or SweepCallbacks()
        dists = distributions(self.factors)
        callbacks.start(self.done, self.plan.total)
        early = self.early(callbacks, stop)
        ran = 0
        while not (stop and stop.is_set()) and not self.settled:
            trial_queue.reap(self.study)
            now, budget = trial_queue.tally(self.study), self.budget
            if now.done >= budget:
                break
            trial = None
            if now.done + now.running < budget:
                trial = trial_queue.take(self.study, dists)
            if trial is not None:
                result = self.run_one(trial, callbacks)
                if result is not None:
                    ran += 1
                    if early is not None:
                        early.step(result)
                    self.check_settled(early.found.isolations if early is not None else ())
            elif trial_queue.tally(self.study).running == 0:
                log.warning(
                    "nothing queued and nothing running, with %d of %d trials done",
                    now.done,
                    budget,
                )
                break
            else:
                time.sleep(POLL_SECONDS)
        return ran + (early.prober.ran if early is not None else 0)

    def early(self, callbacks: SweepCallbacks, stop: Stop | None) -> Early | None:
        """The probes this search runs as it goes (:class:`nansearch.search.early.Early`),
        caught up with what the study holds; only in the process that owns the sweep and
        runs its trials itself (several workers leave the probes to the end)."""
        if self.joined or self.runner is None:
            return None
        early = Early(self, Prober(self, self.plan, callbacks, stop))
        if not early.on:
            return None
        early.catch_up([r for r in recorded(self.study) if r.phase in QUEUED])
        return early

    def check_settled(self, isolations: Sequence[Isolation] = ()) -> None:
        """End the focus phase when the stopping rule holds: the queue's waiting trials
        are skipped, and every worker stops when it next looks."""
        if self.stop_rule is None:
            return
        results = budget.light_results(self.study.get_trials(deepcopy=False))
        causes = self.stop_rule.update(results, isolations, max(0, self.budget - len(results)))
        if causes is None:
            return
        self.study.set_user_attr(SETTLED_ATTR, {"after": len(results), "causes": causes})
        skipped = trial_queue.cancel(self.study, "settled")
        log.info(
            "settled after %d trials (%s); %d queued trials skipped",
            len(results),
            causes,
            skipped,
        )

    def run_one(self, trial: optuna.Trial, callbacks: SweepCallbacks) -> TrialResult | None:
        """Run a taken trial and record it; None when it was failed as stale meanwhile."""
        phase = trial.user_attrs.get(PHASE_ATTR, "focus")
        seed = self.cfg.seed * 100_003 + trial.number
        runner = self.runner
        if runner is None:
            raise RuntimeError("this search was opened without a runner: it runs no trials")
        runner.time_limit = trial_limit(self.cfg, self.study)
        if runner.time_limit is not None:  # what the sweep watching a worker goes by
            trial.set_user_attr(LIMIT_ATTR, runner.time_limit)
        try:
            with trial_queue.heartbeat(self.study, trial_id(trial)):
                result = runner.run(trial.params, seed)
        except KeyboardInterrupt:
            trial_queue.fail_taken(self.study, trial)
            raise
        result.number, result.phase = trial.number, phase
        result.origin = trial.user_attrs.get(ORIGIN_ATTR)
        horizon = horizon_of(self.cfg.steps, self.cfg.search.horizon)
        result.score = at_risk_score(
            result, result.score, horizon, self.cfg.optimizer.min_loss_scale
        )
        try:
            trial.set_user_attr("outcome", result.outcome)
            trial.set_user_attr(RESULT_ATTR, result.to_json())  # from here on it counts as done
        except UpdateFinishedTrialError:
            log.warning(
                "trial %d was failed while it ran (its heartbeat went stale); "
                "its result is dropped and its configuration runs again",
                trial.number,
            )
            return None
        if result.score is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        else:
            self.study.tell(trial, result.score, skip_if_finished=True)
        append_trial(result, self.dir / "trials.jsonl")
        callbacks.trial(result)
        return result
