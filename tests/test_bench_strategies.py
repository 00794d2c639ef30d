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


def test_every_planted_cause_must_be_named_and_no_false_one():
    from benchmarks.strategies import named_from, verdict

    rows = []
    for i in range(48):
        dtype = ["fp32", "fp16", "bf16"][i % 3]
        batch = ["clean", "labels-all-ignored", "padded-row", "long-sequence"][i // 3 % 4]
        nan = dtype == "fp16" or batch == "labels-all-ignored"
        rows.append(
            TrialResult(
                {**BASE, "dtype": dtype, "batch": batch},
                0,
                0,
                "nonfinite-loss" if nan else "finite",
                number=i,
            )
        )
    both = (equals(dtype="fp16"), equals(batch="labels-all-ignored"))
    assert verdict(rows, FACTORS, both) == (True, 0)
    first = named_from(rows, FACTORS, both)
    assert first is not None and 6 <= first <= 48
    # one planted cause alone: the other is named too, and counts as false
    assert verdict(rows, FACTORS, both[:1]) == (False, 1)
    assert named_from(rows, FACTORS, both[:1]) is None
    # nothing planted and no NaN: nothing false from the first run on
    clean = [r for r in rows if not r.is_nan]
    assert verdict(clean, FACTORS, ()) == (True, 0) and named_from(clean, FACTORS, ()) == 1
