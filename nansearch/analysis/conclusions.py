"""Conclusions: what the ranking found, in plain sentences, each with its counts.

One sentence per cause (:mod:`nansearch.analysis.causes`), with what confirmation and isolation
said about it, then the isolations that no significant cause matches yet, then what is
left unexplained. For example::

    dtype=fp16 alone is sufficient: 24/24 runs NaN, vs 0/20 with any other dtype and no
    other cause.
    lr matters only with dtype=amp-fp16, above 0.3: 11/12 runs NaN, vs 0/9 for
    dtype=amp-fp16 with lr below 0.3; lr above 0.3 without dtype=amp-fp16: 0/6 NaN.

The sentences themselves are :mod:`nansearch.analysis.text`'s; which isolation speaks to
which cause is here (:func:`isolated_by`, :func:`isolation_extends`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from nansearch.analysis.causes import ABOVE, EQUALS, MIN_NAN, Cause, Condition
from nansearch.analysis.conclusion import Conclusion
from nansearch.analysis.text import confirmation_text, isolation_text, sentence
from nansearch.search.confirm import Confirmation
from nansearch.search.isolate import Isolation, fmt
from nansearch.trial.runner import TrialResult


def isolated_by(cause: Cause, isolation: Isolation) -> bool:
    """Whether a completed isolation returned exactly a cause's values (ranges by side)."""
    if not isolation.complete or len(isolation.minimal) != len(cause.conditions):
        return False
    return all(
        _found_needed(condition, isolation)
        and (
            condition.factor in isolation.ranges
            or str(isolation.failing[condition.factor]) == str(condition.value)
        )
        for condition in cause.conditions
    )


def isolation_extends(cause: Cause, isolation: Isolation) -> list[str] | None:
    """Whether an isolation speaks of a cause without returning exactly its values, and
    what it adds: its failing run is one of the cause's, and every condition of the
    cause is among the values it found needed (a range as the range's factor, its
    bisected side, if any, the cause's own). Returns the values it needs beyond the
    cause's (none: the same cause, seen from an isolation that stopped early), or None
    when it speaks of something else."""
    if not isolation.minimal or not cause.holds(isolation.failing):
        return None
    if not all(_found_needed(condition, isolation) for condition in cause.conditions):
        return None
    own = {c.factor for c in cause.conditions}
    return [name for name in isolation.shown if name not in own]


def _found_needed(condition: Condition, isolation: Isolation) -> bool:
    """Whether an isolation found a condition's factor needed, a range on the side the
    condition names (a value's own level is left to the caller)."""
    if condition.factor not in isolation.minimal:
        return False
    if condition.factor in isolation.ranges:
        passing, failing = isolation.ranges[condition.factor]
        return condition.op != EQUALS and (failing > passing) == (condition.op == ABOVE)
    return True


def highest_instability(results: Sequence[TrialResult]) -> dict[str, Any] | None:
    """The finite run that came closest to its dtype's range (the highest instability
    score), the nearest miss of a sweep with no NaN."""
    scored = [r for r in results if r.score is not None and not r.is_nan]
    if not scored:
        return None
    best = max(scored, key=lambda r: (r.score, -(r.number or 0)))
    peak = max((v for v in best.logit_absmax if math.isfinite(v)), default=0.0)
    values = ", ".join(f"{k}={fmt(v)}" for k, v in best.params.items())
    return {
        "text": f"Highest instability seen: trial {best.number} ({values}), instability {best.score:.2f} "
        f"(its largest logit {peak:.3g}, in {best.compute_dtype}; 1 would be NaN).",
        "trial": best.number,
        "params": best.params,
        "score": best.score,
        "logit_absmax": peak,
    }


def error_line(result: TrialResult) -> str:
    """The one line that says what a trial's error was: the first line of its record."""
    lines = (result.error or "").strip().splitlines()
    return lines[0] if lines else "an error with no message"


def first_error(results: Sequence[TrialResult]) -> TrialResult:
    """The earliest trial that ended in an error (by trial number when it has one)."""
    errors = [r for r in results if r.outcome == "error"]
    return min(errors, key=lambda r: -1 if r.number is None else r.number)


def _evidence(iso: Isolation | None, confirmed: dict) -> list[str]:
    """What named a conclusion: the counts, the isolation, the confirmation."""
    out = ["counts"]
    if iso is not None:
        out.append("isolation")
        check = confirmed.get(iso.trial)
        if check is not None and check.runs:
            out.append("confirmation")
    return out


