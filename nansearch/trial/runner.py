"""The trial runner: a short, seeded training run that stops at the first non-finite value.

Detection is cheap on purpose: each step gathers the max |logit|, the loss, the gradient
norm and the parameter norm on the device and reads them back to the host together,
once. A NaN or Inf anywhere propagates into those reductions, so one read per step
sees it. There is no hook and no host sync per module; localization is the job of
``nansearch rerun``.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol, cast

import torch
from torch import nn

from nansearch.config.schema import OptimizerConfig, SweepConfig
from nansearch.errors import NansearchError
from nansearch.factors import Factor, TrialSetup
from nansearch.factors._base import STAGES
from nansearch.factors.checkpoint import CheckpointFactor
from nansearch.targets._base import CheckpointCache, Target
from nansearch.trial.limit import TrialTimedOut, limit_for, time_limit
from nansearch.trial.result import (  # re-exported: what a trial did is read from here too
    NONFINITE,
    OUTCOMES,
    PHASES,
    PROBES,
    QUEUED,
    TrialResult,
    _json_safe,  # noqa: F401  (nansearch.inject reads it from here)
    instability_score,
)

__all__ = [
    "NONFINITE",
    "OUTCOMES",
    "PHASES",
    "PROBES",
    "QUEUED",
    "StepObserver",
    "TrialResult",
    "TrialRunner",
    "cpu_threads",
    "instability_score",
    "make_optimizer",
    "on_device",
    "pick_device",
    "read_step",
    "train",
]


def pick_device(name: str) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise NansearchError("device=cuda: no CUDA device is visible; use device=auto or cpu")
        return torch.device("cuda")
    return torch.device("cpu")


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Torch runs on ``count`` CPU threads inside, on what it ran on before afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_optimizer(params, lr: float, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, eps=cfg.eps, weight_decay=cfg.weight_decay)


def _total_norm(
    tensors: list[torch.Tensor], device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The L2 norm of all ``tensors`` together, as a float64 scalar on ``device``.

    Each tensor's norm is taken in ``dtype``, float32 by default (half-precision tensors
    widened to it, since their own range ends at 65504), and the norms are combined in
    float64. Taking each in float64 would read a float64 copy of every weight: three times
    as long, on every step. A float32 value above about 1.8e19 squares to inf, so a large
    but finite tensor can read as inf: :func:`read_step` takes such a norm again in
    float64 before calling it non-finite. With no tensor (no gradient reached the
    weights) the norm is a zero on the same device as the step's other figures, which are
    stacked with it for the step's one read.
    """
    if not tensors:
        return torch.zeros((), dtype=torch.float64, device=device)
    norms = torch._foreach_norm(tensors, 2, dtype=dtype)
    return torch.linalg.vector_norm(torch.stack(norms).double())


def read_step(
    checked: list[torch.Tensor], params: Sequence[torch.Tensor], device: torch.device
) -> list[float]:
    """The step's figures (max |logit|, loss, gradient norm, parameter norm, maybe the
    scale) read back to the host in one read. A norm of ``params``' gradients or of
    ``params`` that reads inf is taken again in float64 (:func:`_total_norm`), so only a
    step with an inf or a float32 overflow in its norms pays a second read; a NaN is a
    NaN in any precision."""
    values = torch.stack(checked).tolist()
    if values[2] == math.inf:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            values[2] = _total_norm(grads, device, torch.float64).item()
    if values[3] == math.inf:
        values[3] = _total_norm([p.detach() for p in params], device, torch.float64).item()
    return values


class StepObserver:
    """Sees inside the training loop; ``nansearch rerun`` attaches its diagnostics here.

    Every method is a no-op by default. A trial run without an observer makes no call
    at all, so detection keeps its one host read per step.
    """

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        batch: dict[str, torch.Tensor] | None,
    ) -> None:
        """Called once, before the first step, with what the loop will train."""

    def before_forward(self, step: int) -> None:
        pass

    def after_forward(self, step: int, logits: torch.Tensor, loss: torch.Tensor) -> None:
        pass

    def before_update(self, step: int) -> None:
        """After the backward pass (and the GradScaler's unscaling), before the update."""

    def after_update(self, step: int) -> None:
        pass


