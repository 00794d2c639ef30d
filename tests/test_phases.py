"""The phases: budgets, the stopping rule, confirmation and isolation on real models."""

import itertools

import optuna
import pytest

from nansearch.analysis.causes import find_causes
from nansearch.analysis.ranking import format_table
from nansearch.cli.sweep import sweep
from nansearch.config import ConfigError, load_config
from nansearch.factors import build_factors
from nansearch.search import pairwise
from nansearch.search.choose import alternatives, suspects
from nansearch.search.confirm import confirm
from nansearch.search.isolate import isolate
from nansearch.search.phases import run_probes
from nansearch.search.plan import StopRule, plan
from nansearch.search.prober import Prober
from nansearch.search.queue import SKIPPED_ATTR
from nansearch.search.set_aside import unexplored
from nansearch.search.study import Search, SweepCallbacks, recorded
from nansearch.search.sweep import prepare, run_sweep
from nansearch.trial.runner import TrialResult
from tests.conftest import DEMO, REPO, demo_overrides

OPT = {"checkpoint": "opt-lm", "dtype": "fp32", "init": "pretrained", "batch": "clean"}

# the born-from case in small: which checkpoint, with which init, and nothing else varies
BLIP2_SPACE = {
    "factors.dtype.levels": "[fp32]",
    "factors.batch.levels": "[clean]",
    "factors.lr.low": 1e-4,
    "factors.lr.high": 1e-3,
}


def test_phases_share_the_trial_budget():
    factors = build_factors(load_config(DEMO))
    demo = plan(load_config(DEMO), factors)
    # the cover is one pairwise design of the demo's factors
    assert demo.cover == demo.design >= 25
    assert (demo.focus, demo.confirm, demo.isolate) == (42 - demo.cover, 6, 12)
    assert f"cover {demo.cover} (every pair of levels in {demo.cover} trials" in demo.text
    assert demo.total == 60
    small = plan(load_config(DEMO, ["trials=6"]), factors)
    assert (small.confirm, small.isolate, small.queued) == (0, 0, 6)
    fixed = plan(
        load_config(DEMO, ["search.cover=5", "search.confirm=2", "search.isolate=0"]), factors
    )
    assert (fixed.cover, fixed.focus, fixed.confirm, fixed.isolate) == (5, 53, 2, 0)


def test_phase_budgets_beyond_the_trials_are_named():
    with pytest.raises(ConfigError, match=r"search.cover \+ search.confirm \+ search.isolate = 70"):
        load_config(
            DEMO, ["trials=60", "search.cover=30", "search.confirm=20", "search.isolate=20"]
        )
    with pytest.raises(ConfigError, match=r"search.seeds=0"):
        load_config(DEMO, ["search.seeds=0"])


def test_confirmation_tells_a_deterministic_failure_from_a_flaky_one():
    # Both fail as 0/0, a mean loss over no label, so no rounding decides a run: every
    # label ignored fails for every seed; truncated answers for the seeds whose batch
    # lost every answer, which the seeded generator alone decides (0, 4, 6, 8, 9 of 0-9).
    levels = "[clean,labels-all-ignored,truncated-answers]"
    cfg = load_config(DEMO, demo_overrides(steps=2, **{"factors.batch.levels": levels}))
    _, runner = prepare(cfg)

    def confirmed(batch):
        params = {**OPT, "lr": 1e-3, "batch": batch}
        first = runner.run(params, seed=0)
        assert first.outcome == "nonfinite-loss"
        seeds = itertools.count(1)
        return confirm(0, params, lambda: runner.run(params, next(seeds)), seeds=9)

    steady, flaky = confirmed("labels-all-ignored"), confirmed("truncated-answers")
    assert steady.label == "deterministic" and steady.rate == 1.0
    assert steady.repeats() == 1
    assert flaky.label == "flaky" and flaky.rate == 0.5
    assert flaky.repeats() == 4  # isolation probes it 4 times before it believes a pass
    assert flaky.text == "flaky: NaN in 5/10 runs (the first and 9 fresh seeds)"


