"""Verified fixes: for each conclusion, a change that makes its failing configuration pass,
run for far longer than a trial on the confirmation seeds.

Two fixes per conclusion where there are two:

- the smallest change, from the isolation: one of the values the failure needs, flipped
  to a value that passes. Where several flips would do, the one closest to the user's
  configuration: a learning rate just below the edge, for a dtype the one that changes
  least (``fp16`` -> ``amp-fp16`` keeps fp16 compute and moves only the weights and the
  optimizer state to fp32), otherwise the value the passing reference run had. A value
  that another conclusion names as a cause is never proposed.
- the audit's concrete fix for the same cause (``optimizer.eps=1e-4`` for Adam on pure
  fp16 weights), applied to the failing configuration.

Each runs for ``search.verify_steps`` steps (ten times ``steps`` by default) on the
confirmation's seeds, and so does the clean reference: the failing configuration with
every value the failure needs set as the passing run the isolation compared against had
it, everything else kept. A fix is *verified* when every seed stays finite that long
and its loss trend (the mean of the last tenth of the steps over the mean of the first
tenth, the median over seeds) is no worse than the reference's, within ``TOLERANCE``;
else it is *not sufficient*, and the record says what happened.
"""

from __future__ import annotations

import logging
import math
import shlex
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from optuna.distributions import CategoricalDistribution

from nansearch.config import NansearchError, SweepConfig, config_from_yaml, to_yaml
from nansearch.factors import Factor, build_factors
from nansearch.search.choose import nearest_passing
from nansearch.search.isolate import fmt
from nansearch.search.plan import continuous_names
from nansearch.search.remedies import Context, audit_remedies, write_stripped
from nansearch.trial.runner import TrialResult, TrialRunner

log = logging.getLogger(__name__)

TOLERANCE = 0.1  # a fix's loss trend may be this much above the reference's
# how far a dtype level is from another: compute precision, then where weights live
_DTYPE = {
    "fp32": ("fp32", "fp32"),
    "bf16": ("bf16", "bf16"),
    "fp16": ("fp16", "fp16"),
    "amp-fp16": ("fp16", "fp32"),
    "amp-bf16": ("bf16", "fp32"),
}


def dtype_distance(a: str, b: str) -> float:
    if a not in _DTYPE or b not in _DTYPE:
        return 1.0
    (ca, wa), (cb, wb) = _DTYPE[a], _DTYPE[b]
    return (ca != cb) * 1.0 + (wa != wb) * 0.5


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


class Verifier:
    """Runs fixes and their references for ``steps`` steps, each configuration once per seed."""

    def __init__(self, cfg: SweepConfig, factors: list[Factor], runner: TrialRunner, steps: int):
        self.cfg, self.factors, self.runner, self.steps = cfg, factors, runner, steps
        self.runners: dict[tuple, TrialRunner] = {(): runner}
        self.done: dict[tuple, TrialResult] = {}
        self.on_run: list[Callable[[Fix | None, TrialResult], None]] = []

    def runner_for(self, keys: dict[str, Any]) -> TrialRunner:
        key = tuple(sorted((k, str(v)) for k, v in keys.items()))
        if key not in self.runners:
            overrides = [f"{k}={v}" for k, v in keys.items()]
            cfg = config_from_yaml(to_yaml(self.cfg), "fix", overrides)
            runner = TrialRunner(cfg, build_factors(cfg), self.runner.target, self.runner.device)
            runner.cache = self.runner.cache
            self.runners[key] = runner
        return self.runners[key]

    def run(self, params: dict[str, Any], config: dict[str, Any], seed: int) -> TrialResult:
        key = (repr(sorted(params.items())), repr(sorted(config.items())), seed)
        if key not in self.done:
            self.done[key] = self.runner_for(config).run(params, seed, steps=self.steps)
        return self.done[key]

    def verify(self, fix: Fix) -> Fix:
        if fix.writes and "strip" in fix.writes:
            spec = fix.writes["strip"]
            try:
                prefix = write_stripped(spec, self.runner)
            except (NansearchError, OSError, ValueError, RuntimeError) as exc:
                fix.verdict = "not sufficient"
                fix.why = f"the stripped copy could not be written: {exc}"
                return fix
            fix.label = (
                f"checkpoint={fix.change['checkpoint']} ({spec['level']} with '{prefix}' "
                f"stripped from its keys, saved to {spec['to']})"
            )
        params = {**fix.failing, **{k: v for k, v in fix.change.items() if "." not in k}}
        config = {k: v for k, v in fix.change.items() if "." in k}
        for seed in fix.seeds:
            fix.runs.append(run_record(self.run(params, config, seed)))
            if fix.reference is not None:
                fix.reference_runs.append(run_record(self.run(fix.reference, {}, seed)))
        judge(fix)
        return fix


