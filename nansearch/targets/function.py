"""The user's own training function as the trial, Optuna-style.

``target.fn`` names ``package.module:function`` or ``path/to/file.py:function``. Each trial
calls it once with a :class:`nansearch.Trial`, which carries the suggested values and
the helpers that apply them; the function runs its own loop and reports each step
(``trial.step``) or lets nansearch watch its optimizer (``trial.watch``).

Checkpoints are still read by nansearch with ``target.model_class`` (into the cache the
audit and ``trial.load`` share), and ``trial.batch()`` starts from the same clean batch
as the causal-LM target, so the factors mean the same for every kind of target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nansearch.config.schema import TargetConfig
from nansearch.targets.causal_lm import CausalLMTarget
from nansearch.targets.custom import function_spec, import_callable

if TYPE_CHECKING:
    from nansearch.trial.runner import StepObserver, TrialResult, TrialRunner


class FunctionTarget(CausalLMTarget):
    name = "function"
    owns_loop = True

    def __init__(self, cfg: TargetConfig):
        super().__init__(cfg)
        self.spec = function_spec(cfg)
        self.fn = import_callable(self.spec, "target.fn")

    def run_trial(
        self,
        runner: TrialRunner,
        params: dict[str, Any],
        seed: int,
        steps: int,
        result: TrialResult,
        observer: StepObserver | None = None,
    ) -> None:
        """Run the user's function as one trial, writing into ``result``."""
        from nansearch.trial.api import Trial, run_function

        trial = Trial(
            params=params,
            seed=seed,
            steps=steps,
            factors=runner.factors,
            target=self,
            cache=runner.cache,
            device=runner.device,
            result=result,
            optimizer=runner.cfg.optimizer,
            options=self.cfg.options,
            observer=observer,
        )
        run_function(self.fn, trial, self.spec)
