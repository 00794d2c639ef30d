"""What one trial did (:class:`TrialResult`), the outcomes and phases it can have, and its
instability score: the record every part of nansearch reads a trial by, apart from the
runner that trains it (:mod:`nansearch.trial.runner`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

OUTCOMES = (
    "finite",
    "nonfinite-logits",
    "nonfinite-loss",
    "nonfinite-grad",
    "nonfinite-params",
    "error",
)
NONFINITE = OUTCOMES[1:5]
# The phase a trial ran in, in the order a sweep runs them: the queue's trials, then the
# probes of a failing one. "search" is the focus phase of studies from older versions.
QUEUED = ("cover", "focus", "search")
PROBES = ("confirm", "isolate")
PHASES = (*QUEUED, *PROBES)


@dataclass
class TrialResult:
    """What one trial did: the outcome, when it went wrong, and the per-step trail."""

    params: dict[str, Any]
    seed: int
    steps: int
    outcome: str = "finite"
    first_bad_step: int | None = None
    loss: list[float] = field(default_factory=list)
    logit_absmax: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    skipped_steps: int = 0  # amp-fp16: steps the GradScaler skipped for an overflow
    skipped_batches: int = 0  # factors.batch.skip_empty_labels: steps with no counted label
    loss_scale: list[float] = field(default_factory=list)  # amp-fp16: the scale of each step
    score: float | None = None
    seconds: float = 0.0
    device: str = "cpu"
    compute_dtype: str = "float32"
    error: str | None = None
    number: int | None = None
    phase: str = "focus"  # cover | focus | confirm | isolate
    origin: int | None = None  # confirm and isolate: the failing trial this run probes

    @property
    def is_nan(self) -> bool:
        return self.outcome in NONFINITE

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict: non-finite numbers become the strings "nan", "inf", "-inf"."""
        return {key: _json_safe(value) for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialResult:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("loss", "logit_absmax", "grad_norm", "loss_scale"):
            known[key] = [float(v) for v in known.get(key, [])]
        return cls(**known)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def instability_score(result: TrialResult) -> float | None:
    """1 or more for a non-finite run (earlier failure higher); below 1 for a finite run.

    A finite run scores by how close its largest logit came to the compute dtype's
    maximum, on a log scale, so the sampler is drawn toward the edge of the range.
    """
    if result.outcome == "error":
        return None
    if result.is_nan:
        # a non-finite run always has its first bad step
        return 1.0 + (result.steps - (result.first_bad_step or 0)) / result.steps
    peak = max((v for v in result.logit_absmax if math.isfinite(v)), default=0.0)
    limit = torch.finfo(getattr(torch, result.compute_dtype)).max
    return min(0.999, math.log1p(peak) / math.log1p(limit))
