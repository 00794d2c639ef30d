"""From a config to what runs a trial: the plugins imported, the factors and the runner.

Low in the search package so that the sweep, its worker processes, the audit and a
rerun all set up the same way without importing the sweep's orchestration.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from nansearch.config import NansearchError, SweepConfig
from nansearch.factors import Factor, build_factors
from nansearch.search.records import SweepCallbacks
from nansearch.targets import build_target
from nansearch.trial.runner import TrialRunner


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


def prepare(cfg: SweepConfig) -> tuple[list[Factor], TrialRunner]:
    import_plugins(cfg.plugins)
    factors = build_factors(cfg)
    runner = TrialRunner(cfg, factors, build_target(cfg.target))
    return factors, runner


def trial_callbacks(cfg: SweepConfig) -> SweepCallbacks:
    """What runs beside each trial in the process that ran it, built from the config.

    Every worker process builds its own (nothing here is pickled across processes);
    tracking that logs each trial as it finishes belongs here.
    """
    return SweepCallbacks()
