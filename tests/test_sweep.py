"""Whole sweeps: files written, crashes recorded, resume, custom targets."""

import itertools
import json
import subprocess
import sys

import optuna
import pytest

from nansearch.cli.sweep import sweep
from nansearch.config import NansearchError, load_config
from nansearch.factors import build_factors
from nansearch.search import pairwise
from tests.conftest import CUSTOM, DEMO, REPO, demo_overrides


def test_demo_sweep_writes_the_study_folder(tmp_path):
    outcome = sweep(DEMO, demo_overrides(trials=12))
    folder = tmp_path / "runs" / "t"
    for name in ("trials.jsonl", "ranking.json", "config.yaml", "optuna-journal.log"):
        assert (folder / name).is_file(), name
    lines = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    assert [line["number"] for line in lines] == list(range(12))
    assert {"number", "params", "outcome", "first_bad_step", "score"} <= set(lines[0])
    ranking = json.loads((folder / "ranking.json").read_text())
    assert {f["name"] for f in ranking["factors"]} == {"checkpoint", "dtype", "lr", "init", "batch"}
    level = ranking["factors"][0]["levels"][0]
    assert {"value", "nan", "total", "rate", "ci_low", "ci_high"} <= set(level)
    effects = [f["effect"] for f in ranking["factors"]]
    assert effects == sorted(effects, reverse=True)
    assert sum(line["outcome"] != "finite" for line in lines) == ranking["nan"] + ranking["errors"]
    assert outcome.ranking["trials"] == 12
    assert "trials: 12" in (folder / "config.yaml").read_text()
    # what ran per phase adds up to the trials; the study keeps the plan under its own name
    assert sum(ranking["phases"].values()) == 12
    study = optuna.load_study(
        study_name="t",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(folder / "optuna-journal.log"))
        ),
    )
    assert "phases" not in study.user_attrs
    assert set(study.user_attrs["phase_budgets"]) >= {"cover", "confirm", "isolate"}
    # the ranking replays from the study's files to the same bytes, fixes aside
    from benchmarks.replay import replay

    again = replay(folder, tmp_path / "replayed").read_text()
    before = {k: v for k, v in ranking.items() if k not in ("ignored", "fixes")}
    assert again == json.dumps(before, indent=2) + "\n"


def test_the_cover_holds_every_pair_of_levels_and_the_learning_rate_in_strata():
    cfg = load_config(DEMO)
    factors = build_factors(cfg)
    size = pairwise.size(factors, seed=0)
    plan = pairwise.cover_plan(factors, size, seed=0)
    lr = cfg.factors.lr
    strata = pairwise.strata(factors)
    lr_dist = next(f for f in factors if f.name == "lr").distribution()
    assert strata == 4  # dtype and batch have 5 levels each: 4 strata, the most
    levels = {
        "checkpoint": list(cfg.factors.checkpoint.levels),
        "dtype": cfg.factors.dtype.levels,
        "init": list(cfg.factors.init.levels),
        "batch": cfg.factors.batch.levels,
    }
    seen = {
        (a, str(p[a]), b, str(p[b])) for p in plan for a, b in itertools.combinations(levels, 2)
    }
    for a, b in itertools.combinations(levels, 2):
        for x, y in itertools.product(levels[a], levels[b]):
            assert (a, str(x), b, str(y)) in seen, (a, x, b, y)
    for name, values in levels.items():  # every level of lr's strata meets every level
        for value in values:
            met = {pairwise.stratum(p["lr"], lr_dist, strata) for p in plan if p[name] == value}
            assert met == set(range(strata)), (name, value)
    assert all(lr.low <= p["lr"] <= lr.high for p in plan)
    # as few as combinatorial testing needs: dtype x batch alone is 25 pairs
    assert 25 <= size <= 30
    assert plan == pairwise.cover_plan(factors, size, seed=0)  # the seed decides it


def test_a_cover_longer_than_one_design_starts_another():
    factors = build_factors(load_config(DEMO))
    size = pairwise.size(factors, seed=3)
    plan = pairwise.cover_plan(factors, 3 * size, seed=3)
    assert len(plan) == 3 * size
    for part in (plan[:size], plan[size:]):  # the second design is drawn anew
        assert len({(p["dtype"], p["batch"]) for p in part}) == 25


def test_a_trial_that_raises_is_recorded_and_the_sweep_completes(tmp_path):
    sweep(
        DEMO,
        demo_overrides(
            trials=8, **{"factors.batch.levels": "[clean,out-of-range-ids]", "search.cover": 8}
        ),
    )
    lines = [
        json.loads(line) for line in (tmp_path / "runs/t/trials.jsonl").read_text().splitlines()
    ]
    errors = [line for line in lines if line["outcome"] == "error"]
    assert len(lines) == 8 and len(errors) == 4
    assert all(line["params"]["batch"] == "out-of-range-ids" for line in errors)
    assert all("IndexError" in line["error"] for line in errors)
    study = optuna.load_study(
        study_name="t",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs/t/optuna-journal.log"))
        ),
    )
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 4
    assert states.count(optuna.trial.TrialState.COMPLETE) == 4


def test_resume_continues_the_trial_count(tmp_path):
    sweep(DEMO, demo_overrides(trials=5))
    with pytest.raises(NansearchError, match=r"already exists.*--resume"):
        sweep(DEMO, demo_overrides(trials=8))
    outcome = sweep(DEMO, demo_overrides(trials=8), resume=True)
    assert [r.number for r in outcome.results] == list(range(8))
    lines = (tmp_path / "runs/t/trials.jsonl").read_text().splitlines()
    assert len(lines) == 8


def test_custom_target_from_a_file_path_runs_in_a_sweep(tmp_path):
    outcome = sweep(
        CUSTOM,
        [
            "out=runs",
            "trials=9",
            "steps=3",
            "tracking.wandb=off",
            "factors.dtype.levels=[fp32]",
            f"target.fn={REPO}/sweeps/custom_target.py:build",
        ],
    )
    by_batch = {}
    for r in outcome.results:
        by_batch.setdefault(r.params["batch"], set()).add(r.outcome)
    # its hand-written attention masks with -inf: an all-padding row is 0/0 in softmax
    assert by_batch["padded-row"] == {"nonfinite-logits"}
    assert by_batch["clean"] == {"finite"}
    assert by_batch["labels-all-ignored"] == {"nonfinite-loss"}


def test_make_style_cli_run_prints_the_ranking(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nansearch", "sweep", DEMO, *demo_overrides(trials=4, steps=2)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "rank factor" in proc.stdout and "ranking" in proc.stdout
    assert "4/4" in proc.stderr  # the progress bar reached the budget


def test_a_sweep_whose_every_trial_errors_exits_1_and_names_the_first_error(tmp_path):
    # every batch holds an id past the vocabulary: the embedding raises IndexError in each trial
    overrides = demo_overrides(
        trials=3, steps=2, **{"factors.batch.levels": "[out-of-range-ids]", "search.cover": 3}
    )
    proc = subprocess.run(
        [sys.executable, "-m", "nansearch", "sweep", DEMO, *overrides],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "every one of the 3 trials" in line]
    assert len(said) == 1
    assert "trial 0: IndexError" in said[0] and "runs/t/trials.jsonl" in said[0]
    assert "No cause found" not in proc.stdout
    ranking = json.loads((tmp_path / "runs/t/ranking.json").read_text())
    assert [c["kind"] for c in ranking["conclusions"]] == ["all-errors"]
    assert ranking["conclusions"][0]["error"].startswith("IndexError")
