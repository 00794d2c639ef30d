"""Diagnostics for a rerun: where in a training step the first non-finite value was born.

A trial only detects: one host read per step (:mod:`nansearch.trial.runner`). ``Diagnostics``
localizes, and runs on the failure path only, in the pattern of fairseq's
``NanDetector``:

- forward: a hook on every module reads back the abs max of its inputs and output. The
  first module, in execution order, whose output is non-finite while its inputs were
  finite is where the value was born. A bounded trail of the modules that ran before
  it shows values growing toward the dtype's limit. When the batch itself holds
  non-finite values no module gives birth, and the first module to receive them is
  named instead. At one chosen step, every torch function of the forward pass is
  checked as well (the way JAX's ``jax_debug_nans`` reruns op by op): the first one
  that made a NaN or an Inf its inputs did not hold, and the module it ran in.
- loss: finite logits with a non-finite loss, and how many labels were counted.
- backward: the parameters whose gradients are non-finite; and, at one chosen step,
  autograd's anomaly mode, which names the operation whose gradient went NaN and the
  forward line that made it.
- optimizer step: the parameters that became non-finite in the update, and the
  optimizer state that did it (a zero second moment with an ``eps`` that rounds to 0
  in the parameters' dtype).

It is a context manager that keeps its hook handles and removes them on exit. Its state
lives on the detector, never on the model, and every buffer is bounded. Hand it to
``TrialRunner.run(..., observer=...)``, or give it the model to watch any loop::

    with Diagnostics(model) as diag:
        model(**batch)
    print(diag.forward)
"""

from __future__ import annotations

import math
import re
import warnings
from collections import deque
from contextlib import ExitStack
from dataclasses import asdict
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from nansearch.diagnose.findings import (
    MAX_LISTED,
    ROOT,
    BackwardFinding,
    GradFinding,
    InputFinding,
    LossFinding,
    ModuleFinding,
    OpFinding,
    OptimizerFinding,
)
from nansearch.diagnose.opwatch import (
    OpWatch,
    absmax,
    floats,
    is_finite,
    peak_of,
    summary,
)
from nansearch.trial.runner import StepObserver

_ANOMALY = re.compile(
    r"Error detected in (\S+?)\.? Traceback of forward call that caused the error:"
)
_ANOMALY_ERROR = re.compile(r"Function '(\w+)' returned nan values in its (\d+)\w* output")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s+(.*)')


