"""Focus sets the causes found aside, and the search settles only once the space
outside them is covered."""

import itertools
import random

import optuna

from nansearch.analysis.causes import causes_and_suspects
from nansearch.cli.sweep import sweep
from nansearch.config import load_config
from nansearch.factors import build_factors
from nansearch.search import optuna_internals as private
from nansearch.search import pairwise
from nansearch.search.plan import StopRule
from nansearch.search.queue import DRAWN_ATTR, PHASE_ATTR, enqueue, suggest, take
from nansearch.search.set_aside import (
    STEPS,
    SetAsideSampler,
    known_causes,
    settled_only,
    unexplored,
)
from nansearch.search.study import distributions, make_sampler
from nansearch.trial.runner import TrialResult
from tests.conftest import DEMO, REPO, demo_overrides

OVERRIDES = ["factors.dtype.levels=[fp32,bf16,fp16]", "factors.batch.levels=[clean,padded-row]"]
OPT = {"checkpoint": "opt-lm", "init": "pretrained"}


def fp16_nan(params):
    return params["dtype"] == "fp16"


def recorded_study(factors, rows, nan, sampler, near=None):
    """A real in-memory study holding ``rows`` as finished trials, NaN where ``nan`` says;
    ``near``, one of the rows, is the finite run that came nearest its dtype's range."""
    dists = distributions(factors)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params in rows:
        failed = nan(params)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                value=1.5 if failed else (0.6 if params is near else 0.1),
                user_attrs={"outcome": "nonfinite-params" if failed else "finite"},
            )
        )
    return study


def draw_finite(study, factors, count):
    """``count`` trials drawn by the study's sampler, each told finite."""
    dists = distributions(factors)
    drawn = []
    for _ in range(count):
        trial = study.ask()
        drawn.append({name: suggest(trial, name, d) for name, d in dists.items()})
        trial.set_user_attr("outcome", "finite")
        study.tell(trial, 0.1)
    return drawn


def grid(factors, lr=(1e-4, 3e-3, 0.1)):
    levels = {f.name: f.levels for f in factors if f.levels is not None}
    for values in itertools.product(*levels.values()):
        for rate in lr:
            yield {**dict(zip(levels, values, strict=True)), "lr": rate}


def test_focus_suggests_nothing_a_named_cause_explains():
    cfg = load_config(DEMO, OVERRIDES)
    factors = build_factors(cfg)
    rows = list(grid(factors))  # every configuration once: dtype=fp16 is a cause by then
    results = [TrialResult(p, 0, 0, "nonfinite-params" if fp16_nan(p) else "finite") for p in rows]
    assert [c.text for c in known_causes(results, factors)] == ["dtype=fp16"]
    sampler = make_sampler(cfg, n_startup=len(rows), seed=0, factors=factors)
    assert isinstance(sampler, SetAsideSampler)
    study = recorded_study(factors, rows, fp16_nan, sampler)
    dists = distributions(factors)
    drawn = []
    for _ in range(12):
        trial = study.ask()
        params = {name: suggest(trial, name, dist) for name, dist in dists.items()}
        study.tell(trial, 0.1)
        drawn.append(params)
    assert all(p["dtype"] != "fp16" for p in drawn)
    # the same history without the set-aside: TPE goes back to the cause it knows
    plain = recorded_study(factors, rows, fp16_nan, make_sampler(cfg, len(rows), seed=0))
    again = []
    for _ in range(12):
        trial = plain.ask()
        again.append(suggest(trial, "dtype", dists["dtype"]))
        plain.tell(trial, 0.1)
    assert again.count("fp16") >= 4


def test_focus_first_tries_what_a_cause_kept_from_being_seen():
    cfg = load_config(DEMO, OVERRIDES)
    factors = build_factors(cfg)

    def masked(p):  # reinit-normal with padded-row: held only by runs fp16 explains
        return p["init"] == "reinit-normal" and p["batch"] == "padded-row"

    rows = [p for p in grid(factors) if fp16_nan(p) or not masked(p)]
    results = [TrialResult(p, 0, 0, "nonfinite-params" if fp16_nan(p) else "finite") for p in rows]
    causes = known_causes(results, factors)
    assert [c.text for c in causes] == ["dtype=fp16"]
    missing = unexplored(results, factors, causes)
    assert missing and not unexplored(
        results + [TrialResult({**p, "dtype": "fp32"}, 0, 0, "finite") for p in rows if masked(p)],
        factors,
        causes,
    )
    sampler = SetAsideSampler(optuna.samplers.TPESampler(seed=1), factors, seed=1)
    study = recorded_study(factors, rows, fp16_nan, sampler)
    trial = study.ask()
    params = {name: suggest(trial, name, d) for name, d in distributions(factors).items()}
    assert masked(params) and params["dtype"] != "fp16"


