"""Ctrl-C stops a sweep after the running trial is recorded; a second Ctrl-C stops it now.

SIGTERM (what ``kill``, ``timeout`` and a container's stop send) does the same, and so
does :func:`stop_everything`, which another thread calls when the sweep must not go on
(its study's lease was lost).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_everything: list[str] = []  # why every stop flag reads as set, from stop_everything


def stop_everything(reason: str) -> None:
    """Every stop flag, now and until :func:`go_on`, reads as set: the sweep stops once
    its running trials are recorded, as at a first Ctrl-C."""
    _everything[:] = [reason]


def go_on() -> None:
    """Undo :func:`stop_everything`: a new sweep starts."""
    _everything.clear()


class StopFlag:
    """Set from a signal handler, read by the trial loop. A plain attribute: a signal
    handler must not take a lock that the code it interrupted may hold."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = 0  # the signal that set it: SIGINT or SIGTERM

    def set(self, signum: int = signal.SIGINT) -> None:
        self.signum = self.signum or int(signum)
        self.requested = True

    def is_set(self) -> bool:
        return self.requested or bool(_everything)


@contextmanager
def stop_on_interrupt() -> Iterator[StopFlag]:
    """While inside, a first SIGINT or SIGTERM sets the returned flag and a second raises
    KeyboardInterrupt. Outside the main thread, where no handler can be installed, the
    flag is only ever set by its owner."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handle(signum, frame) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.set(signum)
        log.warning(
            "%s: stopping once the running trial is recorded; the study stays resumable "
            "(press Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
        )

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
