"""The checkpoint factor: which weights are loaded, the way the user's code loads them."""

from __future__ import annotations

from optuna.distributions import CategoricalDistribution

from nansearch.config.schema import CheckpointFactor as CheckpointConfig
from nansearch.factors._base import Factor, TrialSetup


class CheckpointFactor(Factor):
    name = "checkpoint"
    stage = "load"

    def __init__(self, cfg: CheckpointConfig):
        self.paths = dict(cfg.levels)

    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(list(self.paths))

    def apply(self, setup: TrialSetup, value: str) -> None:
        setup.loaded = setup.cache.get(self.paths[value], level=value)

    def check(self) -> list[str]:
        if not self.paths:
            return ["factors.checkpoint.levels: name at least one checkpoint (name: folder)"]
        return []
