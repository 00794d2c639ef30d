"""JSON lines: the one writer of nansearch's append-only files.

``trials.jsonl``, the W&B ledger ``wandb-trials.txt`` (one trial number, a JSON number,
a line) and the Optuna journal ``optuna-journal.log`` are appended here and nowhere else,
so each keeps the same three promises:

- A record is appended whole, in one write, under an exclusive ``flock`` of the file,
  so processes sharing a file never interleave their lines.
- A write that fails part way (a full disk, a file-size limit) is cut back to where it
  started before the error is raised: the file never keeps half a record.
- A file that already ends in half a record (left by a process killed mid-write, or by
  an older writer that did not cut back) is never appended to: the torn tail is cut
  off first, after the whole file is copied to ``<name>.torn-<time>``, and a warning
  says how many bytes went.

Readers skip a torn last line with a warning: it was never a record.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nansearch.errors import NansearchError

log = logging.getLogger(__name__)

# what a full or read-only disk raises: a message for the user, not a traceback
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


class WriteError(NansearchError):
    """A file could not be written: the disk is full, over a size limit, or read-only.

    What was written before stands, and nothing was left half written."""


def disk_error(exc: OSError, path: Path | str | None = None) -> WriteError:
    """``exc`` as one line naming the file and the cause."""
    where = path or exc.filename or "a file"
    reason = exc.strerror or str(exc)
    return WriteError(f"cannot write {where}: {reason}")


def dumps(record: Any, compact: bool = False) -> bytes:
    separators = (",", ":") if compact else None
    text = json.dumps(record, separators=separators)
    return (text + "\n").encode()


def append(
    path: Path | str, records: Iterable[Any], sync: bool = False, compact: bool = False
) -> None:
    """Append ``records``, one JSON line each, in one write; see the module's promises.

    ``sync`` waits until the lines are on the disk; ``compact`` writes no spaces.
    Raises :class:`WriteError` when the disk refuses them, with the file as it was.
    """
    data = b"".join(dumps(r, compact) for r in records)
    if not data:
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise disk_error(exc, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            size = cut_torn_tail(fd, Path(path), size)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, size)  # never keep half a record
            raise disk_error(exc, path) from None
    finally:
        os.close(fd)


def cut_torn_tail(fd: int, path: Path, size: int) -> int:
    """Cut the file after its last whole line, keeping a copy of it first; the new size."""
    end = last_newline(fd, size)
    kept = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        shutil.copyfile(path, kept)
    except OSError as exc:
        kept.unlink(missing_ok=True)
        raise WriteError(
            f"{path} ends in half a record ({size - end} bytes) and no copy of it could be "
            f"kept before cutting them ({exc.strerror or exc}); free some space and run again"
        ) from None
    os.ftruncate(fd, end)
    os.fsync(fd)
    log.warning(
        "%s ended in half a record, left by a write that failed or was killed: its last "
        "%d bytes were dropped (the file as it was is kept in %s)",
        path,
        size - end,
        kept,
    )
    return end


def last_newline(fd: int, size: int) -> int:
    """The offset just past the file's last newline; 0 when it has none."""
    chunk = 1 << 16
    end = size
    while end > 0:
        start = max(0, end - chunk)
        found = os.pread(fd, end - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def read(path: Path | str) -> list[Any]:
    """Every whole record in the file; a torn last line is skipped with a warning."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # after the last newline: empty, or half a record
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise NansearchError(f"{path}: line {number} is not JSON ({exc})") from None
    if tail.strip():
        log.warning(
            "%s: its last line is half a record (%d bytes, left by a write that failed or "
            "was killed); it is skipped",
            path,
            len(tail),
        )
    return records


def write(path: Path | str, records: Iterable[Any]) -> None:
    """Replace the file with ``records`` at once: a reader sees the old file or the new,
    and of two processes rewriting it at once (a sweep and a worker that joined it),
    one's whole file wins."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for record in records:
                f.write(dumps(record))
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, path) from None
