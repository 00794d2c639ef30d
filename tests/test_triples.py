"""After the pairwise cover, focus tries every triple of levels outside the known causes
before the search may settle, when the queue's trials left could hold them all."""

import random

import optuna
import pytest

from nansearch.cli.sweep import sweep
from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.search import pairwise
from nansearch.search.coverage import triples_wait, untried
from nansearch.search.plan import StopRule
from nansearch.search.queue import PHASE_ATTR, take
from nansearch.search.set_aside import SetAsideSampler, known_causes
from nansearch.search.study import distributions
from nansearch.trial.runner import TrialResult
from tests.conftest import REPO, THREE_WAY_SWEEP, demo_overrides
from tests.conftest import THREE_WAY_TRIPLE as TRIPLE

SWEEP = """include: [{repo}/configs/opt-target.yaml]
optimizer: {{name: sgd}}
factors:
  checkpoint: {{levels: {{opt-lm: 'demo:opt-lm'}}}}
  dtype: {{levels: [fp32, bf16, fp16]}}
  lr: {{low: 1.0e-4, high: 1.0e-2}}
  init: {{levels: {{pretrained: {{scheme: pretrained}}, reinit-normal: {{scheme: normal, std: 0.02}},
    normal-large: {{scheme: normal, std: 2.0}}}}}}
  batch: {{levels: [clean, padded-row, long-sequence]}}
"""


@pytest.fixture(autouse=True)
def quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield
    optuna.logging.set_verbosity(optuna.logging.INFO)


def three_factors(tmp_path):
    path = tmp_path / "three.yaml"
    path.write_text(SWEEP.format(repo=REPO))
    cfg = load_config(str(path), ["tracking.wandb=off"])
    return build_factors(cfg)


def searched(factors, nan, queue: int, seed: int = 0):
    """A real in-memory study: the pairwise cover as finished trials, then ``queue`` focus
    trials taken from the queue as a worker takes them, their values from the set-aside
    sampler; a run is NaN where ``nan`` says. Returns the cover's and focus's results."""
    sampler = SetAsideSampler(optuna.samplers.TPESampler(seed=seed), factors, seed=seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dists = distributions(factors)
    cover = pairwise.cover_plan(factors, pairwise.size(factors, seed), seed)
    results = []

    def record(trial_params):
        outcome = "nonfinite-logits" if nan(trial_params) else "finite"
        results.append(TrialResult(trial_params, 0, 0, outcome, number=len(results)))
        return outcome

    for params in cover:
        outcome = record(params)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                value=1.5 if outcome != "finite" else 0.1,
                user_attrs={"outcome": outcome, PHASE_ATTR: "cover"},
            )
        )
    for _ in range(queue):
        study.enqueue_trial({}, user_attrs={PHASE_ATTR: "focus"})
    for _ in range(queue):
        trial = take(study, dists)
        outcome = record(dict(trial.params))
        trial.set_user_attr("outcome", outcome)
        study.tell(trial, 1.5 if outcome != "finite" else 0.1)
    return results[: len(cover)], results[len(cover) :]


def test_focus_tries_every_triple_after_the_pairs_each_trial_a_new_one(tmp_path):
    factors = three_factors(tmp_path)
    cover, focus = searched(factors, lambda p: False, queue=60)
    everything = cover + focus
    first = untried(cover, factors, [])
    # the pairwise cover holds every pair, not every triple: 4 of the factors have 3
    # levels (the learning rate in 3 strata), 4 x 27 triples of them, and a cover row
    # holds one triple of each three factors
    least = pairwise.least_rows(first)
    assert first and 27 - len(cover) <= least < 27
    # focus takes them one configuration at a time, each one holding a triple not yet tried,
    # until none is left: within half again as many as any set of rows would need
    left, done = first, None
    for n in range(1, len(focus) + 1):
        now = untried(cover + focus[:n], factors, [])
        assert len(now) < len(left), f"focus trial {n} tried no new triple"
        left = now
        if not now:
            done = n
            break
    assert done is not None and least <= done <= least * 3 // 2
    assert not untried(everything, factors, [])


