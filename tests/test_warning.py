"""Early warning: a finite run whose trend would pass its dtype's range is at risk."""

from __future__ import annotations

import json
import math

from nansearch.analysis.warning import (
    MIN_POINTS,
    at_risk,
    at_risk_score,
    fit,
    forecast,
    format_at_risk,
    overflow_norm,
)
from nansearch.config import load_config
from nansearch.report.page import load_study, render
from nansearch.search.sweep import add_at_risk, prepare
from nansearch.trial.runner import TrialResult
from tests.conftest import CUSTOM, REPO

LATE = f"{REPO}/benchmarks/late_target.py:build"


def late_runner(*overrides: str):
    cfg = load_config(
        CUSTOM,
        [
            f"target.fn={LATE}",
            "tracking.wandb=off",
            "factors.dtype.levels=[fp32,amp-fp16]",
            "factors.lr.low=1e-8",
            *overrides,
        ],
    )
    return cfg, prepare(cfg)[1]


BASE = {"checkpoint": "fresh", "batch": "clean", "init": "pretrained"}


def test_a_flat_trail_gives_no_warning():
    """A real fp32 run at a small learning rate: its magnitudes settle, nothing grows."""
    _, runner = late_runner()
    result = runner.run({**BASE, "dtype": "fp32", "lr": 1e-3}, seed=1, steps=20)
    assert result.outcome == "finite"
    predicted = forecast(result, horizon=200)
    assert predicted is not None and not predicted.at_risk
    assert at_risk([result], horizon=200) == []
    assert at_risk_score(result, result.score, 200, 1.0) == result.score < 0.9
    # noise around a level is no trend either, whichever way it wobbles
    wobble = [20 + 3 * math.sin(1.7 * i) for i in range(20)]
    assert fit(wobble) is None


def test_a_short_or_failed_run_has_no_forecast():
    nan = TrialResult({}, 0, 20, outcome="nonfinite-logits", first_bad_step=3, loss=[1.0] * 4)
    short = TrialResult({}, 0, 3, loss=[1.0] * 3, logit_absmax=[1.0, 2.0, 4.0])
    assert forecast(nan, 200) is None
    assert forecast(short, 200) is None
    assert MIN_POINTS > 3


def test_growth_predicts_the_step_it_would_pass_the_range():
    """Doubling every step from 1 passes 65504 at step 16; a straight line of 1000 a step
    from 1000 at step 0 passes it at step 65."""
    doubling = [2.0**i for i in range(12)]
    trend = fit(doubling[6:], start=6)
    assert trend.kind == "exponential"
    assert math.ceil(trend.crossing(65504)) == 16
    line = [1000.0 * (i + 1) for i in range(12)]
    trend = fit(line[6:], start=6)
    assert trend.kind == "linear"
    assert math.ceil(trend.crossing(65504)) == 65
    result = TrialResult(
        {"lr": 0.1}, 0, 12, loss=[1.0] * 12, logit_absmax=line, grad_norm=[1.0] * 12, number=7
    )
    result.compute_dtype = "float16"
    predicted = forecast(result, horizon=100)
    assert predicted.at_risk and predicted.predicted_step == 65
    assert predicted.signal == "logit_absmax" and predicted.trend == "linear"
    assert not forecast(result, horizon=60).at_risk
    result.compute_dtype = "bfloat16"  # the same growth is nowhere near bf16's range
    assert not forecast(result, horizon=100).at_risk


def test_a_real_growing_run_is_flagged_and_then_fails():
    """Unnormalized regression targets under amp-fp16: the GradScaler halves its scale
    step after step; the short run is finite, flagged, and the long run does fail."""
    _, runner = late_runner("target.options.target_scale=1e5")
    params = {**BASE, "dtype": "amp-fp16", "lr": 0.003}
    short = runner.run(params, seed=1, steps=12)
    assert short.outcome == "finite"
    predicted = forecast(short, horizon=120)
    assert predicted.at_risk, predicted.text
    assert predicted.signal == "loss_scale"
    # the search scores it where focus is drawn to it, yet below every NaN run
    assert 0.9 <= at_risk_score(short, short.score, 120, 1.0) < 1
    long = runner.run(params, seed=1, steps=120)
    assert long.is_nan
    assert long.first_bad_step <= 120


def test_ranking_terminal_and_report_show_the_runs_at_risk(tmp_path):
    line = [1000.0 * (i + 1) for i in range(12)]
    risky = TrialResult({"lr": 0.1}, 0, 12, loss=[1.0] * 12, logit_absmax=line, number=3)
    risky.grad_norm, risky.compute_dtype, risky.phase = [1.0] * 12, "float16", "cover"
    calm = TrialResult({"lr": 0.001}, 0, 12, loss=[1.0] * 12, logit_absmax=[5.0] * 12, number=4)
    calm.grad_norm, calm.phase = [1.0] * 12, "cover"
    cfg = load_config(CUSTOM, ["steps=12"])
    ranking = {
        "study": "s",
        "conclusions": [{"kind": "no-nan", "text": "No run went NaN."}],
        "factors": [],
    }
    add_at_risk(ranking, cfg, [risky, calm])
    assert ranking["horizon"] == 120
    assert [item["trial"] for item in ranking["at_risk"]] == [3]
    assert ranking["at_risk"][0]["predicted_step"] == 65
    assert "Near-miss: trial 3 is at risk" in ranking["conclusions"][0]["text"]
    printed = format_at_risk(ranking["at_risk"])
    assert "at risk: 1 finite run" in printed and "step ~65" in printed
    study = tmp_path / "s"
    study.mkdir()
    (study / "ranking.json").write_text(json.dumps(ranking))
    page = render(load_study(study))
    assert 'id="at-risk"' in page and ">65<" in page


