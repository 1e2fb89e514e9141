"""Writer leases on object storage across real processes and a real S3-compatible server (moto): a second
writer is refused naming the first, an expired lease is taken over by exactly one of two takers, renewal keeps
a lease alive past its ttl, and a lost lease is an error at the block's end."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from pointad.shared import remote
from pointad.shared.errors import PointADError
from pointad.shared.lease import lease_lock, lease_url
from pointad.shared.lock import LockedError
from pointad.shared.remote import create_if_absent, read_stamped

DEADLINE_S = 60  # a bound on waits for events (an expiry, a renewal), never a duration asserted

# holds the lease of argv[1] with ttl argv[2] until its stdin says "release" (or closes); prints what happened
HOLD = textwrap.dedent("""
    import sys
    from pointad.shared.errors import PointADError
    from pointad.shared.lease import lease_lock
    try:
        with lease_lock(sys.argv[1], "test holder", ttl=float(sys.argv[2])) as previous:
            print("held", previous and previous.get("pid"), flush=True)
            sys.stdin.readline()
    except PointADError as exc:
        print(f"Error: {exc}", flush=True)
        sys.exit(1)
    print("released", flush=True)
""")

# tries the lease of argv[1] once, pausing after its first read of the lease until stdin says "go" (so the test
# lets two takers write only once both have read the same expired lease); prints "won <previous pid>" and holds
# it until stdin closes, or "refused: <message>". The pause wraps the real read: every request is real.
TAKE = textwrap.dedent("""
    import sys
    from pointad.shared import lease
    from pointad.shared.lock import LockedError
    real_read, paused = lease.read_stamped, []
    def read_then_wait(url, **kwargs):
        stamped = real_read(url, **kwargs)
        if not paused:
            paused.append(1)
            print("read", flush=True)
            sys.stdin.readline()
        return stamped
    lease.read_stamped = read_then_wait
    try:
        with lease.lease_lock(sys.argv[1], "taker", ttl=30) as previous:
            print("won", previous and previous.get("pid"), flush=True)
            sys.stdin.read()
    except LockedError as exc:
        print(f"refused: {exc}", flush=True)
""")


def _spawn(script: str, env: dict, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _hold(url: str, env: dict, ttl: float) -> subprocess.Popen:
    process = _spawn(HOLD, env, url, ttl)
    line = process.stdout.readline()
    assert line.startswith("held"), (line, process.stderr.read() if process.poll() is not None else "")
    return process


def _end(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


def _record(url: str) -> dict | None:
    stamped = read_stamped(lease_url(url))
    return json.loads(stamped.data) if stamped else None


def _wait_for(condition, what: str):
    """Poll `condition()` until it is truthy (its value) or DEADLINE_S passes (a failure naming `what`)."""
    deadline = time.monotonic() + DEADLINE_S
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)
    return value


def _take_when_expired(url: str):
    """Enter lease_lock(url) as soon as the current holder's lease has expired: (context manager, previous)."""
    def attempt():
        manager = lease_lock(url, "test", ttl=30)
        try:
            return manager, manager.__enter__()
        except LockedError:
            return None
    return _wait_for(attempt, f"the lease of {url} to expire")


def test_lease_sits_beside_the_store():
    assert lease_url("s3://bucket/renders.zarr") == "s3://bucket/.renders.zarr.pointad-lease"
    assert lease_url("s3://bucket/a/b/renders.zarr/") == "s3://bucket/a/b/.renders.zarr.pointad-lease"
    assert lease_url("memory://stores/x.zarr") == "memory://stores/.x.zarr.pointad-lease"
    for root in ("s3://bucket", "s3://bucket/", "memory://"):
        with pytest.raises(PointADError, match=r"names a bucket or root, not a store in it; give a key"):
            lease_url(root)


def test_a_bucket_root_and_a_wild_ttl_are_refused_before_any_request():
    with pytest.raises(PointADError, match=r"^s3://bucket/: names a bucket or root"):
        with lease_lock("s3://bucket/"):
            pass
    with pytest.raises(PointADError,
                       match=r"^memory://x.zarr: lease ttl \(POINTAD_LEASE_TTL\) must be in 1\.\.3600 s, got 0\.1$"):
        with lease_lock("memory://x.zarr", single_writer=True, ttl=0.1):
            pass


