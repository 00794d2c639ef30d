"""One study in a real PostgreSQL, shared by workers as if on several machines.

Each test gets a database of its own, dropped afterwards. The server is the one at
127.0.0.1:5432 (``.ci/run`` starts it); where none runs, these tests skip, unless
NANSEARCH_TEST_POSTGRES names the server, when they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import uuid

import optuna
import pytest

from nansearch.cli.sweep import sweep
from nansearch.cli.worker import worker
from nansearch.config import NansearchError, load_config
from nansearch.factors import build_factors
from nansearch.search.queue import OWNER_ATTR, retried_from
from nansearch.search.storage import open_storage
from nansearch.search.study import Search
from tests.conftest import DEMO, REPO, demo_overrides
from tests.test_workers import (
    assert_accounted,
    load,
    nansearch,
    running_trial_of_a_worker,
    steady_sweep,
)

SERVER = os.environ.get("NANSEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


@pytest.fixture
def database() -> str:
    """The URL of a fresh database, dropped after the test."""
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        admin = psycopg2.connect(f"{SERVER}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        if "NANSEARCH_TEST_POSTGRES" in os.environ:
            raise
        pytest.skip(f"no PostgreSQL at {SERVER}: {exc}")
    admin.autocommit = True
    name = f"nansearch_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{SERVER}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://postgres@127.0.0.1:1/nope",
            "storage='postgresql://postgres@127.0.0.1:1/nope': cannot open it: "
            '(psycopg2.OperationalError) connection to server at "127.0.0.1", port 1 failed',
        ),
        (
            "postgresql://postgres:hunter2@127.0.0.1:1/nope",
            "storage='postgresql://postgres:***@127.0.0.1:1/nope': cannot open it",
        ),
        ("nonsense", "storage='nonsense': not a storage URL; use e.g. sqlite:///study.db"),
        (
            "nonsense://somewhere",
            "storage='nonsense://somewhere': cannot open it: Can't load plugin",
        ),
    ],
)
def test_a_wrong_or_unreachable_storage_is_named_before_any_trial(tmp_path, url, message):
    with pytest.raises(NansearchError, match=re.escape(message)) as raised:
        sweep(DEMO, demo_overrides(storage=url))
    assert "hunter2" not in str(raised.value)
    assert not (tmp_path / "runs" / "t" / "trials.jsonl").exists()
    with pytest.raises(NansearchError, match=re.escape(message)):
        worker("t", url)


def test_a_worker_cannot_join_a_study_that_does_not_exist(database):
    with pytest.raises(NansearchError, match=r"study 'ghost' not found in postgresql://.*sweep"):
        worker("ghost", database)


def test_two_workers_share_a_postgres_study(tmp_path, database):
    path = steady_sweep(tmp_path, trials=6, steps=30)
    outcome = sweep(str(path), [f"storage={database}"], workers=2)
    study = load(open_storage(database, tmp_path))
    done = assert_accounted(study, tmp_path / "runs" / "steady", budget=6)
    assert len({t.user_attrs[OWNER_ATTR]["pid"] for t in done}) == 2
    assert outcome.complete and outcome.ran_here == 6
    assert "storage" not in outcome.files  # the study lives in the database


def test_a_machine_that_dies_mid_trial_loses_nothing(tmp_path, database):
    """Two workers join from their own folders with nothing but the URL; one is killed.
    Its heartbeat stops, the other fails its trial after the grace period and runs it
    again, and the budget is met."""
    beat = ["heartbeat.interval=1", "heartbeat.grace=2", f"storage={database}"]
    cfg = load_config(steady_sweep(tmp_path), beat)
    Search(cfg, build_factors(cfg), None)  # what a sweep does before its first trial
    machines = [tmp_path / "a", tmp_path / "b"]
    procs = []
    for folder in machines:
        folder.mkdir()
        procs.append(nansearch("worker", "steady", "--storage", database, cwd=folder))
    storage = open_storage(database, tmp_path)
    victim, pid = running_trial_of_a_worker(storage)
    (killed,) = [p for p in procs if p.pid == pid]
    (survivor,) = [p for p in procs if p.pid != pid]
    os.kill(pid, signal.SIGKILL)
    killed.wait(timeout=30)
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    assert "the study has 4 of 4" in out
    assert f"trial {victim.number} did not finish; it runs again" in err

    folder = machines[procs.index(survivor)] / "runs" / "steady"
    study = load(storage)
    done = assert_accounted(study, folder, budget=4, lost={victim.number})
    (retry,) = [t for t in study.get_trials() if retried_from(t) == victim.number]
    assert retry.params == victim.params and retry in done
    assert retry.user_attrs[OWNER_ATTR]["pid"] == survivor.pid
    assert "steps: 60" in (folder / "config.yaml").read_text()  # rebuilt from the storage


def test_the_study_keeps_the_configuration_workers_rebuild(database, tmp_path):
    cfg = load_config(steady_sweep(tmp_path, steps=7), [f"storage={database}"])
    Search(cfg, build_factors(cfg), None)
    study = load(open_storage(database, tmp_path))
    assert study.user_attrs["trials"] == 4
    assert "steps: 7" in study.user_attrs["config"]
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 4


def test_a_worker_joins_a_postgres_study_of_a_script(tmp_path, database):
    """A worker started elsewhere with the URL alone runs the study's script as its trials."""
    cfg = load_config(
        str(REPO / "sweeps" / "script.yaml"),
        [
            *demo_overrides(study="script", trials=4, steps=3),
            f"target.program={REPO}/examples/train.py",
            f"target.config={REPO}/examples/train.yaml",
            f"storage={database}",
        ],
    )
    Search(cfg, build_factors(cfg), None)  # what the sweep does before its first trial
    machine = tmp_path / "b"
    machine.mkdir()
    proc = nansearch("worker", "script", "--storage", database, cwd=machine)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "the study has 4 of 4" in out
    folder = machine / "runs" / "script"
    done = assert_accounted(load(open_storage(database, tmp_path), "script"), folder, budget=4)
    assert {t.user_attrs[OWNER_ATTR]["pid"] for t in done} == {proc.pid}
    lines = [json.loads(line) for line in (folder / "trials.jsonl").read_text().splitlines()]
    assert not [line["error"] for line in lines if line["outcome"] == "error"]
    assert "kind: command" in (folder / "config.yaml").read_text()  # rebuilt from the study
