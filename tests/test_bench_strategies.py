"""The strategies benchmark's measures, on studies whose answers are known."""

from benchmarks.strategies import above, equals, right_from
from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.trial.runner import TrialResult
from tests.conftest import DEMO

FACTORS = build_factors(load_config(DEMO))
BASE = {"checkpoint": "opt-lm", "init": "pretrained", "batch": "clean", "lr": 1e-3}


def runs(dtypes):
    return [
        TrialResult(
            {**BASE, "dtype": d}, 0, 0, "nonfinite-params" if d == "fp16" else "finite", number=i
        )
        for i, d in enumerate(dtypes)
    ]


def test_right_from_is_the_count_from_which_the_answer_stays_first():
    results = runs(["fp32", "fp16", "bf16"] * 8)
    first = right_from(results, FACTORS, equals(dtype="fp16"))
    assert first is not None and 6 <= first <= 24
    assert right_from(results[: first - 1], FACTORS, equals(dtype="fp16")) is None
    assert right_from(results, FACTORS, equals(dtype="bf16")) is None


def test_truths_match_only_their_cause():
    from nansearch.analysis.causes import Cause, Condition

    def cause(*conditions):
        return Cause(tuple(conditions), nan=5, total=5, p_value=0.001, p_adjusted=0.01, tried=10)

    pair = equals(checkpoint="blip2-full", init="uninitialized-missing")
    assert pair(
        cause(
            Condition("checkpoint", "=", "blip2-full"),
            Condition("init", "=", "uninitialized-missing"),
        )
    )
    assert not pair(cause(Condition("checkpoint", "=", "blip2-full")))
    high = above("lr", 0.3, 100.0)
    assert high(cause(Condition("lr", ">=", 2.0)))
    assert not high(cause(Condition("lr", "<=", 2.0)))
    assert not high(cause(Condition("lr", ">=", 0.01)))
