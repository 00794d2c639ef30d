"""Reading a sweep: its settings merged (:mod:`nansearch.config.merge`), then their values
checked (:mod:`nansearch.config.checks`). Every problem in a sweep file is collected
and reported in one :class:`ConfigError` that names each bad key and what would be
valid, instead of stopping at the first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nansearch.config.checks import check
from nansearch.config.merge import merge, read_yaml, yaml_mapping
from nansearch.config.pin import apply_pins, is_pin
from nansearch.config.schema import SweepConfig
from nansearch.errors import ConfigError


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> SweepConfig:
    """Read a sweep: structured defaults, then the YAML file, then ``key=value`` overrides."""
    data = read_yaml(Path(path)) if path is not None else {}
    return _build(data, overrides, str(path) if path else "overrides")


def config_from_yaml(text: str, source: str, overrides: Sequence[str] = ()) -> SweepConfig:
    """A configuration written by :func:`to_yaml` (kept in a study's storage), checked again."""
    return _build(yaml_mapping(text, source), overrides, source)


def _build(data: dict[str, Any], overrides: Sequence[str], source: str) -> SweepConfig:
    # a bare factor=value pins that factor, once every setting has been merged
    pins = dict(item.split("=", 1) for item in overrides if _pins(item))
    cfg, problems = merge(data, [item for item in overrides if not _pins(item)])
    problems += apply_pins(cfg, pins)
    problems += check(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _pins(item: str) -> bool:
    key, sep, _ = item.partition("=")
    return bool(sep and key) and is_pin(key)
