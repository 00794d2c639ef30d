"""Verified fixes: each conclusion's smallest change and the audit's, run long on its seeds."""

from __future__ import annotations

import json

from nansearch.config import load_config
from nansearch.report.page import load_study, render
from nansearch.search.fixes import (
    Fix,
    Verifier,
    audit_changes,
    format_conclusions,
    plan_fixes,
    smallest_change,
    verify_fixes,
)
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
    ranking = {
        "study": "s",
        "factors": [],
        "conclusions": [{"kind": "cause", "text": "dtype=fp16 alone is sufficient."}],
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
