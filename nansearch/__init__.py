"""nansearch: find which suspected cause makes a training run's logits NaN."""

from nansearch.config import ConfigError, NansearchError, SweepConfig, load_config
from nansearch.factors import Factor, TrialSetup, register_factor, register_level
from nansearch.runner import TrialResult, TrialRunner
from nansearch.targets import Target

__all__ = [
    "ConfigError",
    "Factor",
    "NansearchError",
    "SweepConfig",
    "Target",
    "TrialResult",
    "TrialRunner",
    "TrialSetup",
    "load_config",
    "register_factor",
    "register_level",
]
__version__ = "0.1.0"
