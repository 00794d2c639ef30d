"""What a factor is, the setup it shapes, and the registry users extend."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import nn

from nansearch.errors import NansearchError
from nansearch.targets._base import CheckpointCache, Loaded, Target

# Factors shape a trial in this order: a checkpoint must be loaded before it can be
# re-initialized, and the dtype decides how the batch's float inputs are cast.
STAGES = ("load", "init", "batch", "dtype", "optimizer")


class LevelNotApplicable(NansearchError):
    """A level that cannot apply to this target (nan-input on a text-only model)."""


@dataclass
class TrialSetup:
    """Everything one trial will run, as the factors shape it stage by stage."""

    target: Target
    cache: CheckpointCache
    generator: torch.Generator
    loaded: Loaded | None = None
    batch: dict[str, torch.Tensor] | None = None
    param_dtype: torch.dtype = torch.float32
    autocast_dtype: torch.dtype | None = None
    grad_scaler: bool = False
    lr: float = 1e-3
    extra: dict[str, Any] = field(default_factory=dict)  # room for user factors

    @property
    def model(self) -> nn.Module:
        if self.loaded is None:
            raise NansearchError("no checkpoint was loaded: the checkpoint factor needs a level")
        return self.loaded.model


class Factor(ABC):
    """One suspected cause with its levels.

    Subclasses set ``name`` and ``stage`` (one of :data:`STAGES`), describe their search
    space with :meth:`distribution`, and change the run in :meth:`apply`.
    """

    name: ClassVar[str]
    stage: ClassVar[str]

    def __init__(self, settings: Any) -> None:  # noqa: B027 (each factor reads its own)
        """``settings``: the factor's section of the sweep, or a registered factor's levels."""

    @abstractmethod
    def distribution(self) -> BaseDistribution:
        """The Optuna distribution this factor's value is drawn from."""

    @abstractmethod
    def apply(self, setup: TrialSetup, value: Any) -> None:
        """Make ``value`` true of the run described by ``setup``."""

    @property
    def levels(self) -> list[Any] | None:
        """The categorical levels, or None for a continuous factor."""
        dist = self.distribution()
        return list(dist.choices) if isinstance(dist, CategoricalDistribution) else None

    def check(self) -> list[str]:
        """Problems with this factor's configuration, as messages naming the key."""
        return []


LevelFn = Callable[[TrialSetup], None]


class CategoricalFactor(Factor):
    """A factor whose levels are named functions; users add levels with :func:`register_level`."""

    LEVELS: ClassVar[dict[str, LevelFn]]

    def __init__(self, levels: list[str]):
        self.chosen = list(levels)

    def distribution(self) -> BaseDistribution:
        return CategoricalDistribution(self.chosen)

    def apply(self, setup: TrialSetup, value: Any) -> None:
        self.LEVELS[value](setup)

    def check(self) -> list[str]:
        unknown = [level for level in self.chosen if level not in self.LEVELS]
        if not self.chosen:
            return [f"factors.{self.name}.levels: name at least one level"]
        return [
            f"factors.{self.name}.levels: {level!r} is not a level of {self.name}; "
            f"valid levels are {', '.join(sorted(self.LEVELS))}"
            for level in unknown
        ]


FACTORS: dict[str, type[Factor]] = {}


def register_factor(cls: type[Factor]) -> type[Factor]:
    """Class decorator: make a factor available to sweep files under ``factors.extra``."""
    if getattr(cls, "stage", None) not in STAGES:
        raise ValueError(f"{cls.__name__}.stage must be one of {STAGES}, got {cls.stage!r}")
    FACTORS[cls.name] = cls
    return cls


def register_level(factor: str, name: str) -> Callable[[LevelFn], LevelFn]:
    """Decorator: add a level ``name`` to a categorical factor such as ``batch``.

    The function receives the :class:`TrialSetup` and changes it in place::

        @register_level("batch", "first-token-only")
        def first_token_only(setup):
            setup.batch["labels"][:, 1:] = -100
    """
    cls = FACTORS.get(factor)
    if cls is None or not issubclass(cls, CategoricalFactor):
        valid = [n for n, c in FACTORS.items() if issubclass(c, CategoricalFactor)]
        raise ValueError(f"{factor!r} takes no registered levels; valid factors: {valid}")

    def decorate(fn: LevelFn) -> LevelFn:
        cls.LEVELS[name] = fn
        return fn

    return decorate
