"""nansearch: find which suspected cause makes a training run's logits NaN.

What it exports loads on first use: ``import nansearch`` (the command line's first
step) does not pull in torch and transformers, so that the command line loads them
itself, with the garbage collector paused (:mod:`nansearch.startup`).
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nansearch.config import ConfigError, NansearchError, SweepConfig, load_config
    from nansearch.factors import Factor, TrialSetup, register_factor, register_level
    from nansearch.targets import Target
    from nansearch.trial.api import Trial
    from nansearch.trial.checks import NonFinite, StepsDone
    from nansearch.trial.runner import TrialResult, TrialRunner

_HOMES = {
    "ConfigError": "nansearch.config",
    "NansearchError": "nansearch.config",
    "SweepConfig": "nansearch.config",
    "load_config": "nansearch.config",
    "Factor": "nansearch.factors",
    "TrialSetup": "nansearch.factors",
    "register_factor": "nansearch.factors",
    "register_level": "nansearch.factors",
    "TrialResult": "nansearch.trial.runner",
    "TrialRunner": "nansearch.trial.runner",
    "Target": "nansearch.targets",
    "Trial": "nansearch.trial.api",
    "NonFinite": "nansearch.trial.checks",
    "StepsDone": "nansearch.trial.checks",
}

__all__ = [
    "ConfigError",
    "Factor",
    "NansearchError",
    "NonFinite",
    "StepsDone",
    "SweepConfig",
    "Target",
    "Trial",
    "TrialResult",
    "TrialRunner",
    "TrialSetup",
    "load_config",
    "register_factor",
    "register_level",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'nansearch' has no attribute {name!r}")
    value = getattr(import_module(home), name)
    globals()[name] = value
    return value
