"""The trial as your own training code sees it: :class:`Trial`, handed to ``target.fn``.

A sweep whose target is ``kind: function`` calls the user's function once per trial,
Optuna-style, with a :class:`Trial`. The trial carries the suggested factor values and
helpers that apply them to the user's own objects the way the built-in targets do::

    def train(trial):
        model = trial.load(OPTForCausalLM)          # checkpoint level, init level, dtype
        optimizer = torch.optim.AdamW(model.parameters(), lr=trial.lr)
        batch = trial.batch()                       # the batch level, on the device
        for _ in range(trial.steps):
            optimizer.zero_grad()
            with trial.autocast():
                out = model(**batch)
            trial.update(out.loss, optimizer)       # backward, GradScaler, step
            trial.step(logits=out.logits, loss=out.loss)

or, with no change to the loop at all, ``trial.watch(model, optimizer)`` once.

Detection is the built-in runner's: each step's max |logit|, loss, gradient norm and
parameter norm are reduced on the device and read back together, once. The first
non-finite value ends the trial with :class:`NonFinite` (caught by nansearch, as
Optuna catches ``TrialPruned``); after ``steps`` steps :class:`StepsDone` ends it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, cast

import torch
from torch import nn

from nansearch.config.schema import OptimizerConfig
from nansearch.errors import NansearchError
from nansearch.factors import Factor, TrialSetup
from nansearch.factors.checkpoint import CheckpointFactor
from nansearch.factors.dtype import DTYPE_LEVELS
from nansearch.targets._base import CheckpointCache, Loaded, Target
from nansearch.trial.checks import NonFinite, StepCheck, TrialEnded, logits_and_loss
from nansearch.trial.runner import (
    StepObserver,
    TrialResult,
    make_optimizer,
)


class Trial:
    """One trial of a ``kind: function`` target: the suggested values and helpers.

    Attributes: ``params`` (every factor's value, by factor name), ``seed``, ``steps``,
    ``lr``, ``dtype`` (the level's name), ``param_dtype`` and ``autocast_dtype`` (torch
    dtypes), ``checkpoint`` (what ``from_pretrained`` should read), ``device``,
    ``generator`` (seeded), ``options`` (the sweep's ``target.options``) and ``number``.
    """

    def __init__(
        self,
        *,
        params: dict[str, Any],
        seed: int,
        steps: int,
        factors: list[Factor],
        target: Target,
        cache: CheckpointCache,
        device: torch.device,
        result: TrialResult,
        optimizer: OptimizerConfig | None = None,
        options: dict[str, Any] | None = None,
        observer: StepObserver | None = None,
    ):
        self.params = dict(params)
        self.seed, self.steps, self.device = seed, steps, device
        self.options = dict(options or {})
        self.generator = torch.Generator().manual_seed(seed)
        self._factors, self._target, self._cache = factors, target, cache
        self._optimizer_cfg = optimizer or OptimizerConfig()
        self._observer = observer
        self._result = result
        self.dtype = str(self.params.get("dtype", "fp32"))
        self.param_dtype, self.autocast_dtype, grad_scaler = DTYPE_LEVELS[self.dtype]
        self.lr = float(self.params.get("lr", 1e-3))
        self.scaler = torch.amp.GradScaler(device.type) if grad_scaler else None
        result.compute_dtype = str(self.autocast_dtype or self.param_dtype).removeprefix("torch.")
        self.check = StepCheck(result, steps, self._optimizer_cfg.min_loss_scale)
        self._setup: TrialSetup | None = None
        self._model: nn.Module | None = None
        self._batch: dict[str, torch.Tensor] | None = None
        self._handles: list[Any] = []
        self._watched: list[torch.Tensor] | None = None
        self._backward: Any = None
        self._attached = False

    # -- the suggested values -------------------------------------------------------

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint level's path or hub id, as ``from_pretrained`` takes it."""
        factor = self._factor("checkpoint")
        if factor is None or "checkpoint" not in self.params:
            return None
        from nansearch.targets.loading import resolve_checkpoint

        return resolve_checkpoint(cast(CheckpointFactor, factor).paths[self.params["checkpoint"]])

    def _factor(self, name: str) -> Factor | None:
        return next((f for f in self._factors if f.name == name), None)

    def _apply(self, setup: TrialSetup, stages: tuple[str, ...]) -> None:
        for factor in self._factors:
            if factor.stage in stages and factor.name in self.params:
                factor.apply(setup, self.params[factor.name])

    # -- helpers that apply the values to the user's objects ---------------------------

    def load(self, cls: Any = None, **kwargs: Any) -> nn.Module:
        """The checkpoint level loaded with ``cls`` (default: ``target.model_class``), with the
        init level applied and the dtype level's weights, in training mode on the device."""
        setup = TrialSetup(target=self._target, cache=self._cache, generator=self.generator)
        factor = self._factor("checkpoint")
        if factor is None or "checkpoint" not in self.params:
            raise NansearchError("trial.load: the sweep has no checkpoint level to load")
        level = self.params["checkpoint"]
        paths = cast(CheckpointFactor, factor).paths
        if cls is None or cls is getattr(self._target, "cls", None):
            setup.loaded = self._cache.get(paths[level], level=level)
        else:
            from nansearch.targets.loading import from_pretrained

            model, info = from_pretrained(cls, paths[level], dtype=torch.float32, **kwargs)
            setup.loaded = Loaded.from_info(model, paths[level], info)
        self._apply(setup, ("init", "dtype"))
        setup.model.to(device=self.device, dtype=self.param_dtype).train()
        self._setup, self._model = setup, setup.model
        return setup.model

    def init(self, model: nn.Module, missing_keys: list[str] | None = None) -> nn.Module:
        """Apply the init level to the user's own model, in place; ``missing_keys`` names the
        weights its checkpoint lacked (for ``uninitialized-missing``)."""
        setup = TrialSetup(target=self._target, cache=self._cache, generator=self.generator)
        setup.loaded = Loaded(model=model, checkpoint=self.checkpoint or "", missing_keys=[])
        setup.loaded.missing_keys = list(missing_keys or [])
        self._apply(setup, ("init",))
        self._setup, self._model = self._setup or setup, self._model or model
        return model

    def batch(
        self, batch: dict[str, torch.Tensor] | None = None, model: nn.Module | None = None
    ) -> dict[str, torch.Tensor]:
        """The batch level applied to a copy of ``batch`` (default: the target's clean batch),
        on the device; float inputs take the weights' dtype unless autocast runs."""
        model = model or self._model
        if model is None:
            raise NansearchError("trial.batch: load a model first (trial.load) or pass model=")
        setup = TrialSetup(target=self._target, cache=self._cache, generator=self.generator)
        setup.loaded = Loaded(model=model, checkpoint=self.checkpoint or "")
        if batch is None:
            batch = self._target.make_batch(model, self.generator)
        setup.batch = {k: v.detach().cpu().clone() for k, v in batch.items()}
        self._apply(setup, ("batch",))
        pure = self.autocast_dtype is None
        self._batch = {
            key: value.to(device=self.device, dtype=self.param_dtype)
            if value.is_floating_point() and pure
            else value.to(self.device)
            for key, value in setup.batch.items()
        }
        return self._batch

    def autocast(self):
        """The dtype level's autocast context (a no-op for pure dtypes)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def optimizer(self, params) -> torch.optim.Optimizer:
        """The sweep's optimizer (``optimizer.*``) at the trial's learning rate."""
        return make_optimizer(params, self.lr, self._optimizer_cfg)

    def update(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimizer step, through the dtype level's GradScaler when it has one."""
        params = _params_of(optimizer)
        self._attach(self._model, optimizer)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.check.scale = cast(torch.Tensor, self.scaler._get_scale_async()).clone()
            self.scaler.unscale_(optimizer)
        self.check.see_grads(params, loss.device)
        if self._observer is not None:
            self._observer.before_update(self.check.step)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self._observer is not None:
            self._observer.after_update(self.check.step)
        self._watched = params

    # -- reporting ------------------------------------------------------------------

    def step(
        self,
        logits: torch.Tensor | None = None,
        loss: torch.Tensor | None = None,
        model: nn.Module | None = None,
    ) -> None:
        """Report one training step, after the optimizer's step and before ``zero_grad``.

        Raises :class:`NonFinite` at the first non-finite value and :class:`StepsDone` once
        ``steps`` steps are reported.
        """
        if logits is None and loss is None:
            raise NansearchError("trial.step: pass logits= and loss= (tensors of this step)")
        if logits is not None:
            self.check.see_logits(logits)
        if loss is not None:
            self.check.see_loss(loss)
        if self._observer is not None and logits is not None:
            self._observer.after_forward(self.check.step, logits, _loss_or_zero(loss, logits))
        params = self._watched
        if params is None:
            owner = model or self._model
            if owner is None:
                raise NansearchError(
                    "trial.step: nansearch does not know the model; pass model=, "
                    "load it with trial.load, or call trial.update"
                )
            params = [p for p in owner.parameters() if p.requires_grad]
        device = logits.device if logits is not None else cast(torch.Tensor, loss).device
        try:
            self.check.finish(params, device)
        finally:
            self._watched = None
        if self._observer is not None:
            self._observer.before_forward(self.check.step)

    def watch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        """Observe every optimizer step by itself: call once, before the loop.

        The logits and loss come from the model's output (a ``loss`` in it, else the tensor
        ``backward()`` is called on); the step is judged after ``optimizer.step()``, or at
        ``scaler.update()`` when a GradScaler (yours, or ``trial.scaler``) runs the step.
        """
        scaler = scaler or self.scaler
        if scaler is not None and not scaler.is_enabled():
            scaler = None
        self._model = self._model or model
        self._attach(model, optimizer)
        params = _params_of(optimizer)
        device = params[0].device if params else self.device
        check = self.check

        def on_output(module, args, output):
            logits, loss = logits_and_loss(output)
            if logits is not None:
                check.see_logits(logits)
            if loss is not None:
                check.see_loss(loss)
            if self._observer is not None and logits is not None:
                self._observer.after_forward(check.step, logits, _loss_or_zero(loss, logits))

        def before_step(opt, args, kwargs):
            check.see_grads(params, device)
            if self._observer is not None:
                self._observer.before_update(check.step)

        def after_step(opt, args, kwargs):
            if self._observer is not None:
                self._observer.after_update(check.step)
            if scaler is None:
                self._finish(params, device)

        self._handles += [
            model.register_forward_hook(on_output),
            optimizer.register_step_pre_hook(before_step),
            optimizer.register_step_post_hook(after_step),
        ]
        if scaler is not None:
            real_update = scaler.update

            def update(new_scale=None):
                check.scale = scaler._get_scale_async().clone()
                if check.grad_norm is None:  # the scaler skipped the step: grads overflowed
                    check.see_grads(params, device)
                real_update(new_scale)
                self._finish(params, device)

            scaler.update = update  # type: ignore[method-assign]
            self._handles.append(_Restore(scaler, "update"))
        self._capture_backward(scaler)

    # -- inside -----------------------------------------------------------------------

    def _finish(self, params: list[torch.Tensor], device: torch.device) -> None:
        self.check.finish(params, device)
        if self._observer is not None:
            self._observer.before_forward(self.check.step)

    def _attach(self, model: nn.Module | None, optimizer: torch.optim.Optimizer) -> None:
        """Hand the model and optimizer to a rerun's diagnostics, once."""
        if self._observer is None or self._attached or model is None:
            return
        self._attached = True
        self._observer.attach(model, optimizer, self._batch)
        self._observer.before_forward(0)

    def _capture_backward(self, scaler: torch.amp.GradScaler | None) -> None:
        """A loss outside the model's output is the tensor ``backward()`` is called on."""
        check, real = self.check, torch.Tensor.backward

        def backward(tensor, *args, **kwargs):
            if tensor.dim() == 0 and tensor.is_floating_point() and check.loss is None:
                scale = scaler._get_scale_async() if scaler and scaler.is_enabled() else None
                check.see_loss(tensor, scale)
            return real(tensor, *args, **kwargs)

        torch.Tensor.backward = backward  # type: ignore[method-assign,assignment]
        self._handles.append(_Restore(torch.Tensor, "backward", real))

    def close(self) -> None:
        """Remove every hook and restore what :meth:`watch` wrapped."""
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()

    def missing(self) -> list[str]:
        """What the trial never saw, for the message when the user's code reported nothing."""
        names = {"logits": "logits", "loss": "a loss", "update": "an optimizer step"}
        return [names[key] for key, seen in self.check.seen.items() if not seen]


class _Restore:
    """A handle that puts back an attribute a watch replaced."""

    def __init__(self, owner: Any, name: str, original: Any = None):
        self.owner, self.name = owner, name
        self.original = original

    def remove(self) -> None:
        if self.original is None:
            if self.name in vars(self.owner):
                delattr(self.owner, self.name)  # an instance's wrapper: the class's comes back
        else:
            setattr(self.owner, self.name, self.original)


def _params_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _loss_or_zero(loss: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    return loss if loss is not None else logits.new_zeros(())


def run_function(fn: Callable[[Trial], Any], trial: Trial, spec: str) -> None:
    """Call the user's function; its ending becomes the trial's outcome, as built-in trials'."""
    try:
        fn(trial)
    except TrialEnded:
        pass  # the trial's outcome is on the trial, whoever caught what
    finally:
        trial.close()  # hooks removed however the function ended
    ended = trial.check.ended
    if isinstance(ended, NonFinite) or trial.check.step:
        return
    raise NansearchError(
        f"target.fn={spec!r} reported no step: nansearch never saw "
        f"{', '.join(trial.missing())}; call trial.step(logits=..., loss=...) after each "
        "optimizer step, or trial.watch(model, optimizer) once before the loop"
    )
