"""The ranking and what it rests on: the factors' table, the NaN rate per level, the
importances, the interactions and the minimal causes isolation found."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from nansearch.analysis.interactions import Interaction
from nansearch.report import charts
from nansearch.report.sections._base import Section, factor_tables, fmt, fmt_p, fmt_rate
from nansearch.search.confirm import Confirmation
from nansearch.search.isolate import Isolation


def ranking_section(ranking: dict[str, Any]) -> Section | None:
    importance = ranking.get("importance") or {}
    rows = []
    for rank, factor in enumerate(factor_tables(ranking), 1):
        levels = sorted(factor.levels, key=lambda r: -(r.rate or 0))
        for j, row in enumerate(levels):
            rows.append(
                {
                    "first": j == 0,
                    "rank": rank,
                    "factor": factor.name,
                    "factor_effect": f"{factor.effect:.2f}",
                    "importance": fmt(importance.get(factor.name)),
                    "level": row.value,
                    "counts": f"{row.nan} / {row.total}",
                    "rate": fmt_rate(row.rate),
                    "interval": f"{row.ci_low:.2f}–{row.ci_high:.2f}" if row.total else "–",
                    "alone": f"{row.alone_nan} / {row.alone_total}",
                    "effect": "–" if row.effect is None else f"{row.effect:+.2f}",
                    "p": fmt_p(row.p_value),
                    "errors": str(row.errors or ""),
                }
            )
    note = (
        f"{ranking.get('basis', '')}. Factors in order of effect. 'alone' counts a level's "
        "runs that no cause involving another factor explains; the level's effect (its NaN "
        "rate alone minus the other levels' alone) and p (Fisher's exact test) rest on "
        "them. The tables count cover and focus trials only, while the conclusions count "
        "every run, probes included, so one level can show fewer runs here than in a "
        "conclusion. Trials that ended in an error count apart, never as NaN or as finite."
    )
    return Section(
        "ranking", "Ranking", "ranking", rows, note.lstrip(". "), {"importance": bool(importance)}
    )


def rates_section(ranking: dict[str, Any]) -> Section | None:
    figures = [
        Markup(charts.rate_bars(f.levels, "NaN rate per " + f.name + " level"))
        for f in factor_tables(ranking)
    ]
    note = (
        "Bars: the share of the finished cover and focus trials that went non-finite; "
        "whiskers: the Wilson 95% interval."
    )
    return Section("rates", "NaN rate per level", "figures", figures, note)


def importance_section(ranking: dict[str, Any]) -> Section | None:
    importance = ranking.get("importance") or {}
    if not importance:
        return None
    rows = sorted(((str(k), float(v)) for k, v in importance.items()), key=lambda r: -r[1])
    chart = Markup(charts.value_bars(rows, "fANOVA importance for the instability score"))
    return Section("importance", "Importance", "figures", [chart])


def interactions_section(ranking: dict[str, Any]) -> Section | None:
    items = [Interaction.from_json(i) for i in ranking.get("interactions") or []]
    if not items:
        return None
    shown = [
        {"text": item.text, "p": fmt_p(item.p_value), "p_adjusted": fmt_p(item.p_adjusted)}
        for item in items
    ]
    note = (
        "Pairs of values whose runs together are NaN more often than either gives alone; "
        "p is one-sided Fisher's exact test, adjusted for the pairs tried."
    )
    return Section("interactions", "Interactions", "interactions", shown, note)


def _role(name: str, iso: Isolation) -> str:
    if name in iso.needed:
        return "needed: flipping it back alone fixes the failure"
    if name in iso.context:
        return "needed: shared with the passing run, and changing it fixes the failure"
    if name in iso.minimal:
        return "needed, together with the others"
    return "not needed"


def minimal_causes_section(ranking: dict[str, Any]) -> Section | None:
    """What isolation found, one item per failing trial: a sentence and a small table."""
    items = ranking.get("minimal_causes") or []
    if not items:
        return None
    shown = []
    for item in items:
        iso = Isolation.from_json(item)
        names = list(iso.differences)
        names += [n for n in iso.context if n not in names]
        rows = [
            {
                "factor": name,
                "failing": fmt(iso.failing.get(name)),
                "passing": fmt(iso.reference.get(name)),
                "role": _role(name, iso),
                "range": (
                    f"fails from {fmt(iso.ranges[name][1])}, passes at {fmt(iso.ranges[name][0])}"
                    if name in iso.ranges
                    else ""
                ),
            }
            for name in names
        ]
        confirmation = item.get("confirmation")
        shown.append(
            {
                "trial": iso.trial,
                "reference": iso.reference_trial,
                "probes": len(iso.probes),
                "text": iso.text or "nothing smaller than the whole configuration",
                "complete": iso.complete,
                "rows": rows,
                "confirmation": Confirmation.from_json(confirmation).text if confirmation else "",
            }
        )
    note = (
        "Delta debugging from a failing trial against the nearest passing one: each "
        "differing value flipped back, then groups of them, then each shared value changed."
    )
    return Section("minimal-causes", "Minimal causes", "minimal_causes", shown, note)


# -- charts over the trials --------------------------------------------------------------