def test_focus_tests_a_suspect_where_its_nan_runs_are():
    # fp16 is a cause; above lr 0.27, two of three runs no cause explains went NaN, both
    # bf16: too few to name anything, a suspect. Focus goes inside it, outside fp16, and
    # to the dtype its NaN runs hold more often than to the one whose run stayed finite
    cfg = load_config(DEMO, OVERRIDES)
    factors = build_factors(cfg)
    rows = list(grid(factors, lr=(1e-4, 3e-3, 0.05)))
    high = [
        ("bf16", "clean", "pretrained", 0.2, True),
        ("bf16", "padded-row", "reinit-normal", 0.3, True),
        ("bf16", "clean", "reinit-normal", 0.25, False),
        ("fp32", "padded-row", "pretrained", 0.22, False),
        ("bf16", "padded-row", "pretrained", 0.4, True),
        ("fp32", "clean", "uninitialized-missing", 0.5, False),
    ]
    for dtype, batch, init, lr, _ in high:
        checkpoint = "blip2-full" if init == "uninitialized-missing" else "opt-lm"
        rows.append(
            {"checkpoint": checkpoint, "init": init, "batch": batch, "dtype": dtype, "lr": lr}
        )
    failed = {(d, b, i, lr) for d, b, i, lr, nan in high if nan}

    def nan(p):
        return fp16_nan(p) or (p["dtype"], p["batch"], p["init"], p["lr"]) in failed

    results = [TrialResult(p, 0, 0, "nonfinite-params" if nan(p) else "finite") for p in rows]
    causes, suspects = causes_and_suspects(results, [f.name for f in factors], ["lr"])
    assert [c.text for c in causes] == ["dtype=fp16"]
    (suspect,) = suspects
    assert suspect.text.startswith("lr above") and suspect.own_nan == 2
    assert suspect.p_adjusted > 0.05  # not named: the search must look again
    sampler = SetAsideSampler(optuna.samplers.TPESampler(seed=1), factors, seed=1)
    study = recorded_study(factors, rows, nan, sampler)
    drawn = []
    for _ in range(10):
        trial = study.ask()
        drawn.append({n: suggest(trial, n, d) for n, d in distributions(factors).items()})
        study.tell(trial, 0.1)
    assert all(suspect.holds(p) and p["dtype"] != "fp16" for p in drawn)
    assert sum(p["dtype"] == "bf16" for p in drawn) >= 6


def test_focus_tries_the_nearest_miss_again_before_tpe():
    # nothing but fp16 went NaN; one finite run came nearest its dtype's range: focus
    # tries its cell (its levels, its learning rate's stratum) again until 3 runs held it
    cfg = load_config(DEMO, OVERRIDES)
    factors = build_factors(cfg)
    rows = list(grid(factors))
    near = next(p for p in rows if p["dtype"] == "bf16" and p["lr"] == 0.1)
    sampler = SetAsideSampler(optuna.samplers.TPESampler(seed=2), factors, seed=2)
    study = recorded_study(factors, rows, fp16_nan, sampler, near=near)
    space = sampler.space
    cell = space.row(near)
    drawn = draw_finite(study, factors, 3)
    # two more runs in its cell (three in all), each a fresh learning rate in its stratum
    assert [space.row(p) == cell for p in drawn[:2]] == [True, True]
    assert all(p["lr"] != near["lr"] for p in drawn[:2])
    assert space.row(drawn[2]) != cell and drawn[2]["dtype"] != "fp16"


def test_a_nan_run_no_cause_explains_is_tried_again_before_the_nearest_miss():
    # fp16 is named; one fp32 run at lr 0.1 went NaN too, alone (a failure near an edge
    # that its seed tipped over): its cell is nearer than any finite run's, and is tried
    # again, a fresh learning rate in its stratum, before the finite near miss's
    cfg = load_config(DEMO, OVERRIDES)
    factors = build_factors(cfg)
    rows = list(grid(factors))
    lone = next(p for p in rows if p["dtype"] == "fp32" and p["lr"] == 0.1)
    near = next(p for p in rows if p["dtype"] == "bf16" and p["lr"] == 0.1)
    sampler = SetAsideSampler(optuna.samplers.TPESampler(seed=2), factors, seed=2)
    study = recorded_study(factors, rows, lambda p: fp16_nan(p) or p is lone, sampler, near=near)
    space = sampler.space
    drawn = draw_finite(study, factors, 4)
    cells = [space.row(p) for p in drawn]
    assert cells[:2] == [space.row(lone)] * 2 and all(p["lr"] != 0.1 for p in drawn[:2])
    assert cells[2:] == [space.row(near)] * 2


