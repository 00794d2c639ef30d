"""``report.html``: a study's findings on one page that opens from a file, with no network.

Built from what the study folder holds: ``ranking.json`` (and, when present, its
``conclusions``, ``importance``, ``interactions`` and ``minimal_causes``),
``trials.jsonl``, ``audit.json``, ``reruns/*.json`` and ``config.yaml``. Charts are
inline SVG; there is no script. Every string that came from the user (level names,
checkpoint paths, errors, findings) is escaped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from nansearch import jsonl
from nansearch.config import NansearchError
from nansearch.report.actions import at_risk_section
from nansearch.report.sections import (
    STEP_KEYS,
    audit_section,
    conclusions_section,
    config_section,
    curves_section,
    dict_table,
    first_bad_step_section,
    importance_section,
    number,
    pairs_section,
    ranking_section,
    rates_section,
    reruns_section,
    section,
    trials_section,
)


@dataclass
class StudyFiles:
    """What a study folder holds, read once."""

    name: str
    ranking: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    reruns: list[dict[str, Any]] = field(default_factory=list)
    config_text: str | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NansearchError(f"{path}: not valid JSON ({exc})") from None


def read_trial_lines(path: Path) -> list[dict[str, Any]]:
    """``trials.jsonl`` as dicts, the last line per trial number winning, in trial order."""
    trials: dict[Any, dict[str, Any]] = {}
    for trial in jsonl.read(path):
        for key in STEP_KEYS:  # non-finite values are stored as "nan", "inf", "-inf"
            trial[key] = [number(v) for v in trial.get(key) or []]
        trials[trial.get("number")] = trial
    return [trials[k] for k in sorted(trials, key=lambda n: (n is None, n))]


def load_study(study_dir: Path) -> StudyFiles:
    study_dir = Path(study_dir)
    ranking_path = study_dir / "ranking.json"
    if not ranking_path.is_file():
        raise NansearchError(
            f"{ranking_path}: no ranking yet; a sweep writes it when its trials are done"
        )
    ranking = _read_json(ranking_path)
    trials_path = study_dir / "trials.jsonl"
    audit_path = study_dir / "audit.json"
    config_path = study_dir / "config.yaml"
    return StudyFiles(
        name=str(ranking.get("study") or study_dir.name),
        ranking=ranking,
        trials=read_trial_lines(trials_path) if trials_path.is_file() else [],
        audit=_read_json(audit_path) if audit_path.is_file() else None,
        reruns=sorted(
            (_read_json(p) for p in sorted((study_dir / "reruns").glob("*.json"))),
            key=lambda r: (r.get("trial") is None, r.get("trial")),
        ),
        config_text=config_path.read_text() if config_path.is_file() else None,
    )


def write_report(study_dir: Path) -> Path:
    """Build ``report.html`` in the study folder from its files; returns its path."""
    study = load_study(study_dir)
    path = Path(study_dir) / "report.html"
    path.write_text(render(study), encoding="utf-8")
    return path


# -- the page ---------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:16px 24px;color:#222}
h1{margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
nav a{margin-right:1em}.note{color:#555;font-size:.92em}
table{border-collapse:collapse;font-size:.92em;margin:.5em 0}
th,td{border-bottom:1px solid #e5e5e5;padding:3px 10px;text-align:left;vertical-align:top}
th{background:#f6f6f6}.grid{display:flex;flex-wrap:wrap;gap:8px 24px}
figure{margin:6px 0}.conclusions li{font-size:1.08em;margin:.3em 0}
.summary span{display:inline-block;margin-right:1.2em}.nan{color:#c0392b;font-weight:600}
.badge{border-radius:3px;padding:1px 6px;color:#fff;font-size:.85em}
.badge.error{background:#c0392b}.badge.warning{background:#d68910}.badge.info{background:#2471a3}
.rerun{border:1px solid #ddd;border-radius:6px;padding:8px 14px;margin:10px 0}
.rerun h3{margin:.2em 0}.params{color:#555;font-family:monospace}
.diagnosis{font-size:1.08em;font-weight:600}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:.4em 0}
dt{color:#666}dd{margin:0}
.legend{list-style:none;padding:0;font-size:.9em}.legend li{margin:2px 0}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:middle}
pre{background:#f6f6f6;padding:8px;overflow:auto}
.fixes{font-size:.88em;margin:.2em 0 .6em}.fix.verified b{color:#1e8449}
.fix.insufficient b{color:#c0392b}
"""


def phases_note(ranking: dict[str, Any]) -> str:
    """Trials per phase, and where the stopping rule ended the search."""
    phases = ", ".join(f"{escape(str(k))} {v}" for k, v in (ranking.get("phases") or {}).items())
    settled = ranking.get("settled")
    if settled:
        phases += (
            f"; settled after {settled['after']} cover and focus trials "
            f"({escape(str(settled['causes']))})"
        )
    return f'<p class="note">trials per phase: {phases}</p>' if phases else ""


def render(study: StudyFiles) -> str:
    ranking, trials = study.ranking, study.trials
    outcomes = ", ".join(
        f"{escape(str(k))}: {v}" for k, v in (ranking.get("outcomes") or {}).items()
    )
    header = (
        f"<h1>nansearch report: {escape(study.name)}</h1>"
        f'<p class="summary"><span><b>{ranking.get("trials", len(trials))}</b> trials</span>'
        f'<span class="nan">{ranking.get("nan", 0)} NaN</span>'
        f"<span>{ranking.get('finite', 0)} finite</span>"
        f"<span>{ranking.get('errors', 0)} errors</span></p>"
        f'<p class="note">{outcomes}</p>'
        f"{phases_note(ranking)}"
    )
    sections = [
        conclusions_section(ranking),
        at_risk_section(ranking),
        ranking_section(ranking),
        rates_section(ranking),
        importance_section(ranking),
        section("interactions", "Interactions", dict_table(ranking["interactions"]))
        if ranking.get("interactions")
        else None,
        section("minimal-causes", "Minimal causes", dict_table(ranking["minimal_causes"]))
        if ranking.get("minimal_causes")
        else None,
        pairs_section(ranking, trials),
        first_bad_step_section(ranking, trials),
        curves_section(trials),
        audit_section(study.audit),
        reruns_section(study.reruns),
        trials_section(trials),
        config_section(study.config_text),
    ]
    sections = [s for s in sections if s is not None]
    nav = " ".join(f'<a href="#{s.anchor}">{escape(s.title)}</a>' for s in sections)
    main = "".join(s.html for s in sections)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>nansearch: {escape(study.name)}</title><style>{CSS}</style></head>"
        f"<body><header>{header}<nav>{nav}</nav></header><main>{main}</main>"
        "</body></html>\n"
    )