def test_isolation_on_a_real_model_names_the_checkpoint_with_the_init():
    cfg = load_config(DEMO, demo_overrides(steps=4))
    _, runner = prepare(cfg)
    failing = {**OPT, "lr": 3e-4, "checkpoint": "blip2-full", "init": "uninitialized-missing"}
    reference = {**OPT, "lr": 3e-4, "dtype": "bf16"}
    assert runner.run(failing, 0).is_nan and not runner.run(reference, 0).is_nan
    seeds = itertools.count(1)
    found = isolate(failing, reference, lambda config: runner.run(config, next(seeds)).is_nan)
    assert found.complete
    assert found.values == {"checkpoint": "blip2-full", "init": "uninitialized-missing"}
    assert found.needed == ["checkpoint", "init"]  # flipping either back fixes it; dtype not


def as_results(params_nan):
    return [
        TrialResult(params, 0, 0, "nonfinite-logits" if nan else "finite", number=i, phase="cover")
        for i, (params, nan) in enumerate(params_nan)
    ]


def covering_rows(factors, nan):
    """The pairwise cover, then the same configurations in fp32, as focus tries the pairs
    that only fp16 runs held: NaN where ``nan`` says."""
    cover = pairwise.cover_plan(factors, pairwise.size(factors, seed=0), seed=0)
    rows = cover + [{**p, "dtype": "fp32"} for p in cover]
    return [(params, nan(params)) for params in rows]


def test_stop_rule_waits_for_the_cover_for_patience_and_for_the_space_outside():
    factors = build_factors(load_config(DEMO, ["factors.dtype.levels=[fp32,fp16]"]))
    rule = StopRule(factors, cover=8, patience=6)
    results = as_results(covering_rows(factors, lambda p: p["dtype"] == "fp16"))
    said = {}
    for n in range(1, len(results) + 1):
        said[n] = rule.update(results[:n])
        if said[n]:
            break
    first = n
    assert said[first] == "dtype=fp16"
    assert first - rule.since >= 6  # dtype=fp16 led, alone, for the last 6 trials at least
    (cause,) = find_causes(results[:first], [f.name for f in factors], ["lr"])
    assert not unexplored(results[:first], factors, [cause])
    # the cover alone left pairs that only fp16 runs held: the rule waited for them
    cover = len(results) // 2
    assert unexplored(results[:cover], factors, [cause]) and first > cover


def blip2_sweep(**extra):
    return demo_overrides(trials=20, steps=4, **BLIP2_SPACE, **extra)


def test_sweep_confirms_and_isolates_the_born_from_case_and_resume_replays_it(tmp_path):
    extra = {"search.confirm": 3, "search.isolate": 8, "search.patience": 0}
    outcome = sweep(DEMO, blip2_sweep(**extra))
    phases = [r.phase for r in outcome.results]
    assert phases.count("cover") + phases.count("focus") == 9
    assert 0 < phases.count("confirm") <= 3 and 0 < phases.count("isolate") <= 8
    (cause,) = outcome.ranking["minimal_causes"]
    assert cause["minimal"] == {"checkpoint": "blip2-full", "init": "uninitialized-missing"}
    assert cause["confirmation"]["label"] == "deterministic"
    probes = [r for r in outcome.results if r.phase in ("confirm", "isolate")]
    assert all(r.origin == cause["trial"] for r in probes)
    assert "checkpoint=blip2-full" in outcome.ranking["conclusions"][0]["text"]

    again = sweep(DEMO, blip2_sweep(**extra), resume=True)
    assert again.ran_here == 0  # every probe came back from the study
    assert len(again.results) == len(outcome.results)
    assert again.ranking["minimal_causes"] == outcome.ranking["minimal_causes"]


