"""What a sweep records and tells: the trials' results in the study and in
``trials.jsonl``, and the callbacks through which tracking and progress hear of them.

Below both the study loop (:mod:`nansearch.search.study`) and the probes
(:mod:`nansearch.search.phases`), which read and report trials the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna

from nansearch import jsonl
from nansearch.search.queue import FINISHED, RESULT_ATTR
from nansearch.trial.runner import TrialResult

log = logging.getLogger(__name__)


def recorded(study: optuna.Study) -> list[TrialResult]:
    """Every trial that finished with a result, in trial order."""
    results = []
    for trial in study.get_trials(deepcopy=False):
        data = trial.user_attrs.get(RESULT_ATTR)
        if data is not None and trial.state in FINISHED:
            results.append(TrialResult.from_json(data))
    return sorted(results, key=lambda r: r.number or 0)  # a recorded trial has its number


@dataclass
class SweepCallbacks:
    """What the outside world hears from a sweep; tracking and progress plug in here."""

    on_start: list[Callable[[int, int], None]] = field(default_factory=list)  # (done, budget)
    on_trial: list[Callable[[TrialResult], None]] = field(default_factory=list)

    def start(self, done: int, budget: int) -> None:
        for callback in self.on_start:
            try:
                callback(done, budget)
            except Exception:
                log.exception("a start callback failed; the sweep goes on")

    def trial(self, result: TrialResult) -> None:
        for callback in self.on_trial:
            try:
                callback(result)
            except Exception:  # an observer must never stop the search
                log.exception("a trial callback failed; the sweep goes on")

    def __add__(self, other: SweepCallbacks) -> SweepCallbacks:
        return SweepCallbacks(self.on_start + other.on_start, self.on_trial + other.on_trial)


class Stop(Protocol):
    def is_set(self) -> bool: ...


def append_trial(result: TrialResult, path: Path) -> None:
    """Append the trial's line (see :mod:`nansearch.jsonl`)."""
    jsonl.append(path, [trial_line(result)])


def write_trials(results: list[TrialResult], path: Path) -> None:
    """Rewrite ``trials.jsonl`` from the study, which holds every worker's trials."""
    jsonl.write(path, (trial_line(r) for r in results))


def trial_line(result: TrialResult) -> dict[str, Any]:
    data = result.to_json()
    head = {k: data.pop(k) for k in ("number", "params", "outcome", "first_bad_step", "score")}
    return {**head, **data}


def read_trials(path: Path) -> list[TrialResult]:
    results: dict[int, TrialResult] = {}
    for line in jsonl.read(path):
        result = TrialResult.from_json(line)
        results[result.number or 0] = result
    return [results[n] for n in sorted(results)]
