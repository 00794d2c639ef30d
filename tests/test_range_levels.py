"""A value beside a range: named only where, at the same learning rates, its runs fail
and the other levels' runs pass (``init=reinit with lr above 2``), never because its
runs inside the range happened to lie further in than the others'."""

from nansearch.analysis.causes import ABOVE, EQUALS, Condition, causes_and_suspects
from nansearch.analysis.evidence import Evidence
from nansearch.analysis.ranges import clearest_splits, per_level
from nansearch.analysis.text import sentence
from nansearch.trial.runner import TrialResult

NAMES, CONTINUOUS = ["init", "batch", "lr"], ["lr"]
LOW = [0.01 * 1.6**i for i in range(12)]  # 0.01 to 1.8: every run finite


def study(runs):
    """Runs as ``(init, lr, nan)``, the batch alternating so that it matters nowhere."""
    out = []
    for init, lr, nan in runs:
        params = {"init": init, "batch": ["clean", "long"][len(out) % 2], "lr": lr}
        out.append(
            TrialResult(
                params=params,
                seed=len(out),
                steps=4,
                outcome="nonfinite-logits" if nan else "finite",
                first_bad_step=0 if nan else None,
                score=1.5 if nan else 0.1,
                number=len(out),
                phase="cover",
            )
        )
    return out


def below_both_edges():
    return [(init, lr * (1.1 if init == "reinit" else 1), False)
            for lr in LOW for init in ("pretrained", "reinit")]  # fmt: skip


def shared_edge():
    """One edge near 7 for both inits, a run at 9 finite in its band. The reinit runs
    above 2 were all sampled from 6.8 up and all went NaN; the pretrained runs from 3.5
    to 6.5 passed, just under the edge. Over ``lr above 3.7`` reinit is 8/8 against 3/8,
    but from its first NaN run (6.8) on the pretrained runs are NaN too (3/4)."""
    runs = below_both_edges()
    runs += [("pretrained", lr, False) for lr in (3.5, 4.2, 5.0, 5.6, 6.5)]
    runs += [("pretrained", lr, lr != 9.0) for lr in (7.5, 9.0, 12.0, 20.0)]
    runs += [("reinit", lr, True) for lr in (6.8, 7.2, 8.0, 8.6, 11.0, 15.0, 25.0, 40.0)]
    return study(runs)


def two_edges():
    """reinit's edge near 2, pretrained's near 8: six pretrained runs pass between the
    two edges, where every reinit run fails (8/8 against 3/9 from 2.2 on)."""
    runs = below_both_edges()
    runs += [("pretrained", lr, False) for lr in (2.4, 2.9, 3.6, 4.4, 5.3, 6.4)]
    runs += [("pretrained", lr, True) for lr in (9.0, 13.0, 25.0)]
    runs += [("reinit", lr, True) for lr in (2.2, 2.7, 3.3, 4.0, 5.0, 6.0, 10.0, 20.0)]
    return study(runs)


def test_a_level_sampled_only_far_above_a_shared_edge_is_no_cause():
    results = shared_edge()
    causes, suspects = causes_and_suspects(results, NAMES, CONTINUOUS)
    assert [[(c.factor, c.op) for c in cause.conditions] for cause in causes] == [[("lr", ABOVE)]]
    (edge,) = causes[0].conditions
    assert 6.5 < edge.value < 6.8
    named = [*causes, *suspects]
    assert not any(c.op == EQUALS for cause in named for c in cause.conditions)


def test_a_level_whose_edge_is_its_own_is_named_with_it():
    results = two_edges()
    causes, _ = causes_and_suspects(results, NAMES, CONTINUOUS)
    reinit = [c for c in causes if Condition("init", EQUALS, "reinit") in c.conditions]
    assert len(reinit) == 1
    (cause,) = reinit
    (edge,) = [c for c in cause.conditions if c.op == ABOVE]
    assert 1.9 < edge.value < 2.2 and len(cause.conditions) == 2
    assert (cause.nan, cause.total) == (8, 8)
    # the sentence states the test: the other levels from its first NaN run on, with no
    # other cause (pretrained's own edge, near 8, is one)
    assert [c.text for c in causes if c is not cause] == ["lr above 7.6"]
    assert sentence(cause).endswith("lr above 2.2 without init=reinit: 0/6 NaN.")


def test_levels_beside_a_range_are_compared_from_its_first_nan_run():
    # inside lr above 3, reinit failed (from 6.8 up), pretrained passed (at 3.5 to 6.5,
    # before any run failed): no level is seen to pass where another failed
    results = shared_edge()
    ev = Evidence(results, CONTINUOUS, NAMES)
    edge = Condition("lr", ABOVE, 3.0)
    by_level = per_level(ev, (edge,), edge, ev.nan | ~ev.nan)
    counts = {e["value"]: (e["nan"], e["total"]) for e in by_level.get("init", [])}
    assert counts == {"pretrained": (3, 4), "reinit": (8, 8)}
    assert not clearest_splits(by_level)
    # between two edges, the pretrained runs pass where reinit's fail: a split
    ev = Evidence([r for r in two_edges() if r.params["lr"] < 8], CONTINUOUS, NAMES)
    by_level = per_level(ev, (edge,), edge, ev.nan | ~ev.nan)
    ((factor, bad, good),) = clearest_splits(by_level)
    assert factor == "init"
    assert [(e["value"], e["nan"], e["total"]) for e in bad] == [("reinit", 4, 4)]
    assert [(e["value"], e["nan"], e["total"]) for e in good] == [("pretrained", 0, 4)]
