"""Writer locks on what we write: a render store, a run folder, a feature cache (design §8).

One writer at a time per target; readers never lock. The lock is a small JSON file beside the target,
`.<name>.pointad-lock`, holding the holder's pid, host and start time, and an exclusive `flock` on
it: the kernel drops that the moment the holder dies (kill -9 included), so a lock file nobody
holds is stale by construction and the next writer takes it over. A second writer is refused with
one line naming the holder. The file sits beside the target, not inside it, so it can guard a path
that does not exist yet (two processes creating the same new store) and never enters a Zarr group.

The lock is keyed on the resolved target (symlinks, `..` and relative spellings of one folder share one
lock), and the lock file is only ever used if it is a plain file of its own: it is opened without
following a symlink and without blocking, and anything else found under its name (a symlink, a FIFO, a
folder, a socket, a device, a file with other hard links) is refused before a byte is written to it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path

from .environment import lease_ttl
from .errors import PointADError
from .location import as_location, is_remote
from .names import printable

__all__ = ["LockedError", "lock_path", "writer_lock", "holder"]

LOCK_SUFFIX = ".pointad-lock"
RECORD_BYTES = 4096  # a record is ~100 bytes; never read more than this from a lock file
# never follow a symlink (it would truncate its target), never wait on a FIFO, never adopt a terminal
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


class LockedError(PointADError):
    """Another process holds the writer lock of a path; the message names the holder."""


def lock_path(target) -> Path:
    """The lock file that guards `target`: a hidden sibling of the resolved target, so every spelling of one
    target shares it (for a target that does not exist yet: its resolved parent plus its name)."""
    target = Path(os.path.realpath(target))
    return target.with_name(f".{target.name}{LOCK_SUFFIX}")


def holder(target) -> dict | None:
    """The recorded holder ({pid, host, since, what}) of `target`'s lock file, or None if there is none
    (or something other than a lock file of ours is there).

    The record says who held the lock last; whether it is still held is only known by trying.
    """
    try:
        fd = _open_lock(lock_path(target), os.O_RDONLY)
    except PointADError:
        return None
    try:
        return _record(fd)
    finally:
        os.close(fd)


def _open_lock(path: Path, mode: int) -> int:
    """A descriptor of the lock file `path` (`mode` O_RDONLY, or O_RDWR | O_CREAT to make it), checked to
    be a regular file with no other name before anyone writes to it; else a PointADError saying what is there."""
    try:
        fd = os.open(path, mode | _OPEN_FLAGS, 0o644)
    except OSError as exc:
        what = _what_is_there(path)  # ELOOP: a symlink, EISDIR: a folder, ENXIO: a socket, ...
        if what is not None:
            raise _not_a_lock_file(path, what) from None
        raise PointADError(f"{path}: cannot open the writer lock ({exc.strerror})") from None
    info = os.fstat(fd)
    what = _kind(info.st_mode) or (f"a file with {info.st_nlink - 1} other hard link(s)" if info.st_nlink > 1 else None)
    if what is not None:
        os.close(fd)
        raise _not_a_lock_file(path, what)
    return fd


def _kind(mode: int) -> str | None:
    """What a file of `mode` is, in words, or None for a regular file."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a regular file"


def _what_is_there(path: Path) -> str | None:
    """`_kind` of what `path` names, the symlink itself and its target for a link; None if it is a regular
    file or nothing is there."""
    try:
        what = _kind(os.lstat(path).st_mode)
        if what == "a symbolic link":
            what += f" to {printable(os.readlink(path))}"
    except OSError:
        return None
    return what


def _not_a_lock_file(path: Path, what: str) -> PointADError:
    return PointADError(f"{path}: is {what}, not a writer lock file (left untouched); remove it and run again")


def _record(fd: int) -> dict | None:
    """The holder record in the open lock file `fd`, or None if it is empty or not a record."""
    try:
        record = json.loads(os.pread(fd, RECORD_BYTES, 0) or b"null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict | None) -> str:
    if not record:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("since", 0)))
    return f"pid {record.get('pid')} on host {record.get('host')} (since {since}, {record.get('what', 'writing')})"


@contextmanager
def writer_lock(target, what: str = "writing", *, single_writer: bool = False):
    """Hold the writer lock of `target` for the block; LockedError at once if another process holds it.

    Yields the previous holder's record when the lock was taken over from a dead process (a stale
    lock), else None. The lock file stays behind after release (removing it would race with the next
    writer that already opened it); it is tiny and harmless. A target on object storage (a URL) has no
    file to flock: its lock is a lease object (`shared/lease.py`), which needs the service's conditional
    writes unless `single_writer` accepts the user's promise that no other writer runs.
    """
    location = as_location(target)
    if is_remote(location):
        from .lease import DEFAULT_TTL_S, lease_lock
        ttl = lease_ttl()
        with lease_lock(str(location), what, single_writer=single_writer,
                        ttl=DEFAULT_TTL_S if ttl is None else ttl) as previous:
            yield previous
        return
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(path, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise PointADError(f"{path}: cannot take the writer lock ({exc.strerror})") from None
            raise LockedError(f"{Path(target)}: another writer holds it: {_describe(_record(fd))}; "
                              f"wait for it to finish") from None
        previous = _record(fd)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "what": what}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield previous if previous and previous.get("pid") != os.getpid() else None
        os.ftruncate(fd, 0)  # released cleanly: the next writer finds no stale record
    finally:
        os.close(fd)  # closing the descriptor releases the flock
