"""A planted range cause judged by its real runs: an edge that may move with other factors.

A range cause such as plain SGD's learning rate too high has no edge that a scenario
could write down: its edge is where real runs start to go NaN, and that moves with the
dtype (SGD diverges at a lower learning rate in bf16 than in fp32) and perhaps with
other factors. So the truth is measured, not declared: :class:`Edge` trains every
configuration of the scenario's categorical levels at every value of the benchmark's
learning-rate grid, through the same oracle (seed 0) whose runs the strategies see, and
judges a named cause ``F with lr above e`` (``F``: zero or more factor values) on them:

- **each value in F must move the edge.** The comparison runs are those that meet F's
  other values; among them, at the grid values where they are neither all finite nor all
  NaN (the edge's band), the runs with the value must go NaN more or less often than
  those with the factor's other levels (two-sided Fisher, p below ``ALPHA``). A value
  whose runs fare like its factor's other levels there is a false condition, whatever
  edge comes with it: ``batch=X with lr above e`` says that ``batch=X`` matters;
- **the edge must be the runs' own, within the grid's resolution.** The measured edge of
  the runs that meet F is where their NaN rate crosses 1/2 going up the grid: the
  lowest grid value from which the rate stays at 1/2 or more, interpolated on the log
  scale from the grid value below it. The named edge must lie within one grid step
  (the ratio of neighbouring grid values) of it, on either side;
- the range must be on the planted factor, on the planted side, and alone.

The plain rule (F empty) is judged by the same two lines: its edge is that of all the
runs. The rule holds for any range cause planted on a categorical grid; nothing in it
names a factor, a level or a learning rate.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from optuna.distributions import CategoricalDistribution

from nansearch.analysis.evidence import ABOVE, EQUALS
from nansearch.analysis.stats import fisher_two_sided

if TYPE_CHECKING:
    from benchmarks.strategies import Named, Oracle
    from nansearch.factors import Factor

ALPHA = 0.05  # a value moves the edge when its band's runs differ below this p


@dataclass
class Grid:
    """Every configuration's outcome on the grid: its categorical values, its grid index."""

    grid: list[float]
    rows: list[tuple[dict[str, str], int, bool]] = field(default_factory=list)

    def rates(self, fixed: dict[str, str]) -> list[tuple[int, int]]:
        """NaN runs and runs at each grid value, among the runs with the values ``fixed``."""
        out = [(0, 0)] * len(self.grid)
        for values, i, nan in self.rows:
            if all(values.get(k) == v for k, v in fixed.items()):
                k, n = out[i]
                out[i] = (k + nan, n + 1)
        return out

    def edge(self, fixed: dict[str, str], above: bool = True) -> float | None:
        """Where the NaN rate of the runs with ``fixed`` crosses 1/2 on the range's side;
        None when it never stays there."""
        rates = self.rates(fixed)
        grid = list(self.grid)
        if not above:  # walk down the grid instead
            rates, grid = rates[::-1], grid[::-1]
        share = [k / n if n else None for k, n in rates]
        start = len(share)
        while start > 0 and (share[start - 1] is None or share[start - 1] >= 0.5):
            start -= 1
        while start < len(share) and share[start] is None:
            start += 1
        if start == len(share):
            return None
        if start == 0 or share[start - 1] is None:
            return grid[start]
        low, high = share[start - 1], share[start]
        assert low is not None and high is not None
        frac = (0.5 - low) / (high - low)
        return grid[start - 1] * (grid[start] / grid[start - 1]) ** frac

    def moves(self, fixed: dict[str, str], factor: str, value: str) -> bool:
        """Whether ``factor=value`` changes how runs with the rest of ``fixed`` go NaN in
        their edge's band."""
        rest = {k: v for k, v in fixed.items() if k != factor}
        band = [i for i, (k, n) in enumerate(self.rates(rest)) if 0 < k < n]
        own, other = [0, 0], [0, 0]
        for values, i, nan in self.rows:
            if i in band and all(values.get(k) == v for k, v in rest.items()):
                side = own if values.get(factor) == value else other
                side[0] += nan
                side[1] += 1
        return fisher_two_sided(own[0], own[1], other[0], other[1])[1] < ALPHA


class Edge:
    """The truth of a planted range cause on ``factor``, measured (see the module's rules)."""

    def __init__(self, factor: str = "lr", op: str = ABOVE):
        self.factor, self.op = factor, op
        self.measured: Grid | None = None

    def measure(self, oracle: Oracle, factors: list[Factor]) -> Edge:
        """Train (or look up) every configuration on the oracle's grid, at seed 0."""
        levels = {
            f.name: [str(c) for c in dist.choices]
            for f in factors
            if isinstance(dist := f.distribution(), CategoricalDistribution)
        }
        names = sorted(levels)
        self.measured = Grid(list(oracle.grid))
        for combo in itertools.product(*(levels[n] for n in names)):
            values = dict(zip(names, combo, strict=True))
            for i, value in enumerate(oracle.grid):
                result = oracle.run({**values, self.factor: value}, seed=0)
                if result.outcome != "error":
                    self.measured.rows.append((values, i, result.is_nan))
        return self

    def __call__(self, cause: Named) -> bool:
        grid = self.measured
        if grid is None:
            raise RuntimeError("Edge.measure must run before a cause is judged")
        ranges = [c for c in cause.conditions if c.op != EQUALS]
        fixed = {c.factor: str(c.value) for c in cause.conditions if c.op == EQUALS}
        if len(ranges) != 1 or ranges[0].factor != self.factor or ranges[0].op != self.op:
            return False
        if any(not grid.moves(fixed, name, value) for name, value in fixed.items()):
            return False
        edge = grid.edge(fixed, above=self.op == ABOVE)
        step = grid.grid[1] / grid.grid[0]
        named = float(ranges[0].value)
        return edge is not None and named > 0 and abs(math.log(named / edge)) <= math.log(step)

    def describe(self, factors: list[str]) -> dict[str, Any]:
        """The measured edge of all the runs and of each level, and which levels move it."""
        grid = self.measured
        assert grid is not None
        above = self.op == ABOVE
        levels: dict[str, set[str]] = {}
        for values, _, _ in grid.rows:
            for k, v in values.items():
                levels.setdefault(k, set()).add(v)
        out: dict[str, Any] = {"all": grid.edge({}, above), "side": self.op}
        for name in factors:
            if len(levels.get(name, ())) < 2:
                continue
            out[name] = {
                v: {"edge": grid.edge({name: v}, above), "moves": grid.moves({name: v}, name, v)}
                for v in sorted(levels[name])
            }
        return out