class Diagnostics(StepObserver):
    """Localizes the first non-finite value of a training step; a context manager.

    ``trail`` bounds how many of the last modules' magnitudes are kept. ``op_step``
    checks every torch function of that step's forward pass, and ``anomaly_step`` turns
    on autograd's anomaly mode from that step on, to name the backward operation that
    made a NaN. Both slow a step many times over, so both are off by default: a rerun
    turns them on for the failing step once it knows which step that is.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        trail: int = 16,
        op_step: int | None = None,
        anomaly_step: int | None = None,
    ):
        if trail < 1:
            raise ValueError(f"trail={trail}: must be at least 1")
        for key, value in (("op_step", op_step), ("anomaly_step", anomaly_step)):
            if value is not None and value < 0:
                raise ValueError(f"{key}={value}: must be a step number, 0 or more")
        self._given = model, optimizer
        self.op_step = op_step
        self.anomaly_step = anomaly_step
        self.model: nn.Module | None = None  # the model watched, kept to inspect afterwards
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.trail: deque[dict[str, Any]] = deque(maxlen=trail)
        self.forward: ModuleFinding | None = None  # where a value was born
        self.received: ModuleFinding | None = None  # first module fed a non-finite value
        self.op: OpFinding | None = None
        self.inputs: list[InputFinding] = []
        self.loss: LossFinding | None = None
        self.grads: GradFinding | None = None
        self.backward: BackwardFinding | None = None
        self.update: OptimizerFinding | None = None
        self.masked_rows: list[int] = []  # batch rows whose attention mask is all zero
        self._labels: tuple[int, int] | None = None
        self._batch_size: int | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._stack: list[str] = []  # the modules running now, outermost first
        self._reading = False  # the hooks' own reads, which the op watch ignores
        self._op_watch = ExitStack()
        self._names: dict[int, str] = {}
        self._params: list[torch.Tensor] = []
        self._finite_before: list[bool] = []
        self._grad_finite: list[bool] = []
        self._anomaly = ExitStack()
        self._warnings: list[warnings.WarningMessage] | None = None
        self._anomalous = False  # anomaly mode is on

    # -- the context manager ---------------------------------------------------------

    def __enter__(self) -> Diagnostics:
        model, optimizer = self._given
        if model is not None:
            self.attach(model, optimizer, None)
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook and leave anomaly mode; the findings stay readable."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._op_watch.close()
        self._anomaly.close()
        self._read_anomaly()

    # -- across a process boundary -----------------------------------------------------

    FINDINGS: ClassVar[dict[str, type]] = {
        "forward": ModuleFinding,
        "received": ModuleFinding,
        "op": OpFinding,
        "loss": LossFinding,
        "grads": GradFinding,
        "backward": BackwardFinding,
        "update": OptimizerFinding,
    }

    def to_json(self) -> dict[str, Any]:
        """The findings as plain data: a watched script's process hands them back this way."""
        data: dict[str, Any] = {
            key: None if getattr(self, key) is None else asdict(getattr(self, key))
            for key in self.FINDINGS
        }
        data["inputs"] = [asdict(i) for i in self.inputs]
        data["masked_rows"] = list(self.masked_rows)
        data["trail"] = list(self.trail)
        data["step"] = self.step
        return data

    def load_json(self, data: dict[str, Any]) -> None:
        """Take the findings another process made (see :meth:`to_json`)."""
        for key, cls in self.FINDINGS.items():
            value = data.get(key)
            setattr(self, key, None if value is None else cls(**value))
        self.inputs = [InputFinding(**i) for i in data.get("inputs", [])]
        self.masked_rows = list(data.get("masked_rows", []))
        self.trail.clear()
        self.trail.extend(data.get("trail", []))
        self.step = int(data.get("step", 0))

    # -- StepObserver ----------------------------------------------------------------

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        batch: dict[str, torch.Tensor] | None,
    ) -> None:
        if self._handles:
            raise RuntimeError("Diagnostics is already attached to a model; use one per run")
        self.model, self.optimizer = model, optimizer
        for path, module in model.named_modules():
            path = path or ROOT
            self._handles.append(module.register_forward_pre_hook(partial(self._enter, path)))
            self._handles.append(
                module.register_forward_hook(partial(self._on_forward, path), with_kwargs=True)
            )
        self._names = {id(p): name for name, p in model.named_parameters()}
        if optimizer is not None:
            self._params = [p for group in optimizer.param_groups for p in group["params"]]
        if batch:
            self._read_batch(batch)

    def before_forward(self, step: int) -> None:
        self.step = step
        self.trail.clear()
        self.forward = self.received = self.grads = None
        self._stack.clear()
        if step == self.op_step and self._handles:
            self._op_watch.enter_context(OpWatch(self))
        if self.anomaly_step is not None and step >= self.anomaly_step and not self._anomalous:
            self._anomalous = True
            self._warnings = self._anomaly.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            self._anomaly.enter_context(torch.autograd.detect_anomaly(check_nan=True))

    def after_forward(self, step: int, logits: torch.Tensor, loss: torch.Tensor) -> None:
        self._op_watch.close()
        logit_absmax, loss_value = absmax([logits, loss.reshape(1)])
        if math.isfinite(logit_absmax) and not math.isfinite(loss_value):
            counted, total = self._labels or (None, None)
            self.loss = LossFinding(step, logit_absmax, counted, total)

    def before_update(self, step: int) -> None:
        if not self._params:
            return
        grads = [p.grad for p in self._params]
        checks = [p.detach().isfinite().all() for p in self._params]
        checks += [g.isfinite().all() for g in grads if g is not None]
        flags = torch.stack(checks).tolist()
        self._finite_before = flags[: len(self._params)]
        grad_flags = iter(flags[len(self._params) :])
        self._grad_finite = [True if g is None else next(grad_flags) for g in grads]
        bad = [p for p, ok in zip(self._params, self._grad_finite, strict=True) if not ok]
        if bad:
            nan = any(
                torch.stack([g.isnan().any() for p in bad if (g := p.grad) is not None]).tolist()
            )
            self.grads = GradFinding(step, self._listed(bad), len(bad), nan)

    def after_update(self, step: int) -> None:
        if not self._finite_before:
            return
        after = torch.stack([p.detach().isfinite().all() for p in self._params]).tolist()
        became = [
            i
            for i, (before, now) in enumerate(zip(self._finite_before, after, strict=True))
            if before and not now
        ]
        if became and self.update is None and self.optimizer is not None:
            self.update = self._optimizer_finding(step, became, self.optimizer)

    # -- findings ---------------------------------------------------------------------

    def explain_error(self, message: str | None) -> None:
        """Take the backward operation from anomaly mode's error, when its warning was lost."""
        match = _ANOMALY_ERROR.search(message or "")
        if match and self.backward is None:
            self.backward = BackwardFinding(self.step, match.group(1))

    def _enter(self, path: str, module: nn.Module, args) -> None:
        self._stack.append(path)

    def _on_forward(self, path: str, module: nn.Module, args, kwargs, output) -> None:
        if self._stack and self._stack[-1] == path:
            self._stack.pop()
        if self.forward is not None:
            return  # this step's birthplace is known: no more host reads
        outputs = floats(output)
        if not outputs:
            return
        self._reading = True
        try:
            self._check_module(path, module, floats((args, kwargs)), outputs)
        finally:
            self._reading = False

    def _check_module(
        self, path: str, module: nn.Module, inputs: list[torch.Tensor], outputs: list[torch.Tensor]
    ) -> None:
        values = absmax(inputs + outputs)
        inputs_finite = is_finite(values[: len(inputs)])
        if is_finite(values[len(inputs) :]):
            if inputs_finite:
                self.trail.append({"module": path, "absmax": max(values[len(inputs) :])})
            return
        if inputs_finite:
            self.forward = self._module_finding(path, module, inputs, outputs, born=True)
        elif self.received is None:
            self.received = self._module_finding(path, module, inputs, outputs, born=False)

    def _module_finding(
        self,
        path: str,
        module: nn.Module,
        inputs: list[torch.Tensor],
        outputs: list[torch.Tensor],
        born: bool,
    ) -> ModuleFinding:
        out_max, nan, inf = summary(outputs)
        in_max, _, _ = summary(inputs)
        named = list(module.named_parameters())
        weights = [w for _, w in named]
        w_max, w_nan, w_inf = summary(weights)
        peak = channel = None
        if named:
            peaks = [(*peak_of(w, 0), n) for n, w in named if w.is_floating_point() and w.numel()]
            if peaks:
                _, channel, peak = max(peaks, key=lambda item: item[0])
        bad = next(t for t in outputs if not t.isfinite().all())
        rows: list[int] = []
        if bad.dim() >= 2 and self._batch_size in (None, bad.shape[0]):
            rows = (~bad.detach().isfinite()).flatten(1).any(1).nonzero().flatten().tolist()
        return ModuleFinding(
            step=self.step,
            module=path,
            cls=type(module).__name__,
            dtype=str(bad.dtype).removeprefix("torch."),
            born=born,
            input_absmax=in_max,
            weight_absmax=w_max,
            weight_nonfinite=w_nan + w_inf,
            output_absmax=out_max,
            output_nan=nan,
            output_inf=inf,
            rows=rows[:MAX_LISTED],
            weight_peak=peak,
            weight_channel=channel,
        )

    def _read_batch(self, batch: dict[str, torch.Tensor]) -> None:
        first = next(iter(batch.values()))
        self._batch_size = first.shape[0] if first.dim() else None
        for key, value in batch.items():
            if value.is_floating_point() and value.numel():
                _, nan, inf = summary([value])
                if nan or inf:
                    self.inputs.append(InputFinding(key, nan, inf, value.numel()))
        mask = batch.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            self.masked_rows = (mask == 0).all(-1).nonzero().flatten().tolist()[:MAX_LISTED]
        labels = batch.get("labels")
        if labels is not None:
            self._labels = (int((labels != -100).sum()), labels.numel())

    def _listed(self, params: list[torch.Tensor]) -> list[str]:
        return [self._names.get(id(p), "?") for p in params[:MAX_LISTED]]

    def _optimizer_finding(
        self, step: int, became: list[int], optimizer: torch.optim.Optimizer
    ) -> OptimizerFinding:
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        params = [self._params[i] for i in became]
        first = params[0]
        group = groups[id(first)]
        counts = []
        for p in params:
            bad = ~p.detach().isfinite()
            second = optimizer.state.get(p, {}).get("exp_avg_sq")
            zero = (bad & (second == 0)).sum() if second is not None else torch.zeros(())
            counts.append(
                torch.stack([bad.sum(), (bad & p.isnan()).sum(), zero.to(bad.device)]).double()
            )
        totals = torch.stack(counts).sum(0).tolist()
        eps = group.get("eps")
        second = optimizer.state.get(first, {}).get("exp_avg_sq")
        state_dtype = second.dtype if second is not None else first.dtype
        eps_in_dtype = None if eps is None else torch.tensor(eps, dtype=state_dtype).item()
        return OptimizerFinding(
            step=step,
            optimizer=type(optimizer).__name__,
            params=self._listed(params),
            count=len(params),
            dtype=str(first.dtype).removeprefix("torch."),
            lr=float(group["lr"]),
            eps=eps,
            eps_in_dtype=eps_in_dtype,
            nonfinite_values=int(totals[0]),
            nan_values=int(totals[1]),
            zero_second_moment=int(totals[2]),
            nonfinite_grad=not all(self._grad_finite[i] for i in became),
        )

    def _read_anomaly(self) -> None:
        if not self._warnings or self.backward is not None:
            return
        for message in self._warnings:
            text = str(message.message)
            match = _ANOMALY.search(text)
            if match:
                frames = [
                    {"file": file, "line": int(line), "function": fn, "code": code.strip()}
                    for file, line, fn, code in _FRAME.findall(text)
                ]
                self.backward = BackwardFinding(self.step, match.group(1), frames[-3:])
                return
