"""What a target is: something that loads a checkpoint, makes a clean batch and runs forward."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nansearch.config.schema import TargetConfig
from nansearch.targets.loading import CheckpointError


@dataclass
class Loaded:
    """A model as a checkpoint gave it, with what the load reported."""

    model: nn.Module
    checkpoint: str
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[str] = field(default_factory=list)
    batch: dict[str, torch.Tensor] | None = None  # a batch that came with the checkpoint

    @classmethod
    def from_info(cls, model: nn.Module, checkpoint: str, info: dict[str, Any]) -> Loaded:
        """From ``from_pretrained(..., output_loading_info=True)``'s model and report."""
        return cls(
            model=model,
            checkpoint=checkpoint,
            missing_keys=sorted(info.get("missing_keys", [])),
            unexpected_keys=sorted(info.get("unexpected_keys", [])),
            mismatched_keys=sorted(
                str(k[0]) if isinstance(k, tuple) else str(k)
                for k in info.get("mismatched_keys", [])
            ),
        )


class Target(ABC):
    """A thing to train. Implementations live one per file in this package."""

    name: str = "target"
    # True for a target whose own code runs each trial's loop (``run_trial``) instead of
    # nansearch's: the user's function or script is the trial.
    owns_loop: bool = False
    # True for a target that ends a trial past its time limit itself (a command target's
    # process); the others run under nansearch.trial.limit.time_limit
    owns_time_limit: bool = False

    def __init__(self, cfg: TargetConfig) -> None:
        self.cfg = cfg

    @abstractmethod
    def load(self, checkpoint: str) -> Loaded:
        """Read ``checkpoint`` into a model on the CPU, in float32."""

    @abstractmethod
    def make_batch(self, model: nn.Module, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """A clean training batch for ``model``, drawn from ``generator``."""

    def lengthen(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        length: int,
        generator: torch.Generator,
    ) -> dict[str, torch.Tensor]:
        """The batch with its token rows stretched to ``length`` by repetition."""
        reps = -(-length // batch["input_ids"].shape[1])
        return {
            key: value.repeat(1, reps)[:, :length]
            if value.dim() == 2 and not value.is_floating_point()
            else value
            for key, value in batch.items()
        }

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        """Return ``(logits, loss)`` for one training step."""
        out = model(**batch)
        return out.logits, out.loss

    def max_positions(self, model: nn.Module) -> int | None:
        """The longest sequence the model accepts, when it says."""
        config = getattr(model, "config", None)
        config = getattr(config, "text_config", None) or config
        for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
            value = getattr(config, key, None)
            if isinstance(value, int):
                return value
        return None

    def vocab_size(self, model: nn.Module) -> int | None:
        config = getattr(model, "config", None)
        config = getattr(config, "text_config", None) or config
        value = getattr(config, "vocab_size", None)
        return value if isinstance(value, int) else None


LOAD_SEED = 0  # the seed a checkpoint's missing weights are initialized from as it loads


class CheckpointCache:
    """Reads each checkpoint from disk once per process and hands out copies.

    A checkpoint that fails to load fails once: the error is kept and raised again for
    every later trial of that level, naming the level, while the other levels go on.
    """

    def __init__(self, target: Target):
        self.target = target
        self._loaded: dict[str, Loaded] = {}
        self._failed: dict[str, Exception] = {}

    def peek(self, checkpoint: str, level: str | None = None) -> Loaded:
        """The loaded checkpoint itself, not a copy: for reading, never for training."""
        if checkpoint in self._failed:
            raise self._failed[checkpoint]
        if checkpoint not in self._loaded:
            try:
                # weights the checkpoint lacks are initialized as it loads: from one fixed
                # seed, so they do not depend on which trial, probe or audit loaded it first
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(LOAD_SEED)
                    self._loaded[checkpoint] = self.target.load(checkpoint)
            except CheckpointError as exc:
                self._failed[checkpoint] = exc.at_level(level) if level else exc
                raise self._failed[checkpoint] from None
        return self._loaded[checkpoint]

    def get(self, checkpoint: str, level: str | None = None) -> Loaded:
        """A copy of the loaded checkpoint that a trial may change."""
        original = self.peek(checkpoint, level)
        return Loaded(
            model=copy.deepcopy(original.model),
            checkpoint=original.checkpoint,
            missing_keys=list(original.missing_keys),
            unexpected_keys=list(original.unexpected_keys),
            mismatched_keys=list(original.mismatched_keys),
            batch=None
            if original.batch is None
            else {k: v.clone() for k, v in original.batch.items()},
        )


def options_get(options: dict[str, Any], key: str, default: Any) -> Any:
    return options.get(key, default) if options else default
