"""The one sentence a rerun ends in: from what :class:`~nansearch.diagnose.diagnostics.
Diagnostics` saw, the stage where the first non-finite value was born and why.

For example::

    step 0: first non-finite output in model.decoder.layers.0.fc2 (Linear): linear
    overflowed float16 (max 65504): its bias holds 9e+04 at channel 17, past float16's range
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from nansearch.diagnose.diagnostics import Diagnostics
from nansearch.diagnose.findings import ROOT, ModuleFinding, OpFinding
from nansearch.trial.runner import TrialResult

STAGES = {
    "nonfinite-logits": "forward",
    "nonfinite-loss": "loss",
    "nonfinite-grad": "backward",
    "nonfinite-params": "optimizer",
}


def diagnose(
    result: TrialResult,
    diag: Diagnostics,
    deep: Diagnostics | None = None,
    missing: Sequence[str] = (),
    fix: str | None = None,
) -> tuple[str | None, str | None, str]:
    """(stage, module, one sentence) for a rerun's result and what its diagnostics saw.

    ``missing`` names the weights the trial's checkpoint did not hold: non-finite
    weights among them point at the checkpoint, not at the training, and ``fix`` (the
    audit's, for a wrapped or foreign checkpoint) says what to load instead.
    """
    if result.outcome == "error":
        first = (result.error or "").strip().splitlines()
        return None, None, f"the rerun ended in an error, not a NaN: {first[0] if first else ''}"
    if not result.is_nan:
        return None, None, f"the rerun stayed finite for {result.steps} steps"
    stage = STAGES[result.outcome]
    head = f"step {result.first_bad_step}: "
    if stage == "forward":
        module, text = _forward(diag, deep, missing, fix)
    elif stage == "loss":
        module, text = None, _loss(result, diag)
    elif stage == "backward":
        module, text = _backward(diag, deep)
    else:
        module, text = _optimizer(diag)
    return stage, module, head + text


def _forward(
    diag: Diagnostics, deep: Diagnostics | None, missing: Sequence[str] = (), fix: str | None = None
) -> tuple[str | None, str]:
    if diag.inputs:
        values = ", ".join(
            f"{i.key} ({_count(i.nan, i.inf)} of {i.total} values)" for i in diag.inputs
        )
        text = f"the batch holds non-finite values in {values}"
        receiver = diag.received
        if receiver is None:
            return None, text
        return (
            receiver.module,
            f"{text}; the first module to receive them is {receiver.module} ({receiver.cls})",
        )
    found = diag.forward
    if found is None:
        return None, "the logits are non-finite, yet no module's output was"
    op = op_within(found, deep)
    reason = f"first non-finite output in {found.module} ({found.cls}): "
    limit = torch.finfo(getattr(torch, found.dtype)).max
    if found.weight_nonfinite:
        text = reason + f"its weights hold {found.weight_nonfinite} non-finite values"
        return found.module, text + _never_loaded(found.module, missing, fix)
    if found.rows and set(found.rows) <= set(diag.masked_rows):
        return found.module, reason + "a row of the attention mask is all zero"
    if op is not None and op.made == "inf":
        return found.module, reason + _overflow(op)
    if op is not None and op.input_neginf:
        return found.module, reason + f"{op.op} over a row that is all -inf is 0/0"
    if op is not None:
        return found.module, reason + (
            f"{op.op} made NaN from finite inputs (up to {op.input_absmax:.4g}) in {op.dtype}"
        )
    if found.output_inf:
        where = ""
        if found.weight_peak is not None:
            where = f" in {found.weight_peak}" + _channel(found.weight_channel)
        return found.module, reason + (
            f"values passed the {found.dtype} maximum {limit:g} "
            f"(inputs up to {found.input_absmax:.4g}, weights up to "
            f"{found.weight_absmax:.4g}{where})"
        )
    return found.module, reason + (
        f"NaN from finite inputs (up to {found.input_absmax:.4g}) "
        f"and weights (up to {found.weight_absmax:.4g}) in {found.dtype}"
    )


def _channel(channel: int | None) -> str:
    return "" if channel is None else f" at channel {channel}"


def _overflow(op: OpFinding) -> str:
    """Which operand of an op that made Inf was out of the dtype's range, and where.

    An operand past the maximum (a bias of 9e4 under fp16 autocast) is cast to Inf
    before the op runs; when every operand is in range, their product is what overflowed.
    """
    limit = torch.finfo(getattr(torch, op.dtype)).max
    head = f"{op.op} overflowed {op.dtype} (max {limit:g})"
    if not op.operands:
        return f"{head} on inputs up to {op.input_absmax:.4g}"
    past = [o for o in op.operands if o["absmax"] > limit]
    listed = ", ".join(
        f"{o['name']} up to {o['absmax']:.4g}{_channel(o['channel'])}" for o in op.operands
    )
    if past:
        first = past[0]
        others = [o for o in op.operands if o is not first]
        rest = ", ".join(f"{o['name']} up to {o['absmax']:.4g}" for o in others)
        return (
            f"{head}: its {first['name']} holds {first['absmax']:.4g}"
            f"{_channel(first['channel'])}, past {op.dtype}'s range"
            + (f" ({rest})" if rest else "")
        )
    return (
        f"{head} on inputs up to {op.input_absmax:.4g} ({listed}): each operand is in "
        "range, their product is not"
    )


def _never_loaded(module: str, missing: Sequence[str], fix: str | None = None) -> str:
    """A clause saying that the module's weights were missing from the checkpoint."""
    own = [k for k in missing if k.startswith(module + ".") or module == ROOT]
    if not own:
        return ""
    return (
        f"; the checkpoint did not hold them ({len(missing)} of the model's weights are "
        "missing from it, so they were never loaded): "
        + (
            f"the audit's fix: {fix}"
            if fix
            else "check that the checkpoint matches the model class"
        )
    )


def several(holds: Sequence[dict[str, Any]]) -> str:
    """A clause naming every cause the trial holds, when it holds more than one."""
    if len(holds) < 2:
        return ""
    named = [f"{h['rule']} (conclusion {h['conclusion']})" for h in holds]
    listed = ", ".join(named[:-1]) + " and " + named[-1]
    return (
        f"; the trial holds {len(holds)} of the study's causes, {listed}: this is where "
        "the first NaN of any of them was born"
    )


def op_within(found: ModuleFinding | None, deep: Diagnostics | None) -> OpFinding | None:
    """The op that made the first NaN or Inf, when it ran inside the module that gave birth."""
    op = deep.op if deep is not None else None
    if op is None or found is None:
        return None
    inside = op.module == found.module or op.module.startswith(found.module + ".")
    return op if inside or found.module == ROOT else None


def _loss(result: TrialResult, diag: Diagnostics) -> str:
    step = result.first_bad_step
    value = result.loss[step] if result.loss and step is not None else math.nan
    word = "NaN" if math.isnan(value) else "Inf"
    finding = diag.loss
    if finding is None:
        return f"the loss is {word} with finite logits"
    if finding.labels_counted == 0:
        return f"the loss is {word} with finite logits: every label is ignored (-100)"
    return f"the loss is {word} with finite logits (max |logit| {finding.logit_absmax:.4g})"


def _backward(diag: Diagnostics, deep: Diagnostics | None) -> tuple[str | None, str]:
    grads = diag.grads
    module = _modules(grads.params)[0] if grads else None
    backward = deep.backward if deep is not None else None
    if backward is not None:
        text = f"the gradient went NaN in {backward.op}, with a finite forward pass and loss"
        mine = [f for f in backward.frames if "/torch/" not in f["file"]] or backward.frames
        if mine:
            frame = mine[-1]
            text += (
                f"; the forward code that made it: `{frame['code']}` "
                f"({Path(frame['file']).name}:{frame['line']})"
            )
        return module, text
    if grads is not None:
        word = "NaN" if grads.nan else "Inf"
        return module, (
            f"gradients of {_who(grads.params, grads.count)} became {word} in the backward pass, "
            "with a finite forward pass and loss"
        )
    return None, "a gradient became non-finite in the backward pass"


def _optimizer(diag: Diagnostics) -> tuple[str | None, str]:
    update = diag.update
    if update is None:
        return None, "the parameters are non-finite after the optimizer update"
    word = "NaN" if update.nan_values else "Inf"
    if update.eps is not None and update.eps_in_dtype == 0 and update.zero_second_moment:
        reason = f"{update.optimizer} eps {update.eps:g} is 0 in {update.dtype}"
    elif update.nonfinite_grad:
        reason = f"a non-finite gradient reached {update.optimizer}"
    else:
        reason = f"the update at lr {update.lr:g} overflowed {update.dtype}"
    module = _modules(update.params)[0]
    return module, (
        f"parameters of {_who(update.params, update.count)} became {word} in the optimizer update: {reason}"
    )


def _modules(params: list[str]) -> list[str]:
    """Module paths of parameter names, in order, each once."""
    return list(dict.fromkeys(name.rpartition(".")[0] or name for name in params))


def _who(params: list[str], count: int) -> str:
    """The first parameter's module, and how many more parameters went with it."""
    first = _modules(params)[0]
    rest = count - sum(1 for name in params if name.rpartition(".")[0] == first)
    return first + (f" (and {rest} more parameters)" if rest > 0 else "")


def _count(nan: int, inf: int) -> str:
    parts = [f"{nan} NaN" if nan else "", f"{inf} Inf" if inf else ""]
    return " and ".join(p for p in parts if p)
