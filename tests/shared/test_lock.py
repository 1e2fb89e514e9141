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
