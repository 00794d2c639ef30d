"""One live sweep per study: the lease a sweep holds on its study while it runs.

Two sweeps driving one study would both queue, confirm and isolate, and each would
fail the other's running trials as lost, so a sweep (``nansearch sweep``, resumed or
not) takes the study's lease before it opens the study and holds it until it exits;
``nansearch worker`` takes none and may join at any time.

The lease is one the operating system or the database ends with its holder, so a
killed sweep never leaves a lease that blocks the next one:

- a journal file or SQLite database: an exclusive ``flock`` of a file beside it
  (``sweep.lock`` in the study folder for the default journal), which the kernel
  releases when the process dies. The file names the holder.
- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of its
  own, which the server releases when that connection ends; the connection's
  ``application_name`` names the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nansearch.config import NansearchError

LOCK_FILE = "sweep.lock"


class StudyBusy(NansearchError):
    """Another live sweep holds the study."""


def holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%H:%M:%S")}


def busy(study: str, who: str) -> StudyBusy:
    return StudyBusy(
        f"study {study!r} is being run by another sweep ({who}); wait for it to end, or add "
        f"workers to it with nansearch worker {study} --storage URL. A sweep that was killed "
        "holds nothing: --resume then goes on"
    )


@contextmanager
def study_lease(study: str, url: str | None, study_dir: Path) -> Iterator[None]:
    """Hold ``study``'s lease while inside; raises :class:`StudyBusy` when a live sweep
    holds it. ``url`` is the sweep's storage (None: the journal in ``study_dir``)."""
    if url is not None and url.startswith("postgresql"):
        with advisory_lock(study, url):
            yield
        return
    with file_lock(study, lock_path(study, url, study_dir)):
        yield


def lock_path(study: str, url: str | None, study_dir: Path) -> Path:
    """The file whose lock stands for the study: beside a journal or SQLite file."""
    if url is None:
        return study_dir / LOCK_FILE
    if url.startswith("sqlite:///"):
        target = Path(url.removeprefix("sqlite:///"))
    elif "://" not in url:
        target = Path(url.removeprefix("journal:"))
    else:  # another database: the study folder stands for it on this machine
        return study_dir / LOCK_FILE
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


@contextmanager
def advisory_lock(study: str, url: str) -> Iterator[None]:
    import sqlalchemy

    from nansearch.search.study import CONNECT_TIMEOUT, shown, with_installed_driver

    who = holder()
    name = f"{APP_PREFIX}pid {who['pid']} on {who['host']} since {who['since']}"
    engine = sqlalchemy.create_engine(
        with_installed_driver(url),
        poolclass=sqlalchemy.pool.NullPool,
        connect_args={"connect_timeout": CONNECT_TIMEOUT, "application_name": name[:63]},
    )
    key = advisory_key(study)
    try:
        connection = engine.connect()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        first = str(exc).strip().splitlines()[0]
        raise NansearchError(f"storage={shown(url)!r}: cannot open it: {first}") from None
    try:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        took = connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
        if not took.scalar():
            other = connection.execute(
                sqlalchemy.text(
                    "SELECT a.application_name FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted "
                    "AND l.classid = :hi AND l.objid = :lo"
                ),
                {"hi": (key >> 32) & 0xFFFFFFFF, "lo": key & 0xFFFFFFFF},
            ).scalar()
            who = (other or "").removeprefix(APP_PREFIX) or "a session of the database"
            raise busy(study, who)
        yield
    finally:
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):  # ended already
            connection.close()  # ends the session, and with it the lock
        engine.dispose()
