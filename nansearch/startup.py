"""Process start: the heavy imports with Python's garbage collector paused.

torch, transformers, optuna and W&B create about half a million long-lived objects as
they load, and no garbage. Each full collection walks every object alive, so while
they load the collector walks them again and again (about 0.8 s on a CPU core), and
the last collection at interpreter exit walks them all once more (about 0.7 s). A
sweep of short trials pays both in full. Loaded with the collector paused and then
frozen (kept where the collector never looks), they cost nothing; the garbage trials
make is collected as before.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def uncollected_imports() -> Iterator[None]:
    """Pause the collector for the block's imports, then freeze what they created."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def freeze_before_exit() -> None:
    """Spare the interpreter's last collection the objects still alive: at exit they go
    with the process, and walking them (the later, lazy imports included) only delays it."""
    gc.freeze()
