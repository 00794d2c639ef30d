"""The own-code benchmark's demo configurations: the demo's cover, and its short form."""

from types import SimpleNamespace

from optuna.distributions import CategoricalDistribution, FloatDistribution

from benchmarks.own_code import demo_configurations, every_level


def factor(name, distribution):
    return SimpleNamespace(name=name, distribution=lambda: distribution)


def test_every_level_takes_the_first_rows_that_hold_each_level_of_each_categorical_factor():
    factors = [
        factor("dtype", CategoricalDistribution(["fp32", "fp16"])),
        factor("batch", CategoricalDistribution(["clean", "padded"])),
        factor("lr", FloatDistribution(1e-4, 1.0, log=True)),
    ]
    rows = [
        {"dtype": "fp32", "batch": "clean", "lr": 0.1},
        {"dtype": "fp32", "batch": "padded", "lr": 0.2},
        {"dtype": "fp16", "batch": "clean", "lr": 0.3},
        {"dtype": "fp16", "batch": "padded", "lr": 0.4},
    ]
    assert every_level(rows, factors) == rows[:3]
    assert every_level(rows[:2], factors) == rows[:2]  # never all of them: every row


def test_the_short_demo_is_the_start_of_the_demos_cover_and_holds_every_level():
    full, short = demo_configurations(short=False), demo_configurations(short=True)
    assert len(short) < len(full) and full[: len(short)] == short
    for name in ("checkpoint", "dtype", "init", "batch"):
        assert {c[name] for c in short} == {c[name] for c in full}
    assert any(c["checkpoint"] == "blip2-full" for c in short)