class OwnLoop(Protocol):
    """A target whose own code runs each trial (``Target.owns_loop``)."""

    def run_trial(
        self,
        runner: TrialRunner,
        params: dict[str, Any],
        seed: int,
        steps: int,
        result: TrialResult,
        observer: StepObserver | None = None,
    ) -> None: ...


class TrialRunner:
    """Builds and runs trials in one process; checkpoints are read once and copied."""

    def __init__(
        self,
        cfg: SweepConfig,
        factors: list[Factor],
        target: Target,
        device: torch.device | None = None,
    ):
        self.cfg = cfg
        self.factors = factors
        self.target = target
        self.device = device or pick_device(cfg.device)
        self.cache = CheckpointCache(target)
        # seconds each run may take (nansearch.trial.limit); a search sets it per trial
        self.time_limit: float | None = limit_for(cfg.trial_timeout, [])

    def missing_keys(self, params: dict[str, Any]) -> list[str]:
        """The weights the configuration's checkpoint does not hold, read from the cache."""
        checkpoint = next((f for f in self.factors if f.name == "checkpoint"), None)
        if checkpoint is None or "checkpoint" not in params:
            return []
        level = params["checkpoint"]
        paths = cast(CheckpointFactor, checkpoint).paths
        return list(self.cache.peek(paths[level], level).missing_keys)

    def prepare(self, params: dict[str, Any], seed: int) -> TrialSetup:
        """The trial's model, batch and settings, shaped by every factor in stage order."""
        generator = torch.Generator().manual_seed(seed)
        setup = TrialSetup(target=self.target, cache=self.cache, generator=generator)
        batch_stage = STAGES.index("batch")
        for factor in self.factors:
            if setup.batch is None and STAGES.index(factor.stage) >= batch_stage:
                setup.batch = self._clean_batch(setup)
            factor.apply(setup, params[factor.name])
        if setup.batch is None:
            setup.batch = self._clean_batch(setup)
        return setup

    def _clean_batch(self, setup: TrialSetup) -> dict[str, torch.Tensor]:
        loaded = setup.loaded
        if loaded is not None and loaded.batch is not None:
            return loaded.batch
        return self.target.make_batch(setup.model, setup.generator)

    def run(
        self,
        params: dict[str, Any],
        seed: int,
        steps: int | None = None,
        observer: StepObserver | None = None,
    ) -> TrialResult:
        """Run one trial. Never raises for a failure of the run itself: that is an outcome.

        A run past ``self.time_limit`` is an ``error`` that says it timed out.
        """
        steps = steps or self.cfg.steps
        result = TrialResult(params=dict(params), seed=seed, steps=steps, device=str(self.device))
        start = time.perf_counter()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        # a command target's script runs in a process of its own, which it ends itself
        limit = None if self.target.owns_time_limit else self.time_limit
        try:
            with time_limit(limit), torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                if self.target.owns_loop:  # the user's own training code is the trial
                    own = cast(OwnLoop, self.target)
                    own.run_trial(self, params, seed, steps, result, observer)
                else:
                    setup = self.prepare(params, seed)
                    train(setup, result, steps, self.cfg.optimizer, self.device, observer)
        except KeyboardInterrupt:
            raise
        except TrialTimedOut as exc:
            result.outcome, result.error = "error", str(exc)
        except NansearchError as exc:
            result.outcome, result.error = "error", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # the run's own failure, e.g. out of memory
            result.outcome = "error"
            result.error = f"{type(exc).__name__}: {exc}"
            result.error += "\n" + "".join(traceback.format_exception(exc, limit=-3))[-1500:]
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        result.seconds = time.perf_counter() - start
        result.score = instability_score(result)
        return result


