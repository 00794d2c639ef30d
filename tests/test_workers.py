"""Several workers on one machine: the budget is shared, and nothing is lost when one dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nansearch.cli.sweep import sweep
from nansearch.config import ConfigError, load_config
from nansearch.search.queue import OWNER_ATTR, RESULT_ATTR, retried_from
from nansearch.search.storage import open_storage
from nansearch.search.workers import plan
from tests.conftest import DEMO, REPO, demo_overrides

FACTORS = 5  # checkpoint, init, batch, dtype, lr


def steady_sweep(folder: Path, study: str = "steady", trials: int = 4, steps: int = 60) -> Path:
    """A sweep whose every trial stays finite and runs all its steps, so a worker can be
    caught in the middle of one."""
    path = folder / f"{study}.yaml"
    path.write_text(
        f"""
study: {study}
out: runs
trials: {trials}
steps: {steps}
tracking: {{wandb: "off"}}
target: {{kind: causal-lm, model_class: OPTForCausalLM, batch_size: 4, seq_len: 16}}
factors:
  checkpoint: {{levels: {{opt-lm: "demo:opt-lm"}}}}
  dtype: {{levels: [fp32]}}
  lr: {{low: 1.0e-4, high: 1.0e-3}}
  batch: {{levels: [clean]}}
"""
    )
    return path


def nansearch(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "nansearch", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C sees it
    )


def wait_for(condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def load(storage, study: str = "steady") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=storage)


def running_trial_of_a_worker(storage, study: str = "steady", parent: int | None = None):
    """A trial in the middle of its training, with the pid of the worker running it.

    Its values all written means the worker is past its last storage write before the
    training, so a kill now leaves no storage lock behind.
    """

    def find():
        try:
            trials = load(storage, study).get_trials(states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            return None
        for trial in trials:
            pid = trial.user_attrs.get(OWNER_ATTR, {}).get("pid")
            if pid and pid != parent and len(trial.params) == FACTORS:
                return trial, pid
        return None

    found = wait_for(find, "a worker's running trial")
    time.sleep(0.2)
    return found


def assert_accounted(study: optuna.Study, folder: Path, budget: int, lost: set[int] = frozenset()):
    """Exactly ``budget`` trials recorded, the ``lost`` ones failed without a result, and
    every number in the study one or the other; trials.jsonl holds the recorded ones."""
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))
    done = [t for t in trials if RESULT_ATTR in t.user_attrs]
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in done)
    assert len(done) == budget
    assert {t.number for t in trials if RESULT_ATTR not in t.user_attrs} == set(lost)
    assert all(t.state == TrialState.FAIL for t in trials if t.number in lost)
    lines = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    assert [line["number"] for line in lines] == [t.number for t in done]
    return done


def test_workers_are_pinned_round_robin_and_take_the_threads_setting(monkeypatch):
    cfg = load_config(DEMO)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    specs = plan(cfg, 5, seed=7)
    assert [s.gpu for s in specs] == ["3", "5", "3", "5", "3"]
    assert {s.threads for s in specs} == {1}  # the default
    assert {s.threads for s in plan(load_config(DEMO, ["threads=3"]), 5, seed=7)} == {3}
    assert [s.sampler_seed for s in specs] == [7, 8, 9, 10, 11]
    assert all(s.gpu is None for s in plan(load_config(DEMO, ["device=cpu"]), 2, seed=0))


def test_two_workers_on_one_machine_share_the_journal_budget(tmp_path):
    outcome = sweep(str(steady_sweep(tmp_path, trials=8, steps=40)), [], workers=2)
    folder = tmp_path / "runs" / "steady"
    study = load(open_storage(None, folder))
    done = assert_accounted(study, folder, budget=8)
    assert [r.number for r in outcome.results] == list(range(8))
    owners = {t.user_attrs[OWNER_ATTR]["pid"] for t in done}
    assert len(owners) == 2 and os.getpid() not in owners  # both workers, not the parent
    assert outcome.ran_here == 8 and outcome.complete and not outcome.interrupted


OWN_CODE = {
    "command": (
        str(REPO / "sweeps" / "script.yaml"),
        [f"target.program={REPO}/examples/train.py", f"target.config={REPO}/examples/train.yaml"],
    ),
    "function": (
        str(REPO / "sweeps" / "own_loop.yaml"),
        [f"target.fn={REPO}/examples/own_loop.py:train"],
    ),
}


@pytest.mark.parametrize("kind", sorted(OWN_CODE))
def test_two_workers_share_the_budget_of_the_users_own_code(tmp_path, kind):
    """Each worker process runs the user's script (forked from the worker) or function."""
    sweep_file, paths = OWN_CODE[kind]
    outcome = sweep(
        sweep_file, [*demo_overrides(study="own", trials=8, steps=3), *paths], workers=2
    )
    folder = tmp_path / "runs" / "own"
    done = assert_accounted(load(open_storage(None, folder), "own"), folder, budget=8)
    owners = {t.user_attrs[OWNER_ATTR]["pid"] for t in done}
    assert len(owners) == 2 and os.getpid() not in owners
    lines = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    assert not [line["error"] for line in lines if line["outcome"] == "error"]
    assert any(line["outcome"].startswith("nonfinite") for line in lines)
    assert outcome.complete and outcome.ran_here == 8


