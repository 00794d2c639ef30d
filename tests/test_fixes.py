"""Verified fixes: each conclusion's smallest change and the audit's, run long on its seeds."""

from __future__ import annotations

import json

from nansearch.analysis.causes import Cause, Condition
from nansearch.analysis.conclusion import Conclusion
from nansearch.config import load_config
from nansearch.report.page import load_study, render
from nansearch.search.fix import Fix, format_conclusions
from nansearch.search.fix_plan import long_run_lr, plan_fixes, smallest_change
from nansearch.search.fixes import Verifier, verify_fixes
from nansearch.search.remedies import audit_changes
from nansearch.search.sweep import prepare
from tests.conftest import CUSTOM, DEMO, REPO

BASE = {"checkpoint": "fresh", "init": "pretrained", "dtype": "fp32", "lr": 1e-2}


def custom(*overrides: str):
    cfg = load_config(
        CUSTOM,
        [f"target.fn={REPO}/sweeps/custom_target.py:build", "tracking.wandb=off", *overrides],
    )
    factors, runner = prepare(cfg)
    return cfg, factors, runner


def isolated(failing: dict, reference: dict, name: str) -> dict:
    """A conclusion as the ranking writes one for an isolation that needs one value."""
    return {
        "kind": "isolated",
        "text": f"Not yet significant across runs: needs {name}={failing[name]}.",
        "isolation": {
            "trial": 0,
            "failing": failing,
            "reference": reference,
            "minimal": {name: failing[name]},
            "needed_alone": [name],
            "ranges": {},
        },
    }


def test_a_fix_that_holds_is_verified_over_the_longer_run():
    cfg, factors, runner = custom("steps=4", "search.seeds=2")
    failing = {**BASE, "batch": "labels-all-ignored"}
    reference = {**BASE, "batch": "clean", "lr": 1e-3}  # it differs in lr too
    first = runner.run(failing, seed=5)
    first.number = 0
    assert first.is_nan
    ranking = {"conclusions": [isolated(failing, reference, "batch")]}
    fixes = verify_fixes(cfg, factors, runner, ranking, [first])
    (fix,) = fixes
    assert fix.change == {"batch": "clean"}  # the reference's value, not padded-row
    assert fix.overrides == ["batch=clean"]
    assert fix.steps == 40 and fix.seeds == [5, 6]
    # held against the failing configuration with only the needed value made clean
    assert fix.reference == {**failing, "batch": "clean"}
    assert [r["outcome"] for r in fix.runs] == ["finite", "finite"]
    assert fix.verdict == "verified", fix.why
    assert "every seed finite" in fix.text


def test_a_fix_that_does_not_hold_says_so():
    """A change beside the point (the dtype, for a batch whose labels are all ignored)
    leaves every seed NaN; a learning rate too small to learn passes but trains worse
    than the clean reference. Both are reported as not sufficient, with what happened."""
    cfg, factors, runner = custom("steps=4")
    verifier = Verifier(cfg, factors, runner, steps=30)
    failing = {**BASE, "batch": "labels-all-ignored"}
    reference = {**BASE, "batch": "clean"}
    wrong = Fix(0, "batch=labels-all-ignored", "isolation", {"dtype": "bf16"}, failing,
                reference, 30, [1, 2])  # fmt: skip
    verifier.verify(wrong)
    assert wrong.verdict == "not sufficient"
    assert wrong.why.startswith("2 of 2 seeds failed: seed 1 ended nonfinite-loss at step 0")
    assert "not sufficient over 30 steps" in wrong.text
    slow = Fix(0, "lr above 0.005", "isolation", {"lr": 1e-7}, reference, reference, 30, [1])
    verifier.verify(slow)
    assert slow.runs[0]["outcome"] == "finite"
    assert slow.verdict == "not sufficient"
    assert "worse than the clean reference's" in slow.why
    assert slow.runs[0]["trend"] > slow.reference_runs[0]["trend"] + 0.1


