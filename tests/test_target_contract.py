"""One contract every kind of target keeps, the way Optuna runs one suite over its storages.

Each kind runs a finite configuration and one with a real NaN mechanism. Whatever runs the
loop (nansearch, the user's function or the user's script), a trial gives the same kind of
result: an outcome, the first bad step, a trail that ends there, a score on the same scale,
the same trail again for the same seed, and an ``error`` (never an exception) when a
checkpoint cannot be read.
"""

import math

import pytest

from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.targets import build_target
from nansearch.trial.runner import NONFINITE, OUTCOMES, TrialResult, TrialRunner
from tests.conftest import REPO

DEMO_LEVELS = {"checkpoint": "opt-lm", "init": "pretrained", "batch": "clean", "lr": 1e-3}

# kind -> (overrides, finite params, NaN params)
KINDS = {
    "causal-lm": (
        ["target.model_class=OPTForCausalLM"],
        {**DEMO_LEVELS, "dtype": "fp32"},
        {**DEMO_LEVELS, "dtype": "fp16"},
    ),
    "blip2": (
        [
            "target.kind=blip2",
            "target.batch_size=2",
            "target.seq_len=8",
            "factors.checkpoint.levels.opt-lm=demo:blip2-full",
            "factors.batch.levels=[clean,nan-input]",
        ],
        {**DEMO_LEVELS, "dtype": "fp32"},
        {**DEMO_LEVELS, "dtype": "fp32", "batch": "nan-input"},
    ),
    "custom": (
        [
            "target.kind=custom",
            f"target.fn={REPO}/sweeps/custom_target.py:build",
            "factors.checkpoint.levels.opt-lm=fresh",
            "factors.batch.levels=[clean,padded-row]",
        ],
        {**DEMO_LEVELS, "dtype": "fp32"},
        {**DEMO_LEVELS, "dtype": "fp32", "batch": "padded-row"},
    ),
    "function": (
        [
            "target.kind=function",
            "target.model_class=OPTForCausalLM",
            f"target.fn={REPO}/examples/own_loop.py:train_watched",
        ],
        {**DEMO_LEVELS, "dtype": "fp32"},
        {**DEMO_LEVELS, "dtype": "fp16"},
    ),
    "command": (
        [
            "target.kind=command",
            "target.model_class=OPTForCausalLM",
            f"target.program={REPO}/examples/train.py",
            f"target.config={REPO}/examples/train.yaml",
            "target.args=--hparams ${config} --seed ${seed}",
            "target.keys={checkpoint: name, param_dtype: dtype, autocast_dtype: amp, lr: lr}",
        ],
        {**DEMO_LEVELS, "dtype": "fp32"},
        {**DEMO_LEVELS, "dtype": "fp16"},
    ),
}


def make_runner(kind: str, extra: list[str] = ()) -> TrialRunner:
    overrides, _, _ = KINDS[kind]
    base = [
        "steps=3",
        "factors.checkpoint.levels.opt-lm=demo:opt-lm",
        "factors.dtype.levels=[fp32,fp16]",
    ]
    cfg = load_config(None, [*base, *overrides, *extra])
    return TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))


@pytest.fixture(scope="module", params=sorted(KINDS))
def kind(request, demo_cache):
    return request.param, make_runner(request.param)


def test_a_finite_trial_runs_every_step_and_scores_below_one(kind):
    name, runner = kind
    result = runner.run(KINDS[name][1], seed=0)
    assert result.outcome == "finite", result.error
    assert result.first_bad_step is None and result.error is None
    assert len(result.loss) == len(result.logit_absmax) == len(result.grad_norm) == 3
    assert all(math.isfinite(v) for v in result.loss + result.logit_absmax + result.grad_norm)
    assert 0 <= result.score < 1 and result.seconds > 0


def test_a_nan_trial_ends_at_its_first_bad_step_and_scores_at_least_one(kind):
    name, runner = kind
    result = runner.run(KINDS[name][2], seed=0)
    assert result.outcome in NONFINITE, result.error
    assert result.first_bad_step is not None and len(result.loss) == result.first_bad_step + 1
    assert result.score == 1 + (3 - result.first_bad_step) / 3


def test_the_same_seed_gives_the_same_trail_and_the_result_survives_json(kind):
    name, runner = kind
    first, again = (runner.run(KINDS[name][2], seed=5) for _ in range(2))
    assert first.to_json() | {"seconds": 0} == again.to_json() | {"seconds": 0}
    back = TrialResult.from_json(first.to_json())
    assert (back.outcome, back.first_bad_step, back.score) == (
        first.outcome,
        first.first_bad_step,
        first.score,
    )
    assert back.outcome in OUTCOMES


def test_an_unreadable_checkpoint_is_an_error_outcome_not_an_exception(kind, tmp_path):
    name, _ = kind
    missing = tmp_path / "no-such-checkpoint"
    level = f"factors.checkpoint.levels.opt-lm={missing}"
    if name == "custom":  # a custom target reads its own files: a missing one is its choice
        pytest.skip("a custom target's function decides what a checkpoint name means")
    runner = make_runner(name, [level])
    result = runner.run(KINDS[name][1], seed=0)
    assert result.outcome == "error" and result.score is None
    assert str(missing) in result.error
