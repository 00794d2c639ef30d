"""The report's parts on what to do next: each conclusion's verified fixes, the runs at
risk of a later NaN, and the factors the user's code never reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nansearch.analysis.conclusion import Conclusion
from nansearch.diagnose.record import RerunRecord
from nansearch.report.sections._base import Section, fmt
from nansearch.report.sections.reruns import rerun_card
from nansearch.search.fix import Fix, tried


def conclusions_section(
    ranking: dict[str, Any], reruns: Sequence[RerunRecord] = ()
) -> Section | None:
    items = [Conclusion.from_json(c) for c in ranking.get("conclusions") or []]
    if not items:
        return None
    cards = [rerun_card(r) for r in reruns]
    shown = [
        {
            "number": i + 1,
            "text": item.text,
            "fixes": fixes(ranking, i),
            "none_held": tried(own_fixes(ranking, i)),
            "reruns": [c for c in cards if c["serves"] == i + 1],
        }
        for i, item in enumerate(items)
    ]
    note = (
        "Conclusions rest on every run, confirmation and isolation probes included; "
        "the diagnoses of `nansearch rerun` sit under the conclusion each rerun serves."
        if any(c["reruns"] for c in shown)
        else "Conclusions rest on every run, confirmation and isolation probes included."
    )
    return Section("conclusions", "Conclusions", "conclusions", shown, note)


def at_risk_section(ranking: dict[str, Any]) -> Section | None:
    """The finite runs whose trend would pass their dtype's range within the horizon."""
    items = ranking.get("at_risk") or []
    if not items:
        return None
    rows = [
        {
            "trial": item.get("trial"),
            "values": fmt(item.get("params") or {}),
            "signal": str(item.get("signal")),
            "trend": f"{item.get('trend')}, {item.get('rate')}",
            "last": fmt(item.get("last")),
            "limit": fmt(item.get("limit")),
            "step": str(item.get("predicted_step")),
        }
        for item in items
    ]
    note = (
        f"Finite runs whose max |logit|, gradient norm or loss-scale drops, if the trend of "
        f"their trail held, would pass their dtype's range within {ranking.get('horizon')} "
        "steps. A forecast, not a NaN: they count toward no cause."
    )
    return Section("at-risk", "At risk", "at_risk", rows, note)


def ignored_section(ranking: dict[str, Any]) -> Section | None:
    """The factors the user's own code gives no sign of reading."""
    items = ranking.get("ignored") or []
    if not items:
        return None
    rows = [{"factor": str(i.get("factor")), "text": str(i.get("text", ""))} for i in items]
    note = (
        "Every level of these factors ran the same steps as the rest of the configuration, "
        "to the bit: their rows in the ranking say nothing about them."
    )
    return Section("ignored", "Ignored factors", "ignored", rows, note)


def own_fixes(ranking: dict[str, Any], index: int) -> list[Fix]:
    """The fixes of conclusion ``index``."""
    return [
        Fix.from_json(fix) for fix in ranking.get("fixes") or [] if fix.get("conclusion") == index
    ]


def fixes(ranking: dict[str, Any], index: int) -> list[dict[str, Any]]:
    """The fixes of conclusion ``index``, as its template lists them under it."""
    return [
        {
            "verified": fix.verdict == "verified",
            "verdict": fix.verdict,
            "overrides": " ".join(fix.overrides),
            "label": fix.label,
            "source": "the audit" if fix.source == "audit" else "smallest change",
            "steps": fix.steps,
            "seeds": fmt(fix.seeds),
            "why": fix.why,
            "rerun": fix.rerun,
        }
        for fix in own_fixes(ranking, index)
    ]
