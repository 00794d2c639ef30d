"""Ranking: which factor values make the logits NaN, how often, and how sure that is."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nansearch.runner import TrialResult

Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for k successes in n trials (0, 1 when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Bins:
    """Log-spaced ranges for a continuous factor, so a rate rests on several trials."""

    edges: tuple[float, ...]

    @classmethod
    def log_spaced(cls, low: float, high: float, count: int = 4) -> Bins:
        if high <= low:
            return cls((low, high))
        step = (math.log10(high) - math.log10(low)) / count
        return cls(tuple(10 ** (math.log10(low) + i * step) for i in range(count + 1)))

    def label(self, index: int) -> str:
        return f"{self.edges[index]:.2g}..{self.edges[index + 1]:.2g}"

    def index(self, value: float) -> int:
        for i in range(len(self.edges) - 2, -1, -1):
            if value >= self.edges[i]:
                return i
        return 0

    def labels(self) -> list[str]:
        return [self.label(i) for i in range(len(self.edges) - 1)]


def level_of(value: Any, bins: Bins | None) -> str:
    if bins is not None and isinstance(value, (int, float)):
        return bins.label(bins.index(float(value)))
    return str(value)


def rank(
    results: Iterable[TrialResult],
    factors: Sequence[tuple[str, list[Any] | Bins]],
) -> dict[str, Any]:
    """NaN counts and rates per factor level, factors ordered by effect.

    ``factors`` names each factor with its categorical levels, or with :class:`Bins` for
    a continuous one. A trial that ended in an error is neither NaN nor finite: it is
    counted apart under ``errors``.
    """
    results = list(results)
    ranked = []
    for name, levels in factors:
        bins = levels if isinstance(levels, Bins) else None
        names = bins.labels() if bins else [str(v) for v in levels]
        counts = {level: {"nan": 0, "total": 0, "errors": 0} for level in names}
        for result in results:
            if name not in result.params:
                continue
            level = level_of(result.params[name], bins)
            slot = counts.setdefault(level, {"nan": 0, "total": 0, "errors": 0})
            if result.outcome == "error":
                slot["errors"] += 1
            else:
                slot["total"] += 1
                slot["nan"] += int(result.is_nan)
        rows = []
        for level, c in counts.items():
            low, high = wilson(c["nan"], c["total"])
            rate = c["nan"] / c["total"] if c["total"] else None
            rows.append({"value": level, **c, "rate": rate, "ci_low": low, "ci_high": high})
        rates = [r["rate"] for r in rows if r["rate"] is not None]
        effect = (max(rates) - min(rates)) if len(rates) > 1 else 0.0
        ranked.append(
            {
                "name": name,
                "kind": "range" if bins else "categorical",
                "effect": effect,
                "levels": rows,
            }
        )
    ranked.sort(key=lambda f: -f["effect"])
    scored = [r for r in results if r.outcome != "error"]
    return {
        "trials": len(results),
        "nan": sum(r.is_nan for r in scored),
        "finite": sum(not r.is_nan for r in scored),
        "errors": len(results) - len(scored),
        "outcomes": {
            o: sum(r.outcome == o for r in results) for o in sorted({r.outcome for r in results})
        },
        "factors": ranked,
    }


def format_table(ranking: dict[str, Any]) -> str:
    """The ranking as a plain-text table, factors in rank order."""
    lines = [
        f"{ranking['trials']} trials: {ranking['nan']} NaN, {ranking['finite']} finite, "
        f"{ranking['errors']} errors",
        "",
        f"{'rank':<5}{'factor':<12}{'level':<22}{'NaN/total':>10}{'rate':>7}  95% CI",
    ]
    for i, factor in enumerate(ranking["factors"], 1):
        levels = sorted(factor["levels"], key=lambda r: -(r["rate"] or 0))
        for j, row in enumerate(levels):
            head = f"{i:<5}{factor['name']:<12}" if j == 0 else " " * 17
            rate = "-" if row["rate"] is None else f"{row['rate']:.0%}"
            errors = f"  ({row['errors']} errors)" if row["errors"] else ""
            lines.append(
                f"{head}{row['value'][:21]:<22}{row['nan']:>4}/{row['total']:<5}{rate:>7}"
                f"  {row['ci_low']:.2f}-{row['ci_high']:.2f}{errors}"
            )
    return "\n".join(lines)
