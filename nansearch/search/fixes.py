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
tenth, the median over seeds) is no worse than the reference's, within
:data:`nansearch.search.fix.TOLERANCE`; else it is *not sufficient*, and the record says
what happened. Which fixes a conclusion gets is :mod:`nansearch.search.fix_plan`; the fix,
its record and its verdict are :mod:`nansearch.search.fix`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from nansearch.config import NansearchError, SweepConfig, config_from_yaml, to_yaml
from nansearch.factors import Factor, build_factors
from nansearch.search.fix import Fix, judge, rerun_line, run_record
from nansearch.search.fix_plan import plan_fixes
from nansearch.search.remedies import Context, write_stripped
from nansearch.trial.runner import TrialResult, TrialRunner

log = logging.getLogger(__name__)


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