def _levels(factors: Sequence[Factor], name: str) -> list[Any]:
    factor = next((f for f in factors if f.name == name), None)
    if factor is None:
        return []
    dist = factor.distribution()
    return list(dist.choices) if isinstance(dist, CategoricalDistribution) else []


def _named_elsewhere(params: dict[str, Any], conclusions: list[dict[str, Any]]) -> bool:
    """Whether ``params`` matches a cause some conclusion names."""
    from nansearch.analysis.causes import Condition

    for item in conclusions:
        conditions = item.get("conditions") or []
        if conditions and all(Condition(**c).holds(params) for c in conditions):
            return True
    return False


def long_run_lr(passing: float, steps: int, verify_steps: int, optimizer: str) -> float:
    """A learning rate that should hold over ``verify_steps`` where ``passing`` held over a
    trial's ``steps``: lower by the ratio of the two, since the optimizer moves each weight
    by about lr per step (Adam) or lr times its gradient (SGD), so a run ten times longer
    drifts as far at a tenth of the rate; and no higher than the top of the optimizer's
    usual range (the audit's ``config.lr-range``). Two significant digits, as printed."""
    from nansearch.audit.config import USUAL_LR

    value = passing * min(1.0, steps / verify_steps) if steps and verify_steps else passing
    value = min(value, USUAL_LR.get(optimizer, USUAL_LR["adamw"])[1])
    return float(f"{value:.2g}")


def smallest_change(
    item: dict[str, Any],
    failing: dict[str, Any],
    reference: dict[str, Any] | None,
    factors: Sequence[Factor],
    conclusions: list[dict[str, Any]],
    steps: int = 0,
    verify_steps: int = 0,
    optimizer: str = "adamw",
) -> dict[str, Any] | None:
    """The one flip, closest to the failing configuration, that the evidence says fixes it.

    A learning rate too high goes below the passing side of its edge by the ratio of the
    trial's ``steps`` to the fix's ``verify_steps`` (:func:`long_run_lr`): the edge of a
    20-step trial is not the edge of a run ten times longer."""
    iso = item.get("isolation") or {}
    continuous = continuous_names(factors)
    ranges = {k: v["passes"] for k, v in (iso.get("ranges") or {}).items()}
    boundary = {k: v[0] for k, v in (item.get("boundary") or {}).items() if v and v[0]}
    if iso.get("needed_alone"):
        names = [n for n in iso["needed_alone"] if n in iso.get("minimal", {})] or list(
            iso["needed_alone"]
        )
    elif iso.get("minimal"):
        names = list(iso["minimal"])
        if len(names) > 1:  # no single flip fixed it: all of them back to the reference
            return (
                {n: ranges.get(n, (reference or {}).get(n)) for n in names} if reference else None
            )
    else:
        names = [c["factor"] for c in item.get("conditions") or []]
    candidates = []
    for order, name in enumerate(names):
        value = failing.get(name)
        if name in continuous:
            edge = ranges.get(name) or boundary.get(name)
            new = edge or (reference or {}).get(name)
            if new is None or value is None or new <= 0 or value <= 0:
                continue
            if edge and name == "lr" and new < value:
                new = long_run_lr(new, steps, verify_steps, optimizer)
            candidates.append((abs(math.log10(new / value)), order, name, new))
            continue
        for level in _levels(factors, name):
            if str(level) == str(value):
                continue
            if _named_elsewhere({**failing, name: level}, conclusions):
                continue
            seen_pass = reference is not None and str(reference.get(name)) == str(level)
            if name == "dtype":  # among dtypes equally far, the one the reference ran
                distance = dtype_distance(str(value), str(level)) + 0.1 * (not seen_pass)
            else:
                distance = 1.0 if seen_pass else 1.5
            candidates.append((distance, order, name, level))
    if not candidates:
        return None
    _, _, name, value = min(candidates, key=lambda c: (c[0], c[1]))
    return {name: value}


