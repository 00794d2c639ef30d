"""``nansearch rerun`` on a small real sweep: same seed, same first bad step, on the CPU."""

import json
import shutil
import subprocess
import sys

import pytest

from nansearch.analysis.conclusion import Conclusion
from nansearch.analysis.ranking import rank
from nansearch.cli.main import main as cli_main
from nansearch.cli.sweep import sweep
from nansearch.config import NansearchError
from nansearch.diagnose.rerun import fresh_seeds, rerun_study, select, served
from nansearch.trial.runner import TrialResult
from tests.conftest import REPO

# Pure fp16 fails in its first update; fp16 autocast at lr 6..8 overflows one step later
# (the edge is near lr 2.5, where some CPUs' kernels stay finite).
SWEEP = f"""
include: [{REPO}/configs/opt-target.yaml]
study: t
trials: 4
steps: 3
tracking: {{wandb: "off"}}
factors:
  checkpoint: {{levels: {{opt-lm: "demo:opt-lm"}}}}
  dtype: {{levels: [fp16, amp-fp16]}}
  lr: {{low: 6.0, high: 8.0}}
"""
RECORD_KEYS = {
    "trial",
    "params",
    "seed",
    "diagnosis",
    "reproduced",
    "seed_rate",
    "first_bad_step",
    "outcome",
    "stage",
    "module",
    "trail",
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_cache):
    """A finished study, swept once; each test gets its own copy."""
    root = tmp_path_factory.mktemp("study")
    (root / "sweep.yaml").write_text(SWEEP)
    sweep(str(root / "sweep.yaml"), [f"out={root / 'runs'}"])
    return root / "runs"


@pytest.fixture
def runs(finished, tmp_path):
    return shutil.copytree(finished, tmp_path / "runs")


def trials_of(runs):
    lines = (runs / "t" / "trials.jsonl").read_text().splitlines()
    return {line["number"]: line for line in map(json.loads, lines)}


def test_a_rerun_reproduces_each_trials_first_bad_step(runs):
    trials = trials_of(runs)
    assert {t["outcome"] for t in trials.values()} == {"nonfinite-params", "nonfinite-logits"}
    pure = min(n for n, t in trials.items() if t["params"]["dtype"] == "fp16")
    autocast = min(n for n, t in trials.items() if t["params"]["dtype"] == "amp-fp16")
    outcome = rerun_study(runs / "t", numbers=[pure, autocast], seeds=1)

    assert outcome.files == [runs / "t" / "reruns" / f"trial-{n}.json" for n in (pure, autocast)]
    for number, path in zip((pure, autocast), outcome.files, strict=True):
        record = json.loads(path.read_text())
        trial = trials[number]
        assert set(record) >= RECORD_KEYS
        assert (record["trial"], record["params"], record["seed"]) == (
            number,
            trial["params"],
            trial["seed"],
        )
        assert record["reproduced"] is True
        assert (record["outcome"], record["first_bad_step"]) == (
            trial["outcome"],
            trial["first_bad_step"],
        )
        assert record["seed_rate"] == {"nan": 1, "total": 1}
        assert [s["seed"] for s in record["seeds"]] == fresh_seeds(trial["seed"], 1)
    pure_record, autocast_record = outcome.records
    assert pure_record.stage == "optimizer" and pure_record.first_bad_step == 0
    assert autocast_record.stage == "forward" and autocast_record.first_bad_step == 1
    assert "overflowed float16" in autocast_record.diagnosis
    # the typed record is what its file holds
    assert [r.to_json() for r in outcome.records] == [
        json.loads(p.read_text()) for p in outcome.files
    ]


