"""The dtype factor: the precision the weights live in and the precision the math runs in.

| level      | weights | forward             | loss scaling        |
|------------|---------|---------------------|---------------------|
| `fp32`     | fp32    | fp32                | none                |
| `bf16`     | bf16    | bf16                | none                |
| `fp16`     | fp16    | fp16                | none (pure half)    |
| `amp-fp16` | fp32    | fp16 autocast       | `torch.amp.GradScaler` |
| `amp-bf16` | fp32    | bf16 autocast       | none                |

Pure fp16 keeps the optimizer state in fp16 too, where Adam's ``eps=1e-8`` rounds to 0
(NAN_CAUSES row 2).
"""

from __future__ import annotations

import torch
from optuna.distributions import CategoricalDistribution

from nansearch.config.schema import DtypeFactor as DtypeConfig
from nansearch.dtypes import LEVELS
from nansearch.factors._base import Factor, TrialSetup

# level -> (parameter dtype, autocast dtype, GradScaler): the names in nansearch.dtypes
# become torch dtypes here
DTYPE_LEVELS: dict[str, tuple[torch.dtype, torch.dtype | None, bool]] = {
    name: (
        getattr(torch, level.weights),
        getattr(torch, level.autocast) if level.autocast else None,
        level.scaler,
    )
    for name, level in LEVELS.items()
}


def compute_dtype(param_dtype: torch.dtype, autocast_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the logits are computed in: the one whose range they can overflow."""
    return autocast_dtype or param_dtype


class DtypeFactor(Factor):
    name = "dtype"
    stage = "dtype"

    def __init__(self, cfg: DtypeConfig):
        self.chosen = list(cfg.levels)

    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(self.chosen)

    def apply(self, setup: TrialSetup, value: str) -> None:
        param_dtype, autocast_dtype, scaler = DTYPE_LEVELS[value]
        setup.model.to(dtype=param_dtype)
        setup.param_dtype = param_dtype
        setup.autocast_dtype = autocast_dtype
        setup.grad_scaler = scaler