def _edge_nudged(
    results: Sequence[TrialResult],
    iso: Isolation,
    causes: Sequence[Cause],
    names: Sequence[str] | None = None,
    cause: Cause | None = None,
) -> bool:
    """Whether a complete isolation's factor values ``names`` (default: all of them)
    beside a range only moved its failing run's edge: for each, the counts hold NaN runs
    inside the rule (``cause``'s, or the isolation's own) with another level of it in its
    place, NaN runs that no cause without that range explains (an fp16 run is NaN at any
    learning rate). Near a range's edge a failure flips with anything that nudges the
    edge (another init, another batch), so a flip that fixed one run there does not make
    the value needed; whether a level has an edge of its own is the counts' to say, as a
    cause of their own (``dtype=bf16 with lr above 2``)."""
    values = [n for n in (iso.minimal if names is None else names) if n not in iso.ranges]
    if not iso.ranges or not values:
        return False
    if cause is not None and all(c.op == EQUALS for c in cause.conditions):
        return False

    def elsewhere(name: str, params: dict[str, Any]) -> bool:
        if name not in params or str(params[name]) == str(iso.failing[name]):
            return False
        if cause is not None:
            return cause.holds(params)
        return iso.holds({**params, name: iso.failing[name]})

    apart = [c for c in causes if not any(k.factor in iso.ranges for k in c.conditions)]
    nan = [r.params for r in results if r.is_nan and not any(c.holds(r.params) for c in apart)]
    return all(any(elsewhere(name, params) for params in nan) for name in values)


def names_a_cause(
    results: Sequence[TrialResult],
    iso: Isolation,
    causes: Sequence[Cause],
    check: Confirmation | None,
) -> bool:
    """Whether an isolation names a cause by itself: complete, its failure reproduced by
    every fresh seed, every run that held its values NaN (a finite one shows something
    else was needed: the reference passed for another reason, its learning rate past
    the edge as well; a range's edge, bisected on one run, is not every run's, and finite
    runs near it are not), and its values beside a range not ones that only nudged the
    edge. Delta debugging names a rare cause this way before the counts can: every probe
    that kept its values failed, every probe that flipped one back passed."""
    if not iso.minimal or not iso.complete:
        return False
    held = [r for r in results if r.outcome != "error" and iso.holds(r.params)]
    missed = any(not r.is_nan for r in held) and not iso.ranges
    return (
        not missed
        and not _edge_nudged(results, iso, causes)
        and check is not None
        and bool(check.runs)
        and check.label == "deterministic"
    )


def shadows(
    results: Sequence[TrialResult],
    causes: Sequence[Cause],
    isolations: Sequence[Isolation] = (),
    confirmations: Sequence[Confirmation] = (),
) -> list[Cause]:
    """The causes of the counts that an isolation's cause stands behind: no isolation
    speaks of them, and without the NaN runs that an isolation naming a cause by itself
    holds (or another cause), fewer than ``MIN_NAN`` of theirs are left. Their NaN runs
    are that cause's, seen through whatever the sampler paired with it (the three values
    of ``dtype=fp16 with init=normal-large with batch=padded-row``, isolated and
    confirmed, tried at higher learning rates than fp16 elsewhere, make ``dtype=fp16 with
    lr above 0.003`` look like a cause of its own): naming them would name one cause
    twice, the second time wrongly."""
    confirmed = {c.trial: c for c in confirmations}
    naming = [i for i in isolations if names_a_cause(results, i, causes, confirmed.get(i.trial))]
    out = []
    for cause in causes:
        if any(
            isolated_by(cause, i) or isolation_extends(cause, i) is not None for i in isolations
        ):
            continue
        others = [c for c in causes if c is not cause]
        mine = [
            r
            for r in results
            if r.is_nan and cause.holds(r.params) and not any(c.holds(r.params) for c in others)
        ]
        left = [r for r in mine if not any(i.holds(r.params) for i in naming)]
        if len(left) < len(mine) and len(left) < MIN_NAN:
            out.append(cause)
    return out


