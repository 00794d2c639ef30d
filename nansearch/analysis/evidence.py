"""The trials as evidence: conditions on factor values, and the runs as columns.

A :class:`Condition` is one factor value (``dtype=fp16``) or one side of a range of a
continuous factor (``lr >= 0.3``). :class:`Evidence` holds one array per factor and the
NaN flags, so the rule search (:mod:`nansearch.analysis.causes`) can test thousands of
rules at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nansearch.search.isolate import fmt
from nansearch.trial.runner import TrialResult

ALPHA = 0.05
MIN_NAN = 3
MOST_CONDITIONS = 3  # a cause needs at most this many values at once
ABOVE, BELOW, EQUALS = ">=", "<=", "="


@dataclass(frozen=True)
class Condition:
    """``factor = value``, or ``factor >= value`` / ``factor <= value`` for a range."""

    factor: str
    op: str
    value: Any

    def holds(self, params: dict[str, Any]) -> bool:
        if self.factor not in params:
            return False
        got = params[self.factor]
        if self.op == EQUALS:
            return str(got) == str(self.value)
        return got >= self.value if self.op == ABOVE else got <= self.value

    @property
    def text(self) -> str:
        if self.op == EQUALS:
            return f"{self.factor}={self.value}"
        side = "above" if self.op == ABOVE else "below"
        return f"{self.factor} {side} {fmt(self.value)}"

    def same(self, other: Condition) -> bool:
        """The same value, or the same side of the same range whatever its edge."""
        return (
            self.factor == other.factor
            and self.op == other.op
            and (self.op != EQUALS or str(self.value) == str(other.value))
        )

    def to_json(self) -> dict[str, Any]:
        return {"factor": self.factor, "op": self.op, "value": self.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Condition:
        return cls(data["factor"], data["op"], data["value"])


def joined(conditions: Iterable[Condition]) -> str:
    """Conditions as a rule reads: ``dtype=fp16 with batch=padded-row``."""
    return " with ".join(c.text for c in conditions)


class Evidence:
    """Trials as columns: one array per factor and the NaN flags, errors left out."""

    def __init__(self, results: Iterable[TrialResult], continuous: Sequence[str], factors):
        self.results = [r for r in results if r.outcome != "error"]
        self.nan = np.array([r.is_nan for r in self.results], dtype=bool)
        self.factors = [f for f in factors if any(f in r.params for r in self.results)]
        self.continuous = [f for f in self.factors if f in continuous]
        self.columns: dict[str, np.ndarray] = {}
        self._masks: dict[Condition, np.ndarray] = {}
        for name in self.factors:
            values = [r.params.get(name) for r in self.results]
            if name in self.continuous:
                self.columns[name] = np.array(
                    [math.nan if v is None else float(v) for v in values], dtype=float
                )
            else:
                self.columns[name] = np.array([str(v) for v in values], dtype=object)

    def __len__(self) -> int:
        return len(self.results)

    def condition_mask(self, c: Condition) -> np.ndarray:
        mask = self._masks.get(c)
        if mask is None:
            column = self.columns.get(c.factor)
            if column is None:
                mask = np.zeros(len(self), dtype=bool)
            elif c.op == EQUALS:
                mask = column == str(c.value)
            elif c.op == ABOVE:
                mask = column >= c.value
            else:
                mask = column <= c.value
            self._masks[c] = mask
        return mask

    def mask(self, conditions: Iterable[Condition]) -> np.ndarray:
        out = np.ones(len(self), dtype=bool)
        for c in conditions:
            out = out & self.condition_mask(c)
        return out

    def masks(self, rules: Sequence[Sequence[Condition]]) -> np.ndarray:
        """The runs each rule matches, one row per rule, computed at once."""
        index: dict[Condition, int] = {}
        for rule in rules:
            for c in rule:
                index.setdefault(c, len(index))
        table = np.ones((len(index) + 1, len(self)), dtype=bool)  # the last row: no condition
        for c, i in index.items():
            table[i] = self.condition_mask(c)
        width = max((len(rule) for rule in rules), default=0)
        at = np.full((len(rules), width), len(index))
        for i, rule in enumerate(rules):
            at[i, : len(rule)] = [index[c] for c in rule]
        out = np.ones((len(rules), len(self)), dtype=bool)
        for k in range(width):
            out &= table[at[:, k]]
        return out

    def levels(self, name: str, among: np.ndarray) -> list[str]:
        return sorted(set(self.columns[name][among]))

    def counts(self, mask: np.ndarray) -> dict[str, int]:
        return {"nan": int((mask & self.nan).sum()), "total": int(mask.sum())}
