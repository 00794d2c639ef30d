"""One conclusion as ``ranking.json`` holds it, typed: its sentence, its kind, and the
counts, cause, isolation and confirmation behind it.

The kinds (:mod:`nansearch.analysis.conclusions` writes them):

- ``cause``: a rule the counts name (:class:`~nansearch.analysis.causes.Cause`, whose
  fields ranking.json holds beside ``text`` and ``kind``), with the isolation and the
  confirmation that speak to it, if any, and what the isolation needs beyond the rule
  (``isolation_adds``);
- ``isolated-cause``: a rule named by a complete isolation whose failure every fresh
  seed reproduced, before the counts can (``rule``, ``nan``, ``total``);
- ``isolated``: an isolation no significant cause matches yet;
- ``unexplained``: the NaN runs no conclusion explains (``trials``);
- ``no-nan``: no run went NaN (``highest_instability``, and ``near_miss`` once the sweep
  names the earliest run at risk);
- ``all-errors`` (``trial``, ``error``) and ``errors``: runs that ended in an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nansearch.analysis.causes import Cause
from nansearch.search.confirm import Confirmation
from nansearch.search.isolate import Isolation
from nansearch.trial.runner import TrialResult

# the kinds that name a rule of factor values
SPEAKS_OF_CAUSE = ("cause", "isolated-cause", "isolated")


@dataclass
class Conclusion:
    """A conclusion: ``text`` says it; the other fields are what each kind holds (None
    where a kind has no such field, and then absent from ranking.json)."""

    text: str
    kind: str
    cause: Cause | None = None  # kind "cause"
    rule: str | None = None  # kind "isolated-cause"
    nan: int | None = None
    total: int | None = None
    trial: int | None = None  # kind "all-errors": the first trial that ended in an error
    error: str | None = None
    trials: list[int | None] | None = None  # kind "unexplained"
    highest_instability: dict[str, Any] | None = None  # kind "no-nan"
    near_miss: dict[str, Any] | None = None  # kind "no-nan", added by the sweep
    isolation_adds: dict[str, Any] | None = None  # kind "cause"
    isolation: Isolation | None = None
    confirmation: Confirmation | None = None
    evidence: list[str] | None = None

    def to_json(self) -> dict[str, Any]:
        """The conclusion as ranking.json holds it, its keys in their documented order."""
        out: dict[str, Any] = {"text": self.text, "kind": self.kind}
        if self.cause is not None:
            out.update(self.cause.to_json())
        fields: dict[str, Any] = {
            "rule": self.rule,
            "nan": self.nan,
            "total": self.total,
            "trial": self.trial,
            "error": self.error,
            "trials": self.trials,
            "highest_instability": self.highest_instability,
            "near_miss": self.near_miss,
            "isolation_adds": self.isolation_adds,
            "isolation": self.isolation.to_json() if self.isolation is not None else None,
            "confirmation": (
                self.confirmation.to_json() if self.confirmation is not None else None
            ),
            "evidence": self.evidence,
        }
        out.update({key: value for key, value in fields.items() if value is not None})
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Conclusion:
        """The conclusion :meth:`to_json` wrote (``ranking.json``'s ``conclusions``)."""
        kind = data.get("kind", "")
        cause = Cause.from_json(data) if kind == "cause" else None
        isolation, confirmation = data.get("isolation"), data.get("confirmation")
        return cls(
            text=data.get("text", ""),
            kind=kind,
            cause=cause,
            rule=None if cause is not None else data.get("rule"),
            nan=None if cause is not None else data.get("nan"),
            total=None if cause is not None else data.get("total"),
            trial=data.get("trial"),
            error=data.get("error"),
            trials=data.get("trials"),
            highest_instability=data.get("highest_instability"),
            near_miss=data.get("near_miss"),
            isolation_adds=data.get("isolation_adds"),
            isolation=Isolation.from_json(isolation) if isolation is not None else None,
            confirmation=(
                Confirmation.from_json(confirmation) if confirmation is not None else None
            ),
            evidence=data.get("evidence"),
        )

    @property
    def about(self) -> str:
        """What the conclusion is about, in a few words: its rule, or the runs it counts."""
        if self.cause is not None:
            return self.cause.text
        if self.kind in ("isolated", "isolated-cause") and self.isolation is not None:
            return self.isolation.text
        if self.kind == "unexplained":
            return "NaN runs no conclusion explains"
        return self.kind

    @property
    def names_cause(self) -> bool:
        """Whether it names a rule of factor values (a cause, or what an isolation found)."""
        return self.kind in SPEAKS_OF_CAUSE

    def speaks_of(self, result: TrialResult) -> bool:
        """Whether the conclusion explains this trial's values."""
        if self.cause is not None:
            return self.cause.holds(result.params)
        if self.kind in ("isolated", "isolated-cause") and self.isolation is not None:
            return self.isolation.holds(result.params)
        if self.kind == "unexplained":
            return result.number in (self.trials or ())
        return False