def test_probes_a_killed_sweep_left_unrecorded_run_again(tmp_path):
    cfg = load_config(DEMO, blip2_sweep(**{"search.confirm": 3, "search.isolate": 8}))
    cfg.search.patience = 0
    factors, runner = prepare(cfg)
    search = Search(cfg, factors, runner)
    stop = StopAfter(2, phases=("confirm", "isolate"))  # Ctrl-C after two probes
    search.run(stop.callbacks(), stop)
    assert sum(r.phase in ("confirm", "isolate") for r in recorded(search.study)) == 2
    resumed = Search(cfg, factors, runner, resume=True)
    heard = StopAfter(10**6, phases=("confirm", "isolate"))
    resumed.run(heard.callbacks())
    rest = run_probes(resumed)
    more = 10**6 - heard.left + rest.ran
    assert more > 0
    kept = Prober(resumed, resumed.plan)
    assert sum(map(len, kept.earlier.values())) == 2 + more  # the two were not run again
    assert rest.isolations[0].values == {
        "checkpoint": "blip2-full",
        "init": "uninitialized-missing",
    }


class StopAfter:
    """Set once ``count`` trials of ``phases`` (any phase by default) were heard of."""

    def __init__(self, count, phases=None):
        self.left, self.phases = count, phases

    def is_set(self):
        return self.left <= 0

    def callbacks(self):
        from nansearch.search.study import SweepCallbacks

        def heard(result):
            if self.phases is None or result.phase in self.phases:
                self.left -= 1

        return SweepCallbacks(on_trial=[heard])


def test_a_settled_search_skips_the_rest_of_its_queue(tmp_path):
    overrides = demo_overrides(
        trials=40,
        steps=4,
        **{
            **BLIP2_SPACE,
            "factors.init.levels": "{pretrained: {scheme: pretrained}}",
            "factors.batch.levels": "[clean,labels-all-ignored]",
            "search.cover": 6,
            "search.patience": 5,
            "search.confirm": 0,
            "search.isolate": 0,
        },
    )
    outcome = sweep(DEMO, overrides)
    assert outcome.settled is not None and outcome.complete
    assert "batch=labels-all-ignored" in outcome.settled["causes"]
    assert 11 <= outcome.settled["after"] < 40
    assert len(outcome.results) == outcome.settled["after"]
    study = optuna.load_study(
        study_name="t",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs/t/optuna-journal.log"))
        ),
    )
    skipped = [t for t in study.get_trials() if SKIPPED_ATTR in t.user_attrs]
    assert len(skipped) == 40 - len(outcome.results)
    assert outcome.ranking["settled"] == outcome.settled

    again = sweep(DEMO, overrides, resume=True)
    assert again.ran_here == 0 and len(again.results) == len(outcome.results)


def test_stop_rule_waits_while_enough_nan_runs_are_unexplained():
    factors = build_factors(load_config(DEMO, ["factors.dtype.levels=[fp32,fp16]"]))
    # fp32 runs that went NaN with nothing in common: a cause not yet seen enough
    loose = [
        {**OPT, "lr": 1e-4, "batch": "clean"},
        {**OPT, "lr": 0.3, "batch": "padded-row"},
        {**OPT, "lr": 0.03, "batch": "vocab-edge-ids", "init": "reinit-normal"},
    ]
    rows = covering_rows(factors, lambda p: p["dtype"] == "fp16")

    def settles(results):
        rule = StopRule(factors, cover=8, patience=6)
        return next((n for n in range(1, len(results) + 1) if rule.update(results[:n])), None)

    assert settles(as_results([(params, True) for params in loose] + rows)) is None
    two = settles(as_results([(params, True) for params in loose[:2]] + rows))
    assert two is not None  # two loose runs are fewer than a cause needs


