"""Targets: what a trial trains."""

from nansearch.config import TARGET_KINDS, NansearchError, TargetConfig
from nansearch.targets._base import CheckpointCache, Loaded, Target
from nansearch.targets.loading import CheckpointError


def build_target(cfg: TargetConfig) -> Target:
    if cfg.kind == "causal-lm":
        from nansearch.targets.causal_lm import CausalLMTarget

        return CausalLMTarget(cfg)
    if cfg.kind == "blip2":
        from nansearch.targets.blip2 import Blip2Target

        return Blip2Target(cfg)
    if cfg.kind == "custom":
        from nansearch.targets.custom import CustomTarget

        return CustomTarget(cfg)
    if cfg.kind == "function":
        from nansearch.targets.function import FunctionTarget

        return FunctionTarget(cfg)
    if cfg.kind == "command":
        from nansearch.targets.command import CommandTarget

        return CommandTarget(cfg)
    raise NansearchError(f"target.kind={cfg.kind!r}: valid values are {', '.join(TARGET_KINDS)}")


__all__ = ["CheckpointCache", "CheckpointError", "Loaded", "Target", "build_target"]