def test_the_search_settles_only_once_the_space_outside_the_causes_is_covered():
    cfg = load_config(DEMO, OVERRIDES)
    factors = build_factors(cfg)
    rows = list(grid(factors))
    random.Random(0).shuffle(rows)
    hidden = [p for p in rows if p["dtype"] == "bf16"]
    seen = [p for p in rows if p["dtype"] != "bf16"] * 2

    def settles(order):
        rule = StopRule(factors, cover=10, patience=5)
        results = [
            TrialResult(p, 0, 0, "nonfinite-params" if fp16_nan(p) else "finite", number=i)
            for i, p in enumerate(order)
        ]
        return next((n for n in range(1, len(order) + 1) if rule.update(results[:n])), None)

    # without a single bf16 run, its pairs are unexplored: the rule waits for them
    assert settles(seen) is None
    after = settles(seen + hidden)
    assert after is not None and after > len(seen)


def test_a_sweep_with_no_cause_names_none_and_settles_after_its_cover():
    cfg = load_config(DEMO, OVERRIDES)
    factors = build_factors(cfg)
    size = pairwise.size(factors, seed=0)
    rows = pairwise.cover_plan(factors, size + 20, seed=0)
    results = [TrialResult(p, 0, 0, "finite", number=i) for i, p in enumerate(rows)]
    rule = StopRule(factors, cover=size, patience=5)
    said = [rule.update(results[:n]) for n in range(1, len(results) + 1)]
    first = next(n for n, s in enumerate(said, 1) if s)
    assert said[first - 1] == "no cause"
    assert first == size + 5  # the cover, then patience focus trials with nothing found


NULL_SWEEP = """include: [{repo}/configs/opt-target.yaml]
factors:
  checkpoint: {{levels: {{opt-lm: 'demo:opt-lm'}}}}
  dtype: {{levels: [fp32, bf16]}}
  lr: {{low: 1.0e-4, high: 1.0e-3}}
  init: {{levels: {{pretrained: {{scheme: pretrained}}}}}}
  batch: {{levels: [clean, long-sequence]}}
"""


def test_a_null_sweep_names_nothing_and_gives_its_nearest_miss(tmp_path):
    # fp32 and bf16 at low learning rates, clean batches: a real sweep with no cause
    path = tmp_path / "null.yaml"
    path.write_text(NULL_SWEEP.format(repo=REPO))
    outcome = sweep(str(path), demo_overrides(trials=8, steps=3))
    ranking = outcome.ranking
    assert ranking["nan"] == 0 and ranking["causes"] == [] and ranking["interactions"] == []
    (said,) = [c for c in ranking["conclusions"] if c["kind"] != "errors"]
    assert said["kind"] == "no-nan" and said["text"].startswith("No cause found")
    miss = said["highest_instability"]
    assert 0 < miss["score"] < 1
    assert miss["score"] == max(r.score for r in outcome.results)


def demo_truth(params):
    """The demo's four causes, as `make sweep` names them, and a finite run's score rising
    with the learning rate under amp-fp16 toward its edge: the nearest miss is there."""
    if params["dtype"] == "fp16" or params["batch"] == "labels-all-ignored":
        return "nonfinite-params", 2.0
    if params["checkpoint"] == "blip2-full" and params["init"] == "uninitialized-missing":
        return "nonfinite-logits", 2.0
    if params["dtype"] == "amp-fp16":
        return ("nonfinite-logits", 1.05) if params["lr"] > 0.22 else ("finite", params["lr"])
    return "finite", 0.05


def test_no_focus_trial_is_drawn_inside_a_cause_set_aside_before_it():
    # the demo's factors, cover and focus shares, its causes as a truth function: every
    # focus trial records the step that drew it and the causes named and set aside then,
    # the same causes the trials finished before it name; none holds one set aside
    cfg = load_config(DEMO, ["tracking.wandb=off"])
    factors = build_factors(cfg)
    dists, names = distributions(factors), [f.name for f in factors]
    steps = set()
    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(cfg, 26, seed=0, factors=factors)
    )
    enqueue(study, pairwise.cover_plan(factors, 26, seed=0), 26 + 16)
    results: list[TrialResult] = []
    while (trial := take(study, dists)) is not None:
        params = dict(trial.params)
        if trial.user_attrs[PHASE_ATTR] == "focus":
            drawn = private.storage(study).get_trial(private.trial_id(trial)).user_attrs[DRAWN_ATTR]
            named, _ = causes_and_suspects(results, names, ["lr"])
            aside = settled_only(named)
            assert drawn["named"] == [c.text for c in named]
            assert drawn["set_aside"] == [c.text for c in aside]
            assert drawn["step"] in STEPS
            assert not any(c.holds(params) for c in aside), (trial.number, drawn)
            steps.add(drawn["step"])
        outcome, score = demo_truth(params)
        results.append(TrialResult(params, 0, 0, outcome, score=score, number=trial.number))
        trial.set_user_attr("outcome", outcome)
        study.tell(trial, score)
    assert {"pairs", "suspect", "nearest-miss"} <= steps
