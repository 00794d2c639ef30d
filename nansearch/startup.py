"""Process start and exit: the heavy imports spared Python's garbage collector.

torch, transformers, optuna and W&B create about half a million long-lived objects as
they load, and no garbage. Each full collection walks every object alive, so while
they load the collector walks them again and again (about 0.8 s on a CPU core), and
the last collection at interpreter exit walks them all once more (about 0.7 s). A
sweep of short trials pays both in full. Loaded with the collector paused and then
frozen (kept where the collector never looks), they cost nothing; the garbage trials
make is collected as before.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

_exit_registered = False


@contextmanager
def uncollected_imports() -> Iterator[None]:
    """Pause the collector for the block's imports, then freeze what they created.

    Only in a process that has not loaded torch yet, a command line's own: in a process
    that already has (a test session, a notebook), the block loads little, and freezing
    would keep whatever garbage the process holds from ever being collected.
    """
    if "torch" in sys.modules:
        yield
        return
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def quick_exit() -> None:
    """At interpreter exit, freeze what is alive before the last collection walks it:
    it goes with the process anyway, and walking it (the later, lazy imports included)
    only delays the exit. The process's own exit handlers (W&B's, logging's) run first."""
    global _exit_registered
    if not _exit_registered:
        atexit.register(gc.freeze)
        _exit_registered = True


def quiet_libraries(level: int | None = None) -> None:
    """The libraries' load reports and progress bars off, as every nansearch process keeps
    them; with ``level``, nansearch's own log lines go to stderr at that level."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if level is not None:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    import optuna
    import transformers

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
