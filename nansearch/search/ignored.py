"""A factor the user's own code never reads: every level of it runs the same steps.

nansearch hands each factor to a script (``target.kind: command``) through a template,
an environment variable or a key of its config file, and to a function
(``target.kind: function``) through the trial object. Whether the code then reads it is
out of nansearch's sight: a template that passes ``--dtype ${dtype}`` to a script whose
argparse takes ``--dtype`` and never uses it, or a config key the script does not read,
runs every level of the factor the same, and the factor's NaN rate says nothing about it.

At the end of the sweep, one recorded run is taken again for a few steps with its own
seed, then once with each factor moved to another level, all else kept. A factor is
*ignored* when every level gives the same per-step trail as the reference (max |logit|,
loss and gradient norm at every step, equal within :data:`RTOL`) while another factor
changed it. A categorical factor is moved to each of its other levels in turn until one
changes the trail (a level that does nothing for this configuration, such as
``uninitialized-missing`` on a checkpoint with nothing missing, is not enough); the
learning rate to the end of its range farthest from the reference's. The built-in
targets run nansearch's own loop, which reads every factor, and are not checked.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from nansearch.config import SweepConfig
from nansearch.factors import Factor
from nansearch.trial.runner import QUEUED, TrialResult, TrialRunner

log = logging.getLogger(__name__)

CHECKED_KINDS = ("command", "function")
STEPS = 3  # steps of each run: the learning rate shows from the second
RTOL = 1e-6  # relative difference below which two steps are the same
SIGNALS = ("logit_absmax", "loss", "grad_norm")
# what carries each factor to a script: its own name, or a value derived from it
CARRIERS = {
    "checkpoint": ("checkpoint", "checkpoint_level"),
    "dtype": ("dtype", "param_dtype", "autocast_dtype"),
}
APPLIED_INSIDE = ("init", "batch")  # nansearch.inject applies these levels itself
FUNCTION_CARRIERS = {
    "checkpoint": "trial.checkpoint or trial.load()",
    "dtype": "trial.dtype, trial.load() or trial.autocast()",
    "lr": "trial.lr or trial.optimizer()",
    "init": "trial.load() or trial.init()",
    "batch": "trial.batch()",
}


def same_trail(a: TrialResult, b: TrialResult) -> bool:
    """Whether two runs took the same steps: outcome, length and every value."""
    if (a.outcome, a.first_bad_step) != (b.outcome, b.first_bad_step):
        return False
    for name in SIGNALS:
        x, y = getattr(a, name), getattr(b, name)
        if len(x) != len(y) or not all(_close(u, v) for u, v in zip(x, y, strict=True)):
            return False
    return True


def _close(u: float, v: float) -> bool:
    if math.isnan(u) or math.isnan(v):
        return math.isnan(u) and math.isnan(v)
    if math.isinf(u) or math.isinf(v):
        return u == v
    return abs(u - v) <= RTOL * max(abs(u), abs(v))


def carried(cfg: SweepConfig, name: str) -> str | None:
    """How ``name`` reaches the user's code, in words; None when nansearch applies it itself
    or nothing passes it (the audit's ``config.factor-unused`` says so before the trials)."""
    target = cfg.target
    if target.kind == "function":
        return FUNCTION_CARRIERS.get(name, f"trial.params[{name!r}]")
    if name in APPLIED_INSIDE:
        return None
    ways = []
    for carrier in CARRIERS.get(name, (name,)):
        if f"${{{carrier}}}" in target.args or f"${carrier}" in target.args:
            ways.append(f"${{{carrier}}} in target.args ({target.args})")
        for var, text in target.env.items():
            if f"${{{carrier}}}" in text or f"${carrier}" in text:
                ways.append(f"the environment variable {var} (${{{carrier}}})")
        if carrier in target.keys:
            ways.append(f"the key {target.keys[carrier]} of its config {target.config}")
    return "; ".join(ways) or None


def other_levels(factor: Factor, value: Any) -> list[Any]:
    """The levels to move ``factor`` to from ``value``: every other categorical level, or
    the end of a range farthest from ``value`` on a log scale."""
    levels = factor.levels
    if levels is not None:
        return [level for level in levels if level != value]
    low, high = getattr(factor, "low", None), getattr(factor, "high", None)
    if low is None or high is None or not low < high:
        return []
    return [high if math.log(value / low) < math.log(high / value) else low]


def reference(results: Sequence[TrialResult]) -> TrialResult | None:
    """The run to start from: the first queued one that stayed finite, else the first that
    ran past its second step before it failed."""
    ran = [r for r in results if r.outcome != "error" and len(r.loss) >= 2]
    ran.sort(key=lambda r: (r.phase not in QUEUED, r.outcome != "finite", r.number or 0))
    return ran[0] if ran else None


def check_ignored(
    cfg: SweepConfig,
    factors: list[Factor],
    runner: TrialRunner,
    results: Sequence[TrialResult],
    stop: Callable[[], bool] = lambda: False,
) -> list[dict[str, Any]]:
    """The factors the user's code gives no sign of reading, each with how it was passed
    and what was run; empty when every factor changed the trail, or nothing was checked."""
    if cfg.target.kind not in CHECKED_KINDS:
        return []
    ways = {f.name: carried(cfg, f.name) for f in factors}
    checked = [f for f in factors if ways[f.name] and len(values_of(f)) > 1]
    base = reference(results)
    if not checked or base is None:
        return []
    steps = min(cfg.steps, STEPS)
    log.info(
        "checking that %s reads each factor it is given: up to %d short runs",
        what(cfg),
        1 + sum(len(other_levels(f, base.params[f.name])) for f in checked),
    )
    again = runner.run(base.params, seed=base.seed, steps=steps)
    if again.outcome == "error" or len(again.loss) < 2:
        return []
    same: dict[str, list[Any]] = {}
    changed: list[str] = []
    for factor in checked:
        value = base.params[factor.name]
        tried = []
        for level in other_levels(factor, value):
            if stop():
                return []
            moved = runner.run({**base.params, factor.name: level}, seed=base.seed, steps=steps)
            if moved.outcome == "error":
                continue
            if not same_trail(again, moved):
                changed.append(factor.name)
                break
            tried.append(level)
        else:
            if tried:
                same[factor.name] = tried
    return [
        finding(cfg, name, base, levels, steps, changed, ways[name] or "")
        for name, levels in same.items()
    ]


def values_of(factor: Factor) -> list[Any]:
    """The values a factor takes: its levels, or the two ends of its range."""
    if factor.levels is not None:
        return list(factor.levels)
    low, high = getattr(factor, "low", None), getattr(factor, "high", None)
    return [low, high] if low is not None and high is not None and low < high else []


def what(cfg: SweepConfig) -> str:
    target = cfg.target
    return (target.program or "") if target.kind == "command" else f"target.fn={target.fn}"


def finding(
    cfg: SweepConfig,
    name: str,
    base: TrialResult,
    levels: list[Any],
    steps: int,
    changed: list[str],
    way: str,
) -> dict[str, Any]:
    value = base.params[name]
    shown = ", ".join(_shown(level) for level in levels)
    code = what(cfg)
    if changed:
        contrast = f"while {' and '.join(changed)} changed them"
    else:
        contrast = "and no other factor changed them either: check that it reads its inputs"
    text = (
        f"{name} is very likely never read by {code}: trial {base.number}'s configuration "
        f"with {name}={shown} ran the same {steps} steps as with {name}={_shown(value)} "
        f"(max |logit|, loss and gradient norm equal at every step, same seed), {contrast}. "
        f"nansearch passes {name} as {way}; make the code use it, or stop searching {name}: "
        f"its NaN rate says nothing about it."
    )
    return {
        "factor": name,
        "passed_as": way,
        "trial": base.number,
        "value": value,
        "levels": levels,
        "steps": steps,
        "seed": base.seed,
        "changed_by": changed,
        "text": text,
    }


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_ignored(items: Sequence[dict[str, Any]]) -> str:
    """The ignored factors for the terminal, from ``ranking.json``'s ``ignored``."""
    return "\n".join(f"warning: {item['text']}" for item in items)
