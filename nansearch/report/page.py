"""``report.html``: a study's findings on one page that opens from a file, with no network.

Built from what the study folder holds: ``ranking.json`` (and, when present, its
``conclusions``, ``importance``, ``interactions`` and ``minimal_causes``),
``trials.jsonl``, ``audit.json``, ``reruns/*.json`` and ``config.yaml``, through the
Jinja2 templates in ``templates/`` with autoescape on: every string that came
from the user (level names, checkpoint paths, errors, findings) is escaped by the
template, never by hand. Charts are inline SVG; there is no script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from nansearch import jsonl
from nansearch.config import NansearchError
from nansearch.diagnose.record import RerunRecord
from nansearch.report.sections import (
    STEP_KEYS,
    at_risk_section,
    audit_section,
    conclusions_section,
    config_section,
    curves_section,
    first_bad_step_section,
    ignored_section,
    importance_section,
    interactions_section,
    minimal_causes_section,
    number,
    pairs_section,
    ranking_section,
    rates_section,
    reruns_section,
    trial_links,
    trials_section,
)


@dataclass
class StudyFiles:
    """What a study folder holds, read once."""

    name: str
    ranking: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    reruns: list[RerunRecord] = field(default_factory=list)
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
            (
                RerunRecord.from_json(_read_json(p))
                for p in sorted((study_dir / "reruns").glob("*.json"))
            ),
            key=lambda r: (r.trial is None, r.trial),
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


@cache
def environment() -> jinja2.Environment:
    """The templates, autoescaped; an undefined name is an error, not an empty string."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("nansearch.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["trial_links"] = trial_links
    return env


def render(study: StudyFiles) -> str:
    ranking, trials = study.ranking, study.trials
    conclusions = conclusions_section(ranking, study.reruns)
    sections = [
        conclusions,
        at_risk_section(ranking),
        ignored_section(ranking),
        ranking_section(ranking),
        rates_section(ranking),
        importance_section(ranking),
        interactions_section(ranking),
        minimal_causes_section(ranking),
        pairs_section(ranking, trials),
        first_bad_step_section(ranking, trials),
        curves_section(trials),
        audit_section(study.audit),
        reruns_section(study.reruns, len(conclusions.data) if conclusions else 0),
        trials_section(trials),
        config_section(study.config_text),
    ]
    return (
        environment()
        .get_template("page.html")
        .render(
            name=study.name,
            ranking=ranking,
            trials=len(trials),
            outcomes=list((ranking.get("outcomes") or {}).items()),
            phases=list((ranking.get("phases") or {}).items()),
            settled=ranking.get("settled"),
            sections=[s for s in sections if s is not None],
        )
    )
