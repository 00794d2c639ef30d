"""The tracker interface: what the search tells a tracker, and when. This base records
nothing (``tracking.wandb=off``); :mod:`nansearch.tracking.wandb_tracker` writes W&B runs,
:mod:`nansearch.tracking.background` moves them off the training path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nansearch.config.schema import SweepConfig
from nansearch.diagnose.record import RerunRecord
from nansearch.trial.runner import TrialResult


@dataclass
class FinishedStudy:
    """What a study hands its tracker at the end: the ranking, every trial, the folder
    that holds the study's files (``report.html`` among them) and the audit, if any."""

    ranking: dict[str, Any]
    results: list[TrialResult]
    study_dir: Path
    audit: dict[str, Any] | None = None


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

    def log_rerun(self, record: RerunRecord) -> None:
        """One diagnostic rerun of a trial (``nansearch rerun``)."""

    def log_fix(self, record: dict[str, Any]) -> None:
        """One fix of a conclusion, run long on the confirmation seeds."""

    def log_report(self, study_dir: Path, study: str) -> None:
        """A new version of the study's ``report.html`` artifact (after ``nansearch rerun``)."""

    def finish_study(self, study: FinishedStudy) -> dict[str, Any]:
        """The study's analysis; returns what to tell the user (sync command, report URL)."""
        return {}

    def close(self) -> None:
        """Release what the tracker holds."""