def _failing_run(
    item: dict[str, Any], results: Sequence[TrialResult], others: Sequence[dict[str, Any]] = ()
) -> TrialResult | None:
    """The run a conclusion's fixes start from: its isolation's, else its earliest-failing
    NaN run that no other conclusion (``others``) explains too. A run that also holds
    another cause fails for that one whatever the fix changes (``lr above 0.47`` met by a
    run with every label ignored)."""
    from nansearch.analysis.causes import Condition

    iso = item.get("isolation") or {}
    if iso.get("trial") is not None:
        match = next((r for r in results if r.number == iso["trial"]), None)
        if match is not None:
            return match
    conditions = [Condition(**c) for c in item.get("conditions") or []]
    if not conditions:
        return None
    nan = [r for r in results if r.is_nan and all(c.holds(r.params) for c in conditions)]
    return min(
        nan,
        key=lambda r: (_named_elsewhere(r.params, list(others)), -(r.score or 0), r.number),
        default=None,
    )


def _seeds(
    item: dict[str, Any], failing: TrialResult, results: Sequence[TrialResult], count: int
) -> list[int]:
    """The confirmation's seeds; without a confirmation, the failing run's and the next ones."""
    confirmation = item.get("confirmation") or {}
    by_number = {r.number: r for r in results}
    seeds = [by_number[n].seed for n in confirmation.get("rerun_trials") or [] if n in by_number]
    return seeds or [failing.seed + k for k in range(count)]


