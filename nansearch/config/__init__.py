"""Sweep configuration: typed defaults < YAML file < dotted command-line overrides.

The settings (:mod:`~nansearch.config.schema`), what their values must be
(:mod:`~nansearch.config.checks`) and how a file becomes them
(:mod:`~nansearch.config.load`). Every problem in a sweep file is collected and reported
in one :class:`ConfigError` that names each bad key and what would be valid.
"""

from nansearch.config.load import config_from_yaml, load_config
from nansearch.config.merge import read_yaml
from nansearch.config.schema import (
    COMMAND_VALUES,
    DTYPES,
    BatchFactor,
    CheckpointFactor,
    DtypeFactor,
    FactorsConfig,
    HeartbeatConfig,
    InitFactor,
    InitScheme,
    LrFactor,
    OptimizerConfig,
    SearchConfig,
    SweepConfig,
    TargetConfig,
    TrackingConfig,
    save_config,
    to_yaml,
)
from nansearch.errors import ConfigError, NansearchError

__all__ = [
    "COMMAND_VALUES",
    "DTYPES",
    "BatchFactor",
    "CheckpointFactor",
    "ConfigError",
    "DtypeFactor",
    "FactorsConfig",
    "HeartbeatConfig",
    "InitFactor",
    "InitScheme",
    "LrFactor",
    "NansearchError",
    "OptimizerConfig",
    "SearchConfig",
    "SweepConfig",
    "TargetConfig",
    "TrackingConfig",
    "config_from_yaml",
    "load_config",
    "read_yaml",
    "save_config",
    "to_yaml",
]