def test_the_demo_fp16_fix_is_amp_fp16_and_the_audit_adds_a_larger_eps():
    cfg = load_config(DEMO, ["tracking.wandb=off"])
    factors, _ = prepare(cfg)
    failing = {"checkpoint": "opt-lm", "dtype": "fp16", "lr": 1e-3, "init": "pretrained",
               "batch": "clean"}  # fmt: skip
    reference = {**failing, "dtype": "fp32"}
    item = {**isolated(failing, reference, "dtype"), "kind": "cause",
            "conditions": [{"factor": "dtype", "op": "=", "value": "fp16"}]}  # fmt: skip
    amp_high_lr = {"kind": "cause", "conditions": [
        {"factor": "dtype", "op": "=", "value": "amp-fp16"},
        {"factor": "lr", "op": ">=", "value": 1e-4}]}  # fmt: skip
    assert smallest_change(item, failing, reference, factors, [item]) == {"dtype": "amp-fp16"}
    # amp-fp16 a cause of its own at this learning rate: of the next closest (bf16 and
    # fp32), the one the passing reference ran
    assert smallest_change(item, failing, reference, factors, [item, amp_high_lr]) == {
        "dtype": "fp32"
    }
    audit = {"findings": [{"check": "config.fp16-adam-eps", "subject": "dtype=fp16"},
                          {"check": "batch.labels-ignored", "subject": "batch=x"}]}  # fmt: skip
    assert audit_changes(item, audit) == [{"optimizer.eps": 1e-4}]
    fixes = plan_fixes({"conclusions": [item]}, [], factors, audit, 200, 3)
    assert fixes == []  # no run of the failing configuration: nothing to start from


def test_fixes_show_under_their_conclusion_on_the_terminal_and_in_the_report(tmp_path):
    fix = Fix(0, "dtype=fp16", "audit", {"optimizer.eps": 1e-4}, {"dtype": "fp16"}, None, 200,
              [1, 2, 3], verdict="verified", why="every seed finite")  # fmt: skip
    fp16 = Cause((Condition("dtype", "=", "fp16"),), nan=4, total=4, p_value=0.01,
                 p_adjusted=0.01, tried=1)  # fmt: skip
    ranking = {
        "study": "s",
        "factors": [],
        "conclusions": [
            Conclusion("dtype=fp16 alone is sufficient.", "cause", cause=fp16).to_json()
        ],
        "fixes": [fix.to_json()],
    }
    printed = format_conclusions(ranking)
    assert printed.splitlines() == [
        "1. dtype=fp16 alone is sufficient.",
        "   -> audit's fix optimizer.eps=0.0001: verified over 200 steps, 3 seeds; "
        "every seed finite",
    ]
    study = tmp_path / "s"
    study.mkdir()
    (study / "ranking.json").write_text(json.dumps(ranking))
    page = render(load_study(study))
    assert '<li class="fix verified"><b>verified</b>: <code>optimizer.eps=0.0001</code>' in page


def test_each_fix_is_a_wandb_run_with_job_type_fix(tmp_path):
    from nansearch.tracking.tracker import WandbTracker, end_session
    from tests.test_tracking import offline_runs

    end_session()
    fix = Fix(1, "dtype=fp16", "isolation", {"dtype": "amp-fp16"}, {"dtype": "fp16"},
              {"dtype": "fp32"}, 200, [3, 4], verdict="not sufficient",
              why="1 of 2 seeds failed")  # fmt: skip
    fix.runs = [
        {"seed": 3, "outcome": "finite", "steps_run": 200, "trend": 0.5},
        {"seed": 4, "outcome": "nonfinite-logits", "steps_run": 57, "trend": None},
    ]
    fix.reference_runs = [
        {"seed": 3, "outcome": "finite", "steps_run": 200, "trend": 0.4},
        {"seed": 4, "outcome": "finite", "steps_run": 200, "trend": 0.4},
    ]
    tracker = WandbTracker("offline", tmp_path / "f")
    tracker.start(load_config(CUSTOM, ["study=f"]))
    tracker.log_fix(fix.to_json())
    tracker.close()
    (run,) = offline_runs(tmp_path / "f")
    assert run["run"]["job_type"] == "fix"
    assert run["name"] == "fix-2-isolation"
    assert run["config"]["overrides"] == "dtype=amp-fp16"
    assert run["summary"]["verdict"] == "not sufficient"
    assert run["summary"]["finite_seeds"] == 1 and run["summary"]["seeds_run"] == 2
    assert "not-sufficient" in run["tags"]
    assert "rerun" not in run["summary"] and "rerun" not in run["config"]  # not verified


