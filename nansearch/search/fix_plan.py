"""Which fixes each conclusion gets: the smallest change the isolation points to, the
audit's fixes for the same cause, the failing run they start from, the seeds they run on
and the clean reference their loss trend is held against."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.distributions import CategoricalDistribution

from nansearch.dtypes import LEVELS
from nansearch.factors import Factor
from nansearch.search.choose import nearest_passing
from nansearch.search.fix import Fix
from nansearch.search.plan import continuous_names
from nansearch.search.remedies import Context, audit_remedies
from nansearch.trial.runner import TrialResult


def dtype_distance(a: str, b: str) -> float:
    """How far a dtype level is from another: compute precision, then where weights live."""
    if a not in LEVELS or b not in LEVELS:
        return 1.0
    x, y = LEVELS[a], LEVELS[b]
    return (x.compute != y.compute) * 1.0 + (x.weights != y.weights) * 0.5


def _levels(factors: Sequence[Factor], name: str) -> list[Any]:
    factor = next((f for f in factors if f.name == name), None)
    if factor is None:
        return []
    dist = factor.distribution()
    return list(dist.choices) if isinstance(dist, CategoricalDistribution) else []


def _named_elsewhere(params: dict[str, Any], conclusions: list[dict[str, Any]]) -> bool:
    """Whether ``params`` matches a cause some conclusion names."""
    from nansearch.analysis.causes import Condition

    for item in conclusions:
        conditions = item.get("conditions") or []
        if conditions and all(Condition(**c).holds(params) for c in conditions):
            return True
    return False


def long_run_lr(passing: float, steps: int, verify_steps: int, optimizer: str) -> float:
    """A learning rate that should hold over ``verify_steps`` where ``passing`` held over a
    trial's ``steps``: lower by the ratio of the two, since the optimizer moves each weight
    by about lr per step (Adam) or lr times its gradient (SGD), so a run ten times longer
    drifts as far at a tenth of the rate; and no higher than the top of the optimizer's
    usual range (the audit's ``config.lr-range``). Two significant digits, as printed."""
    from nansearch.audit.config import USUAL_LR

    value = passing * min(1.0, steps / verify_steps) if steps and verify_steps else passing
    value = min(value, USUAL_LR.get(optimizer, USUAL_LR["adamw"])[1])
    return float(f"{value:.2g}")


def lower_lr(new: Any, failing: Any, steps: int, verify_steps: int, optimizer: str) -> Any:
    """A passing learning rate below the failing one, as the longer run needs it
    (:func:`long_run_lr`), wherever it came from: the edge the isolation bisected, the
    counts' last passing run, or the reference run's own rate."""
    if isinstance(new, (int, float)) and isinstance(failing, (int, float)) and 0 < new < failing:
        return long_run_lr(float(new), steps, verify_steps, optimizer)
    return new


def smallest_change(
    item: dict[str, Any],
    failing: dict[str, Any],
    reference: dict[str, Any] | None,
    factors: Sequence[Factor],
    conclusions: list[dict[str, Any]],
    steps: int = 0,
    verify_steps: int = 0,
    optimizer: str = "adamw",
) -> dict[str, Any] | None:
    """The one flip, closest to the failing configuration, that the evidence says fixes it.

    A learning rate too high goes below the passing side of its edge by the ratio of the
    trial's ``steps`` to the fix's ``verify_steps`` (:func:`long_run_lr`): the edge of a
    20-step trial is not the edge of a run ten times longer."""
    iso = item.get("isolation") or {}
    continuous = continuous_names(factors)
    ranges = {k: v["passes"] for k, v in (iso.get("ranges") or {}).items()}
    boundary = {k: v[0] for k, v in (item.get("boundary") or {}).items() if v and v[0]}
    if iso and not iso.get("complete", True):
        names = _shown(item)  # stopped early: only what the counts and its probes showed
    elif iso.get("needed_alone"):
        names = [n for n in iso["needed_alone"] if n in iso.get("minimal", {})] or list(
            iso["needed_alone"]
        )
    elif iso.get("minimal"):
        names = list(iso["minimal"])
        if len(names) > 1:  # no single flip fixed it: all of them back to the reference
            if not reference:
                return None
            back = {n: ranges.get(n, reference.get(n)) for n in names}
            return {
                n: lower_lr(v, failing.get(n), steps, verify_steps, optimizer) if n == "lr" else v
                for n, v in back.items()
            }
    else:
        names = [c["factor"] for c in item.get("conditions") or []]
    candidates = []
    for order, name in enumerate(names):
        value = failing.get(name)
        if name in continuous:
            edge = ranges.get(name) or boundary.get(name)
            new = edge or (reference or {}).get(name)
            if new is None or value is None or new <= 0 or value <= 0:
                continue
            if name == "lr":
                new = lower_lr(new, value, steps, verify_steps, optimizer)
            candidates.append((abs(math.log10(new / value)), order, name, new))
            continue
        for level in _levels(factors, name):
            if str(level) == str(value):
                continue
            if _named_elsewhere({**failing, name: level}, conclusions):
                continue
            seen_pass = reference is not None and str(reference.get(name)) == str(level)
            if name == "dtype":  # among dtypes equally far, the one the reference ran
                distance = dtype_distance(str(value), str(level)) + 0.1 * (not seen_pass)
            else:
                distance = 1.0 if seen_pass else 1.5
            candidates.append((distance, order, name, level))
    if not candidates:
        return None
    _, _, name, value = min(candidates, key=lambda c: (c[0], c[1]))
    return {name: value}


def _shown(item: dict[str, Any]) -> list[str]:
    """The values a conclusion's failure is shown to need when its isolation stopped early:
    its rule's, then those the isolation's probes showed (a flip back that fixed it, a
    shared value whose change fixed it); not the values it merely did not rule out."""
    iso = item.get("isolation") or {}
    names = [c["factor"] for c in item.get("conditions") or []]
    names += list(iso.get("needed_alone") or []) + list(iso.get("needed_shared") or [])
    return list(dict.fromkeys(names))


def _failing_run(
    item: dict[str, Any], results: Sequence[TrialResult], others: Sequence[dict[str, Any]] = ()
) -> TrialResult | None:
    """The run a conclusion's fixes start from: its isolation's, else its earliest-failing
    NaN run that no other conclusion (``others``) explains too. A run that also holds
    another cause fails for that one whatever the fix changes (``lr above 0.47`` met by a
    run with every label ignored)."""
    from nansearch.analysis.causes import Condition

    iso = item.get("isolation") or {}
    if iso.get("trial") is not None:
        match = next((r for r in results if r.number == iso["trial"]), None)
        if match is not None:
            return match
    conditions = [Condition(**c) for c in item.get("conditions") or []]
    if not conditions:
        return None
    nan = [r for r in results if r.is_nan and all(c.holds(r.params) for c in conditions)]
    return min(
        nan,
        key=lambda r: (_named_elsewhere(r.params, list(others)), -(r.score or 0), r.number),
        default=None,
    )


def _seeds(
    item: dict[str, Any], failing: TrialResult, results: Sequence[TrialResult], count: int
) -> list[int]:
    """The confirmation's seeds; without a confirmation, the failing run's and the next ones."""
    confirmation = item.get("confirmation") or {}
    by_number = {r.number: r for r in results}
    seeds = [by_number[n].seed for n in confirmation.get("rerun_trials") or [] if n in by_number]
    return seeds or [failing.seed + k for k in range(count)]


def clean_reference(
    item: dict[str, Any],
    failing: dict[str, Any],
    reference: dict[str, Any] | None,
    smallest: dict[str, Any] | None = None,
    steps: int = 0,
    verify_steps: int = 0,
    optimizer: str = "adamw",
) -> dict[str, Any] | None:
    """The failing configuration with every value the failure needs set as the passing
    reference had it, all else kept: what the fix's loss trend is held against. A
    learning rate goes no higher than a fix's from the same edge (:func:`lower_lr`), nor
    than the ``smallest`` change's: one that passed a trial may still diverge over the longer run."""
    if reference is None:
        return None
    iso = item.get("isolation") or {}
    if iso and not iso.get("complete", True):
        names = _shown(item)
    else:
        names = list(iso.get("minimal") or {})
        names = names or [c["factor"] for c in item.get("conditions") or []]
    ranges = {k: v["passes"] for k, v in (iso.get("ranges") or {}).items()}
    boundary = {k: v[0] for k, v in (item.get("boundary") or {}).items() if v and v[0]}
    clean = dict(failing)
    for name in names:
        if name in reference:
            clean[name] = ranges.get(name, reference[name])
            edge = ranges.get(name) or boundary.get(name) or reference[name]
            scaled = lower_lr(edge, failing.get(name), steps, verify_steps, optimizer)
            if name == "lr" and isinstance(scaled, float) and scaled < clean[name]:
                clean[name] = scaled  # no higher than a fix's rate from the same edge
        lower = (smallest or {}).get(name)
        if name == "lr" and isinstance(lower, float) and lower < clean.get(name, lower):
            clean[name] = lower
    return clean


def plan_fixes(
    ranking: dict[str, Any],
    results: Sequence[TrialResult],
    factors: Sequence[Factor],
    audit: dict[str, Any] | None,
    steps: int,
    seeds: int,
    trial_steps: int = 0,
    optimizer: str = "adamw",
    context: Context | None = None,
) -> list[Fix]:
    """The fixes to verify: per conclusion, the smallest change and the audit's fixes."""
    context = context or Context(optimizer=optimizer)
    conclusions = ranking.get("conclusions") or []
    continuous = continuous_names(factors)
    fixes = []
    for index, item in enumerate(conclusions):
        if item.get("kind") not in ("cause", "isolated"):
            continue
        others = [c for i, c in enumerate(conclusions) if i != index]
        failing = _failing_run(item, results, others)
        if failing is None:
            continue
        iso = item.get("isolation") or {}
        reference = iso.get("reference")
        if reference is None:
            near = nearest_passing(failing, results, continuous)
            reference = dict(near.params) if near is not None else None
        rule = item.get("rule") or iso.get("text") or ""
        run_seeds = _seeds(item, failing, results, seeds)
        smallest = smallest_change(
            item, failing.params, reference, factors, conclusions, trial_steps, steps, optimizer
        )
        clean = clean_reference(
            item, failing.params, reference, smallest, trial_steps, steps, optimizer
        )
        if smallest:
            fixes.append(
                Fix(index, rule, "isolation", smallest, dict(failing.params), clean, steps,
                    run_seeds)
            )  # fmt: skip
        for remedy in audit_remedies(item, audit, failing.params, context):
            if remedy.values == smallest:
                continue
            fix = Fix(index, rule, "audit", remedy.values, dict(failing.params), clean, steps,
                      run_seeds, label=remedy.label, writes=remedy.writes)  # fmt: skip
            fixes.append(fix)
    return fixes
