"""Where a checkpoint name points: a local folder, a built-in demo checkpoint, or a hub id."""

from __future__ import annotations

from pathlib import Path

DEMO_PREFIX = "demo:"


def resolve_checkpoint(checkpoint: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts; builds demo checkpoints on first use."""
    if checkpoint.startswith(DEMO_PREFIX):
        from nansearch.demo import demo_checkpoint

        return str(demo_checkpoint(checkpoint[len(DEMO_PREFIX) :]))
    path = Path(checkpoint).expanduser()
    if path.exists() or checkpoint.startswith((".", "/", "~")):
        return str(path)
    return checkpoint  # a hub id
