"""The cover: a pairwise covering design, as combinatorial testing builds one.

Every pair of levels of every two factors appears in at least one configuration, so
every cause of one or two values is tried before the search may settle. A continuous
factor takes part through its strata: its range cut into ``strata`` equal parts (on a
log scale where the range is logarithmic), each configuration drawing its value
inside its stratum.

The design is built greedily, one configuration at a time (the AETG way): among a few
candidates, each started from a pair not yet covered and completed factor by factor
with the level that covers the most pairs still missing (the least used level on a
tie), the one that covers the most is kept. Its size follows from the factors: at
least the product of the two widest, usually a few more. Its rows are then ordered so
that the first ones hold every level of every factor (:func:`levels_first`). A cover asked for more
configurations than one design holds goes on with a second design, and so on.

Triples of levels (three factors at once) are not part of the cover: focus reaches them
after it, one configuration at a time, each the one that holds the most triples not yet
tried (:func:`triples`, :func:`triple_row`); :func:`least_rows` says how many trials
that takes at least, :func:`triple_size` how many a greedy design of them takes.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from typing import Any

from optuna.distributions import CategoricalDistribution

CANDIDATES = 20  # configurations tried for each one the design keeps
MIN_STRATA, MAX_STRATA = 3, 4


def strata(factors: Sequence[Any]) -> int:
    """How many strata a continuous factor is cut into: as many as the second-widest
    categorical factor has levels, kept between 3 and 4, so that its pairs with the
    others do not make the design much larger than the categorical pairs do."""
    widths = sorted(
        (len(f.distribution().choices) for f in factors if _categorical(f)), reverse=True
    )
    second = widths[1] if len(widths) > 1 else (widths[0] if widths else MIN_STRATA)
    return min(MAX_STRATA, max(MIN_STRATA, second))


def _categorical(factor: Any) -> bool:
    return isinstance(factor.distribution(), CategoricalDistribution)


@dataclass(frozen=True)
class Column:
    name: str
    levels: tuple[Any, ...]  # the categorical levels, or the strata's indices
    continuous: Any = None  # the distribution of a continuous factor


def columns(factors: Sequence[Any], count: int | None = None) -> list[Column]:
    count = strata(factors) if count is None else count
    out = []
    for factor in factors:
        dist = factor.distribution()
        if isinstance(dist, CategoricalDistribution):
            out.append(Column(factor.name, tuple(dist.choices)))
        else:
            out.append(Column(factor.name, tuple(range(count)), dist))
    return out


def pairs(cols: Sequence[Column]) -> set[tuple[int, int, int, int]]:
    """Every pair of levels of every two factors, as (factor, level, factor, level) indices."""
    return {
        (i, a, j, b)
        for i in range(len(cols))
        for j in range(i + 1, len(cols))
        for a in range(len(cols[i].levels))
        for b in range(len(cols[j].levels))
    }


def _covers(row: Sequence[int | None], missing: set) -> int:
    return sum(
        (i, row[i], j, row[j]) in missing
        for i in range(len(row))
        for j in range(i + 1, len(row))
        if row[i] is not None and row[j] is not None
    )


def _candidate(cols: list[Column], missing: set, used: list[Counter], rng: random.Random):
    size = len(cols)
    row: list[int | None] = [None] * size
    i, a, j, b = rng.choice(sorted(missing))
    row[i], row[j] = a, b
    order = [k for k in range(size) if row[k] is None]
    rng.shuffle(order)
    for k in order:

        def gain(level: int, k: int = k) -> tuple[int, int, float]:
            new = sum(
                (min(k, m), level if k < m else row[m], max(k, m), row[m] if k < m else level)
                in missing
                for m in range(size)
                if m != k and row[m] is not None
            )
            return new, -used[k][level], rng.random()

        row[k] = max(range(len(cols[k].levels)), key=gain)
    return row


def design(cols: list[Column], rng: random.Random) -> list[list[int]]:
    """One pairwise covering design: rows of level indices, one per column."""
    missing = pairs(cols)
    used: list[Counter[int]] = [Counter() for _ in cols]
    rows: list[list[int]] = []
    if len(cols) == 1:
        return [[level] for level in range(len(cols[0].levels))]
    while missing:
        tries = [_candidate(cols, missing, used, rng) for _ in range(CANDIDATES)]
        best = max(tries, key=lambda row: _covers(row, missing))
        for i in range(len(cols)):
            for j in range(i + 1, len(cols)):
                missing.discard((i, best[i], j, best[j]))
        for k, level in enumerate(best):
            used[k][level] += 1
        rows.append(best)
    return levels_first(rows, cols)


def levels_first(rows: list[list[int]], cols: Sequence[Column]) -> list[list[int]]:
    """The design's rows reordered so that the first hold every level of every factor once:
    the row that brings the most levels not yet seen goes next (the design's order on a
    tie). The pairs the design covers do not change, only when each is first tried: a
    level that fails only rarely (one bad batch file among many) fails for the first time
    within as many rows as its factor has levels, not anywhere in the design."""
    seen: list[set[int]] = [set() for _ in cols]
    left, out = list(rows), []
    while left:
        best = max(left, key=lambda row: sum(row[k] not in seen[k] for k in range(len(cols))))
        if not any(best[k] not in seen[k] for k in range(len(cols))):
            break
        left.remove(best)
        out.append(best)
        for k, level in enumerate(best):
            seen[k].add(level)
    return out + left


def size(factors: Sequence[Any], seed: int) -> int:
    """How many configurations one pairwise design of ``factors`` takes."""
    return len(design(columns(factors), random.Random(seed))) if factors else 0


def cover_plan(factors: Sequence[Any], count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` configurations: a pairwise design, then more designs if it is short.

    A continuous factor's value is drawn inside its stratum: each stratum's draws are
    spread over it (the k-th of n draws falls in the k-th n-th of the stratum).
    """
    if not factors or count <= 0:
        return []
    rng = random.Random(seed)
    cols = columns(factors)
    rows: list[list[int]] = []
    while len(rows) < count:
        rows += design(cols, rng)
    rows = rows[:count]
    out: list[dict[str, Any]] = [{} for _ in rows]
    for k, col in enumerate(cols):
        if col.continuous is None:
            for config, row in zip(out, rows, strict=True):
                config[col.name] = col.levels[row[k]]
            continue
        dist = col.continuous
        low, high = (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low, dist.high)
        width = (high - low) / len(col.levels)
        for stratum in range(len(col.levels)):
            members = [n for n, row in enumerate(rows) if row[k] == stratum]
            slots = list(range(len(members)))
            rng.shuffle(slots)
            for n, slot in zip(members, slots, strict=True):
                value = low + width * (stratum + (slot + rng.random()) / len(members))
                value = math.exp(value) if dist.log else value
                out[n][col.name] = min(max(value, dist.low), dist.high)
    return out


