"""The sections of ``report.html``: each a function of the study's files that returns the
data its template shows (or None when the study has nothing for it), and the helpers they
share. The markup lives in the templates (``templates/sections/<name>.html``); charts are
inline SVG from :mod:`nansearch.report.charts`. :mod:`nansearch.report.page` reads the study and puts
the page together.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from markupsafe import Markup, escape

from nansearch.analysis.ranking import Bins
from nansearch.report import charts

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
STEP_KEYS = ("loss", "logit_absmax", "grad_norm")
CURVES = 5
MAX_PAIRS = 10
TRIAL_REFERENCE = re.compile(r"\b(trials?) ((?:\d+)(?:, \d+)*)")


# -- helpers ----------------------------------------------------------------------------


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


def leveler(factor: dict[str, Any]) -> Callable[[Any], str | None]:
    """Maps a trial's value of ``factor`` to the ranking's level label."""
    labels = [str(row["value"]) for row in factor["levels"]]
    if factor.get("kind") != "range":
        return lambda value: str(value) if str(value) in labels else None
    bins = range_bins(labels)

    def level(value: Any) -> str | None:
        if bins is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return bins.label(bins.index(float(value)))

    return level


def range_bins(labels: list[str]) -> Bins | None:
    """The log-spaced bins whose labels ("low..high") the ranking shows, or None."""
    try:
        low, high = float(labels[0].split("..")[0]), float(labels[-1].split("..")[1])
    except (IndexError, ValueError):
        return None
    bins = Bins.log_spaced(low, high, len(labels))
    return bins if bins.labels() == labels else None


@dataclass
class Section:
    """One section of the page: its anchor, title, template and what the template shows."""

    anchor: str
    title: str
    template: str  # templates/sections/<template>.html
    data: Any = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# -- conclusions and the reruns that serve them -----------------------------------------


def rerun_card(record: dict[str, Any]) -> dict[str, Any]:
    """A rerun's card: its diagnosis, the facts behind it and, for a NaN born in the forward
    pass, the magnitudes of the modules that ran before it."""
    seed = record.get("seed_rate") or {}
    facts = [
        ("reproduced", {True: "yes", False: "no"}.get(record.get("reproduced"), "–")),
        (
            "fresh seeds",
            f"{seed.get('nan', '–')}/{seed.get('total', '–')} NaN" if seed else "–",
        ),
        ("first bad step", fmt(record.get("first_bad_step"))),
        ("stage", fmt(record.get("stage"))),
        ("module", fmt(record.get("module"))),
    ]
    chart = None
    trail = record.get("trail") or []
    if trail and record.get("stage") == "forward":
        rows = [(str(t.get("module")), number(t.get("absmax"))) for t in trail]
        chart = Markup(
            charts.value_bars(rows, "max |output| per module, last before the failure", log=True)
        )
    serves = record.get("serves") or {}
    return {
        "trial": record.get("trial"),
        "params": fmt(record.get("params") or {}),
        "diagnosis": str(record.get("diagnosis", "")),
        "serves": serves.get("conclusion"),
        "facts": facts,
        "chart": chart,
    }


def reruns_section(reruns: list[dict[str, Any]], conclusions: int = 0) -> Section | None:
    """The reruns that serve no conclusion on the page (the others sit under theirs)."""
    cards = [rerun_card(r) for r in reruns]
    loose = [c for c in cards if not c["serves"] or c["serves"] > conclusions]
    if not loose:
        return None
    placed = len(cards) - len(loose)
    title = "Other rerun diagnoses" if placed else "Rerun diagnoses"
    note = "Reruns of trials that no conclusion of this study speaks of." if placed else ""
    return Section("reruns", title, "reruns", loose, note)


# -- the ranking ------------------------------------------------------------------------


def ranking_section(ranking: dict[str, Any]) -> Section | None:
    importance = ranking.get("importance") or {}
    rows = []
    for rank, factor in enumerate(ranking.get("factors", []), 1):
        levels = sorted(factor["levels"], key=lambda r: -(r["rate"] or 0))
        for j, row in enumerate(levels):
            alone = row.get("alone") or {}
            rows.append(
                {
                    "first": j == 0,
                    "rank": rank,
                    "factor": factor["name"],
                    "factor_effect": f"{factor['effect']:.2f}",
                    "importance": fmt(importance.get(factor["name"])),
                    "level": str(row["value"]),
                    "counts": f"{row['nan']} / {row['total']}",
                    "rate": fmt_rate(row["rate"]),
                    "interval": f"{row['ci_low']:.2f}–{row['ci_high']:.2f}"
                    if row["total"]
                    else "–",
                    "alone": f"{alone.get('nan', 0)} / {alone.get('total', 0)}",
                    "effect": "–" if row.get("effect") is None else f"{row['effect']:+.2f}",
                    "p": fmt_p(row.get("p_value")),
                    "errors": str(row.get("errors", 0) or ""),
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
        Markup(charts.rate_bars(f["levels"], "NaN rate per " + f["name"] + " level"))
        for f in ranking.get("factors", [])
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
    items = ranking.get("interactions") or []
    if not items:
        return None
    shown = [
        {
            "text": str(item.get("text", "")),
            "p": fmt_p(item.get("p_value")),
            "p_adjusted": fmt_p(item.get("p_adjusted")),
        }
        for item in items
    ]
    note = (
        "Pairs of values whose runs together are NaN more often than either gives alone; "
        "p is one-sided Fisher's exact test, adjusted for the pairs tried."
    )
    return Section("interactions", "Interactions", "interactions", shown, note)


def _role(name: str, iso: dict[str, Any]) -> str:
    if name in (iso.get("needed_alone") or []):
        return "needed: flipping it back alone fixes the failure"
    if name in (iso.get("needed_shared") or []):
        return "needed: shared with the passing run, and changing it fixes the failure"
    if name in (iso.get("minimal") or {}):
        return "needed, together with the others"
    return "not needed"


def minimal_causes_section(ranking: dict[str, Any]) -> Section | None:
    """What isolation found, one item per failing trial: a sentence and a small table."""
    items = ranking.get("minimal_causes") or []
    if not items:
        return None
    shown = []
    for iso in items:
        failing, reference = iso.get("failing") or {}, iso.get("reference") or {}
        names = list(iso.get("differences") or [])
        names += [n for n in iso.get("needed_shared") or [] if n not in names]
        ranges = iso.get("ranges") or {}
        rows = [
            {
                "factor": name,
                "failing": fmt(failing.get(name)),
                "passing": fmt(reference.get(name)),
                "role": _role(name, iso),
                "range": (
                    f"fails from {fmt(ranges[name]['fails'])}, passes at "
                    f"{fmt(ranges[name]['passes'])}"
                    if name in ranges
                    else ""
                ),
            }
            for name in names
        ]
        confirmation = iso.get("confirmation") or {}
        shown.append(
            {
                "trial": iso.get("trial"),
                "reference": iso.get("reference_trial"),
                "probes": len(iso.get("probes") or []),
                "text": str(iso.get("text") or "nothing smaller than the whole configuration"),
                "complete": bool(iso.get("complete")),
                "rows": rows,
                "confirmation": str(confirmation.get("text") or ""),
            }
        )
    note = (
        "Delta debugging from a failing trial against the nearest passing one: each "
        "differing value flipped back, then groups of them, then each shared value changed."
    )
    return Section("minimal-causes", "Minimal causes", "minimal_causes", shown, note)


# -- charts over the trials --------------------------------------------------------------


def pairs_section(ranking: dict[str, Any], trials: list[dict[str, Any]]) -> Section | None:
    factors = [f for f in ranking.get("factors", []) if len(f["levels"]) > 1]
    finished = [t for t in trials if t.get("outcome") != "error"]
    if len(factors) < 2 or not finished:
        return None
    maps = [leveler(f) for f in factors]
    figures = []
    for a, b in list(combinations(range(len(factors)), 2))[:MAX_PAIRS]:
        fa, fb = factors[a], factors[b]
        ya = [str(r["value"]) for r in fa["levels"]]
        xb = [str(r["value"]) for r in fb["levels"]]
        cells: dict[tuple[int, int], tuple[int, int]] = {}
        for trial in finished:
            params = trial.get("params", {})
            la, lb = maps[a](params.get(fa["name"])), maps[b](params.get(fb["name"]))
            if la is None or lb is None:
                continue
            key = (ya.index(la), xb.index(lb))
            nan, total = cells.get(key, (0, 0))
            cells[key] = (nan + is_nan(trial), total + 1)
        figures.append(Markup(charts.heatmap(fb["name"], xb, fa["name"], ya, cells)))
    note = (
        "Each cell: NaN / finished trials with both levels, every trial of the study; "
        "darker is a higher NaN rate."
    )
    return Section("pairs", "Pairs of factors", "figures", figures, note)


def first_bad_step_section(ranking: dict[str, Any], trials: list[dict[str, Any]]) -> Section | None:
    finished = [t for t in trials if t.get("outcome") != "error" and "dtype" in t.get("params", {})]
    if not finished:
        return None
    dtype = next((f for f in ranking.get("factors", []) if f["name"] == "dtype"), None)
    levels = [str(r["value"]) for r in dtype["levels"]] if dtype else []
    levels += sorted({str(t["params"]["dtype"]) for t in finished} - set(levels))
    rows = []
    for level in levels:
        these = [t for t in finished if str(t["params"]["dtype"]) == level]
        bad = [
            int(t["first_bad_step"])
            for t in these
            if is_nan(t) and t.get("first_bad_step") is not None
        ]
        rows.append((level, bad, len(these)))
    counts = [{"dtype": level, "nan": f"{len(bad)}/{total} NaN"} for level, bad, total in rows]
    steps_seen = {step for _, bad, _ in rows for step in bad}
    if len(steps_seen) <= 1:
        when = f"at step {next(iter(steps_seen))}" if steps_seen else "at no step"
        note = (
            f"Every NaN run went non-finite {when}, so there is no spread to plot; with runs "
            "that fail later, a chart here shows at which step each dtype's runs first went "
            "non-finite."
        )
        return Section("first-bad-step", "First bad step by dtype", "step_counts", counts, note)
    steps = max(int(t.get("steps") or len(t.get("loss", [])) or 1) for t in finished)
    chart = Markup(charts.step_dots(rows, steps, "First non-finite step per dtype"))
    note = "Each dot: the trials of that dtype whose first non-finite value came at that step."
    return Section("first-bad-step", "First bad step by dtype", "figures", [chart], note)


def curves_section(trials: list[dict[str, Any]]) -> Section | None:
    """The loss and max |logit| of the failures that ran longest; not drawn when every
    failure came at its first step, where there is no trend to show."""
    failures = [t for t in trials if is_nan(t) and t.get("loss")]
    if not failures:
        return None
    failures.sort(key=lambda t: (-len(t["loss"]), -(t.get("score") or 0), t.get("number") or 0))
    if len(failures[0]["loss"]) < 2:
        return None
    top = [
        (
            f"trial {t.get('number')}: "
            + ", ".join(f"{k}={fmt(v)}" for k, v in t.get("params", {}).items()),
            t,
        )
        for t in failures[:CURVES]
    ]
    steps = max(int(t.get("steps") or len(t["loss"])) for _, t in top)
    loss = charts.line_chart([(label, t["loss"]) for label, t in top], "loss", steps)
    logits = charts.line_chart(
        [(label, t["logit_absmax"]) for label, t in top], "max |logit| (log scale)", steps, log=True
    )
    legend = [
        {
            "color": charts.PALETTE[i % len(charts.PALETTE)],
            "label": label,
            "outcome": str(t.get("outcome")),
            "step": fmt(t.get("first_bad_step")),
        }
        for i, (label, t) in enumerate(top)
    ]
    note = (
        "The non-finite trials that ran longest before failing, so the trend toward "
        "the failure shows; × marks the non-finite value."
    )
    return Section(
        "curves",
        "Loss and logit magnitude of the top failures",
        "curves",
        [Markup(loss), Markup(logits)],
        note,
        {"legend": legend},
    )


# -- the audit, the trials, the configuration --------------------------------------------


def audit_section(audit: dict[str, Any] | None) -> Section | None:
    if audit is None:
        return None
    findings = audit.get("findings") or []
    findings = sorted(findings, key=lambda f: SEVERITY_ORDER.get(f.get("severity"), 3))
    rows = [
        {
            key: str(f.get(key, ""))
            for key in ("severity", "check", "subject", "found", "why", "fix")
        }
        for f in findings
    ]
    return Section("audit", "Audit findings", "audit", rows)


def trials_section(trials: list[dict[str, Any]]) -> Section | None:
    if not trials:
        return None
    names = list(dict.fromkeys(k for t in trials for k in t.get("params", {})))
    rows = []
    for t in trials:
        params = t.get("params", {})
        error = (t.get("error") or "").splitlines()[0] if t.get("error") else ""
        rows.append(
            {
                "number": t.get("number"),
                "phase": str(t.get("phase", "")),
                "probes": fmt(t.get("origin")) if t.get("origin") is not None else "",
                "values": [fmt(params.get(n)) for n in names],
                "nan": is_nan(t),
                "outcome": str(t.get("outcome")),
                "first_bad_step": fmt(t.get("first_bad_step")),
                "score": fmt(t.get("score")),
                "seconds": fmt(t.get("seconds")),
                "error": error,
            }
        )
    note = "probes: for a confirmation or isolation run, the failing trial it reruns or varies."
    return Section("trials", "Trials", "trials", rows, note, {"names": names})


def config_section(config_text: str | None) -> Section | None:
    if not config_text:
        return None
    return Section("config", "Configuration", "config", config_text)
