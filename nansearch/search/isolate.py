"""Isolation: the smallest set of factor values a failing configuration needs to fail.

Delta debugging against the nearest passing configuration. The values in which the two
differ are the candidates. First each one is flipped back to its passing value alone;
the values whose flip fixes the failure are needed. When they alone (on top of the
passing configuration) still fail, the search continues from them; when no single
flip fixes it (two causes present at once) or they alone pass, it continues from all
the differences. From there Zeller's ddmin tests groups: subsets, then complements,
halving the groups until no smaller set fails. What is left is 1-minimal: flipping back
any one of its values fixes the failure.

The values both configurations share are not candidates of that search, yet may be
needed too (a passing run with the same checkpoint hides that the checkpoint matters).
So each shared value is then changed once to an alternative (a value seen in passing
runs): if the failure goes away, the value joins the set. Last, a continuous value in
the set is bisected (on a log scale) between its passing and failing values, so it
reads as a range.

The caller may name suspects: values the runs' counts already point at (the only dtype
a range's NaN runs held). A differing suspect is flipped back first, and a shared one
is changed before the other shared values: when a flaky failure's repeated probes
spend the budget after a few questions, those are the questions the counts cannot
answer yet. An isolation the budget stops keeps what it showed: the flips that fixed it
and the shared values whose change fixed it (:attr:`Isolation.shown`).

The algorithm only asks a question, "does this configuration fail?", through a probe
function; running trials, repeating them where a failure is flaky and spending the
budget are the caller's job (:mod:`nansearch.search.phases`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# configuration -> True (fails), False (passes), None (no budget left to ask)
ProbeFn = Callable[[dict[str, Any]], bool | None]


def fmt(value: Any) -> str:
    """A number as a person writes it: two significant digits, no exponent when short."""
    if not isinstance(value, float):
        return str(value)
    short = float(f"{value:.2g}")
    return f"{short:g}" if 1e-4 <= abs(short) < 1e5 else f"{value:.2g}"


class OutOfBudget(Exception):
    """The probe function could not answer: the isolate budget is spent."""


@dataclass
class Isolation:
    """What delta debugging found for one failing configuration."""

    failing: dict[str, Any]
    reference: dict[str, Any]
    differences: list[str]
    minimal: list[str] = field(default_factory=list)
    needed: list[str] = field(default_factory=list)  # single flips that fixed it
    context: list[str] = field(default_factory=list)  # shared values that are needed too
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # passing, failing
    probes: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False
    trial: int | None = None  # the failing trial's number, when it came from a study
    reference_trial: int | None = None

    @property
    def values(self) -> dict[str, Any]:
        return {name: self.failing[name] for name in self.minimal}

    def holds(self, params: dict[str, Any]) -> bool:
        """Whether ``params`` carries the minimal values (a range counts from its edge)."""
        for name in self.minimal:
            if name not in params:
                return False
            if name in self.ranges:
                passing, failing = self.ranges[name]
                edge = midpoint(passing, failing)
                if (params[name] < edge) if failing > passing else (params[name] > edge):
                    return False
            elif str(params[name]) != str(self.failing[name]):
                return False
        return bool(self.minimal)

    @property
    def shown(self) -> list[str]:
        """The values shown needed: all of the minimal set once complete; before that,
        only those a probe showed (a flip back that fixed it, a shared value whose change
        fixed it), not those merely not ruled out yet."""
        if self.complete:
            return list(self.minimal)
        return [n for n in self.failing if n in self.needed or n in self.context]

    def describe(self, name: str) -> str:
        if name in self.ranges:
            passing, failing = self.ranges[name]
            side = "above" if failing > passing else "below"
            return f"{name} {side} {fmt(midpoint(passing, failing))}"
        return f"{name}={fmt(self.failing[name])}"

    @property
    def text(self) -> str:
        return " with ".join(self.describe(n) for n in self.minimal)

    def to_json(self) -> dict[str, Any]:
        return {
            "minimal": {n: self.failing[n] for n in self.minimal},
            "text": self.text,
            "complete": self.complete,
            "trial": self.trial,
            "reference_trial": self.reference_trial,
            "failing": self.failing,
            "reference": self.reference,
            "differences": self.differences,
            "needed_alone": self.needed,
            "needed_shared": self.context,
            "ranges": {k: {"passes": v[0], "fails": v[1]} for k, v in self.ranges.items()},
            "probes": self.probes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Isolation:
        """The isolation :meth:`to_json` wrote (``ranking.json``'s ``minimal_causes``)."""
        return cls(
            failing=dict(data["failing"]),
            reference=dict(data.get("reference") or {}),
            differences=list(data.get("differences") or []),
            minimal=list(data["minimal"]),
            needed=list(data.get("needed_alone") or []),
            context=list(data.get("needed_shared") or []),
            ranges={k: (v["passes"], v["fails"]) for k, v in (data.get("ranges") or {}).items()},
            probes=list(data.get("probes") or []),
            complete=bool(data.get("complete")),
            trial=data.get("trial"),
            reference_trial=data.get("reference_trial"),
        )


def midpoint(a: float, b: float) -> float:
    return math.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2


def differences(failing: dict[str, Any], reference: dict[str, Any]) -> list[str]:
    return [name for name in failing if failing[name] != reference.get(name)]


class Isolator:
    """Delta debugging over the values in which ``failing`` differs from ``reference``."""

    def __init__(
        self,
        failing: dict[str, Any],
        reference: dict[str, Any],
        probe: ProbeFn,
        continuous: Sequence[str] = (),
        alternatives: dict[str, Any] | None = None,
        bisect_steps: int = 3,
        suspects: Sequence[str] = (),
    ):
        self.result = Isolation(dict(failing), dict(reference), differences(failing, reference))
        self.suspects = [n for n in suspects if n in failing]
        self.probe = probe
        self.continuous = set(continuous)
        self.alternatives = {
            name: value
            for name, value in (alternatives or {}).items()
            if name in failing
            and name not in self.result.differences
            and str(value) != str(failing[name])
        }
        self.bisect_steps = bisect_steps
        # the failing configuration fails and the reference passes: both already observed
        self.known: dict[frozenset[str], bool] = {
            frozenset(self.result.differences): True,
            frozenset(): False,
        }

    def config(self, changed: frozenset[str] | set[str]) -> dict[str, Any]:
        """The reference with the failing values of ``changed``."""
        out = dict(self.result.reference)
        out.update({name: self.result.failing[name] for name in changed})
        return out

    def fails(self, changed: Sequence[str] | set[str]) -> bool:
        key = frozenset(changed)
        if key not in self.known:
            answer = self.probe(self.config(key))
            if answer is None:
                raise OutOfBudget
            self.known[key] = answer
            kept = [n for n in self.result.differences if n in key]
            self.result.probes.append(
                {
                    "failing_values": kept,
                    "flipped_back": [n for n in self.result.differences if n not in key],
                    "fails": answer,
                }
            )
        return self.known[key]

    def run(self) -> Isolation:
        result = self.result
        diffs = result.differences
        if not diffs:
            return result
        try:
            first = [n for n in diffs if n in self.suspects]
            for name in first + [n for n in diffs if n not in first]:
                if not self.fails(set(diffs) - {name}):
                    result.needed.append(name)
            result.needed = [n for n in diffs if n in result.needed]
            start = result.needed if result.needed and self.fails(result.needed) else diffs
            result.minimal = self.ddmin(list(start))
            shared = [n for n in self.suspects if n in self.alternatives]
            shared += [n for n in self.alternatives if n not in shared]
            for name in shared:
                if self.needs_shared(name):
                    result.context.append(name)
            result.minimal = [n for n in result.failing if n in {*result.minimal, *result.context}]
            for name in result.minimal:
                if name in self.continuous:
                    self.bisect(name)
            result.complete = True
        except OutOfBudget:
            result.needed = [n for n in diffs if n in result.needed]
            if not result.minimal:
                # the smallest failing set seen so far
                failing = [set(k) for k, v in self.known.items() if v]
                result.minimal = [n for n in diffs if n in min(failing, key=len)]
            result.minimal = [n for n in result.failing if n in {*result.minimal, *result.context}]
        return result

    def ddmin(self, changes: list[str]) -> list[str]:
        """Zeller's ddmin: the smallest subset of ``changes`` that still fails (1-minimal)."""
        granularity = 2
        while len(changes) >= 2:
            chunks = _split(changes, granularity)
            for chunk in chunks:
                if self.fails(chunk):
                    changes, granularity = chunk, 2
                    break
            else:
                for chunk in chunks:
                    rest = [c for c in changes if c not in chunk]
                    if len(chunks) > 2 and self.fails(rest):
                        changes, granularity = rest, max(granularity - 1, 2)
                        break
                else:
                    if granularity >= len(changes):
                        break
                    granularity = min(len(changes), 2 * granularity)
        return changes

    def needs_shared(self, name: str) -> bool:
        """Whether changing a value both configurations share fixes the minimal failure."""
        config = self.config(set(self.result.minimal))
        config[name] = self.alternatives[name]
        answer = self.probe(config)
        if answer is None:
            raise OutOfBudget
        self.result.probes.append({"changed": name, "to": config[name], "fails": answer})
        return not answer

    def bisect(self, name: str) -> None:
        """Narrow a continuous value to the edge between passing and failing."""
        others = set(self.result.minimal) - {name}
        passing, failing = float(self.result.reference[name]), float(self.result.failing[name])
        for _ in range(self.bisect_steps):
            middle = midpoint(passing, failing)
            config = self.config(others)
            config[name] = middle
            answer = self.probe(config)
            if answer is None:
                break
            self.result.probes.append({"bisect": name, "value": middle, "fails": answer})
            if answer:
                failing = middle
            else:
                passing = middle
        self.result.ranges[name] = (passing, failing)


def _split(items: list[str], parts: int) -> list[list[str]]:
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            chunks.append(items[start:end])
        start = end
    return chunks


def isolate(
    failing: dict[str, Any],
    reference: dict[str, Any],
    probe: ProbeFn,
    continuous: Sequence[str] = (),
    alternatives: dict[str, Any] | None = None,
    bisect_steps: int = 3,
    suspects: Sequence[str] = (),
) -> Isolation:
    """Delta debugging: the smallest set of ``failing``'s values that still fails.

    ``alternatives`` gives, per factor, a value to try in place of a value that
    ``failing`` and ``reference`` share; ``suspects``, the values to ask about first.
    """
    isolator = Isolator(failing, reference, probe, continuous, alternatives, bisect_steps, suspects)
    return isolator.run()
