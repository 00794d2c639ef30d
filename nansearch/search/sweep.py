"""A whole sweep: set up, search, rank, and write what a study leaves behind."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from nansearch.analysis.ranking import rank
from nansearch.analysis.warning import at_risk, horizon_of
from nansearch.audit import AUDIT_FILE, Audit, run_audit, summary
from nansearch.config import NansearchError, SweepConfig
from nansearch.factors import Factor
from nansearch.report.page import write_report
from nansearch.search import interrupt
from nansearch.search.fixes import verify_fixes
from nansearch.search.ignored import check_ignored
from nansearch.search.interrupt import stop_on_interrupt
from nansearch.search.lease import held, study_lease
from nansearch.search.phases import run_probes
from nansearch.search.prepare import prepare, trial_callbacks
from nansearch.search.prober import Probes
from nansearch.search.study import (
    Search,
    SweepCallbacks,
    distributions,
    rank_axes,
    recorded,
    write_trials,
)
from nansearch.search.workers import run_workers
from nansearch.tracking.tracker import FinishedStudy, Tracker, in_background, make_tracker
from nansearch.trial.runner import QUEUED, TrialResult, TrialRunner, cpu_threads

log = logging.getLogger(__name__)

WAIT_SECONDS = 1.0  # how often a joined worker looks whether the sweep has ended


@dataclass
class SweepOutcome:
    """What a sweep produced, for the command line to print and for tests to check."""

    study_dir: Path
    results: list[TrialResult]
    ranking: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    audit: Audit | None = None
    budget: int = 0  # the queue's trials: cover and focus
    ran_here: int = 0  # trials run by this command's own workers
    interrupted: int = 0  # the signal that stopped it (Ctrl-C, SIGTERM); ``--resume`` goes on
    tracking: dict[str, Any] = field(default_factory=dict)  # W&B: sync command, report URL
    settled: dict[str, Any] | None = None  # the stopping rule ended focus early
    probes: Probes = field(default_factory=Probes)

    @property
    def queued_done(self) -> int:
        return sum(r.phase in QUEUED for r in self.results)

    @property
    def complete(self) -> bool:
        return not self.interrupted and (
            self.settled is not None or self.queued_done >= self.budget
        )


def write_ranking(
    cfg: SweepConfig,
    factors: list[Factor],
    results: list[TrialResult],
    study_dir: Path,
    probes: Probes | None = None,
    settled: dict[str, Any] | None = None,
) -> dict[str, Any]:
    probes = probes or Probes()
    ranking = {
        "study": cfg.study,
        "settled": settled,
        **rank(
            results,
            rank_axes(factors),
            confirmations=probes.confirmations,
            isolations=probes.isolations,
            distributions=distributions(factors),
            seed=cfg.seed,
        ),
    }
    if probes.unspent:
        ranking["unspent"] = probes.unspent
    add_at_risk(ranking, cfg, results)
    write_json(study_dir / "ranking.json", ranking)
    return ranking


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` at once: a sweep and a worker that joined it both write it."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def add_at_risk(ranking: dict[str, Any], cfg: SweepConfig, results: list[TrialResult]) -> None:
    """The finite runs forecast to pass their dtype's range within the horizon, apart from
    the causes; a sweep with no NaN names the earliest of them as its near-miss."""
    horizon = horizon_of(cfg.steps, cfg.search.horizon)
    found = at_risk(results, horizon, cfg.optimizer.min_loss_scale)
    ranking["horizon"] = horizon
    ranking["at_risk"] = [f.to_json() for f in found]
    if found:
        for item in ranking.get("conclusions", []):
            if item.get("kind") == "no-nan":
                item["text"] += f" Near-miss: {found[0].text}."
                item["near_miss"] = found[0].to_json()


def add_ignored(
    cfg: SweepConfig,
    factors: list[Factor],
    runner: TrialRunner,
    ranking: dict[str, Any],
    results: list[TrialResult],
    study_dir: Path,
    stop,
) -> None:
    """The factors the user's own code gives no sign of reading, in ``ranking.json``."""
    found = check_ignored(cfg, factors, runner, results, stop.is_set)
    if found:
        ranking["ignored"] = found
        write_json(study_dir / "ranking.json", ranking)


