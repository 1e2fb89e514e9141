"""Object storage access against a real S3-compatible server (moto's server mode, tests/conftest.py): the
conditional writes on one key, the probe, and one-line errors in bounded time, each in a child process."""

import hashlib
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from pointad.shared import remote
from pointad.shared.errors import PointADError
from pointad.shared.remote import (
    StorageError,
    conditional_writes_work,
    create_if_absent,
    delete_if_match,
    read_stamped,
    replace_if_match,
    storage_error,
)

# every wait of a refused, missing or unreachable location is bounded by our timeouts; a child that runs
# past this has waited minutes, which is the failure these tests catch
CHILD_TIMEOUT_S = 60

CHECK = textwrap.dedent("""
    import sys
    from pointad.shared.errors import PointADError
    from pointad.shared.remote import check_location, create_if_absent
    try:
        check_location(sys.argv[1])
        create_if_absent(sys.argv[1], b"x")
    except PointADError as exc:
        print(f"Error: {exc}")
        sys.exit(1)
    print("ok")
""")


def _etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'  # S3's ETag of a single-part, unencrypted put


def _keys(bucket: str) -> list[str]:
    fs = remote.filesystem(f"s3://{bucket}")
    fs.invalidate_cache()
    return sorted(fs.find(bucket, withdirs=False))


@pytest.mark.slow
def test_create_only_if_absent_then_replace_and_delete_only_the_version_named(s3_env):
    bucket = s3_env.make_bucket()
    url = f"s3://{bucket}/stores/.renders.zarr.pointad-lease"
    assert create_if_absent(url, b"first") == _etag(b"first")
    assert create_if_absent(url, b"second") is None  # it exists: refused, and left as it was
    stamped = read_stamped(url)
    assert (stamped.data, stamped.etag) == (b"first", _etag(b"first"))
    assert stamped.service_now is not None and stamped.modified.tzinfo is not None

    assert replace_if_match(url, b"third", _etag(b"other")) is None
    assert read_stamped(url).data == b"first"
    assert replace_if_match(url, b"third", _etag(b"first")) == _etag(b"third")
    assert replace_if_match(url, b"fourth", _etag(b"first")) is None  # that version is gone now

    assert delete_if_match(url, _etag(b"first")) is False
    assert read_stamped(url).data == b"third"
    assert delete_if_match(url, _etag(b"third")) is True
    assert read_stamped(url) is None
    assert delete_if_match(url, _etag(b"third")) is False
    assert replace_if_match(url, b"x", _etag(b"third")) is None  # nothing to replace: not created either
    assert _keys(bucket) == []


@pytest.mark.slow
def test_read_stamped_reads_at_most_the_limit_and_an_empty_object(s3_env):
    bucket = s3_env.make_bucket()
    big = bytes(range(256)) * 40
    assert create_if_absent(f"s3://{bucket}/big", big) == _etag(big)
    stamped = read_stamped(f"s3://{bucket}/big", limit=100)
    assert stamped.data == big[:100] and stamped.etag == _etag(big)  # the ETag is the whole object's
    assert create_if_absent(f"s3://{bucket}/empty", b"") == _etag(b"")
    assert read_stamped(f"s3://{bucket}/empty").data == b""
    assert read_stamped(f"s3://{bucket}/absent") is None


@pytest.mark.slow
def test_the_probe_finds_conditional_writes_and_leaves_nothing_behind(s3_env):
    bucket = s3_env.make_bucket()
    assert conditional_writes_work(f"s3://{bucket}/deep/prefix/renders.zarr") is True
    assert _keys(bucket) == []
    assert (remote._endpoint(f"s3://{bucket}/x"), bucket) in remote._conditional_cache


def test_other_protocols_have_no_conditional_write():
    assert conditional_writes_work("memory://renders.zarr") is False
    assert conditional_writes_work("/tmp/renders.zarr") is False
    with pytest.raises(StorageError, match=r"^memory://x: memory:// storage has no conditional write"):
        create_if_absent("memory://x", b"1")


def test_a_bucket_root_is_no_object():
    with pytest.raises(StorageError, match=r"^s3://bucket/: names a bucket, not an object in it$"):
        read_stamped("s3://bucket/")


def test_protocols_and_options():
    assert [remote.protocol_of(u) for u in ("s3://b/k", "S3A://b/k", "memory://x", "renders.zarr", "file:///a")] == \
        ["s3", "s3a", "memory", "file", "file"]
    options = remote.storage_options("s3://b/k", endpoint_url="http://127.0.0.1:9")
    assert options["config_kwargs"]["connect_timeout"] == remote.CONNECT_TIMEOUT_S
    assert options["config_kwargs"]["retries"]["max_attempts"] == remote.BOTOCORE_ATTEMPTS
    assert options["endpoint_url"] == "http://127.0.0.1:9"
    assert remote.storage_options("memory://x") == {}
    assert remote.filesystem("s3://b/k").retries == remote.S3FS_RETRIES
    fs = remote.filesystem("s3://b/k", asynchronous=True)
    assert fs.asynchronous and fs.retries == remote.S3FS_RETRIES and fs is not remote.filesystem("s3://b/k")


