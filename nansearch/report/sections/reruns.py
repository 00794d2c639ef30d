"""The rerun diagnoses: a card per rerun; those that serve no conclusion get a section."""

from __future__ import annotations

from typing import Any

from markupsafe import Markup

from nansearch.diagnose.record import RerunRecord
from nansearch.report import charts
from nansearch.report.sections._base import Section, fmt, number


def rerun_card(record: RerunRecord) -> dict[str, Any]:
    """A rerun's card: its diagnosis, the facts behind it and, for a NaN born in the forward
    pass, the magnitudes of the modules that ran before it."""
    seed = record.seed_rate
    reproduced = record.reproduced
    facts = [
        ("reproduced", "yes" if reproduced is True else "no" if reproduced is False else "–"),
        (
            "fresh seeds",
            f"{seed.get('nan', '–')}/{seed.get('total', '–')} NaN" if seed else "–",
        ),
        ("first bad step", fmt(record.first_bad_step)),
        ("stage", fmt(record.stage)),
        ("module", fmt(record.module)),
    ]
    chart = None
    if record.trail and record.stage == "forward":
        rows = [(str(t.get("module")), number(t.get("absmax"))) for t in record.trail]
        chart = Markup(
            charts.value_bars(rows, "max |output| per module, last before the failure", log=True)
        )
    return {
        "trial": record.trial,
        "params": fmt(record.params),
        "diagnosis": record.diagnosis,
        "serves": record.serves_conclusion,
        "facts": facts,
        "chart": chart,
    }


def reruns_section(reruns: list[RerunRecord], conclusions: int = 0) -> Section | None:
    """The reruns that serve no conclusion on the page (the others sit under theirs)."""
    cards = [rerun_card(r) for r in reruns]
    loose = [c for c in cards if not c["serves"] or c["serves"] > conclusions]
    if not loose:
        return None
    placed = len(cards) - len(loose)
    title = "Other rerun diagnoses" if placed else "Rerun diagnoses"
    note = "Reruns of trials that no conclusion of this study speaks of." if placed else ""
    return Section("reruns", title, "reruns", loose, note)