def test_a_learning_rate_fix_goes_below_the_edge_by_the_longer_run_and_the_usual_range():
    """The edge of a 20-step trial is not the edge of a 200-step run: the rate goes down by
    the ratio of the steps, and no higher than the optimizer's usual range."""
    assert long_run_lr(0.46, 20, 200, "adamw") == 0.01  # 0.046, above AdamW's usual 1e-2
    assert long_run_lr(0.004, 20, 200, "adamw") == 0.0004
    assert long_run_lr(0.5, 20, 200, "sgd") == 0.05
    assert long_run_lr(0.004, 0, 0, "adamw") == 0.004  # no lengths given: as it passed
    cfg = load_config(DEMO, ["tracking.wandb=off"])
    factors, _ = prepare(cfg)
    failing = {"checkpoint": "opt-lm", "init": "pretrained", "batch": "padded-row",
               "dtype": "amp-fp16", "lr": 0.73}  # fmt: skip
    item = {"kind": "cause", "rule": "lr above 0.47",
            "conditions": [{"factor": "lr", "op": ">=", "value": 0.47}],
            "boundary": {"lr": [0.46, 0.48]}}  # fmt: skip
    change = smallest_change(item, failing, None, factors, [item], 20, 200, "adamw")
    assert change == {"lr": 0.01}
    # the audit's config.lr-range fix is the same rate here: planned once
    audit = {"findings": [{"check": "config.lr-range", "subject": "lr"}]}
    assert audit_changes(item, audit, failing, "adamw") == [{"lr": 0.01}]
    assert audit_changes(item, audit, {**failing, "lr": 0.005}, "adamw") == []


def test_every_learning_rate_fix_of_one_cause_is_the_same_step_scaled_rate():
    """The counts' edge, an isolation's reference run and a bisected edge all give a
    passing rate of a 20-step trial: each goes down by the ratio of the steps, so the
    high rate under amp-fp16 gets one rate whichever evidence its conclusion rests on."""
    cfg = load_config(DEMO, ["tracking.wandb=off"])
    factors, _ = prepare(cfg)
    base = {"checkpoint": "opt-lm", "init": "reinit-normal", "dtype": "amp-fp16"}
    failing = {**base, "batch": "padded-row", "lr": 0.186}
    reference = {**base, "batch": "long-sequence", "lr": 0.137}
    stopped = {"trial": 39, "failing": failing, "reference": reference, "complete": False,
               "minimal": {"lr": 0.186}, "needed_alone": ["lr"], "ranges": {}}  # fmt: skip
    alone = {"kind": "isolated", "isolation": stopped}
    counted = {"kind": "cause", "rule": "lr above 0.16", "boundary": {"lr": [0.137, 0.186]},
               "conditions": [{"factor": "lr", "op": ">=", "value": 0.16}]}  # fmt: skip
    merged = {**counted, "isolation": stopped}
    bisected = {**alone, "isolation": {**stopped, "complete": True,
                                       "ranges": {"lr": {"passes": 0.14, "fails": 0.186}}}}  # fmt: skip
    for item in (alone, counted, merged, bisected):
        change = smallest_change(item, failing, reference, factors, [item], 20, 200, "adamw")
        assert change == {"lr": 0.01}, item
    # a lower passing rate goes down as far: 0.04 over 20 steps is 0.004 over 200
    low = {**alone, "isolation": {**stopped, "reference": {**reference, "lr": 0.04}}}
    change = smallest_change(low, failing, {**reference, "lr": 0.04}, factors, [low], 20, 200)
    assert change == {"lr": 0.004}
    # an isolation stopped early that showed the shared dtype needed offers the dtype too,
    # beside the rate: of the dtypes, the one that changes least, never fp16 (a cause)
    fp16 = {"kind": "cause", "conditions": [{"factor": "dtype", "op": "=", "value": "fp16"}]}
    shown = {**merged, "isolation": {**stopped, "needed_shared": ["dtype"],
                                     "minimal": {"dtype": "amp-fp16", "lr": 0.186}}}  # fmt: skip
    change = smallest_change(shown, failing, reference, factors, [fp16, shown], 20, 200)
    assert change is not None and set(change) <= {"lr", "dtype"}
    assert change.get("lr", 0.01) == 0.01 and change.get("dtype") not in ("fp16", "amp-fp16")


