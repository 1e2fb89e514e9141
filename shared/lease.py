"""The writer lock of a target on object storage: a lease object beside it (design §8).

`writer_lock` (shared/lock.py) is an `flock`, which no object store has. Here the lock is a small JSON
object `<parent>/.<name>.pointad-lease` beside the target, {holder, pid, host, since, expires, ttl, what}:
- taken by creating it only if absent (S3's `If-None-Match: *`), so of two writers exactly one creates it;
- renewed by a daemon thread every ttl/3, each write naming the version it replaces (`If-Match: <ETag>`);
- taken over once expired, again with If-Match on the expired version, so of two takers exactly one wins;
- released by deleting it only if it is still our version.
A second writer is refused in one line naming the holder. A writer whose lease was taken over (it was
stopped, or cut off, past its ttl) learns it at the latest when its block ends: LockedError, never silence.

Whose clock says a lease expired: the service's. Writers run on several hosts whose clocks may disagree by
more than a ttl; the service stamps every write with its LastModified and every answer with its Date, both on
its one clock. A lease is expired when the Date of the read that found it is more than ttl + 1 s after its
LastModified (the stamps have 1 s resolution), with the ttl the holder recorded. `expires` in the record is
the holder's own reckoning, shown to people, never trusted.

Where the service ignores conditional writes (probed: shared/remote.conditional_writes_work) or the protocol
has none (memory://, and any fsspec protocol but S3), no lease can exclude a second writer: the lock is
refused unless the caller passes `single_writer=True` (the user's `--single-writer` promise); then the
record is written plainly, a live record of another holder still refuses (a best effort, racy), and a
warning says nothing protects the target.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager

from .errors import PointADError, first_line
from .lock import LockedError
from .logging import get_logger
from .names import printable
from .remote import (
    conditional_writes_work,
    create_if_absent,
    delete_if_match,
    filesystem,
    is_s3,
    protocol_of,
    read_stamped,
    replace_if_match,
    storage_error,
)

__all__ = ["lease_lock", "lease_url", "DEFAULT_TTL_S", "SINGLE_WRITER_OPTION"]

LEASE_SUFFIX = ".pointad-lease"
DEFAULT_TTL_S = 30.0
MIN_TTL_S, MAX_TTL_S = 1.0, 3600.0
CLOCK_RESOLUTION_S = 1.0  # LastModified and Date are whole seconds
RECORD_BYTES = 4096  # a record is ~200 bytes; never read more than this of a lease object
SINGLE_WRITER_OPTION = "--single-writer"
_log = get_logger("lease")


def lease_url(url: str) -> str:
    """The lease object that guards `url`: its hidden sibling `<parent>/.<name>.pointad-lease`. A URL with no
    object name (a bucket root) is refused: its lease would have no parent to sit in."""
    text = os.fspath(url)
    protocol, sep, rest = text.partition("://")
    if not sep:
        protocol, rest = "", text
    rest = rest.rstrip("/")
    parent, _, name = rest.rpartition("/")
    if not name or (protocol and not parent and is_s3(text)) or name in (".", ".."):
        raise PointADError(f"{text}: names a bucket or root, not a store in it; give a key, e.g. s3://bucket/renders.zarr")
    return f"{protocol}{sep}{parent + '/' if parent else ''}.{name}{LEASE_SUFFIX}"


def _record_of(data: bytes | None) -> dict | None:
    try:
        record = json.loads(data or b"null")
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _describe(record: dict | None) -> str:
    if not record:
        return "another process (its lease record is unreadable)"

    def clock(seconds) -> str:
        try:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(seconds)))
        except (TypeError, ValueError, OverflowError, OSError):
            return "?"
    pid, host, what = (printable(record.get(key, default)) for key, default in
                       (("pid", "?"), ("host", "?"), ("what", "writing")))  # read from storage: may be forged
    since, until = clock(record.get("since")), clock(record.get("expires"))
    return f"pid {pid} on host {host} (since {since}, lease until {until}, {what})"


def _seconds(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _ttl_of(record: dict | None, default: float) -> float:
    try:
        ttl = float(record["ttl"])
    except (TypeError, KeyError, ValueError):
        return default
    return min(max(ttl, MIN_TTL_S), MAX_TTL_S)  # a tampered record can neither pin a lease nor free it at once


class _Lease:
    """A held lease: its object, the ETag of our last write, and the thread that renews it."""

    def __init__(self, url: str, record: dict, etag: str | None, conditional: bool):
        self.url, self.record, self.etag, self.conditional = url, record, etag, conditional
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease {url}", daemon=True)

    def body(self) -> bytes:
        self.record["expires"] = time.time() + self.record["ttl"]
        return json.dumps(self.record).encode()

    def start(self) -> None:
        self._thread.start()

    def _renew_loop(self) -> None:
        ttl = self.record["ttl"]
        last_renewed = time.monotonic()
        while not self._stop.wait(ttl / 3):
            try:
                if self.conditional:
                    etag = replace_if_match(self.url, self.body(), self.etag)
                    if etag is None:
                        self.lost = "another writer took it over"
                        return
                    self.etag = etag
                else:
                    _write_plain(self.url, self.body())
                last_renewed = time.monotonic()
            except PointADError as exc:
                if time.monotonic() - last_renewed > ttl:  # past its ttl another writer may take it
                    self.lost = f"not renewed for {ttl:g} s ({exc})"
                    return

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours (sets `lost` if it is not)."""
        self._stop.set()
        self._thread.join()
        if self.lost:
            return
        try:
            if self.conditional:
                if not delete_if_match(self.url, self.etag):
                    self.lost = "another writer took it over"
            else:
                _delete_plain(self.url)
        except PointADError as exc:  # the work is done; the lease just expires on its own
            _log.warning("%s: the writer lease was not removed (%s); it expires in %g s", self.url, exc,
                         self.record["ttl"])


