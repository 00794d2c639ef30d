"""The init factor: the weights as loaded, or re-initialized by a scheme.

Schemes:
- ``pretrained``: the weights as the checkpoint gave them.
- ``normal``: weights (tensors of two or more dimensions) whose name matches ``pattern``
  are drawn from N(0, ``std``), as new token rows or a new head are
  (NAN_CAUSES row 5).
- ``uninitialized-missing``: every weight the checkpoint did not have is left as
  uninitialized memory, as some loading paths leave ``torch.empty`` placeholders
  (NAN_CAUSES row 10). Real uninitialized memory is not reproducible, so the bytes come
  from the trial's seeded generator as random bit patterns: some of them are NaN and
  Inf, as some bytes of real uninitialized memory are. With a checkpoint that matches
  its class nothing is missing and this level changes nothing.
"""

from __future__ import annotations

import re

import torch
from optuna.distributions import CategoricalDistribution

from nansearch.config.schema import InitFactor as InitConfig
from nansearch.config.schema import InitScheme
from nansearch.factors._base import Factor, TrialSetup

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def random_bits_(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fill ``tensor`` with uniformly random bit patterns, as uninitialized memory holds."""
    int_dtype = _INT_OF_SIZE[tensor.element_size()]
    info = torch.iinfo(int_dtype)
    bits = torch.randint(info.min, info.max, tensor.shape, generator=generator, dtype=int_dtype)
    with torch.no_grad():
        tensor.copy_(bits.view(tensor.dtype))
    return tensor


def _normal(setup: TrialSetup, scheme: InitScheme) -> None:
    pattern = re.compile(scheme.pattern)
    with torch.no_grad():
        for name, param in setup.model.named_parameters():
            if param.dim() >= 2 and pattern.search(name):
                param.normal_(0.0, scheme.std, generator=setup.generator)


def _uninitialized_missing(setup: TrialSetup, scheme: InitScheme) -> None:
    missing = set(setup.loaded.missing_keys) if setup.loaded is not None else set()
    for name, param in setup.model.named_parameters(remove_duplicate=False):
        if name in missing:
            random_bits_(param.data, setup.generator)


SCHEMES = {
    "pretrained": lambda setup, scheme: None,
    "normal": _normal,
    "uninitialized-missing": _uninitialized_missing,
}


class InitFactor(Factor):
    name = "init"
    stage = "init"

    def __init__(self, cfg: InitConfig):
        self.schemes = dict(cfg.levels) or {"pretrained": InitScheme(scheme="pretrained")}

    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(list(self.schemes))

    def apply(self, setup: TrialSetup, value: str) -> None:
        scheme = self.schemes[value]
        SCHEMES[scheme.scheme](setup, scheme)

    def check(self) -> list[str]:
        problems = []
        for name, scheme in self.schemes.items():
            try:
                re.compile(scheme.pattern)
            except re.error as exc:
                problems.append(f"factors.init.levels.{name}.pattern={scheme.pattern!r}: {exc}")
        return problems
