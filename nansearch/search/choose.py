"""Which failing runs the probes take, and what an isolation sets them against.

The failing configurations worth confirming, the least certain first (:func:`to_confirm`),
the passing run nearest a failing one (:func:`nearest_passing`), the other values an
isolation may try (:func:`alternatives`) and those it asks about first (:func:`suspects`),
and an isolation of a confirmed failure run
through the prober (:func:`isolate_confirmed`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nansearch.analysis.causes import ABOVE, BELOW, Condition, Evidence, explained, find_causes
from nansearch.analysis.ranges import clearest_splits, midpoint, per_level
from nansearch.search.confirm import Confirmation
from nansearch.search.isolate import Isolation, isolate
from nansearch.search.plan import continuous_names
from nansearch.search.prober import Prober
from nansearch.trial.runner import TrialResult

if TYPE_CHECKING:
    from nansearch.factors import Factor


def to_confirm(results: Sequence[TrialResult], factors: Sequence[Factor], most: int) -> list:
    """The failing trials worth confirming, the least certain first: the earliest-failing
    run of each cause that not all of its runs confirm yet (the isolation may narrow it:
    ``lr above 0.5`` to ``lr above 0.5 with dtype=amp-fp16``), then the NaN runs that no
    cause explains, the earliest first, then the earliest-failing run of each cause
    whose runs all went NaN, those that explain the fewest NaN runs no other cause does
    first (a pair that only travelled with a narrower cause). One per configuration."""
    nan = sorted((r for r in results if r.is_nan), key=lambda r: (-(r.score or 0), r.number))
    causes = find_causes(results, [f.name for f in factors], continuous_names(factors))
    unsure = [c for c in causes if not c.sufficient]

    def alone(cause) -> int:  # the NaN runs this cause explains and no other does
        return sum(
            cause.holds(r.params) and not any(c.holds(r.params) for c in causes if c is not cause)
            for r in nan
        )

    sure = sorted((c for c in causes if c.sufficient), key=alone)
    picked: list[TrialResult] = []

    def first_of(cause) -> None:
        match = next((r for r in nan if cause.holds(r.params)), None)
        if match is not None and match not in picked:
            picked.append(match)

    for cause in unsure:
        first_of(cause)
    loose = sorted(
        (r for r in nan if not any(c.holds(r.params) for c in causes)), key=lambda r: r.number or 0
    )
    picked += loose
    for cause in sure:
        first_of(cause)
    seen, unique = set(), []
    for result in picked:
        key = repr(sorted(result.params.items()))
        if key not in seen:
            seen.add(key)
            unique.append(result)
    return unique[:most]


def nearest_passing(
    failing: TrialResult, results: Sequence[TrialResult], continuous: Sequence[str]
) -> TrialResult | None:
    """The finite run that differs from ``failing`` in fewest values, then least in its
    continuous ones (on a log scale); a run with the same values is no reference."""

    def distance(other: TrialResult) -> tuple[int, float]:
        apart, spread = 0, 0.0
        for name, value in failing.params.items():
            got = other.params.get(name)
            if name in continuous and got is not None and value > 0 and got > 0:
                spread += abs(math.log(value / got))
                apart += not math.isclose(value, got, rel_tol=1e-9)
            else:
                apart += str(got) != str(value)
        return apart, spread

    passing = [r for r in results if r.outcome == "finite" and distance(r)[0] > 0]
    return min(passing, key=lambda r: (*distance(r), r.number), default=None)


def alternatives(
    failing: dict[str, Any],
    results: Sequence[TrialResult],
    continuous: Sequence[str],
    factors: Sequence[Factor] = (),
) -> dict[str, Any]:
    """Per categorical factor, its most common other value among the finite runs: what a
    value both configurations share is changed to, to see whether it is needed too.

    A factor no finite run has held at another value yet (early in the search, when the
    failing run and its reference share ``init=uninitialized-missing`` and so does every
    finite run) takes another of its levels, one that no NaN run has held if there is
    one: a shared value that is never changed can never be found needed, and the
    isolation would name half of a pair as the whole cause."""
    counts: dict[str, Counter] = {}
    for result in results:
        if result.outcome != "finite":
            continue
        for name, value in result.params.items():
            if name not in continuous and str(value) != str(failing.get(name)):
                counts.setdefault(name, Counter())[value] += 1
    out = {name: c.most_common(1)[0][0] for name, c in counts.items()}
    failed = {(name, str(v)) for r in results if r.is_nan for name, v in r.params.items()}
    for factor in factors:
        name, dist = factor.name, factor.distribution()
        if name in out or name in continuous or name not in failing:
            continue
        others = [v for v in getattr(dist, "choices", ()) if str(v) != str(failing[name])]
        if others:
            out[name] = min(others, key=lambda v: (name, str(v)) in failed)
    return out


def suspects(
    failing: dict[str, Any],
    reference: dict[str, Any],
    results: Sequence[TrialResult],
    factors: Sequence[Factor],
) -> dict[str, Any]:
    """The shared values an isolation asks about first, each with the level to change it to.

    When the failing run and its reference differ in a continuous value (a learning rate
    above the passing one's), the runs on the failing side of the two that no other
    cause explains are split by the levels of each other factor
    (:func:`~nansearch.analysis.ranges.per_level`). A value both runs share is a suspect
    when its factor splits those runs most clearly
    (:func:`~nansearch.analysis.ranges.clearest_splits`), the failing run's level among
    those with a NaN run there and the other levels' runs all finite; it is changed to
    the finite level with the most runs there. The counts cannot tell yet whether the
    range needs that value (too few runs); one probe of the failing run can."""
    names = [f.name for f in factors]
    continuous = continuous_names(factors)
    ev = Evidence(results, continuous, names)
    causes = find_causes(results, names, continuous)
    background = ~explained(ev, [c for c in causes if not c.holds(failing)])
    out: dict[str, Any] = {}
    for name in continuous:
        a, b = failing.get(name), reference.get(name)
        if a is None or b is None or not (a > 0 and b > 0) or math.isclose(a, b, rel_tol=1e-9):
            continue
        condition = Condition(name, ABOVE if a > b else BELOW, midpoint(a, b))
        by_level = per_level(ev, (condition,), condition, background)
        for factor, bad, good in clearest_splits(by_level):
            value = str(failing.get(factor))
            if value != str(reference.get(factor)) or value not in {e["value"] for e in bad}:
                continue
            level = max(good, key=lambda e: e["total"])["value"]
            choices = next((getattr(f.distribution(), "choices", ()) for f in factors
                            if f.name == factor), ())  # fmt: skip
            out[factor] = next((c for c in choices if str(c) == level), level)
    return out


def isolate_confirmed(
    results: list[TrialResult], prober: Prober, confirmed: Confirmation, continuous: list[str]
) -> Isolation | None:
    failing = next(r for r in results if r.number == confirmed.trial)
    reference = nearest_passing(failing, results, continuous)
    if reference is None:
        return None
    repeats = confirmed.repeats()
    origin = confirmed.trial

    def probe(config: dict[str, Any]) -> bool | None:
        for _ in range(repeats):
            result = prober.run("isolate", origin, config)
            if result is None:
                return None
            if result.is_nan:
                return True
        return False

    factors = prober.search.factors
    asked = suspects(failing.params, reference.params, results, factors)
    isolation = isolate(
        failing.params,
        reference.params,
        probe,
        continuous,
        {**alternatives(failing.params, results, continuous, factors), **asked},
        suspects=list(asked),
    )
    isolation.trial, isolation.reference_trial = origin, reference.number
    return isolation
