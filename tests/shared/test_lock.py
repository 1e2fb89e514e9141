"""Writer locks across real processes: a second writer is refused, a killed holder's lock is taken over."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from pointad.shared.lock import LockedError, holder, lock_path, writer_lock

HOLD = textwrap.dedent("""
    import sys, time
    from pointad.shared.lock import writer_lock
    with writer_lock(sys.argv[1], "test holder"):
        print("held", flush=True)
        time.sleep(60)
""")


def _start_holder(target):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    target = tmp_path / "renders.zarr"
    process = _start_holder(target)
    try:
        with pytest.raises(LockedError, match=rf"renders.zarr: another writer holds it: pid {process.pid} on host "):
            with writer_lock(target):
                pass
    finally:
        process.kill()
        process.wait()


def test_lock_of_a_killed_holder_is_taken_over_and_reported_stale(tmp_path):
    target = tmp_path / "run"
    process = _start_holder(target)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert holder(target)["pid"] == process.pid  # the record survives the kill ...
    with writer_lock(target) as previous:         # ... but nobody holds the flock any more
        assert previous["pid"] == process.pid
        assert holder(target)["pid"] == os.getpid()


def test_clean_release_leaves_no_stale_record_and_relocks(tmp_path):
    target = tmp_path / "cache.zarr"
    with writer_lock(target) as previous:
        assert previous is None
        assert lock_path(target).parent == tmp_path and not target.exists()
    assert holder(target) is None
    with writer_lock(target) as previous:
        assert previous is None


def test_same_process_cannot_take_a_held_lock_twice(tmp_path):
    with writer_lock(tmp_path / "x"):
        with pytest.raises(LockedError):
            with writer_lock(tmp_path / "x"):
                pass


def test_lock_path_is_one_file_for_every_spelling_of_a_target(tmp_path, monkeypatch):
    (tmp_path / "real.zarr").mkdir()
    (tmp_path / "link.zarr").symlink_to(tmp_path / "real.zarr")
    (tmp_path / "later.zarr").symlink_to(tmp_path / "new.zarr")  # dangling: the target does not exist yet
    monkeypatch.chdir(tmp_path)
    assert {lock_path(p) for p in (tmp_path / "real.zarr", tmp_path / "link.zarr", "real.zarr",
                                   tmp_path / "link.zarr" / ".." / "real.zarr")} == {tmp_path / ".real.zarr.pointad-lock"}
    assert lock_path("later.zarr") == lock_path(tmp_path / "new.zarr") == tmp_path / ".new.zarr.pointad-lock"


def test_holder_reads_no_record_through_a_symlink_or_a_fifo(tmp_path):
    record = tmp_path / "record.json"
    record.write_text('{"pid": 1, "host": "h", "since": 0, "what": "x"}')
    (tmp_path / ".a.pointad-lock").symlink_to(record)
    os.mkfifo(tmp_path / ".b.pointad-lock")  # a blocking read would hang here
    assert holder(tmp_path / "a") is None and holder(tmp_path / "b") is None
