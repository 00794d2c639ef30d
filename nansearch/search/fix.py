"""A fix: one change to a failing configuration, what its long runs did, and its verdict.

How a fix reads (:class:`Fix`), the command that reruns its configuration with it
(:func:`rerun_line`), what each long run left (:func:`run_record`), the verdict against the
clean reference (:func:`judge`), and the conclusions printed with their fixes
(:func:`format_conclusions`). Which fixes a conclusion gets is :mod:`nansearch.search.fix_plan`;
running them is :mod:`nansearch.search.fixes`.
"""

from __future__ import annotations

import math
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nansearch.config import SweepConfig
from nansearch.search.isolate import fmt
from nansearch.trial.runner import TrialResult

TOLERANCE = 0.1  # a fix's loss trend may be this much above the reference's


@dataclass
class Fix:
    """One change to a failing configuration, and what its long runs did."""

    conclusion: int  # its index in the ranking's conclusions
    rule: str
    source: str  # isolation | audit
    change: dict[str, Any]  # factor values and dotted config keys
    failing: dict[str, Any]
    reference: dict[str, Any] | None
    steps: int
    seeds: list[int]
    runs: list[dict[str, Any]] = field(default_factory=list)
    reference_runs: list[dict[str, Any]] = field(default_factory=list)
    verdict: str = "not run"  # verified | not sufficient | not run
    why: str = ""
    label: str = ""  # how the change reads, where its overrides alone say it badly
    writes: dict[str, Any] | None = None  # what the change needs written before it runs
    rerun: str = ""  # verified: the command that reruns the configuration with the fix

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={fmt_value(value)}" for key, value in self.change.items()]

    @property
    def text(self) -> str:
        change = self.label or " ".join(self.overrides)
        where = f"{self.steps} steps, {len(self.seeds)} seed{'s' * (len(self.seeds) != 1)}"
        label = "fix" if self.source == "isolation" else "audit's fix"
        return f"{label} {change}: {self.verdict} over {where}; {self.why}"

    def to_json(self) -> dict[str, Any]:
        return {
            "conclusion": self.conclusion,
            "rule": self.rule,
            "source": self.source,
            "overrides": self.overrides,
            "change": self.change,
            "failing": self.failing,
            "reference": self.reference,
            "steps": self.steps,
            "seeds": self.seeds,
            "verdict": self.verdict,
            "verified": self.verdict == "verified",
            "why": self.why,
            "label": self.label,
            "writes": self.writes,
            "rerun": self.rerun,
            "runs": self.runs,
            "reference_runs": self.reference_runs,
            "text": self.text,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fix:
        """The fix :meth:`to_json` wrote (``ranking.json``'s ``fixes``)."""
        return cls(
            conclusion=data["conclusion"],
            rule=data["rule"],
            source=data["source"],
            change=dict(data["change"]),
            failing=dict(data["failing"]),
            reference=data.get("reference"),
            steps=data["steps"],
            seeds=list(data["seeds"]),
            runs=list(data.get("runs") or []),
            reference_runs=list(data.get("reference_runs") or []),
            verdict=data.get("verdict", "not run"),
            why=data.get("why", ""),
            label=data.get("label", ""),
            writes=data.get("writes"),
            rerun=data.get("rerun", ""),
        )


def fmt_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return fmt(value) if isinstance(value, float) else str(value)


def exact_value(value: Any) -> str:
    """A value for a command line: a float with the digits that run the same rate."""
    return f"{value:.6g}" if isinstance(value, float) else fmt_value(value)


def rerun_line(cfg: SweepConfig, fix: Fix, study: str) -> str:
    """``nansearch sweep`` on the study's own config with every factor pinned to the
    failing configuration's value and the fix applied: the configuration rerun with the
    fix, on fresh seeds, for as long as the fix was verified."""
    config = [f"{k}={exact_value(v)}" for k, v in fix.change.items() if "." in k]
    values = {**fix.failing, **{k: v for k, v in fix.change.items() if "." not in k}}
    words = [
        "nansearch",
        "sweep",
        str(cfg.study_dir / "config.yaml"),
        f"study={study}",
        f"trials={len(fix.seeds)}",
        f"steps={fix.steps}",
        *config,
        *(f"{k}={exact_value(v)}" for k, v in values.items()),
    ]
    return " ".join(shlex.quote(word) for word in words)


def loss_trend(loss: Sequence[float]) -> float | None:
    """The mean loss of the last tenth of the steps over that of the first tenth."""
    if not loss:
        return None
    k = max(1, len(loss) // 10)
    start, end = statistics.fmean(loss[:k]), statistics.fmean(loss[-k:])
    if not (math.isfinite(start) and math.isfinite(end)) or start <= 0:
        return None
    return end / start


def run_record(result: TrialResult) -> dict[str, Any]:
    return {
        "seed": result.seed,
        "outcome": result.outcome,
        "first_bad_step": result.first_bad_step,
        "steps_run": len(result.loss),
        "loss_first": result.loss[0] if result.loss else None,
        "loss_last": result.loss[-1] if result.loss and result.outcome == "finite" else None,
        "trend": loss_trend(result.loss) if result.outcome == "finite" else None,
        "error": (result.error or "").splitlines()[0] if result.error else None,
        "skipped_batches": result.skipped_batches,
    }


def judge(fix: Fix) -> None:
    """The verdict: every seed finite, and a loss trend no worse than the reference's."""
    bad = [r for r in fix.runs if r["outcome"] != "finite"]
    if bad:
        first = bad[0]
        where = f"at step {first['first_bad_step']}" if first["first_bad_step"] is not None else ""
        fix.verdict = "not sufficient"
        fix.why = (
            f"{len(bad)} of {len(fix.runs)} seeds failed: seed {first['seed']} ended "
            f"{first['outcome']} {where}".rstrip()
            + (f" ({first['error']})" if first["error"] else "")
        )
        return
    idle = [r for r in fix.runs if r.get("skipped_batches") and not r["steps_run"]]
    if idle and len(idle) == len(fix.runs):
        fix.verdict = "not sufficient"
        fix.why = (
            f"every seed finite, but each skipped all {idle[0]['skipped_batches']} of its "
            "steps: its batch held no counted label, so nothing trained"
        )
        return
    trends = [r["trend"] for r in fix.runs if r["trend"] is not None]
    ref = [r["trend"] for r in fix.reference_runs if r["trend"] is not None]
    ours = statistics.median(trends) if trends else None
    theirs = statistics.median(ref) if ref else None
    if ours is None:
        fix.verdict, fix.why = "not sufficient", "the loss could not be read"
        return
    _judge_trend(fix, ours, theirs)
    if idle:
        seeds = ", ".join(str(r["seed"]) for r in idle)
        fix.why += (
            f"; seed{'s' * (len(idle) > 1)} {seeds} skipped every step, its batch holding no "
            "counted label"
        )


def _judge_trend(fix: Fix, ours: float, theirs: float | None) -> None:
    loss = f"loss x{ours:.2g} from the first tenth of the steps to the last"
    if theirs is None:
        # with nothing to compare, a loss that grew over the run is no fix
        failed = fix.reference_runs and all(r["outcome"] != "finite" for r in fix.reference_runs)
        note = "the clean reference failed too" if failed else "no clean reference to compare"
        if ours <= 1 + TOLERANCE:
            fix.verdict, fix.why = "verified", f"every seed finite, {loss} ({note})"
        else:
            fix.verdict = "not sufficient"
            fix.why = f"every seed finite, but {loss}: it grew ({note})"
    elif ours <= theirs + TOLERANCE:
        fix.verdict = "verified"
        fix.why = f"every seed finite, {loss} (clean reference x{theirs:.2g})"
    else:
        fix.verdict = "not sufficient"
        fix.why = f"every seed finite, but {loss}, worse than the clean reference's x{theirs:.2g}"


def format_conclusions(ranking: dict[str, Any]) -> str:
    """The conclusions, numbered, each followed by its fixes."""
    from nansearch.analysis.conclusion import Conclusion

    fixes = [Fix.from_json(fix) for fix in ranking.get("fixes") or []]
    lines = []
    for i, item in enumerate(ranking.get("conclusions") or [], 1):
        lines.append(f"{i}. {Conclusion.from_json(item).text}")
        own = [fix for fix in fixes if fix.conclusion == i - 1]
        for fix in own:
            lines.append(f"   -> {fix.text}")
            if fix.rerun:
                lines.append(f"      rerun: {fix.rerun}")
        if own and not any(fix.verdict == "verified" for fix in own):
            lines.append(f"   -> {none_held(own)}")
    return "\n".join(lines)


def none_held(fixes: Sequence[Fix]) -> str:
    """The line for a conclusion none of whose fixes held, naming what was tried."""
    return f"no fix held: {tried(fixes)}"


def tried(fixes: Sequence[Fix]) -> str:
    """What was tried for a conclusion none of whose fixes held; empty if one held."""
    if not fixes or any(fix.verdict == "verified" for fix in fixes):
        return ""
    overrides = ", ".join(" ".join(fix.overrides) for fix in fixes)
    return f"tried {overrides}; the cause stands unfixed"
