"""How long a trial may run, and the alarm that ends one that runs past it.

``trial_timeout`` is the one setting, for every kind of target: seconds, 0 for no
limit, or -1 (the default) for a limit scaled from the trials already recorded:
ten times the slowest of them, and never under :data:`FLOOR`; until one is recorded,
:data:`FIRST`, which leaves a first trial room to read its checkpoint.

Three things enforce it. A command target waits for its script's process that long
and then ends it. In-process targets (the built-in ones, ``function`` and ``custom``)
run under :func:`time_limit`, an interval timer whose signal raises
:class:`TrialTimedOut` in the trial's code, again every second until it gives way.
And the sweep that starts worker processes watches their running trials: a worker that
does not answer (stopped with SIGSTOP, or stuck in native code that no signal
handler interrupts) is killed past the limit and a grace, its trial recorded as
timed out, and another worker takes its place (:mod:`nansearch.search.workers`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

AUTO = -1.0
SCALE = 10.0  # the auto limit: this many times the slowest trial recorded
FLOOR = 600.0  # seconds, the auto limit's least
FIRST = 3600.0  # seconds, the auto limit before any trial is recorded
REPEAT = 1.0  # seconds between further alarms once the limit has passed


class TrialTimedOut(BaseException):
    """Raised in a trial's code at its time limit. A BaseException, so that a training
    loop's own ``except Exception`` does not swallow it."""

    def __init__(self, seconds: float):
        super().__init__(timed_out(seconds))
        self.seconds = seconds


def timed_out(seconds: float) -> str:
    return f"timed out after {seconds:.0f} s (trial_timeout)"


def limit_for(setting: float, durations: Iterable[float]) -> float | None:
    """The limit a trial starts with: ``setting`` seconds, None for none (0), or with
    ``setting`` -1 the auto limit from the recorded trials' ``durations``."""
    if setting > 0:
        return float(setting)
    if setting == 0:
        return None
    slowest = max(durations, default=None)
    if slowest is None:
        return FIRST
    return max(SCALE * slowest, FLOOR)


def grace(limit: float) -> float:
    """How long past its limit a trial's worker is given before it is killed: time for
    the trial's own alarm to end it and for its result to be written."""
    return max(5.0, 0.1 * limit)


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TrialTimedOut` inside once ``seconds`` have passed, and every
    :data:`REPEAT` seconds after while still inside. A no-op for None and outside the
    main thread, where no signal handler can be installed."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    armed = True

    def ring(signum, frame) -> None:
        if armed:
            raise TrialTimedOut(seconds)

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds, REPEAT)
    try:
        yield
    finally:
        armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
