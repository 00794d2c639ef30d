"""Trial runs off the training path: a tracker whose trial runs a thread of its own writes."""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

from nansearch.config.schema import SweepConfig
from nansearch.diagnose.record import RerunRecord
from nansearch.tracking._base import FinishedStudy, Tracker
from nansearch.trial.runner import TrialResult

log = logging.getLogger(__name__)


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

    @mode.setter
    def mode(self, value: str) -> None:
        self.inner.mode = value

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

    def log_rerun(self, record: RerunRecord) -> None:
        self.wait()
        self.inner.log_rerun(record)

    def log_fix(self, record: dict[str, Any]) -> None:
        self.wait()
        self.inner.log_fix(record)

    def log_report(self, study_dir: Path, study: str) -> None:
        self.wait()
        self.inner.log_report(study_dir, study)

    def finish_study(self, study: FinishedStudy) -> dict[str, Any]:
        self.wait()
        return self.inner.finish_study(study)

    def close(self) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None
        self.inner.close()


def in_background(tracker: Tracker) -> Tracker:
    """``tracker`` with its trial runs off the training path; as it is when it logs nothing."""
    return tracker if tracker.mode == "off" else Background(tracker)
