"""What a rerun's detector finds: one record per place a non-finite value can be born.

Plain dataclasses, filled in by :class:`nansearch.diagnose.diagnostics.Diagnostics` and
read by :mod:`nansearch.diagnose.rerun`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROOT = "<model>"  # how the outermost module is named in findings
MAX_LISTED = 32  # parameter names or batch rows kept in one finding


@dataclass
class ModuleFinding:
    """A module whose output was non-finite: where a value was born, or first received."""

    step: int
    module: str
    cls: str
    dtype: str
    born: bool  # True: its inputs were finite; False: it received non-finite inputs
    input_absmax: float  # largest finite |input|
    weight_absmax: float  # largest finite |weight| among its parameters
    weight_nonfinite: int
    output_absmax: float  # largest finite |output|
    output_nan: int
    output_inf: int
    rows: list[int] = field(default_factory=list)  # batch rows whose output is non-finite
    weight_peak: str | None = None  # the parameter that holds weight_absmax, e.g. "bias"
    weight_channel: int | None = None  # and the channel (its first dimension) that holds it


@dataclass
class OpFinding:
    """The first torch function that made a NaN or an Inf its inputs did not hold."""

    step: int
    op: str  # e.g. "softmax", "matmul", "linear"
    module: str  # the innermost module it ran in
    dtype: str
    made: str  # "nan" or "inf"
    input_absmax: float  # largest finite |input|
    input_neginf: bool  # its inputs held -inf (masked scores)
    # each tensor operand: name (input, weight, bias, other, ...), absmax, channel, shape
    operands: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class InputFinding:
    """A float input of the batch that holds non-finite values."""

    key: str
    nan: int
    inf: int
    total: int


@dataclass
class LossFinding:
    step: int
    logit_absmax: float
    labels_counted: int | None  # labels that are not -100
    labels_total: int | None


@dataclass
class GradFinding:
    """Parameters whose gradients were non-finite before the update."""

    step: int
    params: list[str]
    count: int
    nan: bool


@dataclass
class BackwardFinding:
    """The operation that anomaly mode caught, and the forward code that made it."""

    step: int
    op: str
    frames: list[dict[str, Any]] = field(default_factory=list)  # file, line, function, code


@dataclass
class OptimizerFinding:
    """Parameters that became non-finite in the update, and the state that did it."""

    step: int
    optimizer: str
    params: list[str]
    count: int
    dtype: str
    lr: float
    eps: float | None
    eps_in_dtype: float | None  # eps as the optimizer state's dtype holds it
    nonfinite_values: int
    nan_values: int
    zero_second_moment: int  # of the values that went non-finite, where exp_avg_sq == 0
    nonfinite_grad: bool  # a non-finite gradient reached the update
