"""A factor pinned to one value on the command line: ``dtype=amp-fp16``, ``lr=0.01``.

A bare ``factor=value`` (no dot, not a top-level setting) keeps only that value of the
factor, so that every trial of the sweep runs it: ``nansearch sweep runs/demo/config.yaml
study=demo-fix-2-1 trials=3 steps=200 checkpoint=opt-lm dtype=amp-fp16 lr=0.0036 ...``
reruns one configuration, with a fix applied, on fresh seeds. It is how a verified fix
is written for pasting (``ranking.json``'s ``rerun``).
"""

from __future__ import annotations

from typing import Any

from nansearch.config.schema import SweepConfig

BUILTIN = ("checkpoint", "dtype", "lr", "init", "batch")


def is_pin(key: str) -> bool:
    """Whether an override's key pins a factor rather than naming a setting."""
    return "." not in key and key not in SweepConfig.__dataclass_fields__


def _valid(levels: Any) -> str:
    return ", ".join(str(level) for level in levels) or "none"


def apply_pins(cfg: SweepConfig, pins: dict[str, str]) -> list[str]:
    """Narrow each pinned factor to its one value; the problems, each naming its key."""
    problems = []
    factors = cfg.factors
    for name, value in pins.items():
        if name == "checkpoint":
            if value not in factors.checkpoint.levels:
                problems.append(
                    f"checkpoint={value}: not a checkpoint level; valid levels are "
                    f"{_valid(factors.checkpoint.levels)} (add one with "
                    f"factors.checkpoint.levels.NAME=FOLDER)"
                )
                continue
            factors.checkpoint.levels = {value: factors.checkpoint.levels[value]}
        elif name == "dtype":
            factors.dtype.levels = [value]  # checked with the other dtype levels
        elif name == "lr":
            try:
                rate = float(value)
            except ValueError:
                problems.append(f"lr={value}: not a number; pin the learning rate as lr=0.001")
                continue
            factors.lr.low = factors.lr.high = rate
        elif name == "init":
            levels = factors.init.levels
            if value not in (list(levels) or ["pretrained"]):
                problems.append(
                    f"init={value}: not an init level; valid levels are "
                    f"{_valid(levels or ['pretrained'])}"
                )
                continue
            factors.init.levels = {value: levels[value]} if levels else {}
        elif name == "batch":
            factors.batch.levels = [value]
            files = factors.batch.files
            factors.batch.files = {value: files[value]} if value in files else {}
        elif name in factors.extra:
            factors.extra[name] = [value]
        else:
            valid = [*BUILTIN, *factors.extra]
            problems.append(
                f"{name}={value}: {name} is neither a setting nor a factor; pin a factor "
                f"with one of {', '.join(valid)}"
            )
    return problems
