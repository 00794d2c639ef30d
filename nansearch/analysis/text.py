"""The sentences a conclusion is made of: a cause with its counts (:func:`sentence`), what
an isolation found (:func:`isolation_text`, or :func:`partial_text` when the isolate
budget stopped it) and what its confirmation saw (:func:`confirmation_text`).
:mod:`nansearch.analysis.conclusions` puts them together.
"""

from __future__ import annotations

from typing import Any

from nansearch.analysis.causes import EQUALS, Cause, Condition
from nansearch.analysis.ranges import clearest_splits
from nansearch.search.confirm import Confirmation
from nansearch.search.isolate import Isolation, fmt, midpoint


def _frac(item: dict[str, int]) -> str:
    return f"{item['nan']}/{item['total']}"


def _side(condition: Condition, flip: bool = False) -> str:
    above = (condition.op == ">=") != flip
    return "above" if above else "below"


def _boundary(cause: Cause, name: str) -> str:
    passing, failing = cause.boundary.get(name, (None, None))
    parts = []
    if passing is not None:
        parts.append(f"last finite run at {fmt(passing)}")
    if failing is not None:
        parts.append(f"first NaN run at {fmt(failing)}")
    return f" ({', '.join(parts)})" if parts else ""


def _by_level(cause: Cause, condition: Condition) -> str:
    """Where a range's runs disagree by level: the levels that went NaN inside it, against
    those whose runs there all stayed finite (the factors that split them most clearly,
    :func:`~nansearch.analysis.ranges.clearest_splits`), and the levels never run inside
    it; no single edge is claimed for all of them."""
    side = _side(condition)
    split = [
        " or ".join(f"{factor}={e['value']} ({_frac(e)})" for e in bad)
        + ", vs "
        + ", ".join(f"{_frac(e)} with {e['value']}" for e in good)
        for factor, bad, good in clearest_splits(cause.by_level)
    ]
    unseen = [
        f"{factor}={e['value']}"
        for factor, entries in cause.by_level.items()
        for e in entries
        if not e["total"]
    ]
    out = ""
    if split:
        out += f"; {side} it, NaN only with " + "; with ".join(split)
        if len(split) > 1:
            out += " (too few runs yet to tell which of these matters)"
    if unseen:
        out += f"; not yet run {side} it with " + ", ".join(unseen)
    return out


def sentence(cause: Cause) -> str:
    """The cause and its counts, as a sentence."""
    runs = f"{cause.nan}/{cause.total} runs NaN"
    others = {o["factor"]: o for o in cause.others}
    if len(cause.conditions) == 1:
        (c,) = cause.conditions
        verb = "alone is sufficient" if cause.sufficient else "raises the NaN rate"
        if c.op == EQUALS:
            contrast = f"{_frac(others[c.factor])} with any other {c.factor} and no other cause"
        else:
            contrast = (
                f"{_frac(others[c.factor])} {_side(c, flip=True)} it with no other cause"
                f"{_boundary(cause, c.factor)}"
            )
        return f"{c.text} {verb}: {runs}, vs {contrast}{_by_level(cause, c)}."
    ranged = [c for c in cause.conditions if c.op != EQUALS]
    fixed = [c for c in cause.conditions if c.op == EQUALS]
    if len(cause.conditions) > 2:
        return _sentence_of_many(cause, runs)
    if len(ranged) == 1 and len(fixed) == 1:
        r, a = ranged[0], fixed[0]
        return (
            f"{r.factor} matters only with {a.text}, {_side(r)} {fmt(r.value)}: {runs}, "
            f"vs {_frac(others[r.factor])} for {a.text} with {r.factor} {_side(r, flip=True)} "
            f"it{_boundary(cause, r.factor)}; {others[a.factor]['text']}: "
            f"{_frac(others[a.factor])} NaN."
        )
    first, second = cause.conditions
    alone_first, alone_second = others[second.factor], others[first.factor]
    rate = cause.nan / cause.total

    def low(item: dict[str, int]) -> bool:
        return not item["total"] or item["nan"] / item["total"] <= rate / 2

    lead = "neither alone" if low(alone_first) and low(alone_second) else "each alone less often"
    return (
        f"{first.text} together with {second.text}: {runs}; {lead} "
        f"({first.text} without {second.text}: {_frac(alone_first)}, "
        f"{second.text} without {first.text}: {_frac(alone_second)})."
    )


def _sentence_of_many(cause: Cause, runs: str) -> str:
    """Three conditions at once: the runs with all of them, against the runs that meet all
    but one (no other cause), one contrast per condition left out. A range left out
    reads as its other side, with its boundary."""
    rate = cause.nan / cause.total
    contrasts = cause.others
    low = all(not o["total"] or o["nan"] / o["total"] <= rate / 2 for o in contrasts)
    lead = "none of them without the others" if low else "less often without all of them"
    parts = [
        f"{o['text']}: {_frac(o)}"
        + (_boundary(cause, o["factor"]) if o["factor"] in cause.boundary else "")
        for o in contrasts
    ]
    return (
        f"{cause.text}, all {len(cause.conditions)} together: {runs}; {lead} ({'; '.join(parts)})."
    )


def isolation_text(iso: Isolation, counted: dict[str, Any] | None = None) -> str:
    """What isolation found. ``counted`` maps a factor to the range edge the cause's counts
    gave it: isolation's own edge for that factor, found by bisection, is then named as such,
    so two edges of one factor never read as one claim."""
    if not iso.complete:
        return partial_text(iso)
    counted = counted or {}
    how = ""
    if iso.needed and set(iso.needed) <= set(iso.minimal):
        how = "; flipping " + " or ".join(iso.needed) + " back alone fixes it"
    elif iso.minimal:
        how = "; no single flip fixed it (another cause was present too)"
    if iso.context:
        how += "; changing " + " or ".join(iso.context) + ", which it shared, fixes it too"
    ranges = "".join(
        f"; {name} fails from {fmt(failing)}, passes at {fmt(passing)}"
        + (
            f": bisection puts the edge at {fmt(midpoint(passing, failing))}, where the runs' "
            f"counts above put it at {fmt(counted[name])}"
            if name in counted
            else ""
        )
        for name, (passing, failing) in iso.ranges.items()
    )
    return (
        f"Isolated from trial {iso.trial} against passing trial {iso.reference_trial} "
        f"in {len(iso.probes)} probes: needs {iso.text}{how}{ranges}."
    )


def partial_text(iso: Isolation) -> str:
    """An isolation the budget stopped: what its probes showed needed, and what it did not
    rule out yet; never more than a probe showed."""
    shown = []
    for name in iso.shown:
        if name in iso.needed:
            shown.append(f"{iso.describe(name)} (flipping it back alone fixes it)")
            continue
        to = next((p["to"] for p in iso.probes if p.get("changed") == name), None)
        shown.append(
            f"{iso.describe(name)} (changing it, which both runs shared, to {to} fixes it)"
        )
    untested = [iso.describe(n) for n in iso.minimal if n not in iso.shown]
    text = "; ".join(f"needs {part}" for part in shown) or "no probe fixed it yet"
    if untested:
        text += f"; {', '.join(untested)} not yet ruled out"
    return (
        f"Isolated from trial {iso.trial} against passing trial {iso.reference_trial} in "
        f"{len(iso.probes)} probes, stopped early (the isolate budget was spent): {text}."
    )


def confirmation_text(confirmation: Confirmation | None) -> str:
    if confirmation is None or not confirmation.runs:
        return ""
    return f" Confirmation of trial {confirmation.trial}: {confirmation.text}."
