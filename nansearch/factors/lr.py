"""The learning-rate factor: a log-uniform range."""

from __future__ import annotations

from optuna.distributions import FloatDistribution

from nansearch.config.schema import LrFactor as LrConfig
from nansearch.factors._base import Factor, TrialSetup


class LrFactor(Factor):
    name = "lr"
    stage = "optimizer"

    def __init__(self, cfg: LrConfig):
        self.low, self.high = cfg.low, cfg.high

    def distribution(self) -> FloatDistribution:
        return FloatDistribution(self.low, self.high, log=True)

    def apply(self, setup: TrialSetup, value: float) -> None:
        setup.lr = float(value)
