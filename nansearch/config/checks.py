"""What a sweep's values must be beyond their types, every problem collected: each
message names the key, the value and what would be valid."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from omegaconf import OmegaConf

from nansearch.config.schema import COMMAND_VALUES, FactorsConfig, SweepConfig
from nansearch.dtypes import LEVELS

_ABSENT = object()


def check(cfg: SweepConfig) -> list[str]:
    """Every problem with the values of ``cfg``, as messages naming the key, section by
    section. Valid target kinds, dtype levels and init schemes are those their registries
    hold (``nansearch.targets.TARGETS``, the dtype and init factors' tables)."""
    return [
        *_check_sweep(cfg),
        *_check_target(cfg),
        *_check_factors(cfg),
        *_check_optimizer(cfg),
        *_check_tracking(cfg),
        *_check_search(cfg),
    ]


def _check_sweep(cfg: SweepConfig) -> list[str]:
    problems = []
    if cfg.trials < 1:
        problems.append(f"trials={cfg.trials}: must be at least 1")
    if cfg.steps < 1:
        problems.append(f"steps={cfg.steps}: must be at least 1")
    if not cfg.study or "/" in cfg.study or cfg.study.startswith("."):
        problems.append(f"study={cfg.study!r}: must be a plain folder name")
    if cfg.workers < 1:
        problems.append(f"workers={cfg.workers}: must be at least 1")
    if cfg.threads < 1:
        problems.append(
            f"threads={cfg.threads}: must be at least 1 (torch CPU threads per worker; default 1)"
        )
    if cfg.heartbeat.interval < 1 or cfg.heartbeat.grace <= cfg.heartbeat.interval:
        problems.append(
            f"heartbeat: need interval >= 1 and grace > interval (seconds), got "
            f"interval={cfg.heartbeat.interval}, grace={cfg.heartbeat.grace}"
        )
    if cfg.trial_timeout < 0 and cfg.trial_timeout != -1:
        problems.append(
            f"trial_timeout={cfg.trial_timeout:g}: seconds a trial may run; -1 (the default) "
            "scales it from the trials' durations, 0 sets no limit"
        )
    if cfg.target.timeout is not None:
        problems.append(
            f"target.timeout={cfg.target.timeout:g}: now trial_timeout, the time limit of "
            f"every kind of trial; write trial_timeout: {cfg.target.timeout:g}"
        )
    if cfg.device not in ("auto", "cpu", "cuda"):
        problems.append(f"device={cfg.device!r}: valid values are auto, cpu, cuda")
    return problems


def _check_target(cfg: SweepConfig) -> list[str]:
    from nansearch.targets import TARGETS

    problems = []
    if cfg.target.kind not in TARGETS:
        problems.append(f"target.kind={cfg.target.kind!r}: valid values are {', '.join(TARGETS)}")
    if cfg.target.kind in ("custom", "function") and not cfg.target.fn:
        problems.append(
            f"target.fn: a {cfg.target.kind} target needs 'package.module:function' or "
            "'path/to/file.py:function'"
        )
    if cfg.target.kind == "command":
        problems += _check_command(cfg)
    if cfg.target.batch_size < 1 or cfg.target.seq_len < 2:
        problems.append("target.batch_size must be >= 1 and target.seq_len >= 2")
    return problems


def _check_factors(cfg: SweepConfig) -> list[str]:
    from nansearch.factors.init import SCHEMES

    problems = []
    dtypes = ", ".join(LEVELS)
    for level in cfg.factors.dtype.levels:
        if level not in LEVELS:
            problems.append(
                f"factors.dtype.levels: {level!r} is not a dtype level; valid levels are {dtypes}"
            )
    if not cfg.factors.dtype.levels:
        problems.append(f"factors.dtype.levels: empty; name at least one of {dtypes}")
    if not cfg.factors.batch.levels and not cfg.factors.batch.files:
        problems.append(
            "factors.batch.levels: empty; name at least one level (clean, for the target's "
            "own batch) or a file under factors.batch.files"
        )
    lr = cfg.factors.lr
    if not 0 < lr.low <= lr.high:
        problems.append(f"factors.lr: need 0 < low <= high, got low={lr.low}, high={lr.high}")
    if not cfg.factors.checkpoint.levels:
        problems.append(
            "factors.checkpoint.levels: name at least one checkpoint (level name: folder or hub id)"
        )
    for name, scheme in cfg.factors.init.levels.items():
        if scheme.scheme not in SCHEMES:
            problems.append(
                f"factors.init.levels.{name}.scheme={scheme.scheme!r}: "
                f"valid schemes are {', '.join(SCHEMES)}"
            )
    return problems


def _check_optimizer(cfg: SweepConfig) -> list[str]:
    if cfg.optimizer.name not in ("adamw", "adam", "sgd"):
        return [f"optimizer.name={cfg.optimizer.name!r}: valid values are adamw, adam, sgd"]
    return []


def _check_tracking(cfg: SweepConfig) -> list[str]:
    # YAML reads a bare `off` as false and `on` as true
    if cfg.tracking.wandb in ("False", "True"):
        cfg.tracking.wandb = "off" if cfg.tracking.wandb == "False" else "online"
    if cfg.tracking.wandb not in (None, "offline", "online", "off"):
        return [f"tracking.wandb={cfg.tracking.wandb!r}: valid values are offline, online, off"]
    return []


def _check_search(cfg: SweepConfig) -> list[str]:
    problems = []
    if cfg.search.sampler not in ("tpe", "random"):
        problems.append(f"search.sampler={cfg.search.sampler!r}: valid values are tpe, random")
    for key in ("cover", "confirm", "isolate"):
        value = getattr(cfg.search, key)
        if value < -1:
            problems.append(f"search.{key}={value}: a number of trials, or -1 for a share of them")
    fixed = sum(max(getattr(cfg.search, k), 0) for k in ("cover", "confirm", "isolate"))
    if fixed > cfg.trials:
        problems.append(
            f"search.cover + search.confirm + search.isolate = {fixed}: more than "
            f"trials={cfg.trials}; they share the trial budget"
        )
    if cfg.search.seeds < 1:
        problems.append(f"search.seeds={cfg.search.seeds}: at least 1 fresh seed per rerun")
    for key in ("horizon", "verify_steps"):
        value = getattr(cfg.search, key)
        if value == 0 or value < -1:
            problems.append(f"search.{key}={value}: a number of steps, or -1 for ten times steps")
    if cfg.search.patience < 0:
        problems.append(
            f"search.patience={cfg.search.patience}: a number of trials, or 0 to never stop early"
        )
    return problems


def _check_command(cfg: SweepConfig) -> list[str]:
    """A command target's program, templates, config file and keys, each checked by name."""
    import string

    target = cfg.target
    problems = []
    if not target.program:
        problems.append("target.program: a command target needs the script to run (a .py file)")
    elif not Path(target.program).is_file():
        problems.append(f"target.program={target.program!r}: no such file")
    # the built-in factors are the sections of factors: beside extra
    factors = [f.name for f in fields(FactorsConfig) if f.name != "extra"]
    factors += list(cfg.factors.extra)
    names = [*factors, *COMMAND_VALUES]
    templates = {
        "target.args": target.args,
        **{f"target.env.{k}": v for k, v in target.env.items()},
    }
    for key, text in templates.items():
        try:
            named = {
                m.group("named") or m.group("braced")
                for m in string.Template.pattern.finditer(str(text))
                if m.group("named") or m.group("braced")
            }
        except ValueError as exc:
            problems.append(f"{key}={text!r}: {exc}")
            continue
        for name in sorted(named - set(names)):
            problems.append(
                f"{key}={text!r}: ${{{name}}} is not a factor or value; valid names are "
                f"{', '.join(names)}"
            )
    for name in target.keys:
        if name not in names:
            problems.append(
                f"target.keys.{name}: not a factor or value; valid names are {', '.join(names)}"
            )
    if target.config:
        source = Path(target.config)
        if not source.is_file():
            problems.append(f"target.config={target.config!r}: no such file")
        else:
            try:
                data = OmegaConf.load(source)
            except Exception as exc:  # yaml errors come in many classes
                problems.append(f"target.config={target.config!r}: not valid YAML or JSON: {exc}")
            else:
                for name, dotted in target.keys.items():
                    if OmegaConf.select(data, dotted, default=_ABSENT) is _ABSENT:
                        problems.append(
                            f"target.keys.{name}={dotted!r}: no key {dotted} in {target.config}"
                        )
        uses = [target.args, *target.env.values()]
        if not any("${config}" in text or "$config" in text for text in uses):
            problems.append(
                "target.config: name ${config} in target.args or target.env, where the "
                "script takes its config file; each trial gets its own copy"
            )
    elif target.keys:
        problems.append("target.keys: needs target.config, the file the keys are written into")
    if target.start not in ("fork", "spawn"):
        problems.append(f"target.start={target.start!r}: valid values are fork, spawn")
    if target.nan_pattern:
        try:
            re.compile(target.nan_pattern)
        except re.error as exc:
            problems.append(f"target.nan_pattern={target.nan_pattern!r}: {exc}")
    return problems
