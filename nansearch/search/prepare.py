"""From a config to what runs a trial: the plugins imported, the factors and the runner.

Low in the search package so that the sweep, its worker processes, the audit and a
rerun all set up the same way without importing the sweep's orchestration.
"""

from __future__ import annotations

from nansearch.config import SweepConfig
from nansearch.factors import Factor, build_factors
from nansearch.plugins import import_plugins
from nansearch.search.records import SweepCallbacks
from nansearch.targets import build_target
from nansearch.trial.runner import TrialRunner


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