def clean_reference(
    item: dict[str, Any],
    failing: dict[str, Any],
    reference: dict[str, Any] | None,
    smallest: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The failing configuration with every value the failure needs set as the passing
    reference had it, all else kept: what the fix's loss trend is held against. A
    learning rate goes no higher than the ``smallest`` change's: one that passed a trial
    may still diverge over the longer run."""
    if reference is None:
        return None
    iso = item.get("isolation") or {}
    names = list(iso.get("minimal") or {}) or [c["factor"] for c in item.get("conditions") or []]
    ranges = {k: v["passes"] for k, v in (iso.get("ranges") or {}).items()}
    clean = dict(failing)
    for name in names:
        if name in reference:
            clean[name] = ranges.get(name, reference[name])
        lower = (smallest or {}).get(name)
        if name == "lr" and isinstance(lower, float) and lower < clean.get(name, lower):
            clean[name] = lower
    return clean


def plan_fixes(
    ranking: dict[str, Any],
    results: Sequence[TrialResult],
    factors: Sequence[Factor],
    audit: dict[str, Any] | None,
    steps: int,
    seeds: int,
    trial_steps: int = 0,
    optimizer: str = "adamw",
    context: Context | None = None,
) -> list[Fix]:
    """The fixes to verify: per conclusion, the smallest change and the audit's fixes."""
    context = context or Context(optimizer=optimizer)
    conclusions = ranking.get("conclusions") or []
    continuous = continuous_names(factors)
    fixes = []
    for index, item in enumerate(conclusions):
        if item.get("kind") not in ("cause", "isolated"):
            continue
        others = [c for i, c in enumerate(conclusions) if i != index]
        failing = _failing_run(item, results, others)
        if failing is None:
            continue
        iso = item.get("isolation") or {}
        reference = iso.get("reference")
        if reference is None:
            near = nearest_passing(failing, results, continuous)
            reference = dict(near.params) if near is not None else None
        rule = item.get("rule") or iso.get("text") or ""
        run_seeds = _seeds(item, failing, results, seeds)
        smallest = smallest_change(
            item, failing.params, reference, factors, conclusions, trial_steps, steps, optimizer
        )
        clean = clean_reference(item, failing.params, reference, smallest)
        if smallest:
            fixes.append(
                Fix(index, rule, "isolation", smallest, dict(failing.params), clean, steps,
                    run_seeds)
            )  # fmt: skip
        for remedy in audit_remedies(item, audit, failing.params, context):
            if remedy.values == smallest:
                continue
            fix = Fix(index, rule, "audit", remedy.values, dict(failing.params), clean, steps,
                      run_seeds, label=remedy.label, writes=remedy.writes)  # fmt: skip
            fixes.append(fix)
    return fixes


def verify_fixes(
    cfg: SweepConfig,
    factors: list[Factor],
    runner: TrialRunner,
    ranking: dict[str, Any],
    results: Sequence[TrialResult],
    audit: dict[str, Any] | None = None,
    on_fix: Callable[[Fix], None] | None = None,
    stop: Any = None,
) -> list[Fix]:
    """Plan and run every conclusion's fixes; ``on_fix`` hears each one as it is judged.
    Once ``stop`` is set (Ctrl-C) the fixes not yet run are left out."""
    steps = cfg.search.verify_steps if cfg.search.verify_steps > 0 else 10 * cfg.steps
    context = Context(
        optimizer=cfg.optimizer.name,
        study_dir=cfg.study_dir,
        checkpoints=dict(cfg.factors.checkpoint.levels),
        owns_loop=runner.target.owns_loop,
    )
    fixes = plan_fixes(
        ranking, results, factors, audit, steps, cfg.search.seeds, cfg.steps, cfg.optimizer.name,
        context,
    )  # fmt: skip
    verifier = Verifier(cfg, factors, runner, steps)
    done: list[Fix] = []
    for fix in fixes:
        if stop is not None and stop.is_set():
            break
        verifier.verify(fix)
        if fix.verdict == "verified":
            nth = 1 + sum(f.conclusion == fix.conclusion for f in done)
            fix.rerun = rerun_line(cfg, fix, f"{cfg.study}-fix-{fix.conclusion + 1}-{nth}")
        done.append(fix)
        log.info("conclusion %d: %s", fix.conclusion + 1, fix.text)
        if on_fix is not None:
            on_fix(fix)
    return done


def format_conclusions(ranking: dict[str, Any]) -> str:
    """The conclusions, numbered, each followed by its fixes."""
    fixes = ranking.get("fixes") or []
    lines = []
    for i, item in enumerate(ranking.get("conclusions") or [], 1):
        lines.append(f"{i}. {item['text']}")
        own = [fix for fix in fixes if fix["conclusion"] == i - 1]
        for fix in own:
            lines.append(f"   -> {fix['text']}")
            if fix.get("rerun"):
                lines.append(f"      rerun: {fix['rerun']}")
        if own and not any(fix.get("verified") for fix in own):
            lines.append(f"   -> {none_held(own)}")
    return "\n".join(lines)


def none_held(fixes: Sequence[dict[str, Any]]) -> str:
    """The line for a conclusion none of whose fixes held, naming what was tried."""
    tried = ", ".join(" ".join(fix["overrides"]) for fix in fixes)
    return f"no fix held: tried {tried}; the cause stands unfixed"