def test_a_fix_starts_from_a_failing_run_no_other_conclusion_explains():
    """A run above the learning-rate edge that also has every label ignored fails at step
    0 whatever its rate; the fix for the rate starts from a run only the rate explains."""
    from nansearch.trial.runner import TrialResult

    base = {"checkpoint": "opt-lm", "init": "pretrained", "dtype": "amp-fp16"}
    both = TrialResult({**base, "batch": "labels-all-ignored", "lr": 0.53}, 8, 20,
                       outcome="nonfinite-loss", first_bad_step=0, score=2.0, number=8)  # fmt: skip
    rate = TrialResult({**base, "batch": "clean", "lr": 0.73}, 38, 20,
                       outcome="nonfinite-logits", first_bad_step=6, score=1.7, number=38)  # fmt: skip
    passing = TrialResult({**base, "batch": "clean", "lr": 0.002}, 3, 20, score=0.1, number=3)
    labels = {"kind": "cause", "conditions": [
        {"factor": "batch", "op": "=", "value": "labels-all-ignored"}]}  # fmt: skip
    high = {"kind": "cause", "rule": "lr above 0.47", "boundary": {"lr": [0.46, 0.48]},
            "conditions": [{"factor": "lr", "op": ">=", "value": 0.47}]}  # fmt: skip
    cfg = load_config(DEMO, ["tracking.wandb=off"])
    factors, _ = prepare(cfg)
    ranking = {"conclusions": [labels, high]}
    (fix,) = [f for f in plan_fixes(ranking, [both, rate, passing], factors, None, 200, 2, 20)
              if f.conclusion == 1]  # fmt: skip
    assert fix.failing["batch"] == "clean" and fix.seeds == [38, 39]
    assert fix.change == {"lr": 0.01}
    # held against the reference's rate, lower than the fix's
    assert fix.reference == {**fix.failing, "lr": 0.002}


def test_the_high_rate_under_amp_fp16_holds_below_the_usual_range_and_not_below_its_edge():
    """The demo's fourth cause for real: AdamW at a rate past the usual range grows the
    activations past fp16's range within tens of steps. A rate just below the 20-step edge
    goes NaN over the longer run; the rate the fix proposes stays finite and learns."""
    cfg = load_config(DEMO, ["tracking.wandb=off"])
    factors, runner = prepare(cfg)
    failing = {"checkpoint": "opt-lm", "init": "pretrained", "batch": "clean",
               "dtype": "amp-fp16", "lr": 0.73}  # fmt: skip
    verifier = Verifier(cfg, factors, runner, steps=60)
    edge = Fix(0, "lr above 0.47", "isolation", {"lr": 0.46}, failing, None, 60, [30])
    verifier.verify(edge)
    assert edge.verdict == "not sufficient"
    assert edge.runs[0]["outcome"] == "nonfinite-logits" and edge.runs[0]["first_bad_step"] < 40
    usual = Fix(0, "lr above 0.47", "isolation", {"lr": 0.01}, failing, None, 60, [30])
    verifier.verify(usual)
    assert usual.verdict == "verified", usual.why
    assert usual.runs[0]["trend"] < 0.5  # it learns: the loss falls by more than half
    assert "no clean reference to compare" in usual.why


