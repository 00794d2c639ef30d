"""The factor tables: one factor's levels, each with its NaN rate, Wilson interval and the
counts that no other cause explains (``alone``), on which the effect and Fisher's exact
test rest. A continuous factor's levels are the log-spaced ranges of :class:`Bins`.

:class:`FactorTable` and :class:`Level` are what ``ranking.json``'s ``factors`` holds,
typed; ``to_json`` writes them in its documented shape and ``from_json`` reads them back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from nansearch.analysis.causes import Cause
from nansearch.analysis.stats import fisher_two_sided, wilson
from nansearch.trial.runner import TrialResult


@dataclass(frozen=True)
class Bins:
    """Log-spaced ranges for a continuous factor, so a rate rests on several trials."""

    edges: tuple[float, ...]

    @classmethod
    def log_spaced(cls, low: float, high: float, count: int = 4) -> Bins:
        if high <= low:
            return cls((low, high))
        step = (math.log10(high) - math.log10(low)) / count
        return cls(tuple(10 ** (math.log10(low) + i * step) for i in range(count + 1)))

    def label(self, index: int) -> str:
        return f"{self.edges[index]:.2g}..{self.edges[index + 1]:.2g}"

    def index(self, value: float) -> int:
        for i in range(len(self.edges) - 2, -1, -1):
            if value >= self.edges[i]:
                return i
        return 0

    def labels(self) -> list[str]:
        return [self.label(i) for i in range(len(self.edges) - 1)]


def level_of(value: Any, bins: Bins | None) -> str:
    if bins is not None and isinstance(value, (int, float)):
        return bins.label(bins.index(float(value)))
    return str(value)


@dataclass
class Level:
    """One level of a factor table: its counts over the cover and focus trials, the
    Wilson interval of its rate, and ``alone``: its runs that no cause involving another
    factor explains, on which ``effect`` (its rate alone minus the other levels') and
    Fisher's exact test (``odds_ratio``, ``p_value``) rest."""

    value: str
    nan: int
    total: int
    errors: int
    rate: float | None
    ci_low: float
    ci_high: float
    alone_nan: int
    alone_total: int
    alone_rate: float | None
    effect: float | None
    odds_ratio: float | None  # None when infinite or undefined
    p_value: float

    def to_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "nan": self.nan,
            "total": self.total,
            "errors": self.errors,
            "rate": self.rate,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "alone": {"nan": self.alone_nan, "total": self.alone_total, "rate": self.alone_rate},
            "effect": self.effect,
            "odds_ratio": self.odds_ratio,
            "p_value": self.p_value,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Level:
        alone = data.get("alone") or {}
        return cls(
            value=str(data["value"]),
            nan=data["nan"],
            total=data["total"],
            errors=data.get("errors", 0),
            rate=data.get("rate"),
            ci_low=data["ci_low"],
            ci_high=data["ci_high"],
            alone_nan=alone.get("nan", 0),
            alone_total=alone.get("total", 0),
            alone_rate=alone.get("rate"),
            effect=data.get("effect"),
            odds_ratio=data.get("odds_ratio"),
            p_value=data.get("p_value", 1.0),
        )


@dataclass
class FactorTable:
    """One factor's table: its levels in their order, the largest effect among them, the
    smallest p-value, and its fANOVA importance when the ranking had one. A range's
    ``edges`` are its bins' edges, so that a reader maps a value to its level from them
    rather than from the levels' rounded labels."""

    name: str
    kind: str  # "categorical", or "range" for a continuous factor's bins
    effect: float
    p_value: float
    levels: list[Level]
    importance: float | None = None
    edges: list[float] | None = None  # a range's bin edges, low to high

    @property
    def bins(self) -> Bins | None:
        """A range's bins, from its stored edges; None for a categorical factor."""
        return Bins(tuple(self.edges)) if self.kind == "range" and self.edges else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            **({"edges": self.edges} if self.edges is not None else {}),
            "effect": self.effect,
            "p_value": self.p_value,
            "levels": [level.to_json() for level in self.levels],
            "importance": self.importance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FactorTable:
        return cls(
            name=data["name"],
            kind=data.get("kind", "categorical"),
            effect=data["effect"],
            p_value=data["p_value"],
            levels=[Level.from_json(level) for level in data.get("levels") or []],
            importance=data.get("importance"),
            edges=data.get("edges"),
        )


@dataclass
class _Counts:
    nan: int = 0
    total: int = 0
    errors: int = 0


def factor_table(
    results: list[TrialResult], name: str, levels: list[Any] | Bins, causes: Sequence[Cause]
) -> FactorTable:
    """One factor's levels: raw counts, Wilson interval, and counts with other causes absent."""
    bins = levels if isinstance(levels, Bins) else None
    names = levels.labels() if isinstance(levels, Bins) else [str(v) for v in levels]
    counts = {level: _Counts() for level in names}
    alone = {level: _Counts() for level in names}
    others = [c for c in causes if all(x.factor != name for x in c.conditions)]
    for result in results:
        if name not in result.params:
            continue
        level = level_of(result.params[name], bins)
        slots = [counts.setdefault(level, _Counts())]
        if not any(c.holds(result.params) for c in others):
            slots.append(alone.setdefault(level, _Counts()))
        for slot in slots:
            if result.outcome == "error":
                slot.errors += 1
            else:
                slot.total += 1
                slot.nan += int(result.is_nan)
    nan_all = sum(a.nan for a in alone.values())
    total_all = sum(a.total for a in alone.values())
    rows: list[Level] = []
    for level, c in counts.items():
        a = alone.get(level, _Counts())
        rest_nan, rest_total = nan_all - a.nan, total_all - a.total
        rate = a.nan / a.total if a.total else None
        rest = rest_nan / rest_total if rest_total else None
        ratio, p = fisher_two_sided(a.nan, a.total, rest_nan, rest_total)
        low, high = wilson(c.nan, c.total)
        rows.append(
            Level(
                value=level,
                nan=c.nan,
                total=c.total,
                errors=c.errors,
                rate=c.nan / c.total if c.total else None,
                ci_low=low,
                ci_high=high,
                alone_nan=a.nan,
                alone_total=a.total,
                alone_rate=rate,
                effect=None if rate is None or rest is None else rate - rest,
                odds_ratio=ratio,
                p_value=p,
            )
        )
    effects = [abs(r.effect) for r in rows if r.effect is not None]
    return FactorTable(
        name=name,
        kind="range" if bins else "categorical",
        effect=max(effects, default=0.0),
        p_value=min((r.p_value for r in rows), default=1.0),
        levels=rows,
        edges=list(bins.edges) if bins else None,
    )
