"""The op watch: every torch function of one forward pass checked for the first one that
made a NaN or an Inf its inputs did not hold, with the operands that made it.

Also the tensor summaries the detector reads back (abs max, non-finite counts).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from nansearch.diagnose.findings import ROOT, OpFinding


def floats(value: Any, depth: int = 0) -> list[torch.Tensor]:
    """The non-empty float tensors in a module's inputs or output."""
    if torch.is_tensor(value):
        return [value] if value.is_floating_point() and value.numel() else []
    if depth > 4:
        return []
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in floats(item, depth + 1)]
    return []


def absmax(tensors: list[torch.Tensor]) -> list[float]:
    """max |t| of each tensor in one host read; NaN or Inf when the tensor holds one."""
    device = tensors[0].device
    values = [t.detach().abs().amax().float().to(device) for t in tensors]
    return torch.stack(values).tolist()


def summary(tensors: Sequence[torch.Tensor]) -> tuple[float, int, int]:
    """(largest finite |value|, NaN count, Inf count) over ``tensors``, in one read."""
    if not tensors:
        return 0.0, 0, 0
    device = tensors[0].device
    rows = []
    for t in tensors:
        t = t.detach()
        finite = t.isfinite()
        rows.append(
            torch.stack(
                [
                    torch.where(finite, t.abs(), 0).amax().double(),
                    t.isnan().sum().double(),
                    t.isinf().sum().double(),
                ]
            ).to(device)
        )
    peak, nan, inf = zip(*torch.stack(rows).tolist(), strict=True)
    return max(peak), int(sum(nan)), int(sum(inf))


def is_finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def has_nan_inf(tensors: list[torch.Tensor]) -> tuple[bool, bool]:
    if not tensors:
        return False, False
    device = tensors[0].device
    flags = [torch.stack([t.isnan().any(), t.isinf().any()]).to(device) for t in tensors]
    nan, inf = torch.stack(flags).any(0).tolist()
    return nan, inf


# The names of a function's positional arguments where they are not input, other, ...
# (None: not a tensor). The channel of a weight or bias is its first dimension (the
# output feature); of any other operand, its last.
OPERAND_NAMES = {
    "linear": ("input", "weight", "bias"),
    "conv1d": ("input", "weight", "bias"),
    "conv2d": ("input", "weight", "bias"),
    "conv3d": ("input", "weight", "bias"),
    "addmm": ("bias", "input", "weight"),
    "baddbmm": ("bias", "input", "other"),
    "embedding": ("input", "weight"),
    "layer_norm": ("input", None, "weight", "bias"),
    "group_norm": ("input", None, "weight", "bias"),
}
PER_OUTPUT = ("weight", "bias")


def _operand_name(op: str, index: int) -> str:
    names = OPERAND_NAMES.get(op, ())
    name = names[index] if index < len(names) else None
    if name:
        return name
    return ("input", "other")[index] if index < 2 else f"operand {index + 1}"


def peak_of(tensor: torch.Tensor, dim: int) -> tuple[float, int | None]:
    """(largest finite |value|, its index along ``dim``) of one tensor."""
    t = tensor.detach()
    magnitude = torch.where(t.isfinite(), t.abs(), 0).float()
    flat = int(magnitude.flatten().argmax())
    peak = float(magnitude.flatten()[flat])
    if t.dim() == 0:
        return peak, None
    index = torch.unravel_index(torch.tensor(flat), t.shape)
    return peak, int(index[dim])


def operands(op: str, args: tuple, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each float tensor operand of a call: its name, largest |value|, channel and shape."""
    named: list[tuple[str, torch.Tensor]] = []
    for i, arg in enumerate(args):
        name = _operand_name(op, i)
        tensors = [arg] if torch.is_tensor(arg) else floats(arg)
        for j, t in enumerate(tensors):
            named.append((name if len(tensors) == 1 else f"{name}[{j}]", t))
    named += [(k, v) for k, v in kwargs.items() if torch.is_tensor(v)]
    found = []
    for name, t in named:
        if not (t.is_floating_point() and t.numel()):
            continue
        absmax, channel = peak_of(t, 0 if name in PER_OUTPUT else -1)
        found.append({"name": name, "absmax": absmax, "channel": channel, "shape": list(t.shape)})
    return found


def _in_place(name: str) -> bool:
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i")


class Watcher(Protocol):
    """The detector's state the op watch reads and fills in."""

    op: OpFinding | None
    step: int
    _reading: bool
    _stack: list[str]


class OpWatch(TorchFunctionMode):
    """Checks every torch function of a forward pass; records the first to make NaN or Inf.

    A -inf passed as a scalar (``masked_fill(mask, -inf)``) is intended, not an overflow:
    only the NaN it can lead to counts.
    """

    def __init__(self, owner: Watcher):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        if owner.op is not None or owner._reading:
            return func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        leaves = tree_leaves((args, kwargs))
        inputs = [x for x in leaves if torch.is_tensor(x) and x.is_floating_point() and x.numel()]
        before = has_nan_inf(inputs) if _in_place(name) else None
        out = func(*args, **kwargs)
        outputs = [
            x
            for x in tree_leaves(out)
            if torch.is_tensor(x) and x.is_floating_point() and x.numel()
        ]
        if not outputs:
            return out
        in_nan, in_inf = before or has_nan_inf(inputs)
        out_nan, out_inf = has_nan_inf(outputs)
        scalar_inf = any(isinstance(x, float) and math.isinf(x) for x in leaves)
        made = "nan" if out_nan and not in_nan else None
        if made is None and out_inf and not in_inf and not scalar_inf:
            made = "inf"
        if made:
            in_max, _, _ = summary(inputs)
            neginf = any(bool((t == -math.inf).any()) for t in inputs)
            op = name.strip("_")
            owner.op = OpFinding(
                step=owner.step,
                op=op,
                module=owner._stack[-1] if owner._stack else ROOT,
                dtype=str(outputs[0].dtype).removeprefix("torch."),
                made=made,
                input_absmax=in_max,
                input_neginf=neginf,
                operands=operands(op, tuple(args), kwargs),
            )
        return out