def test_memory_storage_is_refused_without_the_single_writer_promise(caplog):
    url = "memory://leases/renders.zarr"
    with pytest.raises(PointADError) as info:
        with lease_lock(url):
            pass
    assert str(info.value) == ("memory://leases/renders.zarr: memory:// storage offers no conditional write, so no "
                               "writer lease can keep a second writer out; pass --single-writer to promise that only "
                               "one process writes it")
    with caplog.at_level(logging.WARNING, logger="pointad.lease"):
        with lease_lock(url, "writing", single_writer=True) as previous:
            assert previous is None
            record = json.loads(remote.filesystem(url).cat_file("/leases/.renders.zarr.pointad-lease"))
            assert record["pid"] == os.getpid() and record["what"] == "writing"
            with pytest.raises(LockedError, match=rf"another writer holds it: pid {os.getpid()} on host "):
                with lease_lock(url, single_writer=True):  # a live record still refuses (a best effort)
                    pass
    assert "nothing protects it" in caplog.text and "--single-writer" in caplog.text
    assert not remote.filesystem(url).exists("/leases/.renders.zarr.pointad-lease")  # released: deleted


@pytest.mark.slow
def test_second_writer_is_refused_naming_the_holder(s3_env):
    url = f"s3://{s3_env.make_bucket()}/stores/renders.zarr"
    process = _hold(url, s3_env.child_env(), ttl=30)
    try:
        with pytest.raises(LockedError) as info:
            with lease_lock(url):
                pass
        message = str(info.value)
        assert message.startswith(f"{url}: another writer holds it: pid {process.pid} on host {socket.gethostname()} "
                                  f"(since ")
        assert ", lease until " in message and "test holder); wait for it to finish" in message
        assert "\n" not in message
    finally:
        process.stdin.write("release\n")
        process.stdin.flush()
        assert process.stdout.readline() == "released\n"
        _end(process)
    assert read_stamped(lease_url(url)) is None  # a clean release deletes the lease
    with lease_lock(url) as previous:
        assert previous is None


@pytest.mark.slow
def test_the_record_names_the_holder_and_holds_no_credential(s3_env):
    url = f"s3://{s3_env.make_bucket()}/renders.zarr"
    with lease_lock(url, "render build", ttl=30):
        raw = read_stamped(lease_url(url)).data
        with pytest.raises(LockedError):  # the same process cannot take it twice
            with lease_lock(url):
                pass
    record = json.loads(raw)
    assert set(record) == {"holder", "pid", "host", "since", "expires", "ttl", "what"}
    assert (record["pid"], record["host"], record["ttl"], record["what"]) == \
        (os.getpid(), socket.gethostname(), 30.0, "render build")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert os.environ[name].encode() not in raw
    assert s3_env.endpoint.encode() not in raw


@pytest.mark.slow
def test_the_lease_of_a_killed_holder_is_taken_over_once_expired(s3_env):
    url = f"s3://{s3_env.make_bucket()}/renders.zarr"
    process = _hold(url, s3_env.child_env(), ttl=1)
    os.kill(process.pid, signal.SIGKILL)
    _end(process)
    assert _record(url)["pid"] == process.pid  # the lease outlives its holder ...
    manager, previous = _take_when_expired(url)  # ... until its ttl passes on the service's clock
    try:
        assert previous["pid"] == process.pid and previous["what"] == "test holder"
        assert _record(url)["pid"] == os.getpid()
    finally:
        manager.__exit__(None, None, None)


@pytest.mark.slow
def test_of_two_processes_taking_over_one_expired_lease_exactly_one_wins(s3_env):
    url = f"s3://{s3_env.make_bucket()}/renders.zarr"
    expired = {"holder": "gone", "pid": 1, "host": "elsewhere", "since": 0, "expires": 1, "ttl": 1, "what": "old"}
    assert create_if_absent(lease_url(url), json.dumps(expired).encode())
    _wait_for(lambda: read_stamped(lease_url(url)).age() > 2 + 1, "the planted lease to expire")
    takers = [_spawn(TAKE, s3_env.child_env(), url) for _ in range(2)]
    try:
        for taker in takers:  # both have read the expired lease before either writes
            assert taker.stdout.readline() == "read\n", taker.stderr.read()
        for taker in takers:
            taker.stdin.write("go\n")
            taker.stdin.flush()
        outcome = {taker.pid: taker.stdout.readline() for taker in takers}
        winners = [pid for pid, line in outcome.items() if line == "won 1\n"]  # took over from the planted pid 1
        assert len(winners) == 1, outcome
        loser = next(line for pid, line in outcome.items() if pid != winners[0])
        assert loser.startswith(f"refused: {url}: another writer holds it: pid {winners[0]} on host "), outcome
        assert _record(url)["pid"] == winners[0]
    finally:
        for taker in takers:
            taker.stdin.close()
            taker.wait(timeout=DEADLINE_S)
    assert read_stamped(lease_url(url)) is None  # the winner released it