def conclude(
    results: Sequence[TrialResult],
    causes: Sequence[Cause],
    isolations: Sequence[Isolation] = (),
    confirmations: Sequence[Confirmation] = (),
) -> list[Conclusion]:
    """The conclusions, most certain first, each with its sentence and its counts. A cause
    of the counts that an isolated cause stands behind (:func:`shadows`) is left out."""
    confirmed = {c.trial: c for c in confirmations}
    out: list[Conclusion] = []
    used: set[int] = set()
    hidden = shadows(results, causes, isolations, confirmations)
    causes = [c for c in causes if c not in hidden]
    for cause in causes:
        text = sentence(cause)
        match = next((i for i in isolations if isolated_by(cause, i)), None)
        extra: list[str] = []
        if match is None:  # an isolation of one of its runs that found its values so far
            for iso in isolations:
                more = isolation_extends(cause, iso) if id(iso) not in used else None
                # one that went on to a narrower rule of its own is a conclusion of its own,
                # unless its values beside a range only nudged the edge
                if more is not None and not (
                    more and iso.complete and not _edge_nudged(results, iso, causes, more, cause)
                ):
                    match, extra = iso, more
                    break
        item = Conclusion(text, "cause", cause=cause)
        if match is not None:
            used.add(id(match))
            counted = {c.factor: c.value for c in cause.conditions if c.op != EQUALS}
            text += " " + isolation_text(match, counted)
            if extra:
                needs = " with ".join(match.describe(name) for name in extra)
                text += f" Beyond the counts' rule, this run needs {needs} too."
                item.isolation_adds = {name: match.failing[name] for name in extra}
            text += confirmation_text(confirmed.get(match.trial))
            item.isolation = match
            item.confirmation = confirmed.get(match.trial)
        item.text = text
        item.evidence = _evidence(match, confirmed)
        out.append(item)
    for iso in isolations:
        if id(iso) in used or not iso.minimal:
            continue
        check = confirmed.get(iso.trial)
        held = [r for r in results if r.outcome != "error" and iso.holds(r.params)]
        nan, total = sum(r.is_nan for r in held), len(held)
        if check is not None and names_a_cause(results, iso, causes, check):
            text = (
                f"{iso.text} causes NaN, named by the isolation and the confirmation "
                f"(the counts alone are too few to be significant yet: {nan}/"
                f"{total} runs NaN): {isolation_text(iso)}"
                f"{confirmation_text(check)}"
            )
            out.append(
                Conclusion(
                    text,
                    "isolated-cause",
                    rule=iso.text,
                    nan=nan,
                    total=total,
                    isolation=iso,
                    confirmation=check,
                    evidence=["isolation", "confirmation"],
                )
            )
            continue
        text = f"Not yet significant across runs: {isolation_text(iso)}{confirmation_text(check)}"
        out.append(
            Conclusion(text, "isolated", isolation=iso, evidence=_evidence(iso, confirmed)[1:])
        )
    scored = [r for r in results if r.outcome != "error"]
    nan_runs = [r for r in scored if r.is_nan]
    if results and not scored:
        first = first_error(results)
        out.append(
            Conclusion(
                f"Every one of the {len(results)} runs ended in an error, so the sweep "
                f"says nothing about NaN; the first, trial {first.number}: "
                f"{error_line(first)}",
                "all-errors",
                nan=0,
                total=len(results),
                trial=first.number,
                error=error_line(first),
            )
        )
        return out
    if not nan_runs:
        steps = max((r.steps for r in results), default=0)
        item = Conclusion(
            f"No cause found: no run went NaN in {len(scored)} runs of {steps} steps, "
            "so none of the searched values causes NaN at this length.",
            "no-nan",
            nan=0,
            total=len(scored),
        )
        closest = highest_instability(scored)
        if closest is not None:
            item.text += " " + closest["text"]
            item.highest_instability = closest
        out.append(item)
    else:
        loose = [
            r
            for r in nan_runs
            if not any(c.holds(r.params) for c in causes)
            and not any(i.complete and i.holds(r.params) for i in isolations)
        ]
        if loose:
            shown = ", ".join(str(r.number) for r in loose[:5])
            out.append(
                Conclusion(
                    f"{len(loose)} of {len(nan_runs)} NaN runs are explained by no "
                    f"conclusion yet: too few or too mixed to be significant (trials {shown}"
                    f"{', ...' if len(loose) > 5 else ''}).",
                    "unexplained",
                    nan=len(loose),
                    total=len(nan_runs),
                    trials=[r.number for r in loose],
                )
            )
    errors = len(results) - len(scored)
    if errors:
        out.append(
            Conclusion(
                f"{errors} runs ended in an error and count neither as NaN nor as "
                "finite (see errors per level).",
                "errors",
                nan=0,
                total=errors,
            )
        )
    return out