def test_a_conclusion_no_fix_held_for_says_so_with_what_was_tried(tmp_path):
    fixes = [
        Fix(0, "lr above 0.47", "isolation", {"lr": 0.046}, {"lr": 0.7}, None, 200, [1],
            verdict="not sufficient", why="1 of 1 seeds failed").to_json(),
        Fix(0, "lr above 0.47", "isolation", {"dtype": "amp-bf16"}, {"lr": 0.7}, None, 200, [1],
            verdict="not sufficient", why="loss grew").to_json(),
    ]  # fmt: skip
    ranking = {"conclusions": [{"text": "lr above 0.47 raises the NaN rate."}], "fixes": fixes}
    assert format_conclusions(ranking).splitlines()[-1] == (
        "   -> no fix held: tried lr=0.046, dtype=amp-bf16; the cause stands unfixed"
    )
    study = tmp_path / "s"
    study.mkdir()
    (study / "ranking.json").write_text(json.dumps({"study": "s", "factors": [], **ranking}))
    page = render(load_study(study))
    assert (
        '<li class="fix insufficient"><b>no fix held</b>: tried lr=0.046, dtype=amp-bf16; '
        "the cause stands unfixed</li>"
    ) in page


def test_the_audits_strip_fix_writes_a_stripped_copy_of_blip2_that_loads_as_opt_and_holds(
    tmp_path,
):
    """The demo's real blip2-full checkpoint: the audit finds its OPT under
    'language_model.'; the fix writes those weights, renamed, to the study folder, where
    they load into OPTForCausalLM with nothing missing and keep the failing run finite.
    Its W&B run carries what was stripped and the line that reruns it."""
    import torch
    from transformers import OPTForCausalLM

    from nansearch.audit import run_audit
    from nansearch.targets.loading import resolve_checkpoint
    from nansearch.tracking.tracker import WandbTracker, end_session
    from tests.test_tracking import offline_runs

    cfg = load_config(DEMO, ["tracking.wandb=off", f"out={tmp_path}", "study=s",
                             "search.verify_steps=30", "search.seeds=2"])  # fmt: skip
    factors, runner = prepare(cfg)
    audit = run_audit(cfg, factors, runner).to_json()
    assert any(f["check"] == "checkpoint.wrapped" for f in audit["findings"])
    failing = {"checkpoint": "blip2-full", "init": "uninitialized-missing", "batch": "clean",
               "dtype": "fp32", "lr": 1e-3}  # fmt: skip
    first = runner.run(failing, seed=5)
    first.number = 0
    assert first.is_nan
    item = {"kind": "cause", "rule": "checkpoint=blip2-full with init=uninitialized-missing",
            "conditions": [{"factor": "checkpoint", "op": "=", "value": "blip2-full"},
                           {"factor": "init", "op": "=", "value": "uninitialized-missing"}]}  # fmt: skip
    end_session()
    tracker = WandbTracker("offline", tmp_path / "s")
    tracker.start(cfg)
    heard = lambda fix: tracker.log_fix(fix.to_json())  # noqa: E731 (as the sweep does)
    fixes = verify_fixes(cfg, factors, runner, {"conclusions": [item]}, [first], audit, heard)
    tracker.close()
    (strip,) = [f for f in fixes if f.source == "audit"]
    dest = tmp_path / "s" / "fixes" / "blip2-full-stripped"  # out= is absolute here
    assert strip.change == {
        "factors.checkpoint.levels.blip2-full-stripped": str(dest),
        "checkpoint": "blip2-full-stripped",
    }
    assert "'language_model.' stripped from its keys" in strip.label
    assert (dest / "model.safetensors").is_file() and (dest / "config.json").is_file()
    model, info = OPTForCausalLM.from_pretrained(dest, output_loading_info=True)
    assert not info["missing_keys"]  # lm_head is tied to the embeddings, as in opt-lm
    opt = OPTForCausalLM.from_pretrained(resolve_checkpoint("demo:opt-lm"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  opt.state_dict().values(), strict=True))  # fmt: skip
    assert [r["outcome"] for r in strip.runs] == ["finite", "finite"]
    assert strip.verdict == "verified", strip.why
    assert strip.text.startswith("audit's fix checkpoint=blip2-full-stripped (blip2-full with")
    # the fix's W&B run, read back from its .wandb file
    (run,) = [r for r in offline_runs(tmp_path / "s") if r["name"] == "fix-1-audit"]
    assert run["run"]["job_type"] == "fix"
    assert run["config"]["label"] == run["summary"]["label"] == strip.label
    assert f"saved to {dest}" in run["config"]["label"]
    printed = format_conclusions({"conclusions": [{"text": "x"}], "fixes": [strip.to_json()]})
    assert f"      rerun: {run['summary']['rerun']}\n" in printed + "\n"
    assert run["config"]["rerun"] == run["summary"]["rerun"] == strip.rerun
    assert strip.rerun.startswith(f"nansearch sweep {cfg.study_dir / 'config.yaml'} study=s-fix-1-")
    assert strip.rerun.endswith(
        f"factors.checkpoint.levels.blip2-full-stripped={dest} checkpoint=blip2-full-stripped "
        "init=uninitialized-missing batch=clean dtype=fp32 lr=0.001"
    )


