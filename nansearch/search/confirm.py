"""Confirmation: a failing configuration rerun with fresh seeds, deterministic or flaky.

A failure that every seed reproduces is deterministic; one that only some seeds
reproduce is flaky, with its rate. The rate decides how often isolation repeats a probe
before it believes that a configuration passes (:meth:`Confirmation.repeats`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nansearch.trial.runner import TrialResult


@dataclass
class Confirmation:
    """A failing configuration: its first run, and its reruns with fresh seeds."""

    trial: int | None
    params: dict[str, Any]
    runs: list[int | None] = field(default_factory=list)  # the reruns' trial numbers
    nan: int = 0  # reruns that went NaN

    @property
    def total(self) -> int:
        return 1 + len(self.runs)

    @property
    def failures(self) -> int:
        return 1 + self.nan

    @property
    def rate(self) -> float:
        """The share of runs that went NaN, the first run included."""
        return self.failures / self.total

    @property
    def label(self) -> str:
        if not self.runs:
            return "unconfirmed"
        return "deterministic" if self.nan == len(self.runs) else "flaky"

    @property
    def reproduced(self) -> bool:
        return self.nan > 0

    def repeats(self, miss: float = 0.1, most: int = 4) -> int:
        """Probes of a configuration needed to see this failure with probability 1 - miss."""
        if self.rate >= 1:
            return 1
        return max(1, min(most, math.ceil(math.log(miss) / math.log(1 - self.rate))))

    @property
    def text(self) -> str:
        seeds = len(self.runs)
        return (
            f"{self.label}: NaN in {self.failures}/{self.total} runs "
            f"(the first and {seeds} fresh seed{'s' if seeds != 1 else ''})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "params": self.params,
            "label": self.label,
            "nan": self.failures,
            "runs": self.total,
            "rate": self.rate,
            "rerun_trials": self.runs,
            "text": self.text,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Confirmation:
        """The confirmation :meth:`to_json` wrote (``ranking.json``'s ``confirmations``):
        ``nan`` there counts the first run too."""
        return cls(data["trial"], dict(data["params"]), list(data["rerun_trials"]), data["nan"] - 1)


def confirm(
    trial: int | None,
    params: dict[str, Any],
    rerun: Callable[[], TrialResult | None],
    seeds: int,
) -> Confirmation:
    """Rerun a failing configuration ``seeds`` times; ``rerun`` returns None without budget."""
    confirmation = Confirmation(trial, dict(params))
    for _ in range(seeds):
        result = rerun()
        if result is None:
            break
        confirmation.runs.append(result.number)
        confirmation.nan += result.is_nan
    return confirmation
