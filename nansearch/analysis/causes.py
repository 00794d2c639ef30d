"""Causes: the few factor values that make runs NaN, found from the trials themselves.

A cause is a rule of one or two conditions, each a factor value (``dtype=fp16``) or a
range of a continuous factor (``lr above 0.3``). Causes are found one at a time, by
sequential covering: among the runs not yet explained, the rule whose runs are most
surely NaN (:func:`_best`) is taken, the runs it matches are set aside as explained,
and the search repeats on what is left.
Setting explained runs aside is what keeps a value that merely travelled with a cause
(fp32, paired by the sampler with a batch whose labels are all ignored) from being
named as one.

A rule is kept only when it covers at least ``min_nan`` NaN runs and, against the
runs no cause explains, its p-value multiplied by the number of rules tried in its
round (Bonferroni) is below ``alpha``. Ranges are tried only at the values where the
outcome changes, so a continuous factor is reported as "above 0.3", never as a point.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from nansearch.analysis.stats import fisher_greater, fisher_greater_each, wilson_low
from nansearch.search.isolate import fmt
from nansearch.trial.runner import TrialResult

if TYPE_CHECKING:
    from nansearch.search.isolate import Isolation

ALPHA = 0.05
MIN_NAN = 3
ABOVE, BELOW, EQUALS = ">=", "<=", "="


@dataclass(frozen=True)
class Condition:
    """``factor = value``, or ``factor >= value`` / ``factor <= value`` for a range."""

    factor: str
    op: str
    value: Any

    def holds(self, params: dict[str, Any]) -> bool:
        if self.factor not in params:
            return False
        got = params[self.factor]
        if self.op == EQUALS:
            return str(got) == str(self.value)
        return got >= self.value if self.op == ABOVE else got <= self.value

    @property
    def text(self) -> str:
        if self.op == EQUALS:
            return f"{self.factor}={self.value}"
        side = "above" if self.op == ABOVE else "below"
        return f"{self.factor} {side} {fmt(self.value)}"

    def to_json(self) -> dict[str, Any]:
        return {"factor": self.factor, "op": self.op, "value": self.value}


@dataclass
class Cause:
    """A rule that explains NaN runs, with the counts behind it.

    ``nan``/``total`` count every run that matches the rule; ``others`` counts the runs
    that differ from it in one condition and match no other cause (other dtypes, or the
    pair's values alone); ``boundary`` gives, for a range, the last passing and first
    failing value seen on either side of it.
    """

    conditions: tuple[Condition, ...]
    nan: int
    total: int
    p_value: float
    p_adjusted: float
    tried: int
    others: list[dict[str, Any]] = field(default_factory=list)
    boundary: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # for a range: per level of another factor where the edge differs or was never run
    by_level: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

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
        return " with ".join(c.text for c in self.conditions)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.text,
            "conditions": [c.to_json() for c in self.conditions],
            "nan": self.nan,
            "total": self.total,
            "sufficient": self.sufficient,
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "rules_tried": self.tried,
            "others": self.others,
            "boundary": {k: list(v) for k, v in self.boundary.items()},
            "by_level": self.by_level,
        }


class Evidence:
    """Trials as columns: one array per factor and the NaN flags, errors left out."""

    def __init__(self, results: Iterable[TrialResult], continuous: Sequence[str], factors):
        self.results = [r for r in results if r.outcome != "error"]
        self.nan = np.array([r.is_nan for r in self.results], dtype=bool)
        self.factors = [f for f in factors if any(f in r.params for r in self.results)]
        self.continuous = [f for f in self.factors if f in continuous]
        self.columns: dict[str, np.ndarray] = {}
        self._masks: dict[Condition, np.ndarray] = {}
        for name in self.factors:
            values = [r.params.get(name) for r in self.results]
            if name in self.continuous:
                self.columns[name] = np.array(
                    [math.nan if v is None else float(v) for v in values], dtype=float
                )
            else:
                self.columns[name] = np.array([str(v) for v in values], dtype=object)

    def __len__(self) -> int:
        return len(self.results)

    def condition_mask(self, c: Condition) -> np.ndarray:
        mask = self._masks.get(c)
        if mask is None:
            column = self.columns.get(c.factor)
            if column is None:
                mask = np.zeros(len(self), dtype=bool)
            elif c.op == EQUALS:
                mask = column == str(c.value)
            elif c.op == ABOVE:
                mask = column >= c.value
            else:
                mask = column <= c.value
            self._masks[c] = mask
        return mask

    def mask(self, conditions: Iterable[Condition]) -> np.ndarray:
        out = np.ones(len(self), dtype=bool)
        for c in conditions:
            out = out & self.condition_mask(c)
        return out

    def levels(self, name: str, among: np.ndarray) -> list[str]:
        return sorted(set(self.columns[name][among]))


def _midpoint(a: float, b: float) -> float:
    return math.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2


def thresholds(values: np.ndarray, nan: np.ndarray) -> list[tuple[str, float]]:
    """Ranges worth trying: a cut wherever the outcome changes between neighbouring values.

    Going up, a change from finite to NaN suggests ``above``; from NaN to finite, ``below``.
    """
    order = np.argsort(values, kind="stable")
    values, nan = values[order], nan[order]
    change = np.flatnonzero((nan[:-1] != nan[1:]) & (values[:-1] < values[1:]))
    return [
        (ABOVE if nan[i + 1] else BELOW, _midpoint(float(values[i]), float(values[i + 1])))
        for i in change
    ]


def candidates(ev: Evidence, residual: np.ndarray) -> list[tuple[tuple[Condition, ...], int]]:
    """Every rule of one or two conditions worth testing on the runs left to explain.

    Each comes with its multiplicity: how many cut points were tried for a range with
    the same base, so that the best of them is not taken for more than it is.
    """
    singles = [
        (Condition(name, EQUALS, level),)
        for name in ev.factors
        if name not in ev.continuous
        for level in ev.levels(name, residual)
    ]
    rules = [(rule, 1) for rule in singles]
    for i, (a,) in enumerate(singles):
        for (b,) in singles[i + 1 :]:
            if a.factor != b.factor:
                rules.append(((a, b), 1))
    for name in ev.continuous:
        for base in [(), *singles]:
            among = residual & ev.mask(base) & ~np.isnan(ev.columns[name])
            cuts = thresholds(ev.columns[name][among], ev.nan[among])
            for op, cut in cuts:
                tried = sum(o == op for o, _ in cuts)
                rules.append(((*base, Condition(name, op, cut)), tried))
    return rules


def _best(ev: Evidence, residual: np.ndarray, rules: list[tuple[tuple[Condition, ...], int]]):
    """The purest admissible rule on the runs in ``residual`` (highest Wilson lower bound).

    A rule of one categorical condition is always admissible. A rule with a second
    condition, or a range, must earn it: its runs must be NaN significantly more often
    (one-sided Fisher, p < ``ALPHA`` times the cut points tried) than the runs that
    meet only one of its conditions. Without that test, a range could carve a few pure
    runs out of a flaky cause, and purity would prefer them to the whole cause; with
    it, a pair that two other causes make look bad can wait until they are set aside.
    Ties go to fewer conditions, then to more NaN runs explained.
    """
    size = len(rules)
    masks = np.array([ev.mask(rule) & residual for rule, _ in rules]).reshape(size, -1)
    inside = masks.sum(axis=1)
    hits = (masks & ev.nan).sum(axis=1)
    worst = np.zeros(size)
    for k in range(2):  # each condition in turn met without the rule
        part = np.array(
            [
                (ev.mask(rule[k : k + 1]) & residual) if k < len(rule) else np.zeros(len(ev), bool)
                for rule, _ in rules
            ]
        ).reshape(size, -1)
        if k == 0:
            # a range alone is judged against the rest of the runs
            alone = np.array([len(rule) == 1 and rule[0].op != EQUALS for rule, _ in rules])
            part = np.where(alone[:, None], residual[None, :], part)
        only = part & ~masks
        p = fisher_greater_each(hits, inside, (only & ev.nan).sum(axis=1), only.sum(axis=1))
        has = np.array([k < len(rule) for rule, _ in rules])
        worst = np.maximum(worst, np.where(has, p, 0.0))
    tried = np.array([m for _, m in rules])
    simple = np.array([len(rule) == 1 and rule[0].op == EQUALS for rule, _ in rules])
    admissible = simple | (worst * tried < ALPHA)
    low = np.where(admissible, wilson_low(hits, inside), -1.0)
    best = min(range(size), key=lambda i: (-low[i], len(rules[i][0]), -hits[i], i))
    return rules[best][0], int(hits[best]), int(inside[best]), int((inside > 0).sum())


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
    no rule is left, each is tested against the background, the runs no cause explains
    (one-sided Fisher, multiplied by the number of rules tried in its round): while
    other causes are still in the runs, a cause cannot be judged against them. A cause
    that fails is dropped and the background recomputed, until every cause left passes.
    """
    ev = Evidence(results, continuous, factors)
    found: list[Cause] = []
    residual = np.ones(len(ev), dtype=bool)
    while len(found) < most and (residual & ev.nan).sum() >= min_nan:
        rules = candidates(ev, residual)
        if not rules:
            break
        rule, hits, inside, tried = _best(ev, residual, rules)
        rest, rest_nan = residual.sum() - inside, (residual & ev.nan).sum() - hits
        if hits < min_nan or (rest and hits / inside <= rest_nan / rest):
            break
        matched = ev.mask(rule)
        found.append(
            Cause(rule, int((matched & ev.nan).sum()), int(matched.sum()), 1.0, 1.0, tried)
        )
        residual &= ~matched
    while found:
        background = ~explained(ev, found)
        bg = _counts(ev, background)
        for cause in found:
            cause.p_value = fisher_greater(cause.nan, cause.total, bg["nan"], bg["total"])
            cause.p_adjusted = min(1.0, cause.p_value * cause.tried)
        worst = max(found, key=lambda c: c.p_adjusted)
        if worst.p_adjusted < alpha:
            break
        found.remove(worst)
    for cause in found:
        describe(ev, cause, found)
    return found


def explained(ev: Evidence, causes: Iterable[Cause]) -> np.ndarray:
    out = np.zeros(len(ev), dtype=bool)
    for cause in causes:
        out |= ev.mask(cause.conditions)
    return out


def _counts(ev: Evidence, mask: np.ndarray) -> dict[str, int]:
    return {"nan": int((mask & ev.nan).sum()), "total": int(mask.sum())}


def describe(ev: Evidence, cause: Cause, causes: list[Cause]) -> None:
    """Fill in the contrasts: runs that differ from the rule in one condition, no other cause."""
    background = ~explained(ev, [c for c in causes if c is not cause])
    for i, condition in enumerate(cause.conditions):
        rest = cause.conditions[:i] + cause.conditions[i + 1 :]
        scope = background & ev.mask(rest)
        column = ev.columns[condition.factor]
        if condition.op == EQUALS:
            context = scope & (column != str(condition.value))
            text = (
                f"{' with '.join(c.text for c in rest)} without {condition.text}"
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
                text = f"{' with '.join(c.text for c in rest)} with {text}"
            passing = column[context & ~ev.nan]
            failing = column[scope & inside & ev.nan]
            last_pass = (passing.max() if above else passing.min()) if len(passing) else None
            first_fail = (failing.min() if above else failing.max()) if len(failing) else None
            cause.boundary[condition.factor] = (
                None if last_pass is None else float(last_pass),
                None if first_fail is None else float(first_fail),
            )
        cause.others.append({"text": text, "factor": condition.factor, **_counts(ev, context)})
    ranged = [c for c in cause.conditions if c.op != EQUALS]
    if len(ranged) == 1:
        cause.by_level = per_level(ev, cause, ranged[0], background)


EDGE_APART = 1.5  # per-level edges this many times apart are reported apart


def per_level(
    ev: Evidence, cause: Cause, condition: Condition, background: np.ndarray
) -> dict[str, list[dict[str, Any]]]:
    """A range's edge per level of each other factor, where the levels disagree: one has
    finite runs inside the range, or none inside it at all, or its edge lies apart.

    Each level's edge is the value from which all its runs (no other cause, the rule's
    other conditions met) went NaN: the midpoint of its last finite run below its
    lowest such NaN run and that run.
    """
    above = condition.op == ABOVE
    column = ev.columns[condition.factor]
    scope = background & ev.mask([c for c in cause.conditions if c is not condition])
    scope &= ~np.isnan(column)
    inside = ~np.isnan(column) & (
        (column >= condition.value) if above else (column <= condition.value)
    )
    inside &= ev.mask([c for c in cause.conditions if c is not condition])
    own = {c.factor for c in cause.conditions}
    out: dict[str, list[dict[str, Any]]] = {}
    for name in ev.factors:
        if name in own or name in ev.continuous:
            continue
        entries = []
        for level in ev.levels(name, scope):
            at = scope & (ev.columns[name] == level)
            counts = _counts(ev, at & inside)
            if not counts["total"] and (inside & (ev.columns[name] == level)).any():
                continue  # its runs inside the range are another cause's
            entries.append({"value": level, **counts, "edge": _edge(column[at], ev.nan[at], above)})
        if len(entries) < 2:
            continue
        edges = [e["edge"] for e in entries if e["edge"] is not None]
        apart = len(edges) > 1 and max(edges) > EDGE_APART * min(edges) > 0
        uneven = any(e["nan"] < e["total"] or not e["total"] for e in entries)
        if apart or uneven:
            out[name] = entries
    return out


def _edge(values: np.ndarray, nan: np.ndarray, above: bool) -> float | None:
    """Where one level's runs turn NaN for good along the range's side, if they do."""
    order = np.argsort(values if above else -values, kind="stable")
    values, nan = values[order], nan[order]
    if not len(values) or not nan[-1]:
        return None
    start = len(nan)
    while start > 0 and nan[start - 1]:
        start -= 1
    if start == 0:
        return float(values[0])
    return _midpoint(float(values[start - 1]), float(values[start]))


@dataclass
class Interaction:
    """Two conditions whose runs together are NaN more often than either gives alone."""

    first: Condition
    second: Condition
    joint: dict[str, int]
    first_alone: dict[str, int]
    second_alone: dict[str, int]
    p_value: float
    p_adjusted: float

    @property
    def text(self) -> str:
        j, a, b = self.joint, self.first_alone, self.second_alone
        return (
            f"{self.first.text} with {self.second.text}: {j['nan']}/{j['total']} NaN, "
            f"vs {a['nan']}/{a['total']} for {self.first.text} alone and "
            f"{b['nan']}/{b['total']} for {self.second.text} alone"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "conditions": [self.first.to_json(), self.second.to_json()],
            "joint": self.joint,
            "alone": [
                {"condition": self.first.text, **self.first_alone},
                {"condition": self.second.text, **self.second_alone},
            ],
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
        }


def find_interactions(
    results: Iterable[TrialResult],
    factors: Sequence[str],
    continuous: Sequence[str] = (),
    causes: Sequence[Cause] = (),
    alpha: float = ALPHA,
) -> list[Interaction]:
    """Pairs of values whose joint NaN rate exceeds what each gives without the other.

    Each pair is judged on the runs that no other cause explains (causes made of the
    pair's own values aside), so a third cause cannot make a value alone look bad. A continuous factor enters
    as the range that best separates NaN from finite runs among those with the other
    value. The p-value is the larger of the two one-sided Fisher tests (joint vs each
    value alone), multiplied by the number of pairs tried.
    """
    ev = Evidence(results, continuous, factors)
    if not ev.nan.any():
        return []
    found = []
    pairs: list[tuple[Condition, Condition]] = []
    singles = [
        Condition(name, EQUALS, level)
        for name in ev.factors
        if name not in ev.continuous
        for level in ev.levels(name, np.ones(len(ev), dtype=bool))
    ]
    for i, a in enumerate(singles):
        pairs += [(a, b) for b in singles[i + 1 :] if b.factor != a.factor]
        for name in ev.continuous:
            base = _base(ev, causes, [a, Condition(name, ABOVE, 0.0), Condition(name, BELOW, 0.0)])
            base &= ev.mask([a])
            base &= ~np.isnan(ev.columns[name])
            cuts = thresholds(ev.columns[name][base], ev.nan[base])
            if cuts:
                tries = [((a, Condition(name, op, cut)), len(cuts)) for op, cut in cuts]
                rule = _best(ev, base, tries)[0]
                pairs.append(rule)
    tried = 0
    for a, b in pairs:
        base = _base(ev, causes, [a, b])
        joint = _counts(ev, base & ev.mask([a, b]))
        alone_a = _counts(ev, base & ev.mask([a]) & ~ev.mask([b]))
        alone_b = _counts(ev, base & ev.mask([b]) & ~ev.mask([a]))
        if joint["nan"] < 2 or not alone_a["total"] or not alone_b["total"]:
            continue
        tried += 1
        rate = joint["nan"] / joint["total"]
        if rate <= max(alone_a["nan"] / alone_a["total"], alone_b["nan"] / alone_b["total"]):
            continue
        p = max(
            fisher_greater(joint["nan"], joint["total"], alone_a["nan"], alone_a["total"]),
            fisher_greater(joint["nan"], joint["total"], alone_b["nan"], alone_b["total"]),
        )
        found.append(Interaction(a, b, joint, alone_a, alone_b, p, p))
    for item in found:
        item.p_adjusted = min(1.0, item.p_value * max(tried, 1))
    return sorted(
        (i for i in found if i.p_adjusted < alpha), key=lambda i: (i.p_value, -i.joint["nan"])
    )


def with_causes(interactions: Sequence[Interaction], causes: Sequence[Cause]) -> list[Interaction]:
    """The interactions, and every cause of two conditions among them: a cause that needs
    both values is an interaction whether or not the pair test found it on its own."""
    out = list(interactions)

    def same(a: Condition, b: Condition) -> bool:
        return a.factor == b.factor and a.op == b.op and (a.op != EQUALS or a.value == b.value)

    for cause in causes:
        if len(cause.conditions) != 2:
            continue
        first, second = cause.conditions
        if any(
            (same(i.first, first) and same(i.second, second))
            or (same(i.first, second) and same(i.second, first))
            for i in out
        ):
            continue
        others = {o["factor"]: o for o in cause.others}
        alone = [others.get(c.factor, {"nan": 0, "total": 0}) for c in (second, first)]
        out.append(
            Interaction(
                first,
                second,
                {"nan": cause.nan, "total": cause.total},
                {"nan": alone[0]["nan"], "total": alone[0]["total"]},
                {"nan": alone[1]["nan"], "total": alone[1]["total"]},
                cause.p_value,
                cause.p_adjusted,
            )
        )
    return out


def _base(ev: Evidence, causes: Sequence[Cause], pair: Sequence[Condition]) -> np.ndarray:
    """The runs that no cause explains, apart from causes made of the pair's own values."""

    def own(c: Condition) -> bool:
        return any(
            c.factor == p.factor and c.op == p.op and (c.op != EQUALS or c.value == p.value)
            for p in pair
        )

    others = [cause for cause in causes if not all(own(c) for c in cause.conditions)]
    return ~explained(ev, others)


def isolated_by(cause: Cause, isolation: Isolation) -> bool:
    """Whether a completed isolation returned exactly a cause's values (ranges by side)."""
    if not isolation.complete or len(isolation.minimal) != len(cause.conditions):
        return False
    for condition in cause.conditions:
        if condition.factor not in isolation.minimal:
            return False
        if condition.factor in isolation.ranges:
            passing, failing = isolation.ranges[condition.factor]
            if condition.op == EQUALS or (failing > passing) != (condition.op == ABOVE):
                return False
        elif str(isolation.failing[condition.factor]) != str(condition.value):
            return False
    return True
