"""Writer locks on what we write: a render store, a run folder, a feature cache (design §8).

One writer at a time per path; readers never lock. The lock is a small JSON file beside the target,
`.<name>.pointad-lock`, holding the holder's pid, host and start time, and an exclusive `flock` on
it: the kernel drops that the moment the holder dies (kill -9 included), so a lock file nobody
holds is stale by construction and the next writer takes it over. A second writer is refused with
one line naming the holder. The file sits beside the target, not inside it, so it can guard a path
that does not exist yet (two processes creating the same new store) and never enters a Zarr group.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from pointad.shared.errors import PointADError

__all__ = ["LockedError", "lock_path", "writer_lock", "holder"]

LOCK_SUFFIX = ".pointad-lock"


class LockedError(PointADError):
    """Another process holds the writer lock of a path; the message names the holder."""


def lock_path(target) -> Path:
    """The lock file that guards `target` (a sibling hidden file)."""
    target = Path(target).absolute()
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def holder(target) -> dict | None:
    """The recorded holder ({pid, host, since, what}) of `target`'s lock file, or None if there is none.

    The record says who held the lock last; whether it is still held is only known by trying.
    """
    try:
        return json.loads(lock_path(target).read_text() or "null")
    except (OSError, ValueError):
        return None


def _describe(record: dict | None) -> str:
    if not record:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
    return f"pid {record.get('pid')} on host {record.get('host')} (since {since}, {record.get('what', 'writing')})"


@contextmanager
def writer_lock(target, what: str = "writing"):
    """Hold the writer lock of `target` for the block; LockedError at once if another process holds it.

    Yields the previous holder's record when the lock was taken over from a dead process (a stale
    lock), else None. The lock file stays behind after release (removing it would race with the next
    writer that already opened it); it is tiny and harmless.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise PointADError(f"{path}: cannot create the writer lock ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise PointADError(f"{path}: cannot take the writer lock ({exc.strerror})") from None
            raise LockedError(f"{Path(target)}: another writer holds it: {_describe(holder(target))}; "
                              f"wait for it to finish") from None
        previous = holder(target)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield previous if previous and previous.get("pid") != os.getpid() else None
        os.ftruncate(fd, 0)  # released cleanly: the next writer finds no stale record
    finally:
        os.close(fd)  # closing the descriptor releases the flock
