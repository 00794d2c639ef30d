"""Ranking: which factor values make the logits NaN, how often, and how sure that is.

The ranking has two halves that rest on different trials, on purpose:

- The tables (NaN rate per factor level with a Wilson interval, the effect, Fisher's
  exact test, fANOVA importance) rest on the cover and focus trials only: the runs the
  design and the sampler chose. Confirm and isolate probes rerun and vary failing
  configurations on purpose; counting them would inflate every level they share.
  Even so, the sampler pairs values with causes (TPE draws fp32 with a batch whose labels
  are all ignored, because that pair scores high), so each level also gets ``alone``
  counts: its runs that no cause involving another factor explains. Effect, odds
  ratio and p-value are computed on those.
- The causes, interactions and conclusions rest on every trial, probes included: a
  probe is a real run of a real configuration, and whether a set of values is
  sufficient for NaN is a claim about configurations, not about how they were chosen
  (:mod:`nansearch.analysis.causes`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nansearch.analysis.causes import Cause, find_causes
from nansearch.analysis.interactions import Interaction, find_interactions, with_causes
from nansearch.analysis.stats import fisher_two_sided, wilson
from nansearch.search.confirm import Confirmation
from nansearch.search.isolate import Isolation
from nansearch.trial.runner import PHASES, QUEUED, TrialResult

log = logging.getLogger(__name__)


def _phase_order(item: tuple[str, int]) -> tuple[int, str]:
    phase = item[0]
    return (PHASES.index(phase) if phase in PHASES else len(PHASES), phase)


@dataclass(frozen=True)
class Bins:
    """Log-spaced ranges for a continuous factor, so a rate rests on several trials."""

    edges: tuple[float, ...]

    @classmethod
    def log_spaced(cls, low: float, high: float, count: int = 4) -> Bins:
        if high <= low:
            return cls((low, high))
        step = (math.log10(high) - math.log10(low)) / count
        return cls(tuple(10 ** (math.log10(low) + i * step) for i in range(count + 1)))

    def label(self, index: int) -> str:
        return f"{self.edges[index]:.2g}..{self.edges[index + 1]:.2g}"

    def index(self, value: float) -> int:
        for i in range(len(self.edges) - 2, -1, -1):
            if value >= self.edges[i]:
                return i
        return 0

    def labels(self) -> list[str]:
        return [self.label(i) for i in range(len(self.edges) - 1)]


def level_of(value: Any, bins: Bins | None) -> str:
    if bins is not None and isinstance(value, (int, float)):
        return bins.label(bins.index(float(value)))
    return str(value)


def axes_kinds(factors: Sequence[tuple[str, list[Any] | Bins]]) -> tuple[list[str], list[str]]:
    """The factor names, and those that are continuous (grouped into ranges)."""
    names = [name for name, _ in factors]
    return names, [name for name, levels in factors if isinstance(levels, Bins)]


def _empty() -> dict[str, int]:
    return {"nan": 0, "total": 0, "errors": 0}


def factor_table(
    results: list[TrialResult], name: str, levels: list[Any] | Bins, causes: Sequence[Cause]
) -> dict[str, Any]:
    """One factor's levels: raw counts, Wilson interval, and counts with other causes absent."""
    bins = levels if isinstance(levels, Bins) else None
    names = levels.labels() if isinstance(levels, Bins) else [str(v) for v in levels]
    counts = {level: _empty() for level in names}
    alone = {level: _empty() for level in names}
    others = [c for c in causes if all(x.factor != name for x in c.conditions)]
    for result in results:
        if name not in result.params:
            continue
        level = level_of(result.params[name], bins)
        slots = [counts.setdefault(level, _empty())]
        if not any(c.holds(result.params) for c in others):
            slots.append(alone.setdefault(level, _empty()))
        for slot in slots:
            if result.outcome == "error":
                slot["errors"] += 1
            else:
                slot["total"] += 1
                slot["nan"] += int(result.is_nan)
    nan_all = sum(a["nan"] for a in alone.values())
    total_all = sum(a["total"] for a in alone.values())
    rows: list[dict[str, Any]] = []
    for level, c in counts.items():
        a = alone.get(level, _empty())
        rest_nan, rest_total = nan_all - a["nan"], total_all - a["total"]
        rate = a["nan"] / a["total"] if a["total"] else None
        rest = rest_nan / rest_total if rest_total else None
        ratio, p = fisher_two_sided(a["nan"], a["total"], rest_nan, rest_total)
        low, high = wilson(c["nan"], c["total"])
        rows.append(
            {
                "value": level,
                **c,
                "rate": c["nan"] / c["total"] if c["total"] else None,
                "ci_low": low,
                "ci_high": high,
                "alone": {"nan": a["nan"], "total": a["total"], "rate": rate},
                "effect": None if rate is None or rest is None else rate - rest,
                "odds_ratio": ratio,
                "p_value": p,
            }
        )
    effects = [abs(r["effect"]) for r in rows if r["effect"] is not None]
    return {
        "name": name,
        "kind": "range" if bins else "categorical",
        "effect": max(effects, default=0.0),
        "p_value": min((r["p_value"] for r in rows), default=1.0),
        "levels": rows,
    }


