"""Weights & Biases tracking: one run per trial, one per rerun, one analysis run per study.

This module and :mod:`nansearch.tracking.runs`, which fills the runs, are the only ones
that import ``wandb``. The search hands results to a
:class:`Tracker` through its callbacks; the tracker never stops a sweep. When W&B
fails, the failure is logged, the trial's local record (``trials.jsonl``) stands, and
tracking steps down: from online to offline (the runs can be uploaded later with
``wandb sync``), and from offline to off.

During a sweep the trial runs are written by a thread of their own
(:class:`Background`), so the next trial trains while W&B writes the last one. Each
trial whose run W&B took is listed in ``wandb-trials.txt`` in the study folder; a
resumed sweep logs the recorded trials missing from it, so a sweep killed with runs
still queued loses none of them.
"""

from __future__ import annotations

import logging
import netrc
import os
import queue
import shlex
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from nansearch import jsonl
from nansearch.config import SweepConfig
from nansearch.tracking.runs import (
    finite_or_none,
    fix_rows,
    fix_summary,
    log_analysis,
    log_report_artifact,
    scalar_or_flat,
    target_name,
    trial_forecast,
    trial_history,
    trial_summary,
)
from nansearch.trial.runner import TrialResult

log = logging.getLogger(__name__)

DEFAULT_HOST = "api.wandb.ai"
LEDGER = "wandb-trials.txt"  # in the study folder: the trials whose W&B run was written
LEAN_SETTINGS = {
    "x_disable_meta": True,
    "x_disable_machine_info": True,
    "disable_git": True,
    "disable_code": True,
    "x_save_requirements": False,
}