def batch_files(folder, count, bad):
    """``count`` batch files of the demo's corpus, as a user saves them; file ``bad`` has
    every label -100 (mean cross-entropy over no token: 0/0)."""
    import torch
    from safetensors.torch import save_file

    from nansearch.corpus import corpus_batch

    out = {}
    for i in range(count):
        ids = corpus_batch(torch.Generator().manual_seed(1000 + i), 4, 16, 512)
        labels = torch.full_like(ids, -100) if i == bad else ids.clone()
        path = folder / f"batch-{i:02d}.safetensors"
        tensors = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
        save_file(tensors, str(path))
        out[f"b{i:02d}"] = path
    return out


def test_a_rare_batch_file_is_isolated_from_its_first_failure_during_the_search(tmp_path):
    # the demo's OPT and 8 batch files, one with every label ignored: it fails in 1 of 8
    # configurations, too rarely for the counts to name it from the cover
    files = batch_files(tmp_path, 8, bad=5)
    listed = "".join(f"      {name}: {path}\n" for name, path in files.items())
    sweep_file = tmp_path / "rare.yaml"
    sweep_file.write_text(
        f"include: [{REPO}/configs/opt-target.yaml]\n"
        "study: t\ntrials: 24\nsteps: 2\nout: runs\ntracking: {wandb: 'off'}\n"
        "search: {confirm: 2, seeds: 2, isolate: 6, patience: 0}\n"
        "factors:\n"
        "  checkpoint: {levels: {opt-lm: 'demo:opt-lm'}}\n"
        "  dtype: {levels: [fp32, bf16]}\n"
        "  lr: {low: 1.0e-4, high: 1.0e-3}\n"
        "  init: {levels: {pretrained: {scheme: pretrained}}}\n"
        f"  batch:\n    levels: [b00]\n    files:\n{listed}"
    )
    order = []
    heard = SweepCallbacks(on_trial=[order.append])
    outcome = run_sweep(load_config(sweep_file), callbacks=heard)
    # every file is tried once before any is tried twice: the first 8 trials hold all 8
    queued = [r for r in order if r.phase in ("cover", "focus")]
    assert {r.params["batch"] for r in queued[:8]} == set(files)
    first = next(r for r in order if r.is_nan)
    assert first.params["batch"] == "b05" and first.phase == "cover"
    # its probes ran at once, before the next queued trial
    at = order.index(first)
    probes = [r for r in order[at + 1 :] if r.phase in ("confirm", "isolate")]
    after = order[at + 1 : at + 1 + len(probes)]
    assert probes and after == probes and all(r.origin == first.number for r in probes)
    assert [r.phase for r in probes][:2] == ["confirm", "confirm"]
    # the conclusion names the file, and says what named it
    (named,) = [
        c for c in outcome.ranking["conclusions"] if c["kind"] in ("cause", "isolated-cause")
    ]
    assert "batch=b05" in named["text"]
    assert {"isolation", "confirmation"} <= set(named["evidence"])
    assert named["isolation"]["minimal"] == {"batch": "b05"}
    assert named["isolation"]["trial"] == first.number
    # the isolate share outlived its one isolation: the ranking says how much, and why
    spent = sum(r.phase == "isolate" for r in outcome.results)
    assert spent < 6 and outcome.ranking["unspent"]["isolate"] == 6 - spent
    assert f"probes left unspent: isolate {6 - spent} of 6; every failing" in format_table(
        outcome.ranking
    )
    # a resumed sweep replays the probes from the study and concludes the same
    again = run_sweep(load_config(sweep_file), resume=True)
    assert again.ran_here == 0
    assert again.ranking["minimal_causes"] == outcome.ranking["minimal_causes"]
    assert again.ranking["conclusions"] == outcome.ranking["conclusions"]