def test_a_run_at_risk_says_so_in_wandb(tmp_path):
    from nansearch.tracking.tracker import WandbTracker, end_session
    from tests.test_tracking import offline_runs

    end_session()
    cfg = load_config(CUSTOM, ["steps=12", "study=w"])
    line = [1000.0 * (i + 1) for i in range(12)]
    risky = TrialResult({"lr": 0.1}, 0, 12, loss=[1.0] * 12, logit_absmax=line, number=3)
    risky.grad_norm, risky.compute_dtype = [1.0] * 12, "float16"
    calm = TrialResult({"lr": 0.001}, 0, 12, loss=[1.0] * 12, logit_absmax=[5.0] * 12, number=4)
    calm.grad_norm = [1.0] * 12
    tracker = WandbTracker("offline", tmp_path / "w")
    tracker.start(cfg)
    tracker.log_trial(risky)
    tracker.log_trial(calm)
    tracker.close()
    runs = {run["summary"]["trial"]: run for run in offline_runs(tmp_path / "w")}
    assert runs[3]["summary"]["at_risk"] == 1
    assert runs[3]["summary"]["predicted_step"] == 65
    assert "at-risk" in runs[3]["tags"]
    assert runs[4]["summary"]["at_risk"] == 0
    assert "at-risk" not in runs[4]["tags"]


def test_growth_that_slows_as_a_power_of_the_step_is_not_extrapolated_as_exponential():
    """Adam moves each of three layers' weights by a constant step from a small start,
    w(t) proportional to t + 1, so their product, the output, grows as (t + 1) ** 3: fast
    on a log scale at first, slower every step. Fitted as a power it passes 65504 where
    the formula does (step 50); a constant factor per step, the window's mean rate, would
    put it at step 33 and call it at risk within a horizon of 40."""
    trail = [0.5 * (t + 1) ** 3 for t in range(20)]
    trend = fit(trail[10:], start=10)
    assert trend.kind == "power" and abs(trend.b - 3) < 1e-6
    exact = (65504 / 0.5) ** (1 / 3) - 1  # 49.8
    assert math.ceil(trend.crossing(65504)) == math.ceil(exact) == 50
    result = TrialResult({"lr": 0.1}, 0, 20, loss=[1.0] * 20, logit_absmax=trail, number=2)
    result.grad_norm, result.compute_dtype = [1.0] * 20, "float16"
    predicted = forecast(result, horizon=40)
    assert predicted.predicted_step == 50 and predicted.trend == "power"
    assert not predicted.at_risk
    assert "grows polynomially, as step^3" in predicted.text
    rate = 3 * math.log(20 / 11) / 9  # ln(value) from step 10 to 19, per step
    assert 19 + math.log(65504 / trail[-1]) / rate < 34


def test_under_a_grad_scaler_the_gradient_is_judged_against_the_overflow_it_showed():
    """Regression to unnormalized targets under amp-fp16: the GradScaler's first steps
    overflow and halve the scale until the scaled gradient fits. The skipped steps leave
    the weights as they were, so scale times the next finite norm is where the scaled
    gradient overflows. The long run fails at the lowest scale with a gradient norm
    within a factor of 2 of it, and far past 65504: that is not the gradient's limit."""
    _, runner = late_runner("target.options.target_scale=1e4")
    params = {**BASE, "dtype": "amp-fp16", "lr": 0.003}
    short = runner.run(params, seed=1, steps=20)
    assert short.outcome == "finite" and short.skipped_steps >= 2
    overflow = overflow_norm(short)
    assert overflow is not None and overflow > 4 * 65504
    long = runner.run(params, seed=1, steps=80)
    assert long.outcome == "nonfinite-grad" and long.loss_scale[-1] == 1.0
    last = [g for g in long.grad_norm if math.isfinite(g)][-1]  # just before the failure
    assert last > 4 * 65504
    assert overflow / 2 < last < overflow * 2
    # the same on a written trail: overflows at scales 4 and 2, a finite norm after each
    made = TrialResult({}, 0, 8, loss=[1.0] * 8, logit_absmax=[1.0] * 8)
    made.loss_scale = [4.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 1.0]
    made.grad_norm = [math.inf, 500.0, 600.0, 700.0, math.inf, 800.0, 850.0, 900.0]
    assert overflow_norm(made) == min(4 * 500.0, 2 * 800.0)
