"""Typed defaults < YAML file (and the files it includes) < dotted command-line overrides,
merged key by key into the settings so that every key of the wrong type or name is
found, not only the first. What the values must be is :mod:`nansearch.config.checks`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nansearch.config.schema import SweepConfig
from nansearch.errors import ConfigError, NansearchError


def _nest(path: list[str], value: Any) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


def _struct_keys(schema: DictConfig, path: list[str]) -> list[str] | None:
    """The keys allowed at ``path`` when its parent is a typed section, else None."""
    node: Any = schema
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, DictConfig) else None
    if isinstance(node, DictConfig) and node._metadata.object_type not in (None, dict):
        return [str(k) for k in node]
    return None


def _merge_each(schema: DictConfig, data: dict, path: list[str]) -> list[str]:
    """Merge subtree by subtree, descending only into failures, so every bad key is found.

    Keys travel as nested mappings, never as dotted strings: a level may be named
    ``opt-2.7b``.
    """
    problems = []
    for key, value in data.items():
        here = [*path, str(key)]
        patch = OmegaConf.create(_nest(here, value))
        try:
            OmegaConf.merge(schema, patch)
        except OmegaConfBaseException as exc:
            name = ".".join(here)
            allowed = _struct_keys(schema, here)
            if allowed is not None and here[-1] not in allowed:
                problems.append(f"{name}: unknown key (valid keys here: {', '.join(allowed)})")
                continue
            if isinstance(value, dict) and value:
                problems += _merge_each(schema, value, here)
                continue
            problems.append(f"{name}={value!r}: {str(exc).splitlines()[0]}")
            continue
        schema.merge_with(patch)
    return problems


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A sweep file as a dict, with the files named by its ``include`` merged in first.

    ``include`` lists YAML files (relative to the including file) that hold shared
    pieces, such as those in ``configs/``; the including file's own keys win.
    """
    if not path.is_file():
        raise NansearchError(f"{path}: no such sweep file")
    if path.resolve() in seen:
        raise NansearchError(f"{path}: includes itself")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in many classes
        raise NansearchError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(node, ListConfig):
        raise NansearchError(f"{path}: a sweep file is a mapping of keys, not a list")
    data = _plain(node)
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: Container = OmegaConf.create({})
    for name in includes:
        part = read_yaml(path.parent / name, (*seen, path.resolve()))
        merged = OmegaConf.merge(merged, part)
    return _plain(OmegaConf.merge(merged, data))


def _plain(node: Container) -> dict[str, Any]:
    """A mapping OmegaConf read, as plain Python with its ``${...}`` left as written."""
    data = OmegaConf.to_container(node)
    return {str(key): value for key, value in data.items()} if isinstance(data, dict) else {}


def _literal(value: Any) -> Any:
    """A command target's template kept as written: OmegaConf would resolve ``${lr}`` itself."""
    if isinstance(value, str):
        return re.sub(r"(?<!\\)\$\{", r"\\${", value)
    if isinstance(value, dict):
        return {k: _literal(v) for k, v in value.items()}
    return value


def _templates_literal(data: dict[str, Any]) -> dict[str, Any]:
    target = data.get("target")
    if not isinstance(target, dict):
        return data
    target = {k: _literal(v) if k in ("args", "env") else v for k, v in target.items()}
    return {**data, "target": target}


def merge(data: dict[str, Any], overrides: Sequence[str]) -> tuple[SweepConfig, list[str]]:
    """The settings ``data`` and then ``overrides`` give, with every key that could not
    be taken: the settings hold only the valid parts, so their values can be checked too."""
    schema = OmegaConf.structured(SweepConfig)
    problems = _merge_each(schema, _templates_literal(data), [])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"override {item!r}: write it as dotted.key=value")
            continue
        if key == "target.args" or key.startswith("target.env."):
            value = _literal(value)
        parsed = _plain(OmegaConf.from_dotlist([f"x={value}"]))["x"]
        problems += _merge_each(schema, {key.split(".")[0]: _nest(key.split(".")[1:], parsed)}, [])
    cfg = OmegaConf.to_object(schema)
    assert isinstance(cfg, SweepConfig)  # a structured schema converts to its dataclass
    return cfg, problems


def yaml_mapping(text: str, source: str) -> dict[str, Any]:
    """A configuration written by :func:`~nansearch.config.schema.to_yaml`, as a dict."""
    try:
        node = OmegaConf.create(text)
        data = _plain(node)
    except Exception as exc:  # yaml errors come in many classes
        raise NansearchError(f"{source}: not a valid configuration: {exc}") from None
    if not isinstance(node, DictConfig):
        raise NansearchError(f"{source}: not a valid configuration (not a mapping)")
    return data


def settings_from_yaml(text: str, source: str) -> SweepConfig:
    """A configuration that :func:`~nansearch.config.load.config_from_yaml` accepted before,
    read back with its types checked but not its values: an injected script's process
    reads the sweep's settings this way."""
    cfg, problems = merge(yaml_mapping(text, source), [])
    if problems:
        raise ConfigError(source, problems)
    return cfg
