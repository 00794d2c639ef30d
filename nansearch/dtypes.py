"""The dtype levels and the floating-point limits, in one place.

``LEVELS`` holds every level of the dtype factor: the dtype the weights live in, the one
autocast runs the math in (None without autocast) and whether a GradScaler scales the
loss, each by torch's name (``float16``); :mod:`nansearch.factors.dtype` turns the names
into torch dtypes. The configuration's default levels and its check of a sweep's levels
read the names from here.

``LIMITS`` is keyed by torch's name for the dtype (``float16``, as a trial records its
compute dtype), each format's largest finite value from its exponent and mantissa
widths; ``FP16_MAX`` is float16's, 65504. Nothing here imports torch, so the
configuration can read it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Level:
    """One level of the dtype factor, by torch's dtype names."""

    weights: str  # the parameters' dtype
    autocast: str | None  # the dtype autocast runs the math in; None: no autocast
    scaler: bool  # a GradScaler scales the loss

    @property
    def compute(self) -> str:
        """The dtype the math runs in: the one whose range the logits can overflow."""
        return self.autocast or self.weights


LEVELS: dict[str, Level] = {
    "fp32": Level("float32", None, False),
    "bf16": Level("bfloat16", None, False),
    "fp16": Level("float16", None, False),
    "amp-fp16": Level("float32", "float16", True),
    "amp-bf16": Level("float32", "bfloat16", False),
}


def _largest(exponent_bits: int, mantissa_bits: int) -> float:
    """The largest finite value of an IEEE-style binary format."""
    return (2 - 2.0**-mantissa_bits) * 2.0 ** (2 ** (exponent_bits - 1) - 1)


LIMITS: dict[str, float] = {
    "float16": _largest(5, 10),
    "bfloat16": _largest(8, 7),
    "float32": _largest(8, 23),
    "float64": _largest(11, 52),
}
FP16_MAX = LIMITS["float16"]