def _write_plain(url: str, data: bytes) -> None:
    try:
        fs = filesystem(url)
        fs.pipe_file(fs._strip_protocol(url), data)
    except Exception as exc:
        raise storage_error(exc, url) from None


def _read_plain(url: str) -> bytes | None:
    try:
        fs = filesystem(url)
        return fs.cat_file(fs._strip_protocol(url), start=0, end=RECORD_BYTES)
    except FileNotFoundError:
        return None
    except Exception as exc:
        raise storage_error(exc, url) from None


def _delete_plain(url: str) -> None:
    try:
        fs = filesystem(url)
        fs.rm_file(fs._strip_protocol(url))
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise storage_error(exc, url) from None


def _take(target: str, url: str, record: dict, ttl: float) -> tuple[str, dict | None]:
    """Create the lease object `url` or take it over from an expired holder: (our ETag, the expired
    holder's record or None). LockedError naming the holder while another's lease is alive."""
    body = json.dumps(record).encode()
    for _ in range(4):  # each turn another writer changed the lease between our read and our write
        current = read_stamped(url, limit=RECORD_BYTES)
        if current is None:
            etag = create_if_absent(url, body)
            if etag is not None:
                return etag, None
            continue
        previous = _record_of(current.data)
        if current.age() <= _ttl_of(previous, ttl) + CLOCK_RESOLUTION_S:
            raise LockedError(f"{target}: another writer holds it: {_describe(previous)}; wait for it to finish "
                              f"(a lease not renewed for its ttl of {_ttl_of(previous, ttl):g} s expires)")
        etag = replace_if_match(url, body, current.etag)
        if etag is not None:
            return etag, previous or {"what": "unreadable lease record"}
    raise LockedError(f"{target}: other writers keep changing its lease {url}; try again")


def _why_unprotected(url: str) -> str:
    if not is_s3(url):
        return f"{protocol_of(url)}:// storage offers no conditional write"
    return "this S3 service ignores conditional writes (a second If-None-Match put was not refused)"


@contextmanager
def lease_lock(url: str, what: str = "writing", *, single_writer: bool = False, ttl: float = DEFAULT_TTL_S):
    """Hold the writer lease of the store at `url` for the block; LockedError at once if another writer
    holds it. The contract of shared/lock.writer_lock: yields the previous holder's record when the lease
    was taken over from an expired holder, else None.

    ttl: seconds a holder that stops renewing (killed, frozen, cut off) keeps others out; renewed every
    ttl/3. If the lease is lost meanwhile, the block's end raises LockedError saying so (from the block's
    own exception, if it raised one). single_writer: the user's promise that no other process writes the
    target, accepted only where conditional writes are unavailable (see the module's docstring).
    """
    target = os.fspath(url)
    if not MIN_TTL_S <= ttl <= MAX_TTL_S:
        raise PointADError(f"{target}: lease ttl (POINTAD_LEASE_TTL) must be in {MIN_TTL_S:g}..{MAX_TTL_S:g} s, "
                           f"got {ttl}")
    lease = lease_url(target)
    conditional = conditional_writes_work(lease)
    if not conditional and not single_writer:
        raise PointADError(f"{target}: {_why_unprotected(lease)}, so no writer lease can keep a second writer out; "
                           f"pass {SINGLE_WRITER_OPTION} to promise that only one process writes it")
    record = {"holder": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
              "expires": time.time() + ttl, "ttl": float(ttl), "what": what}
    if conditional:
        etag, previous = _take(target, lease, record, ttl)
    else:
        _log.warning("%s: %s; writing on the promise that no other process writes it (%s): nothing protects it",
                     target, _why_unprotected(lease), SINGLE_WRITER_OPTION)
        previous = _record_of(_read_plain(lease))
        if previous and _seconds(previous.get("expires")) > time.time():  # best effort: it races
            raise LockedError(f"{target}: another writer holds it: {_describe(previous)}; wait for it to finish")
        _write_plain(lease, json.dumps(record).encode())
        etag = None
    held = _Lease(lease, record, etag, conditional)
    held.start()
    try:
        yield previous
    except Exception as exc:
        held.release()
        if held.lost:
            raise _lost(target, what, held.lost) from exc
        raise
    except BaseException:
        held.release()
        raise
    held.release()
    if held.lost:
        raise _lost(target, what, held.lost)


def _lost(target: str, what: str, reason: str) -> LockedError:
    return LockedError(f"{target}: lost its writer lease while {what}: {first_line(reason)}; another writer may "
                       f"have written it meanwhile: check it before trusting it")