def test_make_rerun_prints_the_diagnosis_of_the_latest_study(runs):
    proc = subprocess.run(
        [sys.executable, "-m", "nansearch", "rerun", "--out", str(runs), "--top=1", "--seeds=1"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=runs.parent,
    )
    assert proc.returncode == 0, proc.stderr
    top = max(trials_of(runs).values(), key=lambda t: (t["score"], -t["number"]))
    assert f"trial {top['number']}  " in proc.stdout
    assert "became NaN in the optimizer update: AdamW eps 1e-08 is 0 in float16" in proc.stdout
    assert f"reproduced with seed {top['seed']}; NaN in 1/1 fresh seeds" in proc.stdout
    assert (runs / "t" / "reruns" / f"trial-{top['number']}.json").is_file()


def test_trials_come_from_the_optuna_storage_without_trials_jsonl(runs):
    expected = trials_of(runs)
    (runs / "t" / "trials.jsonl").unlink()
    heard = []

    def broken(record):
        raise RuntimeError("tracker down")

    outcome = rerun_study(runs / "t", top=1, seeds=0, on_record=heard.append)
    again = rerun_study(runs / "t", top=1, seeds=0, on_record=broken)  # must not stop it
    assert heard == outcome.records and again.records[0].trial == heard[0].trial
    assert heard[0].reproduced and heard[0].seed == expected[heard[0].trial]["seed"]
    assert heard[0].seed_rate == {"nan": 0, "total": 0}


def test_bad_input_is_a_clear_error(runs, capsys):
    with pytest.raises(NansearchError, match=r"--trial 99: no such trial \(trials: 0 to 3\)"):
        rerun_study(runs / "t", numbers=[99])
    with pytest.raises(NansearchError, match="--top 0: rerun at least 1 trial"):
        rerun_study(runs / "t", top=0)
    assert cli_main(["rerun", "nope", "--out", str(runs)]) == 2
    err = capsys.readouterr().err
    assert "no study there (no config.yaml); studies under" in err and ": t\n" in err
    assert cli_main(["rerun", "--out", str(runs / "empty")]) == 2
    assert "no study under" in capsys.readouterr().err


def test_select_ranks_failures_worst_first_once_per_configuration():
    def trial(number, outcome, score, lr):
        return TrialResult(
            params={"lr": lr}, seed=number, steps=4, outcome=outcome, score=score, number=number
        )

    results = [
        trial(0, "finite", 0.5, 1e-3),
        trial(1, "nonfinite-loss", 1.25, 0.1),
        trial(2, "nonfinite-params", 2.0, 0.2),
        trial(3, "error", None, 0.3),
        trial(4, "nonfinite-params", 2.0, 0.2),  # the same configuration as trial 2
        trial(5, "nonfinite-logits", 1.5, 0.4),
    ]
    assert [p.trial.number for p in select(results, 3, None)] == [2, 5, 1]
    assert [p.trial.number for p in select(results, 1, None)] == [2]
    assert [p.trial.number for p in select(results, 3, [0, 3, 0])] == [0, 3]
    assert all(p.serves is None for p in select(results, 3, None))  # no conclusions given


def test_select_takes_one_trial_per_conclusion_before_a_second_of_any():
    """Every step-0 failure scores 2.0: by score alone the three lowest numbers, all fp16."""

    def trial(number, dtype, batch, nan, lr):
        outcome = "nonfinite-loss" if batch == "labels-all-ignored" else "nonfinite-params"
        return TrialResult(
            params={"dtype": dtype, "batch": batch, "lr": lr},
            seed=number,
            steps=4,
            outcome=outcome if nan else "finite",
            score=2.0 if nan else 0.3,
            first_bad_step=0 if nan else None,
            number=number,
            phase="cover",
        )

    results = [trial(0, "fp16", "labels-all-ignored", True, 0.5)]  # both causes at once
    results += [trial(1 + n, "fp16", "clean", True, 1e-3 * (n + 1)) for n in range(8)]
    results += [trial(9 + n, "fp32", "labels-all-ignored", True, 1e-3 * (n + 1)) for n in range(6)]
    results += [trial(15 + n, "fp32", "clean", False, 1e-3 * (n + 1)) for n in range(10)]
    results.append(trial(25, "bf16", "padded-row", True, 0.5))  # one NaN run, no cause
    results.append(trial(26, "bf16", "clean", False, 0.5))
    ranking = rank(
        results,
        [
            ("dtype", ["fp32", "bf16", "fp16"]),
            ("batch", ["clean", "labels-all-ignored", "padded-row"]),
        ],
    )
    conclusions = ranking["conclusions"]
    rules = [c.get("rule") for c in conclusions]
    assert rules[:2] == ["dtype=fp16", "batch=labels-all-ignored"]
    assert conclusions[2]["kind"] == "unexplained" and conclusions[2]["trials"] == [25]

    before = [r.number for r in sorted(results, key=lambda r: (-r.score, r.number))[:3]]
    assert before == [0, 1, 2]  # what ranking by score alone reran: dtype=fp16 three times
    typed = [Conclusion.from_json(c) for c in conclusions]
    picks = select(results, 3, None, typed)
    # trial 0 holds both causes: each cause gets a trial that holds it alone
    assert [(p.trial.number, p.serves) for p in picks] == [(1, 0), (9, 1), (25, 2)]
    assert [p.trial.number for p in select(results, 5, None, typed)] == [1, 9, 25, 0, 2]
    (named,) = select(results, 3, [0], typed)
    assert (named.serves, named.holds) == (0, (0, 1))
    assert served(named, typed) == {
        "serves": {"conclusion": 1, "kind": "cause", "rule": "dtype=fp16"},
        "holds": [
            {"conclusion": 1, "kind": "cause", "rule": "dtype=fp16"},
            {"conclusion": 2, "kind": "cause", "rule": "batch=labels-all-ignored"},
        ],
    }