def importance(
    results: Iterable[TrialResult],
    distributions: dict[str, Any],
    seed: int = 0,
) -> dict[str, float]:
    """fANOVA importance of each factor for the instability score, from an in-memory study.

    fANOVA is asked for by name: Optuna's default evaluator (PED-ANOVA) gives every
    factor the same importance on an outcome that is nearly 0/1, as the score is.
    """
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    scored = [r for r in results if r.score is not None and set(distributions) <= set(r.params)]
    if len(scored) < 4 or len({r.score for r in scored}) < 2:
        return {}
    study = optuna.create_study(direction="maximize")
    study.add_trials(
        optuna.trial.create_trial(
            params={k: r.params[k] for k in distributions},
            distributions=distributions,
            value=r.score,
        )
        for r in scored
    )
    try:
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except (ValueError, RuntimeError) as exc:  # too little variation to fit a forest
        log.warning("fANOVA importance is not available: %s", exc)
        return {}
    return {name: float(value) for name, value in found.items()}


@dataclass
class Ranking:
    """What :func:`find_ranking` found: ``ranking.json`` from ``trials`` to ``factors``.

    The causes, interactions, isolations (``minimal_causes``, each with its confirmation)
    and confirmations are typed; the conclusions and the factor tables are still the
    dicts ranking.json holds. The sweep writes it with its own keys around it (study,
    settled, unspent, horizon, at_risk, ignored, fixes).
    """

    trials: int
    nan: int
    finite: int
    errors: int
    outcomes: dict[str, int]
    phases: dict[str, int]
    basis: str
    conclusions: list[dict[str, Any]]
    causes: list[Cause]
    interactions: list[Interaction]
    isolations: list[Isolation]
    confirmations: list[Confirmation]
    importance: dict[str, float]
    factors: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """ranking.json's sections, in its documented order."""
        confirmed = {c.trial: c for c in self.confirmations}
        return {
            "trials": self.trials,
            "nan": self.nan,
            "finite": self.finite,
            "errors": self.errors,
            "outcomes": self.outcomes,
            "phases": self.phases,
            "basis": self.basis,
            "conclusions": self.conclusions,
            "causes": [c.to_json() for c in self.causes],
            "interactions": [i.to_json() for i in self.interactions],
            "minimal_causes": [
                {
                    **iso.to_json(),
                    "confirmation": (
                        confirmed[iso.trial].to_json() if iso.trial in confirmed else None
                    ),
                }
                for iso in self.isolations
            ],
            "confirmations": [c.to_json() for c in self.confirmations],
            "importance": self.importance,
            "factors": self.factors,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ranking:
        """The ranking :meth:`to_json` wrote; the sweep's own keys around it are ignored."""
        return cls(
            trials=data["trials"],
            nan=data["nan"],
            finite=data["finite"],
            errors=data["errors"],
            outcomes=dict(data.get("outcomes") or {}),
            phases=dict(data.get("phases") or {}),
            basis=data.get("basis", ""),
            conclusions=list(data.get("conclusions") or []),
            causes=[Cause.from_json(c) for c in data.get("causes") or []],
            interactions=[Interaction.from_json(i) for i in data.get("interactions") or []],
            isolations=[Isolation.from_json(i) for i in data.get("minimal_causes") or []],
            confirmations=[Confirmation.from_json(c) for c in data.get("confirmations") or []],
            importance=dict(data.get("importance") or {}),
            factors=list(data.get("factors") or []),
        )


def rank(
    results: Iterable[TrialResult],
    factors: Sequence[tuple[str, list[Any] | Bins]],
    *,
    confirmations: Sequence[Confirmation] = (),
    isolations: Sequence[Isolation] = (),
    distributions: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`find_ranking` as ranking.json holds it."""
    return find_ranking(
        results,
        factors,
        confirmations=confirmations,
        isolations=isolations,
        distributions=distributions,
        seed=seed,
    ).to_json()


def find_ranking(
    results: Iterable[TrialResult],
    factors: Sequence[tuple[str, list[Any] | Bins]],
    *,
    confirmations: Sequence[Confirmation] = (),
    isolations: Sequence[Isolation] = (),
    distributions: dict[str, Any] | None = None,
    seed: int = 0,
) -> Ranking:
    """The whole ranking: conclusions first, then the evidence behind them.

    ``factors`` names each factor with its categorical levels, or with :class:`Bins` for
    a continuous one. A trial that ended in an error is neither NaN nor finite: it is
    counted apart under ``errors``. ``confirmations`` and ``isolations`` come from the
    confirm and isolate phases; ``distributions`` (the search space) turns on fANOVA.
    """
    from nansearch.analysis.conclusions import conclude

    results = list(results)
    searched = [r for r in results if r.phase in QUEUED]
    names, continuous = axes_kinds(factors)
    causes = find_causes(results, names, continuous)
    interactions = with_causes(find_interactions(results, names, continuous, causes), causes)
    tables = [factor_table(searched, name, levels, causes) for name, levels in factors]
    weights = importance(searched, distributions, seed) if distributions else {}
    for table in tables:
        table["importance"] = weights.get(table["name"])
    tables.sort(key=lambda f: (-f["effect"], f["p_value"]))
    scored = [r for r in results if r.outcome != "error"]
    return Ranking(
        trials=len(results),
        nan=sum(r.is_nan for r in scored),
        finite=sum(not r.is_nan for r in scored),
        errors=len(results) - len(scored),
        outcomes={
            o: sum(r.outcome == o for r in results) for o in sorted({r.outcome for r in results})
        },
        phases=dict(sorted(Counter(r.phase for r in results).items(), key=_phase_order)),
        basis=basis(len(searched), len(results)),
        conclusions=conclude(results, causes, isolations, confirmations),
        causes=list(causes),
        interactions=list(interactions),
        isolations=list(isolations),
        confirmations=list(confirmations),
        importance=weights,
        factors=tables,
    )


def basis(searched: int, total: int) -> str:
    """Which trials the tables and the conclusions rest on."""
    if searched == total:
        return f"factor tables, causes and conclusions: the {total} cover and focus trials"
    return (
        f"factor tables: the {searched} cover and focus trials; causes and conclusions: "
        f"all {total} trials, the {total - searched} confirm and isolate probes included"
    )


def format_table(ranking: dict[str, Any]) -> str:
    """The ranking as a plain-text table, factors in rank order."""
    phases = ", ".join(f"{k} {v}" for k, v in ranking.get("phases", {}).items())
    lines = [
        f"{ranking['trials']} trials ({phases}): {ranking['nan']} NaN, "
        f"{ranking['finite']} finite, {ranking['errors']} errors",
        *([ranking["unspent"]["text"]] if ranking.get("unspent") else []),
        ranking.get("basis", ""),
        "'alone' counts the runs no other cause explains; effect and p (Fisher) rest on them",
        "",
        f"{'rank':<5}{'factor':<12}{'level':<22}{'NaN/total':>10}{'rate':>7}  95% CI   "
        f"{'alone':>8}{'effect':>8}{'p':>9}",
    ]
    for i, factor in enumerate(ranking["factors"], 1):
        levels = sorted(factor["levels"], key=lambda r: -(r["rate"] or 0))
        weight = factor.get("importance")
        for j, row in enumerate(levels):
            head = f"{i:<5}{factor['name']:<12}" if j == 0 else " " * 17
            rate = "-" if row["rate"] is None else f"{row['rate']:.0%}"
            alone = row.get("alone", {})
            effect = "-" if row.get("effect") is None else f"{row['effect']:+.2f}"
            errors = f"  ({row['errors']} errors)" if row["errors"] else ""
            note = f"  fANOVA {weight:.2f}" if j == 0 and weight is not None else ""
            lines.append(
                f"{head}{row['value'][:21]:<22}{row['nan']:>4}/{row['total']:<5}{rate:>7}"
                f"  {row['ci_low']:.2f}-{row['ci_high']:.2f}"
                f"{alone.get('nan', 0):>5}/{alone.get('total', 0):<3}{effect:>7}"
                f"{row.get('p_value', 1.0):>9.1g}{errors}{note}"
            )
    return "\n".join(lines)


def format_conclusions(ranking: dict[str, Any]) -> str:
    """The conclusions, numbered, one paragraph each."""
    items = ranking.get("conclusions", [])
    return "\n".join(f"{i}. {c['text']}" for i, c in enumerate(items, 1))
