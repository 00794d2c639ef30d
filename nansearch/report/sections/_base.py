"""What every section shares: :class:`Section`, the value formats, the trial links, and
the factor tables read from ``ranking.json`` and the mapping of a trial's value to a
table's level label."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from nansearch.analysis.tables import FactorTable

TRIAL_REFERENCE = re.compile(r"\b(trials?) ((?:\d+)(?:, \d+)*)")


def number(value: Any) -> float:
    return float(value) if value is not None else math.nan


def is_nan(trial: dict[str, Any]) -> bool:
    return str(trial.get("outcome", "")).startswith("nonfinite")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return "–" if value is None else str(value)


def fmt_rate(rate: float | None) -> str:
    return "–" if rate is None else f"{rate:.0%}"


def fmt_p(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def trial_links(text: Any) -> Markup:
    """``text`` escaped, with each "trial 5" or "trials 3, 5, 8" linked to the trials' rows."""

    def link(match: re.Match[str]) -> str:
        numbers = ", ".join(f'<a href="#trial-{n}">{n}</a>' for n in match.group(2).split(", "))
        return f"{match.group(1)} {numbers}"

    return Markup(TRIAL_REFERENCE.sub(link, str(escape(str(text)))))


def factor_tables(ranking: dict[str, Any]) -> list[FactorTable]:
    """The factor tables of ``ranking.json``, in rank order."""
    return [FactorTable.from_json(f) for f in ranking.get("factors", [])]


def leveler(factor: FactorTable) -> Callable[[Any], str | None]:
    """Maps a trial's value of ``factor`` to the ranking's level label: a range's value by
    the bin edges its table stores (none stored, as in a ranking.json from before they
    were: no level)."""
    labels = [row.value for row in factor.levels]
    if factor.kind != "range":
        return lambda value: str(value) if str(value) in labels else None
    bins = factor.bins

    def level(value: Any) -> str | None:
        if bins is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return bins.label(bins.index(float(value)))

    return level


@dataclass
class Section:
    """One section of the page: its anchor, title, template and what the template shows."""

    anchor: str
    title: str
    template: str  # templates/sections/<template>.html
    data: Any = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
