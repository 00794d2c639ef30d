"""Targets: what a trial trains. One module per kind, found through a registry."""

from __future__ import annotations

from collections.abc import Callable

from nansearch.config.schema import TargetConfig
from nansearch.errors import NansearchError
from nansearch.targets._base import CheckpointCache, Loaded, Target
from nansearch.targets.loading import CheckpointError

TargetLoader = Callable[[], type[Target]]
# target.kind -> a function that imports and returns its Target class; the import waits
# for the first build so a sweep loads only the kind it trains.
TARGETS: dict[str, TargetLoader] = {}


def register_target(kind: str, loader: TargetLoader) -> None:
    """Make ``target.kind: <kind>`` build the class that ``loader()`` returns."""
    TARGETS[kind] = loader


def _causal_lm() -> type[Target]:
    from nansearch.targets.causal_lm import CausalLMTarget

    return CausalLMTarget


def _blip2() -> type[Target]:
    from nansearch.targets.blip2 import Blip2Target

    return Blip2Target


def _custom() -> type[Target]:
    from nansearch.targets.custom import CustomTarget

    return CustomTarget


def _function() -> type[Target]:
    from nansearch.targets.function import FunctionTarget

    return FunctionTarget


def _command() -> type[Target]:
    from nansearch.targets.command import CommandTarget

    return CommandTarget


register_target("causal-lm", _causal_lm)
register_target("blip2", _blip2)
register_target("custom", _custom)
register_target("function", _function)
register_target("command", _command)


def build_target(cfg: TargetConfig) -> Target:
    loader = TARGETS.get(cfg.kind)
    if loader is None:
        raise NansearchError(f"target.kind={cfg.kind!r}: valid values are {', '.join(TARGETS)}")
    return loader()(cfg)


__all__ = [
    "TARGETS",
    "CheckpointCache",
    "CheckpointError",
    "Loaded",
    "Target",
    "build_target",
    "register_target",
]
