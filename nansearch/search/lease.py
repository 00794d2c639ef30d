"""One live sweep per study: the lease a sweep holds on its study while it runs.

Two sweeps driving one study would both queue, confirm and isolate, and each would
fail the other's running trials as lost, so a sweep (``nansearch sweep``, resumed or
not) takes the study's lease before it opens the study and holds it until it exits;
``nansearch worker`` takes none and may join at any time.

The lease is one the operating system or the database ends with its holder, so a
killed sweep never leaves a lease that blocks the next one:

- a journal file or SQLite database: an exclusive ``flock`` of a file beside it
  (``optuna-journal.log.<study>.lock`` beside the default journal, however the sweep
  or a worker names it), which the kernel
  releases when the process dies. The file names the holder.
- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of its
  own, which the server releases when that connection ends; the connection's
  ``application_name`` names the holder. A keeper thread looks at that connection every
  :data:`CHECK_SECONDS`: when it dropped (a server restart, ``pg_terminate_backend``),
  the lease is taken again on a new one if nobody else took it meanwhile; if another
  sweep holds it now, or the server stays out of reach, the lease is lost: the sweep
  stops once its running trials are recorded and ends with :class:`LeaseLost`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nansearch.config import NansearchError
from nansearch.search import interrupt

log = logging.getLogger(__name__)

LOCK_FILE = "sweep.lock"
CHECK_SECONDS = 2.0  # how often the keeper of a database lease looks at its connection
RETAKE_PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds between tries to take it again


class StudyBusy(NansearchError):
    """Another live sweep holds the study."""


class LeaseLost(NansearchError):
    """The sweep's lease on its study ended under it, and another sweep may hold it."""


class Lease:
    """A held lease; ``lost`` says why it ended under its holder, if it did."""

    def __init__(self) -> None:
        self.lost: str | None = None

    def check(self) -> None:
        """Raise :class:`LeaseLost` when the lease ended while the sweep ran."""
        if self.lost is not None:
            raise LeaseLost(self.lost)


def holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%H:%M:%S")}


def busy(study: str, who: str) -> StudyBusy:
    return StudyBusy(
        f"study {study!r} is being run by another sweep ({who}); wait for it to end, or add "
        f"workers to it with nansearch worker {study} --storage URL. A sweep that was killed "
        "holds nothing: --resume then goes on"
    )


@contextmanager
def study_lease(study: str, url: str | None, study_dir: Path) -> Iterator[Lease]:
    """Hold ``study``'s lease while inside; raises :class:`StudyBusy` when a live sweep
    holds it. ``url`` is the sweep's storage (None: the journal in ``study_dir``)."""
    if url is not None and url.startswith("postgresql"):
        with advisory_lock(study, url) as lease:
            yield lease
        return
    with file_lock(study, lock_path(study, url, study_dir)):
        yield Lease()  # the kernel ends it only with its holder


def held(study: str, url: str | None, study_dir: Path) -> bool:
    """Whether a live sweep holds ``study``'s lease now (a worker asks, and holds none)."""
    if url is not None and url.startswith("postgresql"):
        engine = engine_for(url, "nansearch worker")
        try:
            with engine.connect() as connection:
                return holder_name(connection, advisory_key(study)) is not None
        finally:
            engine.dispose()
    path = lock_path(study, url, study_dir)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the shared lock, when it was taken
    return False


def lock_path(study: str, url: str | None, study_dir: Path) -> Path:
    """The file whose lock stands for the study: beside a journal or SQLite file."""
    if url is None:
        target = study_dir / "optuna-journal.log"
    elif url.startswith("sqlite:///"):
        target = Path(url.removeprefix("sqlite:///"))
    elif "://" not in url:
        target = Path(url.removeprefix("journal:"))
    else:  # another database: the study folder stands for it on this machine
        return study_dir / LOCK_FILE
    target = target.resolve()  # one lock however the path is written
    return target.with_name(f"{target.name}.{study}.lock")


