"""The sections of ``report.html``, each a function of the study's files that returns
its HTML (or None when the study has nothing for it), and the small helpers they share.
:mod:`nansearch.report.page` reads the study and puts the page together.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from itertools import combinations
from typing import Any

from nansearch.analysis.ranking import Bins
from nansearch.report import charts

SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}
STEP_KEYS = ("loss", "logit_absmax", "grad_norm")
CURVES = 5
MAX_PAIRS = 10


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


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; cells are already-escaped HTML."""
    thead = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{thead}</tr></thead><tbody>{body}</tbody></table>'


def dict_table(rows: list[dict[str, Any]]) -> str:
    """A table of dicts whose keys are not known in advance (from later analyses)."""
    shown = []
    for row in rows:
        row = dict(row)
        if "factors" in row and "values" in row:
            factors, values = row.pop("factors"), row.pop("values")
            if isinstance(factors, (list, tuple)) and isinstance(values, (list, tuple)):
                pairs = " & ".join(f"{f}={fmt(v)}" for f, v in zip(factors, values, strict=False))
            else:
                pairs = f"{fmt(factors)}={fmt(values)}"
            row = {"condition": pairs, **row}
        if "rate" in row and isinstance(row["rate"], (int, float)):
            row["rate"] = fmt_rate(row["rate"])
        shown.append(row)
    head = list(dict.fromkeys(key for row in shown for key in row))
    return table(
        [escape(str(h)) for h in head],
        [[escape(fmt(row.get(key))) for key in head] for row in shown],
    )


@dataclass
class Section:
    anchor: str
    title: str
    html: str


def section(anchor: str, title: str, body: str, note: str = "") -> Section:
    note = f'<p class="note">{note}</p>' if note else ""
    html = f'<section id="{anchor}"><h2>{escape(title)}</h2>{note}{body}</section>'
    return Section(anchor, title, html)


# -- sections ---------------------------------------------------------------------------


def conclusions_section(ranking: dict[str, Any]) -> Section | None:
    items = ranking.get("conclusions") or []
    if not items:
        return None
    from nansearch.report.actions import fixes_html

    lis = "".join(
        f"<li>{escape(str(item.get('text', '')))}{fixes_html(ranking, i)}</li>"
        for i, item in enumerate(items)
    )
    return section("conclusions", "Conclusions", f'<ol class="conclusions">{lis}</ol>')


def ranking_section(ranking: dict[str, Any]) -> Section | None:
    importance = ranking.get("importance") or {}
    head = ["rank", "factor", "effect", "level", "NaN / total", "rate", "95% interval", "errors"]
    if importance:
        head.insert(3, "importance")
    rows = []
    for rank, factor in enumerate(ranking.get("factors", []), 1):
        levels = sorted(factor["levels"], key=lambda r: -(r["rate"] or 0))
        for j, row in enumerate(levels):
            lead = (
                [str(rank), escape(factor["name"]), f"{factor['effect']:.2f}"]
                if j == 0
                else [""] * 3
            )
            if importance:
                lead.append(fmt(importance.get(factor["name"])) if j == 0 else "")
            interval = f"{row['ci_low']:.2f}–{row['ci_high']:.2f}" if row["total"] else "–"
            rows.append(
                [
                    *lead,
                    escape(str(row["value"])),
                    f"{row['nan']} / {row['total']}",
                    fmt_rate(row["rate"]),
                    interval,
                    str(row.get("errors", 0) or ""),
                ]
            )
    note = (
        "Factors in order of effect (the spread of NaN rates across their levels). "
        "Trials that ended in an error count apart, never as NaN or as finite."
    )
    return section("ranking", "Ranking", table(head, rows, "ranking"), note)


def rates_section(ranking: dict[str, Any]) -> Section | None:
    charts_html = "".join(
        f"<figure>{charts.rate_bars(f['levels'], 'NaN rate per ' + f['name'] + ' level')}</figure>"
        for f in ranking.get("factors", [])
    )
    note = (
        "Bars: the share of finished trials that went non-finite; "
        "whiskers: the Wilson 95% interval."
    )
    return section("rates", "NaN rate per level", f'<div class="grid">{charts_html}</div>', note)


def importance_section(ranking: dict[str, Any]) -> Section | None:
    importance = ranking.get("importance") or {}
    if not importance:
        return None
    rows = sorted(((str(k), float(v)) for k, v in importance.items()), key=lambda r: -r[1])
    chart = charts.value_bars(rows, "fANOVA importance for the instability score")
    return section("importance", "Importance", f"<figure>{chart}</figure>")


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
        figures.append(f"<figure>{charts.heatmap(fb['name'], xb, fa['name'], ya, cells)}</figure>")
    note = "Each cell: NaN / finished trials with both levels; darker is a higher NaN rate."
    return section("pairs", "Pairs of factors", f'<div class="grid">{"".join(figures)}</div>', note)


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
    steps = max(int(t.get("steps") or len(t.get("loss", [])) or 1) for t in finished)
    chart = charts.step_dots(rows, steps, "First non-finite step per dtype")
    note = "Each dot: the trials of that dtype whose first non-finite value came at that step."
    return section("first-bad-step", "First bad step by dtype", f"<figure>{chart}</figure>", note)