@pytest.mark.slow
def test_renewal_keeps_a_lease_alive_past_its_ttl(s3_env):
    url = f"s3://{s3_env.make_bucket()}/renders.zarr"
    ttl = 2.0
    process = _hold(url, s3_env.child_env(), ttl=ttl)
    try:
        # every try to take it fails until its holder has renewed it (every ttl/3) so often that its expiry lies
        # four ttls after its start: the first ttl is long over, and at no try did the lease look expired
        def renewed_past_ttl():
            with pytest.raises(LockedError, match=rf"another writer holds it: pid {process.pid} "):
                with lease_lock(url):
                    pass
            record = _record(url)
            return record["expires"] - record["since"] > 4 * ttl
        _wait_for(renewed_past_ttl, "renewals")
    finally:
        process.stdin.write("release\n")
        process.stdin.flush()
        assert process.stdout.readline() == "released\n"
        _end(process)


@pytest.mark.slow
def test_a_lease_replaced_under_its_holder_is_an_error_at_the_end_of_the_block(s3_env):
    url = f"s3://{s3_env.make_bucket()}/renders.zarr"
    other = {"holder": "other", "pid": 2, "host": "elsewhere", "since": 0, "expires": 0, "ttl": 30, "what": "x"}
    with pytest.raises(LockedError) as info:
        with lease_lock(url, "render build", ttl=30):
            remote.filesystem(url).pipe_file(lease_url(url), json.dumps(other).encode())  # a plain overwrite
    assert str(info.value) == (f"{url}: lost its writer lease while render build: another writer took it over; "
                               f"another writer may have written it meanwhile: check it before trusting it")
    assert _record(url) == other  # not ours any more: left in place


@pytest.mark.slow
def test_the_blocks_own_error_is_kept_as_the_cause_of_a_lost_lease(s3_env):
    url = f"s3://{s3_env.make_bucket()}/renders.zarr"
    with pytest.raises(LockedError, match=r"lost its writer lease") as info:
        with lease_lock(url, ttl=30):
            remote.filesystem(url).rm_file(lease_url(url))
            raise ValueError("the block failed")
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ValueError, match=r"^the block failed$"):  # a lease still held: the error as it is
        with lease_lock(url, ttl=30):
            raise ValueError("the block failed")
    assert read_stamped(lease_url(url)) is None


@pytest.mark.slow
def test_a_holder_frozen_past_its_ttl_learns_it_lost_the_lease(s3_env):
    url = f"s3://{s3_env.make_bucket()}/renders.zarr"
    process = _hold(url, s3_env.child_env(), ttl=1)
    try:
        os.kill(process.pid, signal.SIGSTOP)  # a stopped VM, a long pause: no renewal
        manager, previous = _take_when_expired(url)
        try:
            assert previous["pid"] == process.pid
            os.kill(process.pid, signal.SIGCONT)
            process.stdin.write("release\n")
            process.stdin.flush()
            line = process.stdout.readline()
            assert line == (f"Error: {url}: lost its writer lease while test holder: another writer took it over; "
                            f"another writer may have written it meanwhile: check it before trusting it\n")
            assert process.wait(timeout=DEADLINE_S) == 1
            assert _record(url)["pid"] == os.getpid()  # the late holder deleted nothing of ours
        finally:
            manager.__exit__(None, None, None)
    finally:
        os.kill(process.pid, signal.SIGCONT) if process.poll() is None else None
        _end(process)
    assert read_stamped(lease_url(url)) is None


@pytest.mark.slow
def test_a_forged_record_is_refused_in_one_printable_line_and_garbage_expires(s3_env):
    bucket = s3_env.make_bucket()
    forged = {"pid": "1\nError: all fine", "host": "\x1b[2Jhost", "since": "soon", "expires": 1e308, "ttl": 1e9}
    url = f"s3://{bucket}/forged.zarr"
    create_if_absent(lease_url(url), json.dumps(forged).encode())
    with pytest.raises(LockedError) as info:
        with lease_lock(url):
            pass
    assert str(info.value) == (f"{url}: another writer holds it: pid 1\\nError: all fine on host \\x1b[2Jhost (since ?, "
                               f"lease until ?, writing); wait for it to finish (a lease not renewed for its ttl of "
                               f"3600 s expires)")  # a forged ttl is held to 3600 s

    url = f"s3://{bucket}/garbage.zarr"
    create_if_absent(lease_url(url), b"\x00 not a record")
    with pytest.raises(LockedError, match=r"another writer holds it: another process \(its lease record is unreadable\)"):
        with lease_lock(url, ttl=1):
            pass
    _wait_for(lambda: read_stamped(lease_url(url)).age() > 1 + 1, "the garbage to expire by the taker's ttl")
    with lease_lock(url, ttl=1) as previous:
        assert previous == {"what": "unreadable lease record"}
