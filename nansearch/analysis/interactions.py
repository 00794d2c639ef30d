"""Interactions: values whose runs together are NaN more often than without one another.

:func:`find_interactions` tests pairs of values (or a value and a range) on their own;
:func:`with_causes` adds every cause of two or three conditions, since a cause that
needs several values at once is an interaction whether or not the pair test found it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nansearch.analysis.causes import ALPHA, Cause, _best, explained
from nansearch.analysis.evidence import ABOVE, BELOW, EQUALS, Condition, Evidence, joined
from nansearch.analysis.ranges import thresholds
from nansearch.analysis.stats import fisher_greater
from nansearch.trial.runner import TrialResult


def _frac(item: dict[str, int]) -> str:
    return f"{item['nan']}/{item['total']}"


@dataclass
class Interaction:
    """Two or three conditions whose runs together are NaN more often than the runs that
    meet all but one of them.

    ``alone[i]`` counts the runs that meet every condition but the i-th and not the i-th
    (for a pair: the other condition alone).
    """

    conditions: tuple[Condition, ...]
    joint: dict[str, int]
    alone: list[dict[str, int]]
    p_value: float
    p_adjusted: float

    @property
    def first(self) -> Condition:
        return self.conditions[0]

    @property
    def second(self) -> Condition:
        return self.conditions[1]

    @property
    def first_alone(self) -> dict[str, int]:
        """The runs with the first condition and not the second (a pair)."""
        return self.alone[1]

    @property
    def second_alone(self) -> dict[str, int]:
        """The runs with the second condition and not the first (a pair)."""
        return self.alone[0]

    def _kept(self, i: int) -> str:
        return joined(c for j, c in enumerate(self.conditions) if j != i)

    @property
    def text(self) -> str:
        head = f"{joined(self.conditions)}: {_frac(self.joint)} NaN, vs "
        if len(self.conditions) == 2:
            a, b = self.first.text, self.second.text
            return (
                f"{head}{_frac(self.first_alone)} for {a} alone and "
                f"{_frac(self.second_alone)} for {b} alone"
            )
        parts = [
            f"{_frac(self.alone[i])} for {self._kept(i)} without {c.text}"
            for i, c in enumerate(self.conditions)
        ]
        return head + ", ".join(parts[:-1]) + " and " + parts[-1]

    def to_json(self) -> dict[str, Any]:
        """``alone`` lists, per condition, the runs that meet ``condition`` (the others)
        and not ``without``; for a pair, in the order of ``conditions``."""
        n = len(self.conditions)
        order = [1, 0] if n == 2 else list(range(n))
        return {
            "text": self.text,
            "conditions": [c.to_json() for c in self.conditions],
            "joint": self.joint,
            "alone": [
                {
                    "condition": self._kept(i),
                    "without": self.conditions[i].text,
                    **self.alone[i],
                }
                for i in order
            ],
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Interaction:
        """The interaction :meth:`to_json` wrote (``ranking.json``'s ``interactions``)."""
        conditions = tuple(Condition.from_json(c) for c in data["conditions"])
        n = len(conditions)
        order = [1, 0] if n == 2 else list(range(n))
        alone: list[dict[str, int]] = [{} for _ in range(n)]
        for i, item in zip(order, data["alone"], strict=True):
            alone[i] = {k: v for k, v in item.items() if k not in ("condition", "without")}
        return cls(conditions, dict(data["joint"]), alone, data["p_value"], data["p_adjusted"])


def find_interactions(
    results: Iterable[TrialResult],
    factors: Sequence[str],
    continuous: Sequence[str] = (),
    causes: Sequence[Cause] = (),
    alpha: float = ALPHA,
) -> list[Interaction]:
    """Pairs of values whose joint NaN rate exceeds what each gives without the other.

    Each pair is judged on the runs that no other cause explains (causes made of the
    pair's own values aside), so a third cause cannot make a value alone look bad. A
    continuous factor enters as the range that best separates NaN from finite runs among
    those with the other value. The p-value is the larger of the two one-sided Fisher
    tests (joint vs each value alone), multiplied by the number of pairs tried.
    """
    ev = Evidence(results, continuous, factors)
    if not ev.nan.any():
        return []
    found = []
    pairs: list[tuple[Condition, ...]] = []
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
                tries: list[tuple[tuple[Condition, ...], int]] = [
                    ((a, Condition(name, op, cut)), len(cuts)) for op, cut in cuts
                ]
                pairs.append(_best(ev, base, tries)[0])
    tried = 0
    for a, b in pairs:
        base = _base(ev, causes, [a, b])
        joint = ev.counts(base & ev.mask([a, b]))
        alone_a = ev.counts(base & ev.mask([a]) & ~ev.mask([b]))
        alone_b = ev.counts(base & ev.mask([b]) & ~ev.mask([a]))
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
        found.append(Interaction((a, b), joint, [alone_b, alone_a], p, p))
    for item in found:
        item.p_adjusted = min(1.0, item.p_value * max(tried, 1))
    return sorted(
        (i for i in found if i.p_adjusted < alpha), key=lambda i: (i.p_value, -i.joint["nan"])
    )


def with_causes(interactions: Sequence[Interaction], causes: Sequence[Cause]) -> list[Interaction]:
    """The interactions, and every cause of two or three conditions among them: a cause
    that needs several values at once is an interaction whether or not the pair test
    found it on its own."""
    out = list(interactions)
    for cause in causes:
        if len(cause.conditions) < 2:
            continue
        if any(
            len(i.conditions) == len(cause.conditions)
            and all(any(c.same(d) for d in i.conditions) for c in cause.conditions)
            for i in out
        ):
            continue
        others = {o["factor"]: o for o in cause.others}
        alone = [others.get(c.factor, {"nan": 0, "total": 0}) for c in cause.conditions]
        out.append(
            Interaction(
                cause.conditions,
                {"nan": cause.nan, "total": cause.total},
                [{"nan": a["nan"], "total": a["total"]} for a in alone],
                cause.p_value,
                cause.p_adjusted,
            )
        )
    return out


def _base(ev: Evidence, causes: Sequence[Cause], pair: Sequence[Condition]) -> np.ndarray:
    """The runs that no cause explains, apart from causes made of the pair's own values."""
    others = [
        cause for cause in causes if not all(any(c.same(p) for p in pair) for c in cause.conditions)
    ]
    return ~explained(ev, others)