def curves_section(trials: list[dict[str, Any]]) -> Section | None:
    failures = [t for t in trials if is_nan(t) and t.get("loss")]
    if not failures:
        return None
    failures.sort(key=lambda t: (-len(t["loss"]), -(t.get("score") or 0), t.get("number") or 0))
    if len(failures[0]["loss"]) < 2:
        note = "Every non-finite trial failed at its first step: there is no trend to draw."
        return section("curves", "Loss and logit magnitude of the top failures", "", note)
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
    legend = "".join(
        f'<li><span class="swatch" style="background:{charts.PALETTE[i % len(charts.PALETTE)]}">'
        f"</span>{escape(label)} — {escape(str(t.get('outcome')))} at step "
        f"{escape(fmt(t.get('first_bad_step')))}</li>"
        for i, (label, t) in enumerate(top)
    )
    body = (
        f'<div class="grid"><figure>{loss}</figure><figure>{logits}</figure></div>'
        f'<ul class="legend">{legend}</ul>'
    )
    note = (
        "The non-finite trials that ran longest before failing, so the trend toward "
        "the failure shows; × marks the non-finite value."
    )
    return section("curves", "Loss and logit magnitude of the top failures", body, note)


def audit_section(audit: dict[str, Any] | None) -> Section | None:
    if audit is None:
        return None
    findings = audit.get("findings") or []
    if not findings:
        return section("audit", "Audit", "<p>The audit found nothing to report.</p>")
    findings = sorted(findings, key=lambda f: SEVERITY_ORDER.get(f.get("severity"), 3))
    rows = [
        [
            f'<span class="badge {escape(str(f.get("severity", "")))}">'
            f"{escape(str(f.get('severity', '')))}</span>",
            escape(str(f.get("check", ""))),
            escape(str(f.get("subject", ""))),
            escape(str(f.get("found", ""))),
            escape(str(f.get("why", ""))),
            escape(str(f.get("fix", ""))),
        ]
        for f in findings
    ]
    head = ["severity", "check", "subject", "found", "why it leads to NaN", "fix"]
    return section("audit", "Audit findings", table(head, rows, "audit"))


def rerun_card(record: dict[str, Any]) -> str:
    params = ", ".join(f"{k}={fmt(v)}" for k, v in (record.get("params") or {}).items())
    seed = record.get("seed_rate") or {}
    facts = [
        ("reproduced", {True: "yes", False: "no"}.get(record.get("reproduced"), "–")),
        ("across seeds", f"{seed.get('nan', '–')}/{seed.get('total', '–')} NaN" if seed else "–"),
        ("first bad step", fmt(record.get("first_bad_step"))),
        ("stage", fmt(record.get("stage"))),
        ("module", fmt(record.get("module"))),
    ]
    dl = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts)
    trail = record.get("trail") or []
    chart = ""
    if trail:
        rows = [(str(t.get("module")), number(t.get("absmax"))) for t in trail]
        title = "max |output| per module, last before the failure"
        chart = f"<figure>{charts.value_bars(rows, title, log=True)}</figure>"
    return (
        f'<article class="rerun"><h3>Trial {escape(fmt(record.get("trial")))}</h3>'
        f'<p class="params">{escape(params)}</p>'
        f'<p class="diagnosis">{escape(str(record.get("diagnosis", "")))}</p>'
        f"<dl>{dl}</dl>{chart}</article>"
    )


def reruns_section(reruns: list[dict[str, Any]]) -> Section | None:
    if not reruns:
        return None
    return section("reruns", "Rerun diagnoses", "".join(rerun_card(r) for r in reruns))


def trials_section(trials: list[dict[str, Any]]) -> Section | None:
    if not trials:
        return None
    names = list(dict.fromkeys(k for t in trials for k in t.get("params", {})))
    head = [
        "trial",
        "phase",
        *[escape(n) for n in names],
        "outcome",
        "first bad step",
        "score",
        "seconds",
        "error",
    ]
    rows = []
    for t in trials:
        params = t.get("params", {})
        error = (t.get("error") or "").splitlines()[0] if t.get("error") else ""
        rows.append(
            [
                escape(fmt(t.get("number"))),
                escape(str(t.get("phase", ""))),
                *[escape(fmt(params.get(n))) for n in names],
                f'<span class="{"nan" if is_nan(t) else ""}">{escape(str(t.get("outcome")))}'
                "</span>",
                escape(fmt(t.get("first_bad_step"))),
                escape(fmt(t.get("score"))),
                escape(fmt(t.get("seconds"))),
                escape(error),
            ]
        )
    body = (
        f"<details><summary>{len(trials)} trials</summary>{table(head, rows, 'trials')}</details>"
    )
    return section("trials", "Trials", body)


def config_section(config_text: str | None) -> Section | None:
    if not config_text:
        return None
    body = f"<details><summary>config.yaml</summary><pre>{escape(config_text)}</pre></details>"
    return section("config", "Configuration", body)
