"""W&B runs: one per trial, one per rerun and fix, one analysis run per study.

This module and :mod:`nansearch.tracking.runs`, which fills the runs, are the only ones
that import ``wandb``. When W&B fails, the failure is logged, the trial's local record
(``trials.jsonl``) stands, and tracking steps down: from online to offline (the runs can
be uploaded later with ``wandb sync``), and from offline to off.

Each trial whose run W&B took is listed in ``wandb-trials.txt`` in the study folder; a
resumed sweep logs the recorded trials missing from it, so a sweep killed with runs
still queued loses none of them.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nansearch import jsonl
from nansearch.config.schema import SweepConfig
from nansearch.diagnose.record import RerunRecord
from nansearch.tracking._base import FinishedStudy, Tracker
from nansearch.tracking.runs import (
    finite_or_none,
    fix_rows,
    fix_summary,
    fix_words,
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

LEDGER = "wandb-trials.txt"  # in the study folder: the trials whose W&B run was written
LEAN_SETTINGS: dict[str, Any] = {
    "x_disable_meta": True,
    "x_disable_machine_info": True,
    "disable_git": True,
    "disable_code": True,
    "x_save_requirements": False,
}


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
    def config(self) -> SweepConfig:
        """The sweep's configuration, as :meth:`start` received it."""
        if self.cfg is None:
            raise RuntimeError("the tracker was not started")
        return self.cfg

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

    def _record(
        self, what: str, write: Callable[[Any], object], lean: bool = False, **init: Any
    ) -> bool:
        """Open a run, let ``write(run)`` fill it, finish it; step down on failure and retry.

        ``lean`` skips what every trial would repeat (the machine, git, the program, the
        installed packages): the analysis run records it once. Returns whether W&B took
        the run.
        """
        import wandb

        while self.mode != "off":
            settings: dict[str, Any] = {
                "mode": self.mode,
                "console": "off",
                "x_disable_stats": True,
                "silent": True,
                **(LEAN_SETTINGS if lean else {}),
            }
            run = None
            try:
                run = wandb.init(
                    project=self.config.tracking.project,
                    entity=self.config.tracking.entity,
                    group=self.config.study,
                    dir=str(self.study_dir),
                    reinit="create_new",
                    settings=wandb.Settings(**settings),
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
            "target": target_name(self.config),
            "phase": result.phase,
            "steps": result.steps,
        }
        if result.origin is not None:
            config["probes"] = result.origin  # the failing trial a confirm or isolate run probes

        forecast = trial_forecast(result, self.config)

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

    def log_rerun(self, record: RerunRecord) -> None:
        import wandb

        config = {"trial": record.trial, **record.params}
        summary = {
            key: value
            for key, value in record.to_json().items()
            if key not in ("trial", "params") and scalar_or_flat(value)
        }
        tags = ["rerun", "reproduced" if record.reproduced else "not-reproduced"]

        def write(run) -> None:
            trail = record.trail
            if trail:
                table = wandb.Table(columns=["module", "absmax"])
                for row in trail:
                    table.add_data(str(row.get("module")), finite_or_none(row.get("absmax")))
                run.log({"trail": table})
            run.summary.update(summary)

        self._record(
            f"rerun of trial {record.trial}",
            write,
            job_type="rerun",
            name=f"rerun-trial-{record.trial}",
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
            **fix_words(record),
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

    def finish_study(self, study: FinishedStudy) -> dict[str, Any]:
        from omegaconf import OmegaConf

        config = OmegaConf.to_container(OmegaConf.structured(self.config))
        self._record(
            "the analysis run",
            lambda run: log_analysis(run, study),
            job_type="analysis",
            name=f"{self.config.study}-analysis",
            config=config,
            tags=["analysis"],
        )
        info: dict[str, Any] = {"mode": self.mode, "failures": self.failures}
        if self.mode == "offline" or any(self.offline_dir.glob("offline-run-*")):
            info["sync"] = f"wandb sync {shlex.quote(str(self.offline_dir))}"
        if self.mode == "online":
            if self.project_url:
                info["runs_url"] = f"{self.project_url}/groups/{quote(self.config.study)}"
            info["report_url"] = self.publish_report(study.ranking)
        return info

    def publish_report(self, ranking: dict[str, Any]) -> str | None:
        from nansearch.tracking.wandb_report import build_report

        try:
            return build_report(
                entity=self.entity,
                project=self.config.tracking.project,
                study=self.config.study,
                ranking=ranking,
            )
        except Exception as exc:
            self.failures += 1
            log.warning("W&B: the report could not be saved (%s); the runs are logged", exc)
            return None

    def close(self) -> None:
        end_session()


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
