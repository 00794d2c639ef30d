"""How a user's own training loop is watched: the step check that reads a step's logits,
loss and gradients in one host read, and the exceptions that end the trial."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nansearch.trial.runner import (
    TrialResult,
    _total_norm,
    judge_step,
    read_step,
)


class TrialEnded(Exception):
    """The trial is over; nansearch catches it around the user's function."""


class NonFinite(TrialEnded):
    """The first non-finite value: ``outcome`` says where, ``step`` when."""

    def __init__(self, outcome: str, step: int):
        self.outcome, self.step = outcome, step
        super().__init__(f"{outcome} at step {step}")


class StepsDone(TrialEnded):
    """The trial ran its ``steps`` steps without a non-finite value."""


def logits_and_loss(output: Any) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The logits and the loss in a model's output: a tensor, a dict, a ModelOutput or a tuple."""
    if torch.is_tensor(output):
        if not output.is_floating_point():
            return None, None
        return (None, output) if output.dim() == 0 else (output, None)
    if isinstance(output, dict) or hasattr(output, "keys"):
        logits, loss = output.get("logits"), output.get("loss")
    else:
        logits, loss = getattr(output, "logits", None), getattr(output, "loss", None)
        if logits is None and isinstance(output, (tuple, list)) and output:
            tensors = [t for t in output if torch.is_tensor(t) and t.is_floating_point()]
            loss = next((t for t in tensors if t.dim() == 0), None)
            logits = next((t for t in tensors if t.dim() >= 2), None)
    logits = logits if torch.is_tensor(logits) else None
    loss = loss if torch.is_tensor(loss) else None
    return logits, loss


class StepCheck:
    """One step's figures gathered on the device, read back once, judged like a built-in trial.

    Fed by :meth:`Trial.step`, by :meth:`Trial.watch`'s hooks, or by the hooks that
    ``nansearch.inject`` installs in a script's process. ``on_step`` hears each recorded
    step (the inject bootstrap writes it to its report).
    """

    def __init__(
        self,
        result: TrialResult,
        steps: int,
        min_loss_scale: float = 1.0,
        on_step: Callable[[TrialResult, int], None] | None = None,
    ):
        self.result = result
        self.steps = steps
        self.min_loss_scale = min_loss_scale
        self.on_step = on_step
        self.step = 0
        self.logit_absmax: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self.grad_norm: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self.seen = {"logits": False, "loss": False, "update": False}
        self.ended: TrialEnded | None = None

    def see_logits(self, logits: torch.Tensor) -> None:
        low, high = torch.aminmax(logits.detach())  # one pass, no |logits| temporary
        self.logit_absmax = torch.maximum(high, -low).double()
        self.seen["logits"] = True

    def see_loss(self, loss: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        loss = loss.detach().double().reshape(())
        self.loss = loss if scale is None else loss / scale.double()
        self.seen["loss"] = True

    def see_grads(self, params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        grads = [p.grad for p in params if p.grad is not None]
        self.grad_norm = _total_norm(grads, device)
        return self.grad_norm

    def finish(self, params: list[torch.Tensor], device: torch.device) -> None:
        """The step is done: read its figures back once, record them, end on a bad one."""
        if self.ended is not None:
            raise self.ended
        self.seen["update"] = True
        zero = torch.zeros((), dtype=torch.float64, device=device)
        grad_norm = self.grad_norm if self.grad_norm is not None else self.see_grads(params, device)
        checked = [
            _on(self.logit_absmax, device, zero),
            _on(self.loss, device, zero),
            grad_norm.to(device),
            _total_norm([p.detach() for p in params], device),
        ]
        if self.scale is not None:
            checked.append(self.scale.double().to(device))
        values = read_step(checked, params, device)  # the one host read of the step
        step, self.step = self.step, self.step + 1
        self.logit_absmax = self.loss = self.grad_norm = self.scale = None
        bad = judge_step(
            self.result, values, step, self.min_loss_scale if len(values) > 4 else None
        )
        if self.on_step is not None:
            self.on_step(self.result, step)
        if bad:
            self.ended = NonFinite(bad, step)
        elif self.step >= self.steps:
            self.ended = StepsDone(f"{self.steps} steps")
        if self.ended is not None:
            raise self.ended


def _on(value: torch.Tensor | None, device: torch.device, zero: torch.Tensor) -> torch.Tensor:
    return zero if value is None else value.to(device)
