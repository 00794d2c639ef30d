"""The strategies benchmark's measures, on studies whose answers are known."""

from benchmarks.strategies import Run, above, equals, right_from
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
    first = right_from(Run(results), FACTORS, equals(dtype="fp16"))
    assert first is not None and 6 <= first <= 24
    assert right_from(Run(results[: first - 1]), FACTORS, equals(dtype="fp16")) is None
    assert right_from(Run(results), FACTORS, equals(dtype="bf16")) is None


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
    run = Run(rows)
    assert verdict(run, FACTORS, both) == (True, 0)
    first = named_from(run, FACTORS, both)
    assert first is not None and 6 <= first <= 48
    # one planted cause alone: the other is named too, and counts as false
    assert verdict(run, FACTORS, both[:1]) == (False, 1)
    assert named_from(run, FACTORS, both[:1]) is None
    # nothing planted and no NaN: nothing false from the first run on
    clean = Run([r for r in rows if not r.is_nan])
    assert verdict(clean, FACTORS, ()) == (True, 0) and named_from(clean, FACTORS, ()) == 1


def test_nansearch_is_judged_by_its_conclusions_from_the_count_its_probes_ended():
    from benchmarks.strategies import named_from, verdict
    from nansearch.search.confirm import Confirmation
    from nansearch.search.isolate import isolate

    # one batch file of 16 fails; its first failure (trial 3) is confirmed by 3 fresh
    # seeds and isolated in the probes that follow it, then the cover goes on
    files = [f"b{i:02d}" for i in range(16)]

    def run(number, params, phase="cover", origin=None):
        outcome = "nonfinite-loss" if params["batch"] == "b11" else "finite"
        return TrialResult(params, 0, 0, outcome, number=number, phase=phase, origin=origin)

    queued = [
        run(i, {**BASE, "dtype": ["fp32", "bf16"][i % 2], "batch": files[(i + 8) % 16]})
        for i in range(24)
    ]
    failing, passing = queued[3], queued[2]
    assert failing.params["batch"] == "b11" and not passing.is_nan
    confirms = [run(100 + k, failing.params, "confirm", 3) for k in range(3)]
    asked = []
    iso = isolate(failing.params, passing.params, lambda c: asked.append(c) or c["batch"] == "b11")
    iso.trial, iso.reference_trial = 3, 2
    assert iso.complete and iso.values == {"batch": "b11"}
    probes = [run(103 + k, config, "isolate", 3) for k, config in enumerate(asked)]
    order = queued[:4] + confirms + probes + queued[4:]
    done = 4 + len(confirms) + len(probes)
    check = Confirmation(3, failing.params, runs=[100, 101, 102], nan=3)
    truth = (equals(batch="b11"),)
    judged = Run(order, [(4 + len(confirms), check)], [(done, iso)])
    assert named_from(judged, FACTORS, truth) == done
    (named,) = judged.named(FACTORS, done)
    assert named.evidence == ("isolation", "confirmation")
    # the same trials without the probes' conclusions: the counts alone name nothing yet
    counts = Run(order)
    assert verdict(counts, FACTORS, truth, done) == (False, 0)


def test_a_measured_edge_accepts_a_level_that_moves_it_and_no_level_that_does_not():
    from benchmarks.edges import Edge, Grid
    from benchmarks.strategies import Named
    from nansearch.analysis.causes import Condition

    # bf16 goes NaN from the 5th grid value, fp32 from the 7th; the batch changes nothing
    grid = Grid([0.01 * 2.0**i for i in range(10)])
    for dtype, start in (("bf16", 4), ("fp32", 6)):
        for batch in ("clean", "vocab-edge-ids"):
            for rep in range(3):
                for i in range(10):
                    grid.rows.append(
                        ({"dtype": dtype, "batch": batch, "rep": str(rep)}, i, i >= start)
                    )
    edge = Edge("lr")
    edge.measured = grid

    def named(*conditions):
        return Named(tuple(Condition(*c) for c in conditions))

    # from all finite to all NaN in one step: the edge is halfway on the log scale
    assert abs(grid.edge({"dtype": "bf16"}) - (0.08 * 0.16) ** 0.5) < 1e-9
    assert abs(grid.edge({"dtype": "fp32"}) - (0.32 * 0.64) ** 0.5) < 1e-9
    assert abs(grid.edge({}) - 0.16) < 1e-9  # half of the runs NaN from 0.16 on
    assert grid.moves({"dtype": "bf16"}, "dtype", "bf16")
    assert not grid.moves({"batch": "clean"}, "batch", "clean")
    assert edge(named(("dtype", "=", "bf16"), ("lr", ">=", 0.12)))
    assert edge(named(("dtype", "=", "fp32"), ("lr", ">=", 0.5)))
    assert edge(named(("lr", ">=", 0.3)))  # all runs: the rate crosses 1/2 between them
    # a level that does not move the edge is a false condition, whatever its edge
    assert not edge(named(("batch", "=", "vocab-edge-ids"), ("lr", ">=", 0.3)))
    # an edge more than a grid step off, the other side, or no range at all: false
    assert not edge(named(("dtype", "=", "bf16"), ("lr", ">=", 0.5)))
    assert not edge(named(("dtype", "=", "fp32"), ("lr", ">=", 0.12)))
    assert not edge(named(("lr", "<=", 0.3)))
    assert not edge(named(("dtype", "=", "bf16")))
