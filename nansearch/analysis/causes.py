"""Causes: the few factor values that make runs NaN, found from the trials themselves.

A cause is a rule of one to three conditions, each a factor value (``dtype=fp16``) or
a range of a continuous factor (``lr above 0.3``). Causes are found one at a time, by
sequential covering: among the runs not yet explained, the rule whose runs are most
surely NaN (:func:`_best`) is taken, the runs it matches are set aside as explained,
and the search repeats on what is left.
Setting explained runs aside is what keeps a value that merely travelled with a cause
(fp32, paired by the sampler with a batch whose labels are all ignored) from being
named as one.

A rule is kept only when it covers at least ``min_nan`` NaN runs and, on the runs it
matches that no other cause explains, against the runs no cause explains, its p-value
multiplied by the number of rules tried in its round (Bonferroni: every single value, pair and triple of values, and range with
them, that any run held) is below ``alpha``. Ranges are tried only at the values where
the outcome changes, so a continuous factor is reported as "above 0.3", never as a
point. A value beside a range (``dtype=bf16 with lr above 2``) says that the edge moves
with the value, so it is judged against the value's other levels at the same or higher
learning rates only: from the rule's first NaN run on, never over the whole range,
whose runs of each level may lie at different learning rates; and within each level of
every other factor, since the runs there may also differ in another value that moves
the edge (``dtype=bf16``, beside a batch the search ran only in bf16).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from nansearch.analysis.evidence import (
    ABOVE,
    ALPHA,
    BELOW,
    EQUALS,
    MIN_NAN,
    MOST_CONDITIONS,
    Condition,
    Evidence,
    joined,
)
from nansearch.analysis.ranges import failed_from, per_level, thresholds
from nansearch.analysis.stats import (
    fisher_greater,
    fisher_greater_each,
    fisher_greater_strata,
    wilson_low,
)
from nansearch.search.isolate import fmt
from nansearch.trial.runner import TrialResult

# the names other modules have always imported from here
__all__ = [
    "ABOVE",
    "ALPHA",
    "BELOW",
    "EQUALS",
    "MIN_NAN",
    "Cause",
    "Condition",
    "Evidence",
    "explained",
    "find_causes",
]

Rule = tuple[Condition, ...]


@dataclass
class Cause:
    """A rule that explains NaN runs, with the counts behind it.

    ``nan``/``total`` count every run that matches the rule; ``own_nan``/``own_total``
    the runs it matches that no other cause explains, on which its significance rests;
    ``others`` counts the runs that differ from it in one condition and match no other
    cause (other dtypes, or the rule's other values without this one); ``boundary``
    gives, for a range, the last passing and first failing value seen on either side of
    it.
    """

    conditions: Rule
    nan: int
    total: int
    p_value: float
    p_adjusted: float
    tried: int
    others: list[dict[str, Any]] = field(default_factory=list)
    boundary: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # for a range: per level of another factor where the edge differs or was never run
    by_level: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    own_nan: int = 0
    own_total: int = 0

    def holds(self, params: dict[str, Any]) -> bool:
        return all(c.holds(params) for c in self.conditions)

    @property
    def key(self) -> tuple[tuple[str, str, str], ...]:
        """What the rule is about, with a range's threshold left out."""
        return tuple(
            (c.factor, c.op, str(c.value) if c.op == EQUALS else "") for c in self.conditions
        )

    @property
    def sufficient(self) -> bool:
        """Every run NaN, and, for a range, runs inside it at every level of the other
        factors that runs no other cause explains have: never on one level's word."""
        unseen = any(not e["total"] for levels in self.by_level.values() for e in levels)
        return self.total >= MIN_NAN and self.nan == self.total and not unseen

    @property
    def text(self) -> str:
        return joined(self.conditions)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.text,
            "conditions": [c.to_json() for c in self.conditions],
            "nan": self.nan,
            "total": self.total,
            "alone": {"nan": self.own_nan, "total": self.own_total},
            "sufficient": self.sufficient,
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "rules_tried": self.tried,
            "others": self.others,
            "boundary": {k: list(v) for k, v in self.boundary.items()},
            "by_level": self.by_level,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cause:
        """The cause :meth:`to_json` wrote (``ranking.json``'s ``causes``)."""
        return cls(
            conditions=tuple(Condition.from_json(c) for c in data["conditions"]),
            nan=data["nan"],
            total=data["total"],
            p_value=data["p_value"],
            p_adjusted=data["p_adjusted"],
            tried=data["rules_tried"],
            others=list(data.get("others") or []),
            boundary={k: (v[0], v[1]) for k, v in (data.get("boundary") or {}).items()},
            by_level=dict(data.get("by_level") or {}),
            own_nan=(data.get("alone") or {}).get("nan", data["nan"]),
            own_total=(data.get("alone") or {}).get("total", data["total"]),
        )


def candidates(ev: Evidence, residual: np.ndarray) -> list[tuple[Rule, int]]:
    """Every rule of up to three conditions worth testing on the runs left to explain.

    Values of different factors are combined in pairs and triples; a range is tried
    alone and beside one or two values. Each rule comes with its multiplicity: how many
    cut points were tried for a range with the same base, so that the best of them is
    not taken for more than it is.
    """
    singles = [
        Condition(name, EQUALS, level)
        for name in ev.factors
        if name not in ev.continuous
        for level in ev.levels(name, residual)
    ]
    combos: list[Rule] = []
    for size in range(2, MOST_CONDITIONS + 1):
        combos += [
            rule for rule in combinations(singles, size) if len({c.factor for c in rule}) == size
        ]
    if combos:  # only the combinations some run left to explain holds
        held = (ev.masks(combos) & residual).any(axis=1)
        combos = [rule for rule, keep in zip(combos, held, strict=True) if keep]
    rules: list[tuple[Rule, int]] = [((c,), 1) for c in singles]
    rules += [(rule, 1) for rule in combos]
    bases: list[Rule] = [(), *((c,) for c in singles)]
    bases += [rule for rule in combos if len(rule) < MOST_CONDITIONS]
    for name in ev.continuous:
        known = ~np.isnan(ev.columns[name])
        for base in bases:
            among = residual & ev.mask(base) & known
            cuts = thresholds(ev.columns[name][among], ev.nan[among])
            for op, cut in cuts:
                tried = sum(o == op for o, _ in cuts)
                rules.append(((*base, Condition(name, op, cut)), tried))
    return rules


def _best(ev: Evidence, residual: np.ndarray, rules: list[tuple[Rule, int]]):
    """The purest admissible rule on the runs in ``residual`` (highest Wilson lower bound).

    A rule of one categorical condition is always admissible. A rule with more
    conditions, or a range, must earn each of them: its runs must be NaN significantly
    more often (one-sided Fisher, p < ``ALPHA`` times the cut points tried) than the
    runs that meet the rule's other conditions but not this one. Without that test, a
    range could carve a few pure runs out of a flaky cause, and purity would prefer them
    to the whole cause; with it, a pair that two other causes make look bad can wait
    until they are set aside. A rule of three conditions pays, for each test, for the
    choice among the values its left-out condition could have taken (times that
    factor's levels): a flaky cause of one or two values has, among its cells, some
    whose few runs all went NaN by chance, and a third value must explain more than that.
    A value beside a range (``init=reinit with lr above 5``) is tested where the rule's
    runs failed: both sides only from the rule's first NaN run on along the range
    (:func:`~nansearch.analysis.ranges.failed_from`), so the value is admissible only when,
    at the same or a higher learning rate, the runs without it pass where its runs fail.
    Inside ``lr above 5`` its runs may all sit at 8 and the others' at 5.5, just under an
    edge they share; compared over the whole range, an lr difference reads as the value's.
    The value must also hold within each level of every other factor
    (:func:`_within_levels`). Ties go to fewer conditions, then to more NaN runs explained.
    """
    size = len(rules)
    conditions = [rule for rule, _ in rules]
    masks = ev.masks(conditions) & residual
    inside = masks.sum(axis=1)
    hits = (masks & ev.nan).sum(axis=1)
    lengths = np.array([len(rule) for rule in conditions])
    choices = {
        name: len(ev.levels(name, residual)) for name in ev.factors if name not in ev.continuous
    }
    # where each rule with a range and a value failed: its values are judged only there
    window = np.ones_like(masks)
    ranged = np.zeros(size, dtype=bool)
    for i, rule in enumerate(conditions):
        cut = [c for c in rule if c.op != EQUALS]
        if cut and len(rule) > 1:
            ranged[i] = True
            failed = failed_from(cut[0], ev.columns[cut[0].factor], masks[i] & ev.nan)
            window[i] = ev.mask((failed,)) if failed is not None else True
    worst = np.zeros(size)
    for k in range(int(lengths.max(initial=0))):  # each condition in turn left out
        has = lengths > k
        without = [rule[:k] + rule[k + 1 :] if k < len(rule) else rule for rule in conditions]
        value = np.array([k < len(rule) and rule[k].op == EQUALS for rule in conditions])
        at = np.where((ranged & value)[:, None], window, True)
        only = ev.masks(without) & residual & ~masks & at
        p = fisher_greater_each(
            hits, (masks & at).sum(axis=1), (only & ev.nan).sum(axis=1), only.sum(axis=1)
        )
        paid = np.array([_paid(rule, k, choices) for rule in conditions])
        worst = np.maximum(worst, np.where(has, p * paid, 0.0))
    tried = np.array([m for _, m in rules])
    for i in np.flatnonzero(ranged & (worst * tried < ALPHA)).tolist():
        within = _within_levels(ev, residual, conditions[i], masks[i], window[i], choices)
        worst[i] = max(worst[i], within)
    simple = (lengths == 1) & np.array([rule[0].op == EQUALS for rule in conditions])
    admissible = simple | (worst * tried < ALPHA)
    low = np.where(admissible, wilson_low(hits, inside), -1.0)
    order = sorted(range(size), key=lambda i: (-low[i], lengths[i], -hits[i], i))
    values = np.array([all(c.op == EQUALS for c in rule) for rule in conditions])
    finite = inside - hits
    count = int((inside > 0).sum())
    best, deferred = None, False
    for i in order:
        if low[i] < 0:
            break
        # a rule of values only that holds every NaN run of this one with fewer finite
        # runs explains them better: while it is not admissible yet, neither is this one
        nan = masks[i] & ev.nan
        better = values & masks[:, nan].all(axis=1) & (hits >= hits[i]) & (finite < finite[i])
        if finite[i] and better.any():
            deferred = True
            continue
        best = i
        break
    if best is None:
        if deferred:  # nothing may be named yet: the NaN runs point at a rule not yet sure
            return conditions[order[0]], 0, 0, count
        best = order[0]
    return conditions[best], int(hits[best]), int(inside[best]), count


def _paid(rule: Rule, k: int, choices: dict[str, int]) -> int:
    """What a rule of three conditions pays when its value ``k`` is tested: the levels
    that value's factor could have taken (``choices``); 1 for a smaller rule or a range."""
    if len(rule) >= MOST_CONDITIONS and k < len(rule) and rule[k].op == EQUALS:
        return choices.get(rule[k].factor, 1)
    return 1


def _within_levels(
    ev: Evidence,
    residual: np.ndarray,
    rule: Rule,
    inside: np.ndarray,
    window: np.ndarray,
    choices: dict[str, int],
) -> float:
    """The largest p-value of a range's values, each tested within the levels of every
    factor the rule leaves out (:func:`~nansearch.analysis.stats.fisher_greater_strata`).

    Where a range's runs failed, the runs of one value may all share another factor's
    level and the rest another's: plain SGD diverges at a lower learning rate in bf16,
    and if the focus ran ``batch=vocab-edge-ids`` in bf16 above lr 2 and the other
    batches in fp32 there, the batch looks like it moves the edge. Compared within each
    dtype, it does not, and a factor whose levels never meet the value's runs and the
    others' leaves nothing to compare: the value is not admissible then.
    """
    at = inside & window
    named = {c.factor for c in rule}
    others = [f for f in ev.factors if f not in ev.continuous and f not in named]
    worst = 0.0
    for k, condition in enumerate(rule):
        if condition.op != EQUALS:
            continue
        rest = ev.mask(rule[:k] + rule[k + 1 :]) & residual & ~inside & window
        for name in others:
            tables = []
            for level in ev.levels(name, at | rest):
                here = ev.columns[name] == level
                mine, theirs = ev.counts(at & here), ev.counts(rest & here)
                tables.append((mine["nan"], mine["total"], theirs["nan"], theirs["total"]))
            worst = max(worst, fisher_greater_strata(tables) * _paid(rule, k, choices))
    return worst


def find_causes(
    results: Iterable[TrialResult],
    factors: Sequence[str],
    continuous: Sequence[str] = (),
    alpha: float = ALPHA,
    min_nan: int = MIN_NAN,
    most: int = 8,
) -> list[Cause]:
    """The significant causes, in the order they were found: the surest first.

    Rules are taken greedily among the runs not yet explained (:func:`_best`). Once
    no rule is left, each is tested on its own runs, those it matches that no other cause
    explains, against the background, the runs no rule taken explains (one-sided Fisher,
    multiplied by the number of rules tried in its round): while other causes are still
    in the runs, a cause cannot be judged against them, nor on the NaN runs another
    cause explains (``lr above 0.16`` at 8/15, five of its NaN runs in fp16 or with every
    label ignored, is 3/10 on its own runs). A cause that fails is dropped and the own
    runs of the others recomputed (its runs that another cause matches become that
    cause's own), until every cause left passes; its runs stay out of the background:
    NaN runs that a rule picked out are no evidence against the others.
    """
    return causes_and_suspects(results, factors, continuous, alpha, min_nan, most)[0]


def causes_and_suspects(
    results: Iterable[TrialResult],
    factors: Sequence[str],
    continuous: Sequence[str] = (),
    alpha: float = ALPHA,
    min_nan: int = MIN_NAN,
    most: int = 8,
) -> tuple[list[Cause], list[Cause]]:
    """The causes :func:`find_causes` names, and the suspects: the rules the greedy
    search took that the final test dropped, and the one it stopped at (with fewer NaN
    runs than a cause needs, or deferred to a rule not admissible yet), those with NaN
    runs no named cause explains, each with its own runs counted against the causes
    named. A suspect is where NaN is unexplained and more runs could tell whether a
    cause is there."""
    ev = Evidence(results, continuous, factors)
    found: list[Cause] = []
    pending: list[Cause] = []  # the rule the search stopped at, not sure enough yet
    residual = np.ones(len(ev), dtype=bool)
    # one NaN run short of a cause is still worth a look: it may be a suspect
    while len(found) < most and (residual & ev.nan).sum() >= max(1, min_nan - 1):
        rules = candidates(ev, residual)
        if not rules:
            break
        rule, hits, inside, tried = _best(ev, residual, rules)
        matched = ev.mask(rule)
        cause = Cause(rule, int((matched & ev.nan).sum()), int(matched.sum()), 1.0, 1.0, tried)
        rest, rest_nan = residual.sum() - inside, (residual & ev.nan).sum() - hits
        if hits < min_nan or (rest and hits / inside <= rest_nan / rest):
            # too few NaN runs yet, or a rule deferred to one not admissible yet: a
            # suspect when its NaN runs here are more than chance would put there
            here = ev.counts(matched & residual)
            left = residual.sum() - here["total"]
            rate = ((residual & ev.nan).sum() - here["nan"]) / left if left else 0.0
            if here["nan"] >= min_nan - 1 and here["nan"] > rate * here["total"]:
                pending.append(cause)
            break
        found.append(cause)
        residual &= ~matched
    greedy, dropped = list(found), []
    # the background: the runs no rule taken explains, the one it stopped at included; a
    # rule dropped below leaves its runs out of it, not in it, so that a cause of a few
    # runs of their own (fp16 at 3/3) does not, dropped, make every other one look weak
    bg = ev.counts(~explained(ev, [*greedy, *pending]))
    while found:
        for cause in found:
            _test(ev, cause, found, bg)
        worst = max(found, key=lambda c: c.p_adjusted)
        if worst.p_adjusted < alpha:
            break
        found.remove(worst)
        dropped.append(worst)
    for cause in found:
        describe(ev, cause, found)
    suspects = []
    for cause in [*sorted(dropped, key=greedy.index), *pending]:
        _test(ev, cause, [*found, cause], bg)
        if cause.own_nan:
            suspects.append(cause)
    return found, suspects


def _test(ev: Evidence, cause: Cause, causes: list[Cause], bg: dict[str, int]) -> None:
    """A cause's own runs (those no other cause explains), tested against ``bg``."""
    own = ev.counts(ev.mask(cause.conditions) & ~explained_by_others(ev, cause, causes))
    cause.own_nan, cause.own_total = own["nan"], own["total"]
    cause.p_value = fisher_greater(own["nan"], own["total"], bg["nan"], bg["total"])
    cause.p_adjusted = min(1.0, cause.p_value * cause.tried)


def explained(ev: Evidence, causes: Iterable[Cause]) -> np.ndarray:
    out = np.zeros(len(ev), dtype=bool)
    for cause in causes:
        out |= ev.mask(cause.conditions)
    return out


def explained_by_others(ev: Evidence, cause: Cause, causes: Iterable[Cause]) -> np.ndarray:
    """The runs a cause other than ``cause`` explains."""
    return explained(ev, [c for c in causes if c is not cause])


def describe(ev: Evidence, cause: Cause, causes: list[Cause]) -> None:
    """Fill in the contrasts: runs that differ from the rule in one condition, no other cause.

    A value beside a range is contrasted where :func:`_best` tested it: from the rule's
    first NaN run on, and the contrast's text names that value (``lr above 8.1 without
    init=reinit``)."""
    background = ~explained_by_others(ev, cause, causes)
    ranged = [c for c in cause.conditions if c.op != EQUALS]
    nan = background & ev.mask(cause.conditions) & ev.nan
    failed = failed_from(ranged[0], ev.columns[ranged[0].factor], nan) if ranged else None
    for i, condition in enumerate(cause.conditions):
        rest = cause.conditions[:i] + cause.conditions[i + 1 :]
        if condition.op == EQUALS and failed is not None:  # the value beside the range
            rest = tuple(failed if c.op != EQUALS else c for c in rest)
        scope = background & ev.mask(rest)
        column = ev.columns[condition.factor]
        if condition.op == EQUALS:
            context = scope & (column != str(condition.value))
            text = (
                f"{joined(rest)} without {condition.text}"
                if rest
                else f"other {condition.factor} values"
            )
        else:
            above = condition.op == ABOVE
            inside = column >= condition.value if above else column <= condition.value
            scope &= ~np.isnan(column)
            context = scope & ~inside
            text = f"{condition.factor} {'below' if above else 'above'} {fmt(condition.value)}"
            if rest:
                text = f"{joined(rest)} with {text}"
            passing = column[context & ~ev.nan]
            failing = column[scope & inside & ev.nan]
            last_pass = (passing.max() if above else passing.min()) if len(passing) else None
            first_fail = (failing.min() if above else failing.max()) if len(failing) else None
            cause.boundary[condition.factor] = (
                None if last_pass is None else float(last_pass),
                None if first_fail is None else float(first_fail),
            )
        cause.others.append({"text": text, "factor": condition.factor, **ev.counts(context)})
    if len(ranged) == 1:
        cause.by_level = per_level(ev, cause.conditions, ranged[0], background)
