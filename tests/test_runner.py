"""The trial runner on the demo's real checkpoints: real mechanisms, real outcomes."""

import math

import pytest
import torch

from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.targets import CheckpointCache, build_target
from nansearch.trial.runner import TrialResult, TrialRunner, instability_score
from tests.conftest import DEMO

BASE = {"checkpoint": "opt-lm", "dtype": "fp32", "lr": 1e-3, "init": "pretrained", "batch": "clean"}


@pytest.fixture(scope="module")
def runner():
    cfg = load_config(DEMO, ["steps=8"])
    return TrialRunner(cfg, build_factors(cfg), build_target(cfg.target))


def test_pure_fp16_adam_goes_nonfinite_within_the_first_steps(runner):
    result = runner.run({**BASE, "dtype": "fp16"}, seed=0)
    assert result.is_nan
    assert result.first_bad_step <= 2
    # Adam's eps=1e-8 is 0 in fp16: the first update divides 0 by 0
    assert (result.outcome, result.first_bad_step) == ("nonfinite-params", 0)


def test_fp32_at_a_sane_lr_stays_finite(runner):
    result = runner.run({**BASE}, seed=0)
    assert result.outcome == "finite"
    assert len(result.loss) == 8 and all(math.isfinite(v) for v in result.loss)
    assert result.loss[-1] < result.loss[0]
    assert 0 <= result.score < 1


def test_missing_weights_left_uninitialized_give_nan_logits_at_step_0(runner):
    result = runner.run(
        {**BASE, "checkpoint": "blip2-full", "init": "uninitialized-missing"}, seed=0
    )
    assert (result.outcome, result.first_bad_step) == ("nonfinite-logits", 0)
    assert result.score == 2.0


def test_high_lr_overflows_fp16_autocast_but_not_fp32(runner):
    hot = {**BASE, "lr": 1.0}
    assert runner.run({**hot, "dtype": "amp-fp16"}, seed=0).outcome == "nonfinite-logits"
    assert runner.run(hot, seed=0).outcome == "finite"


def test_same_seed_same_trial_on_cpu(runner):
    a = runner.run({**BASE, "lr": 0.05}, seed=3)
    b = runner.run({**BASE, "lr": 0.05}, seed=3)
    assert a.loss == b.loss and a.grad_norm == b.grad_norm and a.score == b.score


def test_checkpoint_is_read_once_and_copied(runner, monkeypatch):
    target = runner.cache.target
    reads: list[str] = []
    load = target.load

    def counted(checkpoint: str):
        reads.append(checkpoint)
        return load(checkpoint)

    monkeypatch.setattr(target, "load", counted)
    monkeypatch.setattr(runner, "cache", CheckpointCache(target))
    path = runner.factors[0].paths["opt-lm"]
    runner.run(BASE, seed=0)
    runner.run({**BASE, "lr": 0.05}, seed=1)
    first, second = runner.cache.get(path), runner.cache.get(path)
    assert reads == [path]  # two trials and two copies, one read from disk
    assert first.model is not second.model
    assert first.model is not runner.cache.peek(path).model


def test_score_orders_failures_before_finite_runs(runner):
    early = runner.run({**BASE, "dtype": "fp16"}, seed=0)
    finite = runner.run(BASE, seed=0)
    assert instability_score(early) >= 1 > instability_score(finite)


def test_a_huge_but_finite_gradient_and_weight_are_finite_steps():
    """The step's norms are taken in float32, where 1e20 squared overflows to inf; such a
    norm is taken again in float64 before the step is called non-finite."""
    from nansearch.trial.checks import StepCheck

    weight = torch.nn.Parameter(torch.ones(1000))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    result = TrialResult({}, seed=0, steps=2)
    check = StepCheck(result, steps=2)
    loss = (weight * 1e20).sum()  # every gradient 1e20, finite in float32
    loss.backward()
    check.see_loss(loss / 1e20)
    optimizer.step()  # every weight 1 - 1e20: finite too
    check.finish([weight], torch.device("cpu"))
    assert result.outcome == "finite" and result.first_bad_step is None
    assert result.grad_norm == [pytest.approx(1e20 * math.sqrt(1000), rel=1e-6)]