def test_a_worker_killed_mid_trial_loses_nothing(tmp_path):
    proc = nansearch("sweep", str(steady_sweep(tmp_path)), "--workers", "2", cwd=tmp_path)
    storage = open_storage(None, tmp_path / "runs" / "steady")
    victim, pid = running_trial_of_a_worker(storage, parent=proc.pid)
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert f"pid {pid}) stopped with signal 9" in err

    study = load(storage)
    done = assert_accounted(study, tmp_path / "runs" / "steady", budget=4, lost={victim.number})
    (retry,) = [t for t in study.get_trials() if retried_from(t) == victim.number]
    assert retry.params == victim.params and retry in done
    assert retry.user_attrs[OWNER_ATTR]["pid"] != pid


def test_ctrl_c_stops_after_the_running_trial_and_resume_meets_the_budget(tmp_path):
    path = steady_sweep(tmp_path, trials=8, steps=300)  # long enough to be caught running
    proc = nansearch("sweep", str(path), "--workers", "2", cwd=tmp_path)
    storage = open_storage(None, tmp_path / "runs" / "steady")
    trial, _ = running_trial_of_a_worker(storage, parent=proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "--resume" in out

    study = load(storage)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trial.number] == TrialState.COMPLETE  # the running trial was recorded
    assert TrialState.RUNNING not in states.values()
    stopped = sum(s == TrialState.COMPLETE for s in states.values())
    assert stopped < 8

    outcome = sweep(str(path), [], resume=True)
    assert_accounted(load(storage), tmp_path / "runs" / "steady", budget=8)
    assert outcome.complete and outcome.ran_here == 8 - stopped


def test_ctrl_c_in_a_one_worker_sweep_records_the_running_trial(tmp_path):
    path = steady_sweep(tmp_path, trials=3, steps=400)  # long enough to be caught running
    storage = open_storage(None, tmp_path / "runs" / "steady")
    caught = []

    def press_ctrl_c():
        caught.append(running_trial_of_a_worker(storage)[0])
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=press_ctrl_c, daemon=True)
    watcher.start()
    outcome = sweep(str(path), [])
    watcher.join()
    assert outcome.interrupted and not outcome.complete
    assert outcome.results[-1].number == caught[0].number  # recorded, and nothing after it
    assert not load(storage).get_trials(states=(TrialState.RUNNING,))


@pytest.mark.parametrize(
    ("override", "named"), [("workers=0", "workers=0"), ("heartbeat.grace=5", "grace=5")]
)
def test_bad_worker_settings_are_named(override, named):
    with pytest.raises(ConfigError, match=named):
        load_config(DEMO, [override])
