"""Factors: the suspected causes a sweep varies. One module per factor."""

from __future__ import annotations

from nansearch.config.schema import SweepConfig
from nansearch.errors import ConfigError
from nansearch.factors._base import (
    FACTORS,
    STAGES,
    CategoricalFactor,
    Factor,
    LevelNotApplicable,
    TrialSetup,
    register_factor,
    register_level,
)
from nansearch.factors.batch import BatchFactor
from nansearch.factors.checkpoint import CheckpointFactor
from nansearch.factors.dtype import DtypeFactor
from nansearch.factors.init import InitFactor
from nansearch.factors.lr import LrFactor

BUILTIN: dict[str, type[Factor]] = {
    "checkpoint": CheckpointFactor,
    "dtype": DtypeFactor,
    "lr": LrFactor,
    "init": InitFactor,
    "batch": BatchFactor,
}
FACTORS.update(BUILTIN)


def build_factors(cfg: SweepConfig) -> list[Factor]:
    """The sweep's factors in stage order; every configuration problem in one error."""
    factors: list[Factor] = [cls(getattr(cfg.factors, name)) for name, cls in BUILTIN.items()]
    problems: list[str] = []
    for name, levels in cfg.factors.extra.items():
        cls = FACTORS.get(name)
        if cls is None or name in BUILTIN:
            problems.append(
                f"factors.extra.{name}: no registered factor of that name; registered: "
                f"{', '.join(sorted(set(FACTORS) - set(BUILTIN))) or 'none'} "
                "(register one with nansearch.register_factor in a plugin)"
            )
            continue
        factors.append(cls(list(levels)))
    for factor in factors:
        problems += factor.check()
    if problems:
        raise ConfigError("factors", problems)
    return sorted(factors, key=lambda f: STAGES.index(f.stage))


__all__ = [
    "FACTORS",
    "BatchFactor",
    "CategoricalFactor",
    "CheckpointFactor",
    "DtypeFactor",
    "Factor",
    "InitFactor",
    "LevelNotApplicable",
    "LrFactor",
    "TrialSetup",
    "build_factors",
    "register_factor",
    "register_level",
]
