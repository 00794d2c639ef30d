"""The report's parts on what to do next: each conclusion's verified fixes, and the runs
at risk of a later NaN."""

from __future__ import annotations

from html import escape
from typing import Any

from nansearch.report.sections import Section, fmt, section, table


def at_risk_section(ranking: dict[str, Any]) -> Section | None:
    """The finite runs whose trend would pass their dtype's range within the horizon."""
    items = ranking.get("at_risk") or []
    if not items:
        return None
    head = ["trial", "values", "signal", "trend", "last", "limit", "predicted step"]
    rows = [
        [
            escape(str(item.get("trial"))),
            escape(fmt(item.get("params") or {})),
            escape(str(item.get("signal"))),
            escape(f"{item.get('trend')}, {item.get('rate')}"),
            fmt(item.get("last")),
            fmt(item.get("limit")),
            str(item.get("predicted_step")),
        ]
        for item in items
    ]
    note = (
        f"Finite runs whose max |logit|, gradient norm or loss-scale drops, if the trend of "
        f"their trail held, would pass their dtype's range within {ranking.get('horizon')} "
        "steps. A forecast, not a NaN: they count toward no cause."
    )
    return section("at-risk", "At risk", table(head, rows, "at-risk"), note)


def fixes_html(ranking: dict[str, Any], index: int) -> str:
    """The fixes of conclusion ``index``, as a list to put under it."""
    fixes = [f for f in ranking.get("fixes") or [] if f.get("conclusion") == index]
    if not fixes:
        return ""
    items = "".join(
        f'<li class="fix {"verified" if fix.get("verified") else "insufficient"}">'
        f"<b>{escape(str(fix.get('verdict')))}</b>: "
        f"<code>{escape(' '.join(fix.get('overrides') or []))}</code> "
        f"({'the audit' if fix.get('source') == 'audit' else 'smallest change'}; "
        f"{fix.get('steps')} steps, seeds {escape(fmt(fix.get('seeds') or []))}): "
        f"{escape(str(fix.get('why', '')))}</li>"
        for fix in fixes
    )
    return f'<ul class="fixes">{items}</ul>'