def _truncated(seed: int, skip: bool, steps: int = 12):
    *_, runner = custom(f"factors.batch.skip_empty_labels={str(skip).lower()}",
                        "factors.batch.levels=[clean,truncated-answers]")  # fmt: skip
    return runner.run({**BASE, "batch": "truncated-answers"}, seed=seed, steps=steps)


def test_skipping_empty_label_batches_keeps_a_run_finite_and_trains_on_the_rest():
    """truncated-answers leaves half the seeds' batches with no counted label: 0/0 at step
    0. With the audit's fix those steps are skipped; the other seeds train as before."""
    plain = {seed: _truncated(seed, skip=False) for seed in range(1, 9)}
    empty = [s for s, r in plain.items() if r.is_nan]
    full = [s for s, r in plain.items() if not r.is_nan]
    assert empty and full  # both kinds among these seeds
    assert all(plain[s].outcome == "nonfinite-loss" and plain[s].first_bad_step == 0 for s in empty)
    for seed in empty:
        skipped = _truncated(seed, skip=True)
        assert skipped.outcome == "finite" and skipped.loss == []
        assert skipped.skipped_batches == 12
    trained = _truncated(full[0], skip=True)
    assert trained.skipped_batches == 0 and trained.loss == plain[full[0]].loss
    cfg, factors, runner = custom("steps=4", "factors.batch.levels=[clean,truncated-answers]")
    verifier = Verifier(cfg, factors, runner, steps=30)
    failing = {**BASE, "batch": "truncated-answers"}
    fix = Fix(0, "batch=truncated-answers", "audit", {"factors.batch.skip_empty_labels": True},
              failing, None, 30, [empty[0], full[0]])  # fmt: skip
    verifier.verify(fix)
    assert fix.verdict == "verified", fix.why
    assert f"seed {empty[0]} skipped every step" in fix.why
    assert fix.overrides == ["factors.batch.skip_empty_labels=true"]


def test_skipping_a_batch_whose_every_label_is_ignored_trains_nothing_and_says_so():
    cfg, factors, runner = custom("steps=4")
    verifier = Verifier(cfg, factors, runner, steps=30)
    failing = {**BASE, "batch": "labels-all-ignored"}
    fix = Fix(0, "batch=labels-all-ignored", "audit", {"factors.batch.skip_empty_labels": True},
              failing, {**BASE, "batch": "clean"}, 30, [1, 2])  # fmt: skip
    verifier.verify(fix)
    assert [r["outcome"] for r in fix.runs] == ["finite", "finite"]
    assert [r["skipped_batches"] for r in fix.runs] == [30, 30]
    assert fix.verdict == "not sufficient"
    assert fix.why == (
        "every seed finite, but each skipped all 30 of its steps: its batch held no counted "
        "label, so nothing trained"
    )