def stratum(value: float, dist: Any, count: int) -> int:
    """The stratum of a continuous factor's range that ``value`` falls in."""
    low, high = (math.log(dist.low), math.log(dist.high)) if dist.log else (dist.low, dist.high)
    where = math.log(value) if dist.log else value
    return min(count - 1, max(0, int((where - low) / (high - low) * count)))


# -- triples: what focus tries after the cover ------------------------------------------

Triple = tuple[int, int, int, int, int, int]  # (factor, level) three times, factors in order


def triples(cols: Sequence[Column]) -> set[Triple]:
    """Every triple of levels of every three factors, as (factor, level) indices thrice.
    A factor of one level makes its triples pairs of the others: the cover holds them."""
    out: set[Triple] = set()
    for i, j, k in combinations(range(len(cols)), 3):
        for a in range(len(cols[i].levels)):
            for b in range(len(cols[j].levels)):
                for c in range(len(cols[k].levels)):
                    out.add((i, a, j, b, k, c))
    return out


def row_triples(row: Sequence[int]) -> set[Triple]:
    return {(i, row[i], j, row[j], k, row[k]) for i, j, k in combinations(range(len(row)), 3)}


def least_rows(missing: set[Triple]) -> int:
    """Trials that ``missing`` needs at least: a configuration holds one triple of levels
    of each three factors, so the three factors with the most triples missing set it."""
    per = Counter((t[0], t[2], t[4]) for t in missing)
    return max(per.values(), default=0)


def bottleneck(missing: set[Triple]) -> set[Triple]:
    """The missing triples of the three factors with the most missing: those that set
    :func:`least_rows`, and so the ones to start from."""
    per = Counter((t[0], t[2], t[4]) for t in missing)
    most = max(per.values(), default=0)
    return {t for t in missing if per[(t[0], t[2], t[4])] == most}


def triple_row(
    cols: Sequence[Column],
    missing: set[Triple],
    used: Sequence[Counter],
    rng: random.Random,
    start: set[Triple] | None = None,
) -> list[int]:
    """A configuration started from a triple not yet tried (one of ``start`` if given),
    completed factor by factor with the level that holds the most missing triples (the
    least used on a tie)."""
    size = len(cols)
    row: list[int | None] = [None] * size
    i, a, j, b, k, c = rng.choice(sorted(start or missing))
    row[i], row[j], row[k] = a, b, c
    order = [m for m in range(size) if row[m] is None]
    rng.shuffle(order)
    for m in order:
        fixed = [n for n in range(size) if row[n] is not None]

        def gain(level: int, m: int = m, fixed: list[int] = fixed) -> tuple[int, int, float]:
            new = 0
            for x, y in combinations(fixed, 2):
                key = sorted(((x, row[x]), (y, row[y]), (m, level)))
                new += tuple(v for pair in key for v in pair) in missing
            return new, -used[m][level], rng.random()

        row[m] = max(range(len(cols[m].levels)), key=gain)
    return [int(v) for v in row if v is not None]


def triple_design(cols: Sequence[Column], rng: random.Random) -> list[list[int]]:
    """Rows that hold every triple of levels, built greedily like the pairwise design."""
    missing = triples(cols)
    used: list[Counter[int]] = [Counter() for _ in cols]
    rows: list[list[int]] = []
    while missing:
        tries = [triple_row(cols, missing, used, rng) for _ in range(CANDIDATES)]
        best = max(tries, key=lambda row: len(row_triples(row) & missing))
        missing -= row_triples(best)
        for k, level in enumerate(best):
            used[k][level] += 1
        rows.append(best)
    return rows


@lru_cache(maxsize=64)
def _triple_size(widths: tuple[int, ...], seed: int) -> int:
    cols = [Column(str(n), tuple(range(w))) for n, w in enumerate(widths)]
    return len(triple_design(cols, random.Random(seed)))


def triple_size(factors: Sequence[Any], seed: int) -> int:
    """How many configurations a greedy design holding every triple of levels takes."""
    return _triple_size(tuple(len(c.levels) for c in columns(factors)), seed) if factors else 0