def on_device(
    setup: TrialSetup, device: torch.device
) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The trial's model in training mode and its batch, on ``device``.

    Under a pure dtype the batch's float inputs (pixel values) take the weights' dtype;
    under autocast they stay float32, as autocast expects.
    """
    model = setup.model.to(device)
    model.train()
    assert setup.batch is not None  # TrialRunner.prepare builds it
    pure = setup.autocast_dtype is None
    batch = {
        key: value.to(device=device, dtype=setup.param_dtype)
        if value.is_floating_point() and pure
        else value.to(device)
        for key, value in setup.batch.items()
    }
    return model, batch


def train(
    setup: TrialSetup,
    result: TrialResult,
    steps: int,
    opt_cfg: OptimizerConfig,
    device: torch.device,
    observer: StepObserver | None = None,
) -> None:
    """The training loop, writing into ``result``; stops at the first non-finite value."""
    model, batch = on_device(setup, device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, setup.lr, opt_cfg)
    scaler = torch.amp.GradScaler(device.type) if setup.grad_scaler else None
    autocast = (
        torch.autocast(device.type, dtype=setup.autocast_dtype)
        if setup.autocast_dtype
        else nullcontext()
    )
    result.compute_dtype = str(setup.autocast_dtype or setup.param_dtype).removeprefix("torch.")
    forward = setup.target.forward
    if observer is not None:
        observer.attach(model, optimizer, batch)

    skip = setup.extra.get("skip_step")
    for step in range(steps):
        if skip:  # the batch has no counted label: the loop's guard skips the step
            result.skipped_batches += 1
            continue
        optimizer.zero_grad(set_to_none=True)
        if observer is not None:
            observer.before_forward(step)
        with autocast:
            logits, loss = forward(model, batch)
        if observer is not None:
            observer.after_forward(step, logits, loss)
        low, high = torch.aminmax(logits.detach())  # one pass, no |logits| temporary
        logit_absmax = torch.maximum(high, -low)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            # the scale this step ran at, kept on the device until the step's one read
            scale = cast(torch.Tensor, scaler._get_scale_async()).clone()  # set by scale()
            scaler.unscale_(optimizer)
        # no name holds the gradients past this line, so zero_grad frees them for reuse
        grad_norm = _total_norm([p.grad for p in params if p.grad is not None], logits.device)
        if observer is not None:
            observer.before_update(step)
        if scaler:
            scaler.step(optimizer)  # skips the update when a gradient overflowed
            scaler.update()
        else:
            optimizer.step()
        if observer is not None:
            observer.after_update(step)
        param_norm = _total_norm([p.detach() for p in params], logits.device)
        checked = [logit_absmax.double(), loss.detach().double(), grad_norm, param_norm]
        if scaler:
            checked.append(scale.double())
        # the one host read of the step
        values = read_step(checked, params, logits.device)
        if judge_step(result, values, step, opt_cfg.min_loss_scale if scaler else None):
            return


def judge_step(
    result: TrialResult, values: list[float], step: int, min_loss_scale: float | None
) -> str | None:
    """Record one step's figures read back from the device, and name what went non-finite.

    ``values`` are the max |logit|, the loss, the gradient norm, the parameter norm and,
    under a GradScaler (``min_loss_scale`` given), the scale the step ran at. The first bad
    value sets the result's outcome and first bad step.
    """
    logit_v, loss_v, grad_v, param_v, *scale_v = values
    result.logit_absmax.append(logit_v)
    result.loss.append(loss_v)
    result.grad_norm.append(grad_v)
    if scale_v:
        result.loss_scale.append(scale_v[0])
    bad = None
    if not math.isfinite(logit_v):
        bad = "nonfinite-logits"
    elif not math.isfinite(loss_v):
        bad = "nonfinite-loss"
    elif not math.isfinite(grad_v):
        # Under a GradScaler an overflow is routine: the step is skipped and the
        # scale halves. It is a failure once the scale has reached its floor.
        if min_loss_scale is None or not scale_v or scale_v[0] <= min_loss_scale:
            bad = "nonfinite-grad"
        else:
            result.skipped_steps += 1
    if bad is None and not math.isfinite(param_v):
        bad = "nonfinite-params"
    if bad:
        result.outcome, result.first_bad_step = bad, step
    return bad
