"""Faults a sweep meets in the field, each made for real: a full disk, a torn journal,
signals, a second driver, a dropped database connection, code named by a config."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nansearch import jsonl
from nansearch.cli.sweep import sweep
from nansearch.search.queue import RESULT_ATTR
from nansearch.search.storage import open_storage
from tests.conftest import DEMO, REPO, demo_overrides
from tests.test_postgres import database  # noqa: F401, the fixture
from tests.test_workers import (
    assert_accounted,
    nansearch,
    running_trial_of_a_worker,
    steady_sweep,
    wait_for,
)
from tests.test_workers import load as load_steady

JOURNAL = "optuna-journal.log"


def cli(*args: str, cwd: Path, fsize: int | None = None, timeout: float = 300):
    """``nansearch ARGS`` in a child process; ``fsize`` caps the size of any file it writes."""

    def limit() -> None:
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "nansearch", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


def load(study_dir: Path, study: str = "t") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(None, study_dir))


def whole_lines(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"{path} ends in half a record"
    return [json.loads(line) for line in data.splitlines()]


class SmallDisk:
    """A folder on a disk that fills up: a small tmpfs where this process may mount one
    (root), else the same folder under a file-size limit set in the sweep's process."""

    def __init__(self, root: Path, free: int, largest: int):
        self.dir = root / "disk"
        self.dir.mkdir()
        self.free, self.largest = free, largest
        self.fsize, self.filler = None, self.dir / "filler"
        self.mounted = False

    def __enter__(self) -> SmallDisk:
        if os.geteuid() == 0:
            done = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(self.dir)],
                capture_output=True,
            )
            self.mounted = done.returncode == 0
        if self.mounted:
            stat = os.statvfs(self.dir)
            self.filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - self.free))
        else:
            self.fsize = self.largest
        return self

    def make_room(self) -> None:
        self.filler.unlink(missing_ok=True)
        self.fsize = None

    def __exit__(self, *exc) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.dir)], check=False)


def test_a_full_disk_stops_the_sweep_in_one_line_and_resume_loses_nothing(tmp_path):
    # room for the study's first files and a trial or two (about 2.5 KB of journal each)
    with SmallDisk(tmp_path, free=32_000, largest=11_000) as disk:
        out = str(disk.dir / "runs")
        args = ["sweep", DEMO, *demo_overrides(trials=10, out=out)]
        full = cli(*args, cwd=tmp_path, fsize=disk.fsize)
        assert full.returncode == 2, full.stderr
        assert "Traceback" not in full.stderr
        last = full.stderr.strip().splitlines()[-1]
        assert last.startswith("nansearch: cannot write "), last
        assert ("No space left on device" in last) or ("File too large" in last), last
        assert "--resume" in last

        study_dir = Path(out) / "t"
        lines = whole_lines(study_dir / JOURNAL)  # cut back to its last whole record
        states = optuna.trial.TrialState
        before = len(load(study_dir).get_trials(states=(states.COMPLETE, states.FAIL)))
        assert 0 < before < 10, "the disk must fill in the middle of the sweep"
        assert len(lines) > 0
        # the trial whose result could not be written: failed on resume, and run again
        cut = {t.number for t in load(study_dir).get_trials(states=(states.RUNNING,))}
        assert len(cut) <= 1

        disk.make_room()
        again = cli(*args, "--resume", cwd=tmp_path, fsize=disk.fsize)
        assert again.returncode == 0, again.stderr
        assert not list(study_dir.glob("*.torn-*"))  # nothing was torn to begin with
        assert_accounted(load(study_dir), study_dir, budget=10, lost=cut)


TEAR = """
import resource, sys
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
path = sys.argv[1]
storage = JournalStorage(JournalFileBackend(path))
study = optuna.load_study(study_name="t", storage=storage)
size = len(open(path, "rb").read())
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, size + 100))
try:
    study.set_user_attr("note", "x" * 1000)
except OSError as exc:
    print("torn:", exc)
"""


