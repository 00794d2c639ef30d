"""Plugins: the modules or files a sweep names under ``plugins``, imported before its
factors are built so that what they register (factors, levels, target kinds) is there."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from nansearch.config import NansearchError


def import_plugins(plugins: list[str]) -> None:
    """Import the modules or files that register factors and levels."""
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_file():
                raise NansearchError(f"plugins: no such file {plugin}")
            name = f"nansearch_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path.resolve())
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            try:
                importlib.import_module(plugin)
            except ImportError as exc:
                raise NansearchError(f"plugins: cannot import {plugin!r}: {exc}") from None