def add_fixes(
    cfg: SweepConfig,
    factors: list[Factor],
    runner: TrialRunner,
    ranking: dict[str, Any],
    results: list[TrialResult],
    study_dir: Path,
    tracker: Tracker | None = None,
    stop=None,
    audit: Audit | None = None,
) -> None:
    """Verify a fix for each conclusion over the longer run and add them to ``ranking.json``."""

    def heard(fix) -> None:
        if tracker is not None:
            tracker.log_fix(fix.to_json())

    fixes = verify_fixes(cfg, factors, runner, ranking, results, _json(audit), heard, stop)
    ranking["fixes"] = [fix.to_json() for fix in fixes]
    write_json(study_dir / "ranking.json", ranking)


def audit_sweep(cfg: SweepConfig, factors: list[Factor], runner: TrialRunner) -> Audit:
    """The audit before the first trial, written to ``audit.json`` and logged."""
    audit = run_audit(cfg, factors, runner)
    path = audit.write(cfg.study_dir / AUDIT_FILE)
    log.info("audit: %s in %.1fs, written to %s", summary(audit), audit.seconds, path)
    for finding in audit.findings:
        log.debug("%s %s [%s]: %s", finding.severity, finding.check, finding.subject, finding.found)
    return audit


def catch_up(tracker: Tracker, results: list[TrialResult]) -> None:
    """Log the trials a stopped sweep recorded but had not yet logged to W&B."""
    missing = tracker.unlogged(results)
    if missing:
        log.info("W&B: logging %d recorded trial(s) that have no run yet", len(missing))
    for result in missing:
        tracker.log_trial(result)


def write_report_safely(study_dir: Path) -> Path | None:
    """report.html; a failure to draw it never costs the sweep its results."""
    try:
        return write_report(study_dir)
    except (OSError, NansearchError) as exc:
        log.warning("report.html could not be written (%s); `nansearch report` rebuilds it", exc)
        return None
    except Exception:
        log.exception("report.html could not be written; `nansearch report` rebuilds it")
        return None


def _json(audit: Audit | None) -> dict[str, Any] | None:
    """The audit as ``audit.json`` holds it, from memory."""
    return None if audit is None else audit.to_json()


ENDED_ATTR = "ended"  # the sweep ended its probes and fixes: {"budget": ..., "ranking": ...}


def await_sweep(search: Search, stop) -> dict[str, Any] | None:
    """A joined worker whose queue is done waits for the sweep that drives the study to
    end its probes and fixes, so that it too ends with the whole study; it stops waiting
    when no live sweep holds the study (it was stopped), or at Ctrl-C. Returns what the
    sweep stored as it ended, if it did."""
    cfg, waited = search.cfg, False
    while True:
        ended = search.study.user_attrs.get(ENDED_ATTR)
        if ended and ended.get("budget") == search.budget:
            return ended
        if stop.is_set() or not held(cfg.study, cfg.storage, cfg.study_dir):
            return None
        if not waited:
            log.info(
                "the queue is done; waiting for the sweep that drives study %r to end its "
                "probes and fixes, to write the whole study here (Ctrl-C writes what is "
                "recorded now)",
                cfg.study,
            )
            waited = True
        time.sleep(WAIT_SECONDS)


def run_sweep(
    cfg: SweepConfig,
    resume: bool = False,
    callbacks: SweepCallbacks | None = None,
    join: bool = False,
    storage: optuna.storages.BaseStorage | None = None,
    on_audit: Callable[[Audit], None] | None = None,
    tracker: Tracker | None = None,
) -> SweepOutcome:
    """Open the study (create or resume it; or ``join`` one a sweep created), audit it,
    run ``cfg.workers`` workers on it until the budget is met, then rank the shared study.

    ``callbacks`` hear of every trial the study records while this runs; with several
    workers, the trials of workers elsewhere too. ``on_audit`` hears the audit before the
    first trial runs. Torch runs on ``cfg.threads`` CPU threads here and in each worker.

    A sweep holds its study's lease (:mod:`nansearch.search.lease`) while it runs, so a
    second sweep of the study stops with who holds it; a joining worker takes none.
    """
    with cpu_threads(cfg.threads):
        if join:
            return _run_sweep(cfg, resume, callbacks, join, storage, on_audit, tracker)
        interrupt.go_on()
        try:
            with study_lease(cfg.study, cfg.storage, cfg.study_dir) as lease:
                outcome = _run_sweep(cfg, resume, callbacks, join, storage, on_audit, tracker)
            lease.check()  # a sweep whose lease was lost under it says so, and stops
        finally:
            interrupt.go_on()
        return outcome