@contextmanager
def file_lock(study: str, path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(study, describe(read_holder(fd))) from None
        try:  # who holds it, for the message another sweep prints; best effort
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder()).encode(), 0)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def read_holder(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def describe(who: dict[str, Any]) -> str:
    if not who.get("pid"):
        return "its process is unknown"
    since = f" since {who['since']}" if who.get("since") else ""
    return f"pid {who['pid']} on {who.get('host', '?')}{since}"


def advisory_key(study: str) -> int:
    digest = hashlib.sha256(f"nansearch sweep {study}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


APP_PREFIX = "nansearch sweep "


def engine_for(url: str, name: str):
    import sqlalchemy

    from nansearch.search.storage import CONNECT_TIMEOUT, with_installed_driver

    return sqlalchemy.create_engine(
        with_installed_driver(url),
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT, "application_name": name[:63]},
    )


def holder_name(connection, key: int) -> str | None:
    """The ``application_name`` of the session that holds the advisory lock ``key``
    ("" when it has none), or None when no session holds it."""
    import sqlalchemy

    row = connection.execute(
        sqlalchemy.text(
            "SELECT a.application_name FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted "
            "AND l.classid = :hi AND l.objid = :lo"
        ),
        {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
    ).first()
    return None if row is None else (row[0] or "")


def take(engine, key: int):
    """A connection that holds the advisory lock ``key``, or (None, who holds it)."""
    import sqlalchemy

    connection = engine.connect()
    connection.execution_options(isolation_level="AUTOCOMMIT")
    took = connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
    if took.scalar():
        return connection, None
    who = (holder_name(connection, key) or "").removeprefix(APP_PREFIX)
    connection.close()
    return None, who or "a session of the database"


@contextmanager
def advisory_lock(study: str, url: str) -> Iterator[Lease]:
    import sqlalchemy

    from nansearch.search.storage import shown

    who = holder()
    engine = engine_for(url, f"{APP_PREFIX}pid {who['pid']} on {who['host']} since {who['since']}")
    key = advisory_key(study)
    try:
        connection, other = take(engine, key)
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0]
        raise NansearchError(f"storage={shown(url)!r}: cannot open it: {first}") from None
    if connection is None:
        engine.dispose()
        raise busy(study, other or "")
    keeper = Keeper(study, engine, key, connection)
    keeper.start()
    try:
        yield keeper.lease
    finally:
        keeper.stop()
        engine.dispose()


class Keeper(threading.Thread):
    """Looks at the lease's connection every :data:`CHECK_SECONDS` and takes the lease
    again on a new one when it dropped; when it cannot, the lease is lost and the sweep
    is asked to stop (:func:`nansearch.search.interrupt.stop_everything`)."""

    def __init__(self, study: str, engine, key: int, connection):
        super().__init__(name="study-lease", daemon=True)
        self.study, self.engine, self.key = study, engine, key
        self.connection = connection
        self.lease = Lease()
        self.done = threading.Event()

    def run(self) -> None:
        import sqlalchemy

        while not self.done.wait(CHECK_SECONDS):
            try:
                self.connection.execute(sqlalchemy.text("SELECT 1"))
                continue
            except sqlalchemy.exc.SQLAlchemyError as exc:
                reason = str(exc.__cause__ or exc).strip().splitlines()[0]
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                self.connection.close()
            log.warning(
                "the database connection holding the lease on study %r dropped (%s)",
                self.study,
                reason,
            )
            lost = self.retake()
            if lost is None:
                log.warning("the lease on study %r is held again, on a new connection", self.study)
                continue
            self.lease.lost = lost
            log.error("%s; stopping once the running trials are recorded", lost)
            interrupt.stop_everything(lost)
            return

    def retake(self) -> str | None:
        """Take the lease again; None when it is held again, else why it is lost."""
        import sqlalchemy

        reason = ""
        for pause in (0.0, *RETAKE_PAUSES):
            if self.done.wait(pause):
                return None
            try:
                connection, other = take(self.engine, self.key)
            except sqlalchemy.exc.SQLAlchemyError as exc:
                reason = str(exc.__cause__ or exc).strip().splitlines()[0]
                continue
            if connection is not None:
                self.connection = connection
                return None
            return (
                f"study {self.study!r}: its lease was lost with the database connection that "
                f"held it, and another sweep holds the study now ({other}); this sweep stopped "
                "so as not to run it twice"
            )
        return (
            f"study {self.study!r}: its lease was lost with the database connection that held "
            f"it, and the database stayed out of reach ({reason}); this sweep stopped"
        )

    def stop(self) -> None:
        import sqlalchemy

        self.done.set()
        if self.is_alive():
            self.join()
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):  # ended already
            self.connection.close()  # ends the session, and with it the lock
