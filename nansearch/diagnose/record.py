"""A rerun's record, typed: what ``nansearch rerun`` found for one trial, as
``<study>/reruns/trial-<n>.json`` holds it.

The nested parts stay as the JSON they are written as (the trail of module magnitudes,
the op that made the first non-finite value, the detector's findings, the fresh seeds'
outcomes); non-finite floats among them are the strings "nan", "inf" and "-inf".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RerunRecord:
    """One trial rerun with diagnostics, then with fresh seeds."""

    trial: int | None
    params: dict[str, Any]
    seed: int
    diagnosis: str
    reproduced: bool | None = None  # the same outcome at the same step as the trial
    seed_rate: dict[str, int] = field(default_factory=dict)  # nan, total: the fresh seeds
    first_bad_step: int | None = None
    outcome: str | None = None
    stage: str | None = None  # where the NaN was born: forward, backward, optimizer, ...
    module: str | None = None
    trail: list[dict[str, Any]] = field(default_factory=list)  # module, absmax
    trial_outcome: str | None = None
    trial_first_bad_step: int | None = None
    steps: int | None = None
    device: str | None = None
    compute_dtype: str | None = None
    error: str | None = None
    op: dict[str, Any] | None = None
    findings: dict[str, Any] = field(default_factory=dict)
    seeds: list[dict[str, Any]] = field(default_factory=list)  # seed, outcome, first_bad_step
    seconds: float = 0.0
    study: str | None = None
    # the conclusions it speaks to (diagnose.rerun.served); None until the study says
    serves: dict[str, Any] | None = None
    holds: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as its file holds it: the study, the rerun, then the conclusions."""
        out: dict[str, Any] = {} if self.study is None else {"study": self.study}
        out.update(
            {
                "trial": self.trial,
                "params": self.params,
                "seed": self.seed,
                "diagnosis": self.diagnosis,
                "reproduced": self.reproduced,
                "seed_rate": self.seed_rate,
                "first_bad_step": self.first_bad_step,
                "outcome": self.outcome,
                "stage": self.stage,
                "module": self.module,
                "trail": self.trail,
                "trial_outcome": self.trial_outcome,
                "trial_first_bad_step": self.trial_first_bad_step,
                "steps": self.steps,
                "device": self.device,
                "compute_dtype": self.compute_dtype,
                "error": self.error,
                "op": self.op,
                "findings": self.findings,
                "seeds": self.seeds,
                "seconds": self.seconds,
            }
        )
        if self.holds is not None:
            out.update({"serves": self.serves, "holds": self.holds})
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RerunRecord:
        """The record :meth:`to_json` wrote; a field an older file lacks is left empty."""
        return cls(
            trial=data.get("trial"),
            params=dict(data.get("params") or {}),
            seed=data.get("seed", 0),
            diagnosis=str(data.get("diagnosis", "")),
            reproduced=data.get("reproduced"),
            seed_rate=dict(data.get("seed_rate") or {}),
            first_bad_step=data.get("first_bad_step"),
            outcome=data.get("outcome"),
            stage=data.get("stage"),
            module=data.get("module"),
            trail=list(data.get("trail") or []),
            trial_outcome=data.get("trial_outcome"),
            trial_first_bad_step=data.get("trial_first_bad_step"),
            steps=data.get("steps"),
            device=data.get("device"),
            compute_dtype=data.get("compute_dtype"),
            error=data.get("error"),
            op=data.get("op"),
            findings=dict(data.get("findings") or {}),
            seeds=list(data.get("seeds") or []),
            seconds=data.get("seconds", 0.0),
            study=data.get("study"),
            serves=data.get("serves"),
            holds=data.get("holds"),
        )

    @property
    def serves_conclusion(self) -> int | None:
        """The number (from 1) of the conclusion the rerun was chosen for, if any."""
        return (self.serves or {}).get("conclusion")