def test_a_journal_torn_by_a_failed_write_is_cut_back_before_anything_is_appended(tmp_path):
    args = ["sweep", DEMO, *demo_overrides(trials=4)]
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    study_dir = tmp_path / "runs" / "t"
    journal = study_dir / JOURNAL
    whole = journal.read_bytes()

    # Optuna's own writer, stopped by a file-size limit in the middle of a record
    torn = subprocess.run(
        [sys.executable, "-c", TEAR, str(journal)], capture_output=True, text=True, timeout=120
    )
    assert "torn:" in torn.stdout, torn.stderr
    torn_bytes = journal.read_bytes()
    assert torn_bytes.startswith(whole) and len(torn_bytes) == len(whole) + 100

    again = cli(*args[:2], *demo_overrides(trials=6), "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "its last 100 bytes were dropped" in again.stderr
    (kept,) = study_dir.glob(f"{JOURNAL}.torn-*")
    assert kept.read_bytes() == torn_bytes
    whole_lines(journal)
    assert "note" not in load(study_dir).user_attrs
    assert_accounted(load(study_dir), study_dir, budget=6)


def test_a_torn_trials_file_is_cut_before_an_append_and_skipped_when_read(tmp_path, caplog):
    path = tmp_path / "trials.jsonl"
    jsonl.append(path, [{"number": 0}])
    with open(path, "ab") as f:
        f.write(b'{"number": 1, "par')  # a writer killed mid-record
    assert jsonl.read(path) == [{"number": 0}]
    assert "half a record" in caplog.text
    jsonl.append(path, [{"number": 2}])
    assert whole_lines(path) == [{"number": 0}, {"number": 2}]
    (kept,) = tmp_path.glob("trials.jsonl.torn-*")
    assert kept.read_bytes().endswith(b'"par')


def test_the_report_reads_a_trials_file_that_ends_in_half_a_line(tmp_path):
    args = ["sweep", DEMO, *demo_overrides(trials=4)]
    assert cli(*args, cwd=tmp_path).returncode == 0
    trials = tmp_path / "runs" / "t" / "trials.jsonl"
    with open(trials, "ab") as f:
        f.write(b'{"number": 9, "params": {"dtype": "fp')
    done = cli("report", "t", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "half a record" in done.stderr


def test_a_write_refused_by_the_disk_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "trials.jsonl"
    jsonl.append(path, [{"number": 0}])
    size = path.stat().st_size
    script = (
        "import resource, sys\n"
        "from nansearch import jsonl\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size + 10}, {size + 10}))\n"
        "try:\n"
        f"    jsonl.append({str(path)!r}, [{{'number': 1, 'pad': 'x' * 100}}])\n"
        "except jsonl.WriteError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.stdout.startswith(f"cannot write {path}: File too large"), done.stderr
    assert whole_lines(path) == [{"number": 0}]


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_workers_die_with_a_killed_parent_and_resume_loses_nothing(tmp_path):
    path = steady_sweep(tmp_path, trials=4, steps=300)  # long enough to be caught running
    proc = nansearch("sweep", str(path), "--workers", "2", cwd=tmp_path)
    study_dir = tmp_path / "runs" / "steady"
    storage = open_storage(None, study_dir)
    running_trial_of_a_worker(storage, parent=proc.pid)
    workers = children(proc.pid)
    assert len(workers) >= 2
    os.kill(proc.pid, signal.SIGKILL)  # what an out-of-memory killer or `kill -9` does
    proc.communicate(timeout=60)
    wait_for(lambda: not any(alive(pid) for pid in workers), "the workers to die", timeout=20)

    left = {t.number for t in load_steady(storage).get_trials(states=(TrialState.RUNNING,))}
    assert left  # their trials were cut short, and nobody finished them unwatched
    outcome = sweep(str(path), [], resume=True)
    assert outcome.complete
    assert_accounted(load_steady(storage), study_dir, budget=4, lost=left)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_stops_like_ctrl_c(tmp_path, workers):
    path = steady_sweep(tmp_path, trials=6, steps=300)
    proc = nansearch("sweep", str(path), "--workers", workers, cwd=tmp_path)
    storage = open_storage(None, tmp_path / "runs" / "steady")
    trial, _ = running_trial_of_a_worker(storage, parent=None if workers == "1" else proc.pid)
    kids = children(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)  # `kill PID`, `timeout`, a container's stop
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert "SIGTERM: stopping once the running trial is recorded" in err
    assert "--resume" in out

    states = {t.number: t.state for t in load_steady(storage).get_trials()}
    assert states[trial.number] == TrialState.COMPLETE  # the running trial was recorded
    assert TrialState.RUNNING not in states.values()
    assert sum(s == TrialState.COMPLETE for s in states.values()) < 6
    deadline = time.monotonic() + 30  # a worker ends on its own after its parent's exit
    while any(alive(pid) for pid in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in kids)


def test_a_second_sweep_of_a_live_study_says_who_holds_it_and_a_worker_may_join(tmp_path):
    path = steady_sweep(tmp_path, trials=16, steps=300)
    first = nansearch("sweep", str(path), cwd=tmp_path)
    study_dir = tmp_path / "runs" / "steady"
    storage = open_storage(None, study_dir)
    running_trial_of_a_worker(storage)
    journal = f"journal:{study_dir / JOURNAL}"
    joined = nansearch("worker", "steady", "--storage", journal, cwd=tmp_path)
    # the worker has joined once it runs a trial of its own, whatever its start took
    running_trial_of_a_worker(storage, parent=first.pid)

    second = cli("sweep", str(path), "--resume", cwd=tmp_path)
    assert second.returncode == 2, second.stderr
    assert "Traceback" not in second.stderr
    assert f"is being run by another sweep (pid {first.pid} on " in second.stderr

    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    out, err = joined.communicate(timeout=600)
    assert joined.returncode == 0, err
    assert "trial(s) ran here" in out
    study = load_steady(storage)
    assert_accounted(study, study_dir, budget=16)  # no overrun, no trial failed under it
    pids = {t.user_attrs["worker"]["pid"] for t in study.get_trials()}
    assert pids == {first.pid, joined.pid}


def test_a_joined_worker_ends_with_the_whole_study_the_sweep_s_probes_included(tmp_path):
    first = nansearch("sweep", DEMO, *demo_overrides(trials=20, steps=8), cwd=tmp_path)
    study_dir = tmp_path / "runs" / "t"

    def queued() -> bool:  # the study holds its configuration and its queue
        try:
            return bool(load(study_dir).get_trials())
        except KeyError:
            return False

    wait_for(queued, "the sweep's study")
    joined = nansearch(
        "worker", "t", "--storage", f"journal:{study_dir / JOURNAL}", "--out", "w", cwd=tmp_path
    )
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    _, err = joined.communicate(timeout=600)
    assert joined.returncode == 0, err

    lines = whole_lines(study_dir / "trials.jsonl")
    assert {line["phase"] for line in lines} >= {"cover", "confirm", "isolate"}
    assert whole_lines(tmp_path / "w" / "t" / "trials.jsonl") == lines
    ranking = json.loads((study_dir / "ranking.json").read_text())
    theirs = json.loads((tmp_path / "w" / "t" / "ranking.json").read_text())
    assert ranking["fixes"] and theirs == ranking


def test_a_postgres_study_has_one_live_sweep(tmp_path, database):  # noqa: F811
    from nansearch.search.lease import StudyBusy, study_lease

    overrides = demo_overrides(trials=3, storage=database)
    held = study_lease("t", database, tmp_path / "runs" / "t")  # a live sweep's session
    with held, pytest.raises(StudyBusy, match=f"pid {os.getpid()} on "):
        sweep(DEMO, overrides)
    outcome = sweep(DEMO, overrides)  # released with the session that held it
    assert outcome.complete and len(outcome.results) == 3


def terminate_connections(url: str) -> int:
    """``pg_terminate_backend`` on every connection to the database of ``url`` but this one."""
    import psycopg2

    server, name = url.rsplit("/", 1)
    admin = psycopg2.connect(f"{server}/postgres", connect_timeout=5)
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            return cursor.fetchone()[0]
    finally:
        admin.close()


def lease_sessions(url: str, pid: int) -> list[int]:
    """The database sessions of the sweep ``pid`` that hold an advisory lock: its lease."""
    import psycopg2

    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE %s",
                (f"nansearch sweep pid {pid} on %",),
            )
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


def lease_waiters(url: str) -> list[int]:
    """The database sessions waiting for an advisory lock."""
    import psycopg2

    connection = psycopg2.connect(url, connect_timeout=5)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


def end_session(cursor, backend: int) -> None:
    cursor.execute("SELECT pg_terminate_backend(%s, 10000)", (backend,))  # waits for its end


def test_a_dropped_lease_connection_is_taken_again(tmp_path, database):  # noqa: F811
    path = steady_sweep(tmp_path, trials=6, steps=100)
    proc = nansearch("sweep", str(path), f"storage={database}", cwd=tmp_path)
    storage = open_storage(database, tmp_path)
    running_trial_of_a_worker(storage)
    (held,) = wait_for(lambda: lease_sessions(database, proc.pid), "the sweep's lease")
    import psycopg2

    admin = psycopg2.connect(database, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cursor:
        end_session(cursor, held)
    admin.close()
    (again,) = wait_for(lambda: lease_sessions(database, proc.pid), "the lease taken again")
    assert again != held
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "the database connection holding the lease on study 'steady' dropped" in err
    assert "the lease on study 'steady' is held again, on a new connection" in err
    assert "Traceback" not in err
    assert_accounted(load_steady(storage), tmp_path / "runs" / "steady", budget=6)


def test_a_lease_another_sweep_took_meanwhile_stops_this_one_with_the_resume_line(
    tmp_path,
    database,  # noqa: F811
):
    import psycopg2

    from nansearch.search.lease import advisory_key

    path = steady_sweep(tmp_path, trials=6, steps=100)
    proc = nansearch("sweep", str(path), f"storage={database}", cwd=tmp_path)
    storage = open_storage(database, tmp_path)
    trial, _ = running_trial_of_a_worker(storage)
    (held,) = wait_for(lambda: lease_sessions(database, proc.pid), "the sweep's lease")
    other = psycopg2.connect(
        database, connect_timeout=5, application_name="nansearch sweep pid 4242 on elsewhere"
    )
    other.autocommit = True
    other_pid = other.get_backend_pid()
    # another sweep waits for the lease: the server hands it over the moment it is free,
    # before the sweep that held it can take it again
    waiting = threading.Thread(
        target=lambda: other.cursor().execute(
            "SELECT pg_advisory_lock(%s)", (advisory_key("steady"),)
        )
    )
    waiting.start()
    wait_for(lambda: lease_waiters(database) == [other_pid], "the other sweep's wait")
    admin = psycopg2.connect(database, connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cursor:
        end_session(cursor, held)
    admin.close()
    waiting.join(timeout=60)
    assert not waiting.is_alive()
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("nansearch: study 'steady': its lease was lost"), last
    assert "another sweep holds the study now (pid 4242 on elsewhere)" in last
    assert last.endswith(f"nansearch sweep {path} storage={database} --resume")

    study = load_steady(storage)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trial.number] == TrialState.COMPLETE  # its running trial was recorded
    assert TrialState.RUNNING not in states.values()
    assert sum(s == TrialState.COMPLETE for s in states.values()) < 6
    other.close()  # that sweep ends
    assert sweep(str(path), [f"storage={database}"], resume=True).complete
    assert_accounted(load_steady(storage), tmp_path / "runs" / "steady", budget=6)


class DropEachStatement:
    """Ends, with ``pg_terminate_backend``, the database connection that is about to run
    each kind of statement the first time it comes, so that a drop lands in every storage
    call the sweep makes, mid-transaction. The lease's own queries are left alone, and so
    is the creation of the schema's tables, a dozen kinds of statement in one transaction
    that a drop would roll back each time."""

    LEASE = ("pg_try_advisory_lock", "pg_locks", "SELECT 1")
    SCHEMA = ("CREATE ", "pg_catalog.")

    AFTER = 25  # statements run undisturbed after a drop: the retried call completes

    def __init__(self, url: str):
        self.url, self.seen, self.dropped = url, set(), []
        self.lock = threading.Lock()
        self.quiet = 0

    def __call__(self, conn, cursor, statement, parameters, context, executemany):
        import re

        if any(mark in statement for mark in self.LEASE + self.SCHEMA):
            return
        kind = re.sub(r"IN \([^)]*\)", "IN (...)", " ".join(statement.split()))
        with self.lock:
            if self.quiet:
                self.quiet -= 1
                return
            if kind in self.seen:
                return
            self.seen.add(kind)
            self.quiet = self.AFTER
        backend = conn.connection.dbapi_connection.get_backend_pid()
        self.terminate(backend)
        self.dropped.append(kind)

    def terminate(self, backend: int) -> None:
        import psycopg2

        server, _ = self.url.rsplit("/", 1)
        admin = psycopg2.connect(f"{server}/postgres", connect_timeout=5)
        admin.autocommit = True
        try:
            with admin.cursor() as cursor:  # returns once the connection has ended
                cursor.execute("SELECT pg_terminate_backend(%s, 10000)", (backend,))
        finally:
            admin.close()


def test_a_dropped_database_connection_is_retried_and_loses_nothing(tmp_path, database, caplog):  # noqa: F811
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    path = steady_sweep(tmp_path, trials=4, steps=20)
    drop = DropEachStatement(database)
    event.listen(Engine, "before_cursor_execute", drop)
    try:
        outcome = sweep(str(path), [f"storage={database}"])
    finally:
        event.remove(Engine, "before_cursor_execute", drop)
    assert outcome.complete
    # each kind of statement a sweep runs met a dropped connection once, and each call was
    # retried, or fell back to another query on its own (a few of Optuna's reads do)
    assert len(drop.dropped) >= 10
    said = [r.getMessage() for r in caplog.records]
    retried = [m for m in said if "the connection was lost" in m]
    fell_back = [m for m in said if "Falling back to a slower alternative" in m]
    assert len(retried) + len(fell_back) >= len(drop.dropped)
    study = load_steady(open_storage(database, tmp_path))
    assert_accounted(study, tmp_path / "runs" / "steady", budget=4)  # nothing lost or doubled


HANGS = """
import time

from examples.own_loop import train as steps


def train(trial):
    if trial.dtype == "bf16":  # a loop stuck for good, which swallows every error
        while True:
            try:
                time.sleep(3600)
            except Exception:
                pass
    steps(trial)
"""


def test_a_trial_that_never_ends_is_timed_out_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "hangs.py").write_text(HANGS)
    sweep_file = tmp_path / "hangs.yaml"
    sweep_file.write_text(
        f"""
study: hangs
out: runs
trials: 4
steps: 4
trial_timeout: 3
tracking: {{wandb: "off"}}
plugins: []
target: {{kind: function, fn: "{tmp_path / "hangs.py"}:train", model_class: OPTForCausalLM}}
factors:
  checkpoint: {{levels: {{opt-lm: "demo:opt-lm"}}}}
  dtype: {{levels: [fp32, bf16]}}
  lr: {{low: 1.0e-4, high: 1.0e-3}}
  batch: {{levels: [clean]}}
"""
    )
    outcome = sweep(str(sweep_file), [])
    assert outcome.complete
    study_dir = tmp_path / "runs" / "hangs"
    done = assert_accounted(load(study_dir, "hangs"), study_dir, budget=4)
    hung = [t for t in done if t.params["dtype"] == "bf16"]
    assert hung and all(t.state == TrialState.FAIL for t in hung)
    for trial in hung:
        result = trial.user_attrs[RESULT_ATTR]
        assert result["outcome"] == "error"
        assert result["error"] == "timed out after 3 s (trial_timeout)"
        assert 3 <= result["seconds"] < 60
    assert all(t.user_attrs["outcome"] != "error" for t in done if t not in hung)


def test_the_time_limit_is_the_setting_or_scales_from_the_slowest_trial():
    from nansearch.config import ConfigError, load_config
    from nansearch.trial.limit import limit_for

    assert limit_for(-1, []) == 3600  # a first trial may read its checkpoint
    assert limit_for(-1, [2.0, 90.0]) == 900  # ten times the slowest
    assert limit_for(-1, [1.0]) == 600  # and never under the floor
    assert limit_for(20, [100.0]) == 20 and limit_for(0, [5.0]) is None
    with pytest.raises(ConfigError, match="trial_timeout=-5: seconds a trial may run"):
        load_config(DEMO, ["trial_timeout=-5"])
    with pytest.raises(ConfigError, match=r"target\.timeout=5: now trial_timeout"):
        load_config(DEMO, ["target.timeout=5"])


def test_a_stopped_worker_is_killed_at_the_time_limit_and_another_takes_its_place(tmp_path):
    path = steady_sweep(tmp_path, trials=6, steps=60)  # a few seconds a trial
    proc = nansearch("sweep", str(path), "trial_timeout=30", "--workers", "2", cwd=tmp_path)
    study_dir = tmp_path / "runs" / "steady"
    storage = open_storage(None, study_dir)
    trial, pid = running_trial_of_a_worker(storage, parent=proc.pid)
    os.kill(pid, signal.SIGSTOP)  # it holds its trial and answers nothing, not even SIGTERM
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"trial {trial.number} timed out after 30 s (trial_timeout): " in err
    assert not alive(pid)

    study = load_steady(storage)
    done = assert_accounted(study, study_dir, budget=6)  # no trial lost, none run twice
    stuck = study.trials[trial.number]
    assert stuck.state == TrialState.FAIL
    assert stuck.user_attrs[RESULT_ATTR]["error"] == (
        f"timed out after 30 s (trial_timeout): its worker (pid {pid}) did not answer "
        "and was killed"
    )
    assert all(t.state == TrialState.COMPLETE for t in done if t.number != trial.number)
    owners = {t.user_attrs["worker"]["pid"] for t in done}
    assert pid in owners and proc.pid not in owners
    # the two workers and the one that took the place of the stopped one
    assert len(owners) <= 3


PAYLOAD = "open('ran', 'w').write('code from the config ran')"


@pytest.mark.parametrize("fn", ["builtins:exec", "os:system", "subprocess:getoutput"])
def test_a_config_cannot_name_the_standard_library_as_its_code(tmp_path, fn):
    sweep_file = tmp_path / "hostile.yaml"
    sweep_file.write_text(
        f"""
study: hostile
tracking: {{wandb: "off"}}
target: {{kind: custom, fn: "{fn}"}}
factors:
  checkpoint: {{levels: {{payload: "{PAYLOAD}"}}}}
  dtype: {{levels: [fp32]}}
  batch: {{levels: [clean]}}
"""
    )
    for command in ("audit", "sweep"):
        done = cli(command, str(sweep_file), cwd=tmp_path, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert f"target.fn={fn!r}: " in done.stderr
        assert "part of Python's standard library" in done.stderr
    assert not (tmp_path / "ran").exists()


def test_a_plugin_that_fails_as_it_loads_is_named_in_one_line(tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("raise ValueError('a bad value in the plugin')\n")
    done = cli("audit", DEMO, f"plugins=[{plugin}]", cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"running {plugin} raised ValueError: a bad value in the plugin" in done.stderr
    done = cli("audit", DEMO, "plugins=[os]", cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and "plugins='os': os is part of Python's standard library" in (
        done.stderr
    )


def test_a_worker_refuses_a_stored_config_edited_to_run_library_code(tmp_path, database):  # noqa: F811
    from nansearch.cli.worker import worker
    from nansearch.config import NansearchError
    from nansearch.search.storage import CONFIG_ATTR

    assert sweep(DEMO, demo_overrides(trials=2, storage=database)).complete
    storage = open_storage(database, tmp_path)
    study_id = storage.get_study_id_from_name("t")
    stored = storage.get_study_user_attrs(study_id)[CONFIG_ATTR]
    edited = yaml.safe_load(stored)
    edited["target"].update(kind="custom", fn="builtins:exec")
    storage.set_study_user_attr(study_id, CONFIG_ATTR, yaml.safe_dump(edited))
    with pytest.raises(NansearchError, match="part of Python's standard library"):
        worker("t", database, out=str(tmp_path / "w"))
    assert not (tmp_path / "ran").exists()


def test_a_worker_given_its_sweep_file_refuses_a_stored_config_with_other_code(tmp_path):
    from nansearch.cli.worker import worker
    from nansearch.config import NansearchError
    from nansearch.search.storage import CONFIG_ATTR

    assert sweep(DEMO, demo_overrides(trials=2)).complete
    journal = f"journal:{tmp_path / 'runs' / 't' / JOURNAL}"
    storage = open_storage(journal, tmp_path)
    study_id = storage.get_study_id_from_name("t")
    original = storage.get_study_user_attrs(study_id)[CONFIG_ATTR]
    edited = yaml.safe_load(original)
    script = f"{REPO}/sweeps/custom_target.py:build"
    edited["target"].update(kind="custom", fn=script)
    storage.set_study_user_attr(study_id, CONFIG_ATTR, yaml.safe_dump(edited))

    # the same sweep file the study was started from: only the stored code differs
    with pytest.raises(NansearchError) as refused:
        worker("t", journal, out=str(tmp_path / "w"), sweep_file=DEMO)
    message = str(refused.value)
    assert f"target.fn: '{script}' in " in message and f"None in {DEMO}" in message
    assert "target.kind: 'custom'" in message and "--trust-stored-config" in message
    assert not (tmp_path / "w").exists()  # refused before anything was written

    trusted = worker(
        "t", journal, out=str(tmp_path / "w"), sweep_file=DEMO, trust_stored_config=True
    )
    assert trusted.ran_here == 0  # the budget was met already: it joins and ends

    storage.set_study_user_attr(study_id, CONFIG_ATTR, original)  # the code it started with
    assert worker("t", journal, out=str(tmp_path / "v"), sweep_file=DEMO).ran_here == 0


def test_a_resume_refuses_changed_trial_settings_and_takes_a_new_budget(tmp_path):
    from nansearch.config import NansearchError

    assert sweep(DEMO, demo_overrides(trials=3, steps=4)).complete
    config = (tmp_path / "runs" / "t" / "config.yaml").read_text()
    changed = demo_overrides(trials=3, steps=10, **{"factors.dtype.levels": "[fp32]"})
    with pytest.raises(NansearchError, match="other trial settings") as caught:
        sweep(DEMO, changed, resume=True)
    assert "steps: 4 -> 10" in str(caught.value)
    assert "factors.dtype.levels: " in str(caught.value)
    assert (tmp_path / "runs" / "t" / "config.yaml").read_text() == config  # left as it was

    outcome = sweep(DEMO, demo_overrides(trials=4, steps=4), resume=True)  # the budget may grow
    assert outcome.complete and len([r for r in outcome.results if r.phase != "confirm"]) >= 4


@pytest.mark.parametrize("key", ["factors.dtype.levels", "factors.batch.levels"])
def test_an_empty_list_of_levels_is_named_by_the_sweep_and_the_audit(tmp_path, key):
    for command in ("audit", "sweep"):
        done = cli(command, DEMO, *demo_overrides(), f"{key}=[]", cwd=tmp_path, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert f"{key}: empty; name at least one" in done.stderr
    assert not (tmp_path / "runs" / "t").exists()


@pytest.mark.parametrize("url", ["sqlite:///stuyd.db", "journal:runs/t/optuna-journl.log"])
def test_a_mistyped_storage_file_given_to_a_worker_is_named_and_not_created(tmp_path, url):
    done = cli("worker", "t", "--storage", url, cwd=tmp_path, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "no such file" in done.stderr
    path = url.partition(":///")[2] or url.removeprefix("journal:")
    assert not (tmp_path / path).exists()