def has_credentials() -> bool:
    """Whether W&B can log in: ``WANDB_API_KEY``, or a ``.netrc`` entry for its host."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", f"https://{DEFAULT_HOST}")).hostname
    try:
        entries = netrc.netrc(os.environ.get("NETRC")).hosts
    except (OSError, netrc.NetrcParseError):
        return False
    return host in entries


def resolve_mode(setting: str | None) -> str:
    """``online``, ``offline`` or ``off``: the sweep file's choice, else ``WANDB_MODE``,
    else online when credentials exist and offline when they do not."""
    if setting:
        return setting
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("disabled", "off"):
        return "off"
    if env in ("offline", "dryrun"):
        return "offline"
    if env == "online":
        return "online"
    return "online" if has_credentials() else "offline"


class Tracker:
    """Where a study's runs are recorded. This base records nothing (``tracking.wandb=off``)."""

    mode = "off"

    def start(self, cfg: SweepConfig) -> None:
        """Called once before the first trial."""

    def log_trial(self, result: TrialResult) -> None:
        """One finished trial."""

    def unlogged(self, results: list[TrialResult]) -> list[TrialResult]:
        """Those of a resumed study's ``results`` whose run was never written."""
        return []

    def log_rerun(self, record: dict[str, Any]) -> None:
        """One diagnostic rerun of a trial (``nansearch rerun``)."""

    def log_fix(self, record: dict[str, Any]) -> None:
        """One fix of a conclusion, run long on the confirmation seeds."""

    def log_report(self, study_dir: Path, study: str) -> None:
        """A new version of the study's ``report.html`` artifact (after ``nansearch rerun``)."""

    def finish_study(
        self,
        ranking: dict[str, Any],
        results: list[TrialResult],
        study_dir: Path,
        audit: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The study's analysis; returns what to tell the user (sync command, report URL)."""
        return {}

    def close(self) -> None:
        """Release what the tracker holds."""


def make_tracker(cfg: SweepConfig, study_dir: Path) -> Tracker:
    mode = resolve_mode(cfg.tracking.wandb)
    if mode == "off":
        return Tracker()
    if mode == "online" and not has_credentials():
        # W&B would stop the sweep at a login prompt
        log.warning(
            "W&B: online asked for, but no credentials (WANDB_API_KEY or `wandb login`); "
            "logging offline under %s",
            Path(study_dir) / "wandb",
        )
        mode = "offline"
    return WandbTracker(mode, study_dir)


class WandbTracker(Tracker):
    """Logs to W&B online, or offline into ``<study>/wandb/``."""

    def __init__(self, mode: str, study_dir: Path):
        if mode not in ("online", "offline"):
            raise ValueError(f"mode={mode!r}: expected online or offline")
        self.mode = mode
        self.study_dir = Path(study_dir)
        self.cfg: SweepConfig | None = None
        self.failures = 0
        self.entity: str | None = None
        self.project_url: str | None = None
        self.logged: set[int] | None = None  # the ledger as start found it; None: none

    @property
    def offline_dir(self) -> Path:
        return self.study_dir / "wandb"

    @property
    def ledger(self) -> Path:
        return self.study_dir / LEDGER

    def start(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.entity = cfg.tracking.entity
        self.study_dir.mkdir(parents=True, exist_ok=True)
        self.logged = read_ledger(self.ledger)
        self.ledger.touch()

    def unlogged(self, results: list[TrialResult]) -> list[TrialResult]:
        """A study tracked before, without a ledger, logged its runs before ledgers were
        kept, or had tracking off: nothing of it is logged again."""
        if self.logged is None:
            return []
        return [r for r in results if r.number not in self.logged]

    # -- runs ---------------------------------------------------------------------------

    def _record(self, what: str, write, lean: bool = False, **init: Any) -> bool:
        """Open a run, let ``write(run)`` fill it, finish it; step down on failure and retry.

        ``lean`` skips what every trial would repeat (the machine, git, the program, the
        installed packages): the analysis run records it once. Returns whether W&B took
        the run.
        """
        import wandb

        skip = LEAN_SETTINGS if lean else {}
        while self.mode != "off":
            run = None
            try:
                run = wandb.init(
                    project=self.cfg.tracking.project,
                    entity=self.cfg.tracking.entity,
                    group=self.cfg.study,
                    dir=str(self.study_dir),
                    reinit="create_new",
                    settings=wandb.Settings(
                        mode=self.mode, console="off", x_disable_stats=True, silent=True, **skip
                    ),
                    **init,
                )
                write(run)
                if self.mode == "online":
                    self.entity = run.entity
                    self.project_url = run.project_url
                run.finish()
                return True
            except Exception as exc:  # W&B must never stop a sweep
                self.failures += 1
                self._step_down(what, exc)
                if run is not None:
                    try:
                        run.finish(exit_code=1)
                    except Exception:
                        log.debug("W&B: could not finish the failed run", exc_info=True)
        return False

    def _step_down(self, what: str, exc: Exception) -> None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.mode == "online":
            self.mode = "offline"
            log.warning(
                "W&B: %s failed online (%s); logging offline under %s from now on",
                what,
                reason,
                self.offline_dir,
            )
        else:
            self.mode = "off"
            log.warning(
                "W&B: %s failed (%s); W&B is off for the rest of this study, "
                "the local record goes on",
                what,
                reason,
            )

    def log_trial(self, result: TrialResult) -> None:
        # trial and seed go in the summary: as config they would be ranked as parameters by
        # W&B's Parameter Importance, and they follow the phases, not a cause
        config = {
            **result.params,
            "target": target_name(self.cfg),
            "phase": result.phase,
            "steps": result.steps,
        }
        if result.origin is not None:
            config["probes"] = result.origin  # the failing trial a confirm or isolate run probes

        forecast = trial_forecast(result, self.cfg)

        def write(run) -> None:
            for step, row in enumerate(trial_history(result)):
                run.log(row, step=step)
            run.summary.update({"trial": result.number, "seed": result.seed})
            run.summary.update(trial_summary(result))
            run.summary.update(forecast)

        taken = self._record(
            f"trial {result.number}",
            write,
            lean=True,
            job_type="trial",
            name=f"trial-{result.number}",
            config=config,
            tags=[result.outcome, *(["at-risk"] if forecast.get("at_risk") else [])],
        )
        if taken and result.number is not None:
            try:
                jsonl.append(self.ledger, [result.number])
            except jsonl.WriteError as exc:  # a resumed sweep logs the run again
                log.warning("W&B: %s", exc)

    def log_rerun(self, record: dict[str, Any]) -> None:
        import wandb

        config = {"trial": record["trial"], **record.get("params", {})}
        summary = {
            key: value
            for key, value in record.items()
            if key not in ("trial", "params") and scalar_or_flat(value)
        }
        tags = ["rerun"]
        if "reproduced" in record:
            tags.append("reproduced" if record["reproduced"] else "not-reproduced")

        def write(run) -> None:
            trail = record.get("trail") or []
            if trail:
                table = wandb.Table(columns=["module", "absmax"])
                for row in trail:
                    table.add_data(str(row.get("module")), finite_or_none(row.get("absmax")))
                run.log({"trail": table})
            run.summary.update(summary)

        self._record(
            f"rerun of trial {record['trial']}",
            write,
            job_type="rerun",
            name=f"rerun-trial-{record['trial']}",
            config=config,
            tags=tags,
        )

    def log_fix(self, record: dict[str, Any]) -> None:
        config = {
            **record["failing"],
            "conclusion": record["conclusion"] + 1,
            "rule": record["rule"],
            "source": record["source"],
            "overrides": " ".join(record["overrides"]),
            "steps": record["steps"],
            "seeds": record["seeds"],
        }

        def write(run) -> None:
            for row in fix_rows(record):
                run.log(row)
            run.summary.update(fix_summary(record))

        self._record(
            f"fix of conclusion {record['conclusion'] + 1}",
            write,
            lean=True,
            job_type="fix",
            name=f"fix-{record['conclusion'] + 1}-{record['source']}",
            config=config,
            tags=["fix", record["verdict"].replace(" ", "-")],
        )

    def log_report(self, study_dir: Path, study: str) -> None:
        self._record(
            "the report",
            lambda run: log_report_artifact(run, Path(study_dir), study),
            lean=True,
            job_type="report",
            name=f"{study}-report",
            tags=["report"],
        )

    def finish_study(
        self,
        ranking: dict[str, Any],
        results: list[TrialResult],
        study_dir: Path,
        audit: dict[str, Any] | None,
    ) -> dict[str, Any]:
        from omegaconf import OmegaConf

        study_dir = Path(study_dir)
        config = OmegaConf.to_container(OmegaConf.structured(self.cfg))
        self._record(
            "the analysis run",
            lambda run: log_analysis(run, ranking, results, study_dir, audit),
            job_type="analysis",
            name=f"{self.cfg.study}-analysis",
            config=config,
            tags=["analysis"],
        )
        info: dict[str, Any] = {"mode": self.mode, "failures": self.failures}
        if self.mode == "offline" or any(self.offline_dir.glob("offline-run-*")):
            info["sync"] = f"wandb sync {shlex.quote(str(self.offline_dir))}"
        if self.mode == "online":
            if self.project_url:
                info["runs_url"] = f"{self.project_url}/groups/{quote(self.cfg.study)}"
            info["report_url"] = self.publish_report(ranking)
        return info

    def publish_report(self, ranking: dict[str, Any]) -> str | None:
        from nansearch.tracking.wandb_report import build_report

        try:
            return build_report(
                entity=self.entity,
                project=self.cfg.tracking.project,
                study=self.cfg.study,
                ranking=ranking,
            )
        except Exception as exc:
            self.failures += 1
            log.warning("W&B: the report could not be saved (%s); the runs are logged", exc)
            return None

    def close(self) -> None:
        end_session()


class Background(Tracker):
    """Another tracker, its trial runs written by a thread of its own, in trial order.

    A trial's W&B run costs tens of milliseconds (start, history, finish); a trial of a
    short sweep trains for a few hundred. Queued here, the run is written while the
    next trial trains, and the search never waits on W&B, a slow server included.
    Whatever else the tracker does (reruns, the study's analysis, closing) waits for the
    queued runs first, so a finished study has every run, in order.
    """

    def __init__(self, inner: Tracker):
        self.inner = inner
        self.queue: queue.Queue[TrialResult | None] = queue.Queue()
        self.thread: threading.Thread | None = None

    @property
    def mode(self) -> str:
        return self.inner.mode

    def start(self, cfg: SweepConfig) -> None:
        self.inner.start(cfg)
        # a daemon: an exit the sweep did not plan (a second Ctrl-C) never hangs on W&B;
        # what it leaves queued, a resumed sweep logs
        self.thread = threading.Thread(target=self._write, name="wandb-trials", daemon=True)
        self.thread.start()

    def _write(self) -> None:
        while (result := self.queue.get()) is not None:
            try:
                self.inner.log_trial(result)
            except Exception:  # a tracker must never stop the sweep, nor this thread
                log.exception("W&B: trial %s could not be logged", result.number)
            finally:
                self.queue.task_done()
        self.queue.task_done()

    def log_trial(self, result: TrialResult) -> None:
        if self.thread is None:
            self.inner.log_trial(result)
        else:
            self.queue.put(result)

    def unlogged(self, results: list[TrialResult]) -> list[TrialResult]:
        return self.inner.unlogged(results)

    def wait(self) -> None:
        """Until every queued run is written."""
        if self.thread is not None:
            self.queue.join()

    def log_rerun(self, record: dict[str, Any]) -> None:
        self.wait()
        self.inner.log_rerun(record)

    def log_fix(self, record: dict[str, Any]) -> None:
        self.wait()
        self.inner.log_fix(record)

    def log_report(self, study_dir: Path, study: str) -> None:
        self.wait()
        self.inner.log_report(study_dir, study)

    def finish_study(
        self,
        ranking: dict[str, Any],
        results: list[TrialResult],
        study_dir: Path,
        audit: dict[str, Any] | None,
    ) -> dict[str, Any]:
        self.wait()
        return self.inner.finish_study(ranking, results, study_dir, audit)

    def close(self) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        self.inner.close()


def in_background(tracker: Tracker) -> Tracker:
    """``tracker`` with its trial runs off the training path; as it is when it logs nothing."""
    return tracker if tracker.mode == "off" else Background(tracker)


def read_ledger(path: Path) -> set[int] | None:
    """The trial numbers in a ledger; None when there is none."""
    if not path.is_file():
        return None
    return {n for n in jsonl.read(path) if isinstance(n, int)}


def end_session() -> None:
    """End this process's W&B session, so the next study reads the environment afresh.

    W&B reads its ``WANDB_*`` variables once per session and ignores later changes. A
    session with a run of the caller's own (``wandb.run``) is left to its owner.
    """
    import wandb

    if wandb.run is not None:
        return
    try:
        wandb.teardown()
    except Exception:
        log.debug("W&B: teardown failed", exc_info=True)