def test_a_shared_value_no_finite_run_has_changed_yet_is_still_tried():
    # early in a search: the failing run and the only finite one share
    # init=uninitialized-missing, so the runs offer no other init to change it to
    factors = build_factors(load_config(DEMO))
    failing = {**OPT, "checkpoint": "blip2-full", "init": "uninitialized-missing", "lr": 1e-3}
    passing = {**OPT, "init": "uninitialized-missing", "dtype": "bf16", "lr": 3e-4}
    other = {**OPT, "dtype": "fp16", "lr": 1e-3}  # NaN for its own reason
    results = as_results([(failing, True), (passing, False), (other, True)])
    assert "init" not in alternatives(failing, results, ["lr"])
    offered = alternatives(failing, results, ["lr"], factors)
    assert offered["init"] == "reinit-normal"  # a level no NaN run has held
    assert offered["dtype"] == "bf16" and offered["batch"] != "clean"

    def fails(config):  # the born-from pair: the checkpoint with its weights left empty
        return config["checkpoint"] == "blip2-full" and config["init"] == "uninitialized-missing"

    found = isolate(failing, passing, fails, ["lr"], offered)
    assert found.complete and found.values == {
        "checkpoint": "blip2-full",
        "init": "uninitialized-missing",
    }
    assert found.context == ["init"]  # shared with the reference, and needed


def amp_fp16_overflows(config):
    """The demo's fourth cause: AdamW far above its usual rate grows activations past
    fp16's range under amp-fp16; fp32 and the bf16 levels hold the same rate."""
    return config["dtype"] == "amp-fp16" and config["lr"] > 0.15


def test_the_counts_point_a_flaky_isolation_at_the_shared_dtype_first():
    # the learning rate above the passing run's: NaN there only with amp-fp16, whose
    # failing run shares amp-fp16 with its reference, as the checkpoint and the init
    factors = build_factors(load_config(DEMO))
    base = {**OPT, "init": "reinit-normal"}
    rows = [({**base, "dtype": d, "lr": lr}, False) for d in ("fp32", "bf16", "amp-fp16")
            for lr in (1e-4, 1e-3, 0.01, 0.05)]  # fmt: skip
    rows += [({**base, "dtype": "amp-fp16", "lr": 0.137, "batch": "long-sequence"}, False)]
    rows += [({**base, "dtype": d, "lr": lr}, amp_fp16_overflows({"dtype": d, "lr": lr}))
             for d, lr in [("fp32", 0.2), ("fp32", 0.77), ("bf16", 0.48), ("amp-fp16", 0.19)]]  # fmt: skip
    results = as_results(rows)
    failing, passing = results[-1].params, results[-5].params
    assert failing["lr"] > passing["lr"] and failing["batch"] != passing["batch"]
    asked = suspects(failing, passing, results, factors)
    assert asked == {"dtype": "fp32"}  # the level with the most finite runs up there

    def budget(answers):  # a flaky failure: each question costs repeated runs
        left = iter(range(answers))

        def probe(config):
            return amp_fp16_overflows(config) if next(left, None) is not None else None

        return probe

    offered = {**alternatives(failing, results, ["lr"], factors), **asked}
    # room for the two flips and one shared value: with the counts' suspect, that one is
    # the dtype, and the isolation stopped by the budget keeps what it showed
    found = isolate(failing, passing, budget(3), ["lr"], offered, suspects=list(asked))
    assert not found.complete
    assert found.context == ["dtype"] and found.shown == ["dtype", "lr"]
    assert found.needed == ["lr"]
    # without it, the shared values go in their order (the dtype last here) and the
    # budget ends on another
    last = {**{k: v for k, v in offered.items() if k != "dtype"}, "dtype": "fp32"}
    assert next(iter(last)) != "dtype"
    plain = isolate(failing, passing, budget(3), ["lr"], last)
    assert "dtype" not in plain.context and plain.shown == ["lr"]
    # with the budget to finish, both orders find the same minimal set
    whole = isolate(failing, passing, amp_fp16_overflows, ["lr"], offered, suspects=["dtype"])
    assert whole.complete and set(whole.minimal) == {"dtype", "lr"}
    assert "lr" in whole.ranges