def _run_sweep(
    cfg: SweepConfig,
    resume: bool,
    callbacks: SweepCallbacks | None,
    join: bool,
    storage: optuna.storages.BaseStorage | None,
    on_audit: Callable[[Audit], None] | None,
    tracker: Tracker | None,
) -> SweepOutcome:
    callbacks = callbacks or SweepCallbacks()
    # a sweep's workers draw from its seed; a joining machine's must draw other values
    seed = random.randrange(2**31) if join else cfg.seed
    factors, runner = prepare(cfg)
    audit = None
    if cfg.workers > 1:
        search = Search(cfg, factors, None, resume=resume, storage=storage, join=join)
    else:
        search = Search(cfg, factors, runner, resume, storage, join, sampler_seed=seed)
    if not join:
        log.info("phases: %s", search.plan.text)
        log.info("torch CPU threads: %d per worker, %d worker(s)", cfg.threads, cfg.workers)
        audit = audit_sweep(cfg, factors, runner)
        if on_audit is not None:
            on_audit(audit)
    # W&B lives in this process: it hears every trial the study records, once,
    # whether this process ran it or one of its workers did
    tracker = in_background(tracker or make_tracker(cfg, search.dir))
    observed = SweepCallbacks(
        on_start=list(callbacks.on_start), on_trial=[tracker.log_trial, *callbacks.on_trial]
    )
    tracker.start(cfg)
    if resume and not join:
        catch_up(tracker, recorded(search.study))
    tracking: dict[str, Any] = {}
    try:
        if cfg.workers > 1:
            ran, interrupted = run_workers(search, observed, cfg.workers, seed)
        else:
            with stop_on_interrupt() as stop:
                ran = search.run(observed + trial_callbacks(cfg), stop)
            interrupted = stop.signum
        probes = Probes()
        if not join and not interrupted:
            search.runner = runner
            with stop_on_interrupt() as stop:
                probes = run_probes(search, observed + trial_callbacks(cfg), stop)
            interrupted = stop.signum
            ran += probes.ran
        ended = None
        if join and not interrupted:
            with stop_on_interrupt() as stop:
                ended = await_sweep(search, stop)
        results = recorded(search.study)
        write_trials(results, search.dir / "trials.jsonl")
        ranking = write_ranking(cfg, factors, results, search.dir, probes, search.settled)
        if not join and not interrupted:
            with stop_on_interrupt() as stop:
                add_ignored(cfg, factors, runner, ranking, results, search.dir, stop)
                add_fixes(cfg, factors, runner, ranking, results, search.dir, tracker, stop, audit)
            interrupted = stop.signum
            if not stop.is_set():  # the workers that joined it write the whole study now
                ended = {"budget": search.budget, "ranking": ranking}
                search.study.set_user_attr(ENDED_ATTR, ended)
        elif ended is not None:  # the sweep's, with its probes' findings and fixes
            ranking = ended["ranking"]
            write_json(search.dir / "ranking.json", ranking)
        report = write_report_safely(search.dir)
        if not join:
            tracking = tracker.finish_study(
                FinishedStudy(ranking, results, search.dir, _json(audit))
            )
    finally:
        tracker.close()
    files = {
        "config": search.dir / "config.yaml",
        "audit": search.dir / AUDIT_FILE,
        "trials": search.dir / "trials.jsonl",
        "ranking": search.dir / "ranking.json",
    }
    if report is not None:
        files["report"] = report
    if cfg.storage is None:
        files["storage"] = search.dir / "optuna-journal.log"
    outcome = SweepOutcome(
        search.dir,
        results,
        ranking,
        files,
        audit,
        search.budget,
        ran,
        interrupted,
        tracking,
        search.settled,
        probes,
    )
    if not outcome.complete and not interrupted:
        log.warning(
            "%d of %d queued trials recorded; nansearch sweep --resume goes on to the budget",
            outcome.queued_done,
            search.budget,
        )
    return outcome