def test_triples_a_known_cause_explains_are_left_out(tmp_path):
    factors = three_factors(tmp_path)

    def fp16(params):
        return params["dtype"] == "fp16"

    def aside(runs):
        return [c.text for c in known_causes(runs, factors)]

    cover, focus = searched(factors, fp16, queue=50, seed=1)
    runs = cover + focus
    # once the counts name dtype=fp16 (nearly all of its runs NaN), focus suggests no
    # configuration it explains
    named = next(n for n in range(len(cover), len(runs)) if aside(runs[:n]) == ["dtype=fp16"])
    assert named < len(runs) - 20
    assert not any(fp16(r.params) for r in runs[named:])
    causes = known_causes(runs, factors)
    # no triple outside the cause is left untried; fp16's own triples never count as untried
    assert not untried(runs, factors, causes)
    assert untried(runs, factors, [])  # fp16's triples that only runs it explains held
    assert all(
        levels_of(t, factors).get("dtype") != "fp16" for t in untried(cover, factors, causes)
    )


def levels_of(triple, factors):
    cols = pairwise.columns(factors)
    return {
        cols[triple[k]].name: cols[triple[k]].levels[triple[k + 1]]
        for k in range(0, 6, 2)
        if cols[triple[k]].continuous is None
    }


def test_the_triples_are_waited_for_only_when_the_trials_left_could_hold_them():
    cols = [pairwise.Column(n, (0, 1, 2)) for n in "abcd"]
    missing = pairwise.triples(cols)
    assert pairwise.least_rows(missing) == 27
    assert triples_wait(missing, 27) and not triples_wait(missing, 26)
    assert not triples_wait(set(), 100)
    # a greedy design holding every triple takes a few more than the bound
    rows = pairwise.triple_design(cols, random.Random(0))
    assert 27 <= len(rows) <= 40
    assert set().union(*(pairwise.row_triples(r) for r in rows)) == missing


def test_a_sweep_whose_cover_misses_a_three_value_cause_tries_it_and_names_it(tmp_path):
    """The demo OPT under plain SGD (tests/test_three_way.py): NaN at step 0 only with
    all three of fp16, weights re-initialized at std 2 and a fully padded row. With seed 3
    the pairwise cover holds every pair of the three values but never all three at once;
    each pair without its third stays finite, so the pairs alone would let the search
    settle with no cause. Focus goes after the untried triples first and runs them."""
    path = tmp_path / "three.yaml"
    path.write_text(THREE_WAY_SWEEP.format(repo=REPO))
    overrides = demo_overrides(trials=40, steps=3, seed=3)
    cfg = load_config(str(path), overrides)
    factors = build_factors(cfg)
    size = pairwise.size(factors, 3)
    cover = pairwise.cover_plan(factors, size, 3)
    assert not any(all(p[k] == v for k, v in TRIPLE.items()) for p in cover)
    outcome = sweep(str(path), overrides)
    queued = [r for r in outcome.results if r.phase in ("cover", "focus")]
    holding = [r for r in queued if all(r.params[k] == v for k, v in TRIPLE.items())]
    assert holding and holding[0].number >= size  # focus ran it, after the cover
    assert all(r.is_nan for r in holding)
    assert not any(r.is_nan for r in queued if r not in holding)
    (said,) = [c for c in outcome.ranking["conclusions"] if c["kind"] not in ("errors",)]
    head = said["text"].split(",")[0]
    assert sorted(head.split(" with ")) == sorted(f"{k}={v}" for k, v in TRIPLE.items()), head
    assert "all 3 together" in said["text"]


def test_the_stopping_rule_waits_for_the_triples_only_when_the_queue_could_hold_them(tmp_path):
    factors = three_factors(tmp_path)
    size = pairwise.size(factors, seed=0)
    rows = pairwise.cover_plan(factors, size + 5, seed=0)  # the cover, 5 more, no NaN
    results = [TrialResult(p, 0, 0, "finite", number=i) for i, p in enumerate(rows)]
    least = pairwise.least_rows(untried(results, factors, []))
    assert least > 1

    def said(left):
        rule = StopRule(factors, cover=size, patience=5)
        return [rule.update(results[:n], left=left) for n in range(1, len(results) + 1)][-1]

    assert said(left=least) is None  # the triples untried fit in what is left: it waits
    assert said(left=least - 1) == "no cause"  # they cannot: it settles on the pairs
    assert said(left=None) == "no cause"
