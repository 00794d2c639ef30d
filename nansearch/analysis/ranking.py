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
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nansearch.analysis.causes import Cause, find_causes
from nansearch.analysis.conclusion import Conclusion
from nansearch.analysis.interactions import Interaction, find_interactions, with_causes
from nansearch.analysis.tables import Bins, FactorTable, factor_table, level_of
from nansearch.search.confirm import Confirmation
from nansearch.search.isolate import Isolation
from nansearch.trial.runner import PHASES, QUEUED, TrialResult

log = logging.getLogger(__name__)

__all__ = [
    "Bins",
    "Conclusion",
    "FactorTable",
    "Ranking",
    "axes_kinds",
    "factor_table",
    "find_ranking",
    "format_conclusions",
    "format_table",
    "importance",
    "level_of",
    "rank",
]


def _phase_order(item: tuple[str, int]) -> tuple[int, str]:
    phase = item[0]
    return (PHASES.index(phase) if phase in PHASES else len(PHASES), phase)


def axes_kinds(factors: Sequence[tuple[str, list[Any] | Bins]]) -> tuple[list[str], list[str]]:
    """The factor names, and those that are continuous (grouped into ranges)."""
    names = [name for name, _ in factors]
    return names, [name for name, levels in factors if isinstance(levels, Bins)]


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

    Every part is typed: the conclusions, the causes, the interactions, the isolations
    (``minimal_causes``, each with its confirmation), the confirmations and the factor
    tables. The sweep writes it with its own keys around it (study,
    settled, unspent, horizon, at_risk, ignored, fixes).
    """

    trials: int
    nan: int
    finite: int
    errors: int
    outcomes: dict[str, int]
    phases: dict[str, int]
    basis: str
    conclusions: list[Conclusion]
    causes: list[Cause]
    interactions: list[Interaction]
    isolations: list[Isolation]
    confirmations: list[Confirmation]
    importance: dict[str, float]
    factors: list[FactorTable]

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
            "conclusions": [c.to_json() for c in self.conclusions],
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
            "factors": [f.to_json() for f in self.factors],
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
            conclusions=[Conclusion.from_json(c) for c in data.get("conclusions") or []],
            causes=[Cause.from_json(c) for c in data.get("causes") or []],
            interactions=[Interaction.from_json(i) for i in data.get("interactions") or []],
            isolations=[Isolation.from_json(i) for i in data.get("minimal_causes") or []],
            confirmations=[Confirmation.from_json(c) for c in data.get("confirmations") or []],
            importance=dict(data.get("importance") or {}),
            factors=[FactorTable.from_json(f) for f in data.get("factors") or []],
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
    from nansearch.analysis.conclusions import conclude, shadows

    results = list(results)
    searched = [r for r in results if r.phase in QUEUED]
    names, continuous = axes_kinds(factors)
    causes = find_causes(results, names, continuous)
    # a cause of the counts that an isolated cause stands behind is that cause, not another
    hidden = shadows(results, causes, isolations, confirmations)
    causes = [c for c in causes if c not in hidden]
    interactions = with_causes(find_interactions(results, names, continuous, causes), causes)
    tables = [factor_table(searched, name, levels, causes) for name, levels in factors]
    weights = importance(searched, distributions, seed) if distributions else {}
    for table in tables:
        table.importance = weights.get(table.name)
    tables.sort(key=lambda f: (-f.effect, f.p_value))
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
    """The ranking (``ranking.json`` as the sweep wrote it) as a plain-text table, factors
    in rank order."""
    typed = Ranking.from_json(ranking)
    phases = ", ".join(f"{k} {v}" for k, v in typed.phases.items())
    lines = [
        f"{typed.trials} trials ({phases}): {typed.nan} NaN, "
        f"{typed.finite} finite, {typed.errors} errors",
        *([ranking["unspent"]["text"]] if ranking.get("unspent") else []),
        typed.basis,
        "'alone' counts the runs no other cause explains; effect and p (Fisher) rest on them",
        "",
        f"{'rank':<5}{'factor':<12}{'level':<22}{'NaN/total':>10}{'rate':>7}  95% CI   "
        f"{'alone':>8}{'effect':>8}{'p':>9}",
    ]
    for i, factor in enumerate(typed.factors, 1):
        levels = sorted(factor.levels, key=lambda r: -(r.rate or 0))
        weight = factor.importance
        for j, row in enumerate(levels):
            head = f"{i:<5}{factor.name:<12}" if j == 0 else " " * 17
            rate = "-" if row.rate is None else f"{row.rate:.0%}"
            effect = "-" if row.effect is None else f"{row.effect:+.2f}"
            errors = f"  ({row.errors} errors)" if row.errors else ""
            note = f"  fANOVA {weight:.2f}" if j == 0 and weight is not None else ""
            lines.append(
                f"{head}{row.value[:21]:<22}{row.nan:>4}/{row.total:<5}{rate:>7}"
                f"  {row.ci_low:.2f}-{row.ci_high:.2f}"
                f"{row.alone_nan:>5}/{row.alone_total:<3}{effect:>7}"
                f"{row.p_value:>9.1g}{errors}{note}"
            )
    return "\n".join(lines)


def format_conclusions(ranking: dict[str, Any]) -> str:
    """The conclusions, numbered, one paragraph each."""
    items = [Conclusion.from_json(c) for c in ranking.get("conclusions", [])]
    return "\n".join(f"{i}. {c.text}" for i, c in enumerate(items, 1))
