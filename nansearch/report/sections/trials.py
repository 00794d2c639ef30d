"""The sections drawn from the trials themselves: pairs of factors, the first bad step per
dtype, the curves of the top failures, and the table of every trial."""

from __future__ import annotations

from itertools import combinations
from typing import Any

from markupsafe import Markup

from nansearch.report import charts
from nansearch.report.sections._base import Section, factor_tables, fmt, is_nan, leveler

STEP_KEYS = ("loss", "logit_absmax", "grad_norm")
CURVES = 5
MAX_PAIRS = 10


def pairs_section(ranking: dict[str, Any], trials: list[dict[str, Any]]) -> Section | None:
    factors = [f for f in factor_tables(ranking) if len(f.levels) > 1]
    finished = [t for t in trials if t.get("outcome") != "error"]
    if len(factors) < 2 or not finished:
        return None
    maps = [leveler(f) for f in factors]
    figures = []
    for a, b in list(combinations(range(len(factors)), 2))[:MAX_PAIRS]:
        fa, fb = factors[a], factors[b]
        ya = [r.value for r in fa.levels]
        xb = [r.value for r in fb.levels]
        cells: dict[tuple[int, int], tuple[int, int]] = {}
        for trial in finished:
            params = trial.get("params", {})
            la, lb = maps[a](params.get(fa.name)), maps[b](params.get(fb.name))
            if la is None or lb is None:
                continue
            key = (ya.index(la), xb.index(lb))
            nan, total = cells.get(key, (0, 0))
            cells[key] = (nan + is_nan(trial), total + 1)
        figures.append(Markup(charts.heatmap(fb.name, xb, fa.name, ya, cells)))
    note = (
        "Each cell: NaN / finished trials with both levels, every trial of the study; "
        "darker is a higher NaN rate."
    )
    return Section("pairs", "Pairs of factors", "figures", figures, note)


def first_bad_step_section(ranking: dict[str, Any], trials: list[dict[str, Any]]) -> Section | None:
    finished = [t for t in trials if t.get("outcome") != "error" and "dtype" in t.get("params", {})]
    if not finished:
        return None
    dtype = next((f for f in factor_tables(ranking) if f.name == "dtype"), None)
    levels = [r.value for r in dtype.levels] if dtype else []
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