def test_a_verified_fix_gives_the_line_that_reruns_its_configuration_with_the_fix(tmp_path):
    """The line names the study's own config and pins every factor to the failing run's
    value with the fix applied; pasted, it runs that one configuration on fresh seeds."""
    import shlex

    from nansearch.cli.main import build_parser
    from nansearch.config import save_config
    from nansearch.search.sweep import run_sweep

    cfg, factors, runner = custom("steps=4", "search.seeds=2", f"out={tmp_path}", "study=c")
    (tmp_path / "c").mkdir()
    save_config(cfg, tmp_path / "c" / "config.yaml")  # as the sweep wrote it
    failing = {**BASE, "batch": "labels-all-ignored", "lr": 0.0123456789}
    first = runner.run(failing, seed=5)
    first.number = 0
    item = isolated(failing, {**failing, "batch": "clean"}, "batch")
    (fix,) = verify_fixes(cfg, factors, runner, {"conclusions": [item]}, [first])
    assert fix.verdict == "verified", fix.why
    assert fix.rerun == (
        f"nansearch sweep {tmp_path}/c/config.yaml study=c-fix-1-1 trials=2 steps=40 "
        "checkpoint=fresh init=pretrained dtype=fp32 lr=0.0123457 batch=clean"
    )
    written = json.loads(json.dumps(fix.to_json()))  # as ranking.json holds it
    assert Fix.from_json(written).to_json() == written
    assert f"      rerun: {fix.rerun}" in format_conclusions(
        {"conclusions": [item], "fixes": [written]}
    )
    args = build_parser().parse_args(shlex.split(fix.rerun)[1:])
    pinned = load_config(args.sweep_file, args.overrides)
    assert pinned.factors.batch.levels == ["clean"]
    assert pinned.factors.checkpoint.levels == {"fresh": "fresh"}
    assert pinned.factors.lr.low == pinned.factors.lr.high == 0.0123457
    outcome = run_sweep(pinned)
    assert len(outcome.results) == 2
    assert len({r.seed for r in outcome.results}) == 2
    for result in outcome.results:
        assert result.params == {**BASE, "batch": "clean", "lr": 0.0123457}
        assert result.outcome == "finite" and len(result.loss) == 40


def test_a_pinned_factor_names_what_is_valid_when_its_value_is_not():
    import pytest

    from nansearch.config import ConfigError

    with pytest.raises(ConfigError) as err:
        custom("checkpoint=nope", "lr=fast", "colour=red")
    text = str(err.value)
    assert "checkpoint=nope: not a checkpoint level; valid levels are fresh" in text
    assert "lr=fast: not a number; pin the learning rate as lr=0.001" in text
    assert "colour=red: colour is neither a setting nor a factor; pin a factor with one of" in text


def test_a_stripped_copy_in_a_relative_study_folder_is_named_from_where_the_sweep_ran():
    from pathlib import Path

    from nansearch.search.remedies import Context, audit_remedies

    item = {"conditions": [{"factor": "checkpoint", "op": "=", "value": "blip2.full"}]}
    audit = {"findings": [{"check": "checkpoint.wrapped", "subject": "checkpoint=blip2.full"}]}
    ctx = Context(study_dir=Path("runs/demo"), checkpoints={"blip2.full": "demo:blip2-full"})
    (remedy,) = audit_remedies(item, audit, {"checkpoint": "blip2.full"}, ctx)
    assert remedy.values == {  # no dot in the level: overrides split on dots
        "factors.checkpoint.levels.blip2-full-stripped": "./runs/demo/fixes/blip2-full-stripped",
        "checkpoint": "blip2-full-stripped",
    }
    assert remedy.writes == {"strip": {"level": "blip2.full", "checkpoint": "demo:blip2-full",
                                       "to": "./runs/demo/fixes/blip2-full-stripped"}}  # fmt: skip
