"""A database storage that rides out a dropped connection.

A PostgreSQL server restarted, a connection killed by an administrator or a proxy, a
network blip: the call in flight fails with an operational error, and the connection
pool holds connections that are all dead. :class:`RetryingRDBStorage` calls again, a
bounded number of times with a growing pause (SQLAlchemy's pre-ping replaces each dead
connection as it is checked out), and past that raises :class:`StorageLost`, one line
naming the storage: every trial recorded before it stands, and ``--resume`` goes on.

Only errors of the connection are retried; a bad value or a broken constraint is raised
at once. A write whose connection dropped after the server committed it is seen, on the
retry, as already done: taking a queued trial then finds it taken, and the heartbeat
of a running trial that nobody runs lets it be failed and queued again.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.exceptions import StorageInternalError

from nansearch.config import NansearchError
from nansearch.search import optuna_internals as private

log = logging.getLogger(__name__)

PAUSES = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds between tries: about 15 s in all


class StorageLost(NansearchError):
    """The storage stayed out of reach after every retry."""


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is the connection's fault (dropped, refused, timed out), looking
    through what it was raised from: Optuna wraps the driver's error, and a query that
    met the drop inside a call may leave only "can't reconnect until invalid transaction
    is rolled back" for the call's commit to raise."""
    import sqlalchemy.exc as sa

    for cause in chain(exc):
        if invalidated(cause):
            return True
        if isinstance(cause, (sa.OperationalError, sa.InterfaceError, sa.DisconnectionError)):
            return True
    return False


def chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from, each once."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def invalidated(exc: BaseException) -> bool:
    """Whether SQLAlchemy says the connection under ``exc`` was lost while open."""
    import sqlalchemy.exc as sa

    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.PendingRollbackError) and "reconnect" in str(exc)


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, each call retried while the database connection is down."""

    shown_url = "the database"
    _depth = threading.local()  # a call inside a call is retried by the outer one only


def retried(name: str):
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(self._depth, "n", 0)
        if depth:
            return method(self, *args, **kwargs)
        for pause in (*PAUSES, None):
            self._depth.n = 1
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                import sqlalchemy.exc as sa

                if not isinstance(exc, (StorageInternalError, sa.SQLAlchemyError)):
                    raise
                if not transient(exc):
                    raise
                reason = str(exc.__cause__ or exc).strip().splitlines()[0]
                if pause is None:
                    raise StorageLost(
                        f"storage={self.shown_url!r}: the connection was lost and not "
                        f"regained after {len(PAUSES)} retries over {sum(PAUSES):.0f} s "
                        f"({reason}); every trial recorded before it is kept"
                    ) from None
                log.warning(
                    "storage: %s failed, the connection was lost (%s); retrying in %.1f s",
                    name,
                    reason,
                    pause,
                )
                time.sleep(pause)
            finally:
                self._depth.n = 0
        raise AssertionError("unreachable")

    return call


for _name in dir(optuna.storages.RDBStorage):
    if not _name.startswith("_") and callable(getattr(optuna.storages.RDBStorage, _name)):
        setattr(RetryingRDBStorage, _name, retried(_name))


def dropped(exc: BaseException) -> bool:
    """Whether ``exc`` ended a connection that was open, as opposed to one that could
    not be made (a wrong host or port, a server that is down): what opening a storage
    retries, so that a wrong URL is still named at once."""
    return any(
        invalidated(cause) or any(mark in str(cause) for mark in DROPPED) for cause in chain(exc)
    )


DROPPED = ("server closed the connection unexpectedly", "terminating connection")


def opened(self: RetryingRDBStorage, *args: Any, **kwargs: Any) -> None:
    """Open the storage; opening runs statements too (the schema's tables, its version),
    and one that meets a dropped connection is run again."""
    for pause in (*PAUSES, None):
        try:
            optuna.storages.RDBStorage.__init__(self, *args, **kwargs)
            return
        except Exception as exc:
            if pause is None or not dropped(exc):
                raise
            log.warning(
                "storage: opening it failed, the connection was lost (%s); retrying in %.1f s",
                str(exc.__cause__ or exc).strip().splitlines()[0],
                pause,
            )
            time.sleep(pause)


RetryingRDBStorage.__init__ = opened  # type: ignore[method-assign, assignment]
for _name in private.CACHED_STORAGE_BACKEND_CALLS:  # Optuna's cache calls these instead
    if callable(getattr(optuna.storages.RDBStorage, _name, None)):
        setattr(RetryingRDBStorage, _name, retried(_name))
