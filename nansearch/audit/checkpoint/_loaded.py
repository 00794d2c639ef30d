"""One checkpoint level as the audit sees it, and the limits its checks use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nansearch.dtypes import FP16_MAX
from nansearch.targets._base import Loaded
from nansearch.targets.loading import (
    StoredTensor,
)

FP16_LEVELS = ("fp16", "amp-fp16")
NEAR_FP16 = FP16_MAX / 16  # one product with an activation of 16 away from inf
PREFIX_DEPTH = 3  # wrapper prefixes tried: up to three dotted parts, e.g. "a.b.c."
NESTED_CONFIGS = ("text_config", "language_config", "llm_config", "decoder")


@dataclass
class Checkpoint:
    """One checkpoint level as loaded, with what its own files say."""

    level: str
    loaded: Loaded
    stored: dict[str, StoredTensor] | None  # None: not a local file or folder
    config: dict[str, Any] | None

    @property
    def subject(self) -> str:
        return f"checkpoint={self.level}"

    @property
    def cls(self) -> str:
        return type(self.loaded.model).__name__

    @property
    def model_type(self) -> str | None:
        """The class's own kind of model (a loaded config keeps the checkpoint's ``model_type``)."""
        config_class = getattr(type(self.loaded.model), "config_class", None)
        return getattr(config_class, "model_type", None) or None


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by every name it has (tied ones under each name)."""
    return {
        **dict(model.named_buffers(remove_duplicate=False)),
        **dict(model.named_parameters(remove_duplicate=False)),
    }


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list({id(t): t for t in tensors}.values())


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def _sample(keys: list[str], n: int = 3) -> str:
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
