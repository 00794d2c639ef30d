"""Plugins: the modules or files a sweep names under ``plugins``, imported before its
factors are built so that what they register (factors, levels, target kinds) is there."""

from __future__ import annotations

from pathlib import Path

from nansearch.errors import NansearchError


def import_plugins(plugins: list[str]) -> None:
    """Import the modules or files that register factors and levels."""
    from nansearch.targets.custom import exec_file, import_module_safely

    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_file():
                raise NansearchError(f"plugins: no such file {plugin}")
            exec_file(path, f"nansearch_plugin_{path.stem}", "plugins", plugin)
        else:
            import_module_safely(plugin, "plugins", plugin)
