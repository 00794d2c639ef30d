"""Watch an unmodified training script from inside its process.

    python -m nansearch.inject script.py [its arguments ...]

runs ``script.py`` as ``__main__`` (with ``runpy``, its own ``sys.argv``) after installing
torch's global hooks: every module's forward (the outermost call gives the logits and,
when its output has one, the loss), every optimizer's step, every GradScaler's update,
and ``Tensor.backward`` (the loss, when the model's output has none). Each optimizer
step is judged as a built-in trial's: its figures reduced on the device and read back
once. Once the outermost modules are known, at the first step, the global forward hooks
give way to hooks on those modules alone.

The settings come from the ``NANSEARCH_INJECT`` environment variable (JSON: ``report``,
the file each step is appended to as a JSON line; ``steps``; ``min_loss_scale``;
``diagnose``, which attaches a rerun's diagnostics to the outermost module). At the first
non-finite value, or after ``steps`` steps, the report gets its last line and the process
ends at once with status 0, whatever the script would have done next.
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from nansearch.config.schema import SweepConfig
    from nansearch.diagnose.diagnostics import Diagnostics

ENV = "NANSEARCH_INJECT"


class Injected:
    """The hooks and the step check inside the script's process."""

    def __init__(self, settings: dict[str, Any]):
        import torch

        from nansearch.trial.checks import StepCheck, logits_and_loss
        from nansearch.trial.runner import TrialResult, _json_safe

        self.torch = torch
        # looked up once here: the hooks run on every step
        self._logits_and_loss, self._json_safe = logits_and_loss, _json_safe
        self.report = Path(settings["report"])
        self.result = TrialResult(params={}, seed=0, steps=int(settings["steps"]))
        self.check = StepCheck(
            self.result,
            int(settings["steps"]),
            float(settings.get("min_loss_scale", 1.0)),
            on_step=self._write_step,
        )
        self.diagnose: dict[str, Any] | None = settings.get("diagnose")
        # a W&B run this process holds before the script starts is not the script's: a
        # forked copy inherits the sweep's caller's run, which it must leave alone
        self.inherited_run = getattr(sys.modules.get("wandb"), "run", None)
        self.diagnostics: Diagnostics | None = None
        self.depth = 0
        self.tops: dict[int, Any] = {}  # outermost modules seen, by id
        self.params: list[Any] | None = None
        self.in_scaler_step = False
        self.handles: list[Any] = []
        self._file = self.report.open("a", buffering=1)

    # -- installing ---------------------------------------------------------------------

    def install(self) -> None:
        from torch.nn.modules import module as module_hooks
        from torch.optim import optimizer as optimizer_hooks

        torch = self.torch
        self.handles += [
            module_hooks.register_module_forward_pre_hook(self._pre_forward),
            module_hooks.register_module_forward_hook(self._post_forward),
        ]
        optimizer_hooks.register_optimizer_step_pre_hook(self._before_step)
        optimizer_hooks.register_optimizer_step_post_hook(self._after_step)
        scaler_cls = torch.amp.GradScaler
        real_step, real_update = scaler_cls.step, scaler_cls.update
        injected = self

        def step(scaler, optimizer, *args, **kwargs):
            injected.in_scaler_step = scaler.is_enabled()
            # a scaler that skips the optimizer's step from the first (gradients that
            # overflow at once) never calls its hooks: its update judges the step instead
            injected._watch(optimizer)
            try:
                return real_step(scaler, optimizer, *args, **kwargs)
            finally:
                injected.in_scaler_step = False

        def update(scaler, new_scale=None):
            if not scaler.is_enabled():
                return real_update(scaler, new_scale)
            injected.check.scale = scaler._get_scale_async().clone()
            if injected.check.grad_norm is None and injected.params is not None:
                injected._grads()  # skipped for an overflow: the gradients tell why
            real_update(scaler, new_scale)
            injected._finish()

        scaler_cls.step, scaler_cls.update = step, update
        real_backward = torch.Tensor.backward

        def backward(tensor, *args, **kwargs):
            if tensor.dim() == 0 and tensor.is_floating_point() and injected.check.loss is None:
                injected.check.see_loss(tensor, injected._scale())
            return real_backward(tensor, *args, **kwargs)

        torch.Tensor.backward = backward
        self._scalers: list[Any] = []
        real_init = scaler_cls.__init__

        def init(scaler, *args, **kwargs):
            real_init(scaler, *args, **kwargs)
            injected._scalers.append(scaler)

        scaler_cls.__init__ = init

    def apply_levels(self, settings: dict[str, Any], sweep: SweepConfig | None = None) -> None:
        """The trial's init and batch levels, applied to every model the script loads with
        ``from_pretrained`` and to the batches it feeds that model, as the built-in trials
        apply them; the script's own code stays as it is. ``sweep``: the sweep's settings
        as a forked copy of its process holds them, read instead of ``settings["sweep"]``."""
        params = settings.get("params")
        if not params or (sweep is None and not settings.get("sweep")):
            return
        if sweep is None:
            from nansearch.config.merge import settings_from_yaml

            sweep = settings_from_yaml(settings["sweep"], ENV)  # the sweep checked its values
        cfg = sweep
        scheme = cfg.factors.init.levels.get(params.get("init"))
        reinit = scheme is not None and scheme.scheme != "pretrained"
        rebatch = params.get("batch", "clean") != "clean"
        if not (reinit or rebatch or cfg.factors.extra):
            return
        if cfg.plugins:
            from nansearch.plugins import import_plugins

            import_plugins(cfg.plugins)
        from transformers import PreTrainedModel

        from nansearch.factors import TrialSetup, build_factors
        from nansearch.targets._base import Loaded
        from nansearch.targets.causal_lm import CausalLMTarget

        torch = self.torch
        target = CausalLMTarget(dataclasses.replace(cfg.target, kind="causal-lm"))
        factors = [f for f in build_factors(cfg) if f.name in params]
        init = [f for f in factors if f.stage == "init"]
        batch = [f for f in factors if f.stage == "batch"]
        generator = torch.Generator().manual_seed(int(settings.get("seed", 0)))
        real = PreTrainedModel.from_pretrained.__func__  # type: ignore[attr-defined]

        def reshape(module, args, kwargs):
            tensors = {k: v for k, v in kwargs.items() if torch.is_tensor(v)}
            if "input_ids" not in tensors:
                return None
            device = tensors["input_ids"].device
            setup = TrialSetup(target=target, cache=None, generator=generator)
            setup.loaded = Loaded(model=module, checkpoint="")
            setup.batch = {k: v.detach().cpu().clone() for k, v in tensors.items()}
            for factor in batch:
                factor.apply(setup, params[factor.name])
            return args, {**kwargs, **{k: v.to(device) for k, v in setup.batch.items()}}

        def from_pretrained(cls, *args, **kwargs):
            wants_info = kwargs.get("output_loading_info", False)
            kwargs["output_loading_info"] = True
            model, info = real(cls, *args, **kwargs)
            setup = TrialSetup(target=target, cache=None, generator=generator)
            setup.loaded = Loaded.from_info(model, str(args[0]) if args else "", info)
            for factor in init:
                factor.apply(setup, params[factor.name])
            if batch:
                model.register_forward_pre_hook(reshape, with_kwargs=True)
            return (model, info) if wants_info else model

        PreTrainedModel.from_pretrained = classmethod(from_pretrained)  # type: ignore[method-assign,assignment]

    def _scale(self):
        enabled = [s for s in self._scalers if s.is_enabled()]
        return enabled[-1]._get_scale_async() if enabled else None

    # -- the hooks ------------------------------------------------------------------------

    def _pre_forward(self, module, args) -> None:
        if self.depth == 0 and id(module) not in self.tops:
            self.tops[id(module)] = module
            if self.diagnose and self.diagnostics is None:
                self._attach_diagnostics(module)
        self.depth += 1

    def _post_forward(self, module, args, output) -> None:
        self.depth -= 1
        if self.depth == 0:
            self._see_output(output)

    def _see_output(self, output) -> None:
        logits, loss = self._logits_and_loss(output)
        if logits is not None:
            self.check.see_logits(logits)
            if self.diagnostics is not None:
                zero = logits.new_zeros(())
                self.diagnostics.after_forward(
                    self.check.step, logits, loss if loss is not None else zero
                )
        if loss is not None:
            self.check.see_loss(loss)

    def _watch(self, optimizer) -> None:
        """The parameters the steps are judged on: the first optimizer's, once."""
        if self.params is None:
            self.params = [p for group in optimizer.param_groups for p in group["params"]]
            if self.diagnostics is not None:
                self.diagnostics.optimizer = optimizer
                self.diagnostics._params = list(self.params)

    def _before_step(self, optimizer, args, kwargs) -> None:
        self._watch(optimizer)
        self._grads()
        if self.diagnostics is not None:
            self.diagnostics.before_update(self.check.step)

    def _after_step(self, optimizer, args, kwargs) -> None:
        if self.diagnostics is not None:
            self.diagnostics.after_update(self.check.step)
        if not self.in_scaler_step:
            self._finish()

    def _grads(self) -> None:
        device = self.params[0].device if self.params else self.torch.device("cpu")
        self.check.see_grads(cast("list[Any]", self.params), device)

    def _finish(self) -> None:
        if self.params is None:
            return
        device = self.params[0].device if self.params else self.torch.device("cpu")
        from nansearch.trial.checks import TrialEnded

        try:
            self.check.finish(self.params, device)
        except TrialEnded as ended:
            self.end(ended)
        if self.check.step == 1:
            self._narrow()
        if self.diagnostics is not None:
            self.diagnostics.before_forward(self.check.step)

    def _narrow(self) -> None:
        """After the first step: hooks on the outermost modules only, none on the rest."""
        for handle in self.handles:
            handle.remove()
        self.handles = [
            module.register_forward_hook(self._top_output) for module in self.tops.values()
        ]

    def _top_output(self, module, args, output) -> None:
        self._see_output(output)

    def _attach_diagnostics(self, module) -> None:
        from nansearch.diagnose.diagnostics import Diagnostics

        diagnose = cast("dict[str, Any]", self.diagnose)  # attached only when it is set
        self.diagnostics = diagnostics = Diagnostics(
            op_step=diagnose.get("op_step"),
            anomaly_step=diagnose.get("anomaly_step"),
            trail=diagnose.get("trail") or 16,
        )
        diagnostics.attach(module, None, None)
        diagnostics.before_forward(0)

    def read_batches(self) -> None:
        """In a rerun: each step's batch as a loaded model receives it (its labels, masks and
        float inputs), hooked where the script calls ``from_pretrained``."""
        try:
            from transformers import PreTrainedModel
        except ImportError:
            return
        torch, injected = self.torch, self
        loader = PreTrainedModel.from_pretrained.__func__  # type: ignore[attr-defined]

        def read_batch(module, args, kwargs):
            batch = {k: v for k, v in kwargs.items() if torch.is_tensor(v)}
            diagnostics = injected.diagnostics
            if batch and diagnostics is not None:
                diagnostics.inputs.clear()
                diagnostics._read_batch(batch)

        def from_pretrained(cls, *args, **kwargs):
            loaded = loader(cls, *args, **kwargs)
            model = loaded[0] if isinstance(loaded, tuple) else loaded
            model.register_forward_pre_hook(read_batch, with_kwargs=True)
            return loaded

        PreTrainedModel.from_pretrained = classmethod(from_pretrained)  # type: ignore[method-assign,assignment]

    # -- reporting --------------------------------------------------------------------------

    def _write_step(self, result, step: int) -> None:
        row = {
            "step": step,
            "loss": result.loss[-1],
            "logit_absmax": result.logit_absmax[-1],
            "grad_norm": result.grad_norm[-1],
            "skipped": result.skipped_steps,
        }
        self._file.write(json.dumps(self._json_safe(row)) + "\n")

    def end(self, ended: BaseException | None) -> None:
        """Write the last line and end the process now."""
        from nansearch.trial.checks import NonFinite

        last: dict[str, Any] = {"end": "steps" if ended is not None else "exit"}
        if isinstance(ended, NonFinite):
            last.update(end="nonfinite", outcome=ended.outcome, step=ended.step)
        last["seen"] = {k: v for k, v in self.check.seen.items()}
        last["compute_dtype"] = self._compute_dtype()
        if self.diagnostics is not None:
            self.diagnostics.close()
            last["diagnostics"] = self.diagnostics.to_json()
        self._file.write(json.dumps(last, default=str) + "\n")
        self._file.close()
        self._finish_wandb(last, self.inherited_run)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    @staticmethod
    def _finish_wandb(last: dict[str, Any], inherited: Any) -> None:
        """Finish the run the script started with ``wandb.init``, if any: the process ends
        with ``os._exit``, which skips the exit hook W&B finishes its run in, and the steps
        logged last would be lost. The run's summary says how nansearch ended it."""
        run = getattr(sys.modules.get("wandb"), "run", None)
        if run is None or run is inherited:
            return
        try:
            run.summary["nansearch/end"] = last.get("outcome", last["end"])
            if "step" in last:
                run.summary["nansearch/first_bad_step"] = last["step"]
            run.finish(exit_code=1 if last["end"] == "nonfinite" else 0)
        except Exception as exc:  # the trial's report is written: W&B must not change it
            print(
                f"nansearch.inject: could not finish the script's W&B run: {exc}", file=sys.stderr
            )

    def _compute_dtype(self) -> str | None:
        for module in self.tops.values():
            for param in module.parameters():
                return str(param.dtype).removeprefix("torch.")
        return None


def main(argv: list[str] | None = None, sweep: SweepConfig | None = None) -> None:
    """Run the script watched. ``sweep``: the sweep's settings, handed over in memory by a
    forked copy of the sweep's process (:mod:`nansearch.targets.command`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m nansearch.inject script.py [arguments ...]", file=sys.stderr)
        raise SystemExit(2)
    settings = json.loads(os.environ.get(ENV) or "{}")
    if "report" not in settings:
        settings["report"] = os.devnull
    settings.setdefault("steps", 1 << 62)
    script = argv[0]
    if not Path(script).is_file():
        print(f"nansearch.inject: no such script {script}", file=sys.stderr)
        raise SystemExit(2)
    injected = Injected(settings)
    injected.apply_levels(settings, sweep)
    if injected.diagnose:
        injected.read_batches()
    injected.install()
    sys.argv = argv
    sys.path.insert(0, str(Path(script).resolve().parent))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    injected.end(None)


if __name__ == "__main__":
    main()