def test_storage_error_is_one_line_without_the_secret(monkeypatch):
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    error = storage_error(RuntimeError(f"signature for {secret} was wrong\nStringToSign: ..."), "s3://b/k")
    assert str(error) == "s3://b/k: signature for *** was wrong"
    assert isinstance(error, PointADError)
    assert storage_error(error, "s3://other/k") is error  # already ours: not wrapped twice


def _run_child(url: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHECK, url], env=env, capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S)


def _one_error_line(result: subprocess.CompletedProcess, env: dict) -> str:
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and result.stderr == "", (result.stdout, result.stderr[-2000:])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert name not in env or env[name] not in result.stdout
    return lines[0]


@pytest.mark.slow
def test_a_closed_port_is_one_line_naming_the_endpoint(s3_server, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on: the connection is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**s3_server.child_env(), "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    line = _one_error_line(_run_child("s3://some-bucket/renders.zarr", env), env)
    assert line == (f"Error: s3://some-bucket/renders.zarr: cannot reach the storage endpoint http://127.0.0.1:{port} "
                    f"(connection refused); check AWS_ENDPOINT_URL (or the endpoint option) and the network")


@pytest.mark.slow
def test_a_missing_bucket_is_one_line_naming_it(s3_server):
    env = s3_server.child_env()
    line = _one_error_line(_run_child("s3://no-such-bucket/a/renders.zarr", env), env)
    assert line == (f"Error: s3://no-such-bucket/a/renders.zarr: bucket 'no-such-bucket' does not exist at "
                    f"{s3_server.endpoint}")


@pytest.mark.slow
def test_bad_credentials_are_one_line_saying_access_denied(s3_server_refusing):
    env = s3_server_refusing.child_env()
    line = _one_error_line(_run_child("s3://any-bucket/renders.zarr", env), env)
    assert line.startswith(f"Error: s3://any-bucket/renders.zarr: access denied at {s3_server_refusing.endpoint} (")
    assert line.endswith("): check the credentials and their permissions")


@pytest.mark.slow
def test_bad_credentials_on_a_write_say_which_key_was_refused(s3_env_refusing):
    s3_server_refusing = s3_env_refusing
    with pytest.raises(StorageError) as info:
        create_if_absent("s3://any-bucket/renders.zarr", b"x")
    assert str(info.value) == (f"s3://any-bucket/renders.zarr: access denied at {s3_server_refusing.endpoint} "
                               f"(The AWS Access Key Id you provided does not exist in our records.): check the "
                               f"credentials and their permissions")


@pytest.mark.slow
def test_no_credentials_at_all_is_one_line_saying_where_to_put_them(s3_server):
    env = {name: value for name, value in s3_server.child_env().items()
           if name not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # no instance-metadata lookup on a machine that has none
    bucket = s3_server.make_bucket()
    line = _one_error_line(_run_child(f"s3://{bucket}/renders.zarr", env), env)
    assert line == (f"Error: s3://{bucket}/renders.zarr: no credentials found; set AWS_ACCESS_KEY_ID and "
                    f"AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or ~/.aws/credentials")


@pytest.mark.slow
def test_a_reachable_bucket_passes_the_check(s3_server):
    bucket = s3_server.make_bucket()
    result = _run_child(f"s3://{bucket}/renders.zarr", s3_server.child_env())
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr[-2000:]
    assert os.environ.get("AWS_ENDPOINT_URL") != s3_server.endpoint  # the child's variables stayed its own


NEW_SETTINGS = textwrap.dedent("""
    import gc, os, sys
    import zarr
    from pointad.shared.environment import set_storage_environment, storage_environment
    from pointad.shared.location import as_location, zarr_store
    url = sys.argv[1]
    zarr.open_group(zarr_store(as_location(url), read_only=False), mode="w").attrs["n"] = 1  # Zarr's client
    first = zarr_store(as_location(url), read_only=True).fs
    set_storage_environment({**storage_environment(), "AWS_DEFAULT_REGION": "eu-west-1"})  # a worker's new settings
    del first
    gc.collect()  # the dropped client is collected here, not at exit
    store = zarr_store(as_location(url), read_only=True)
    print(zarr.open_group(store, mode="r").attrs["n"], store.fs.s3.meta.region_name)
""")


@pytest.mark.slow
def test_new_storage_settings_close_zarrs_client_and_the_store_reads_with_a_new_one(s3_server):
    """A render worker given new object-storage settings drops the clients made with the old ones: Zarr's
    asynchronous one is closed first (s3fs never closes those; dropped open, aiohttp warns "Unclosed client
    session" and its sockets stay open), and the next opening makes a new client with the new settings."""
    bucket = s3_server.make_bucket()
    result = subprocess.run([sys.executable, "-c", NEW_SETTINGS, f"s3://{bucket}/renders.zarr"],
                            env=s3_server.child_env(), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Unclosed" not in result.stderr, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "eu-west-1"]  # read through a client of the new settings
