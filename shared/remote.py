"""Object storage for the rest of the code: a URL's filesystem with bounded waits, one-line errors, and
conditional writes on one key (design §8, the writer lease).

Credentials and the endpoint come from where botocore looks for them (the environment: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_PROFILE; the ~/.aws files) or an endpoint given here; this
module never passes, prints or writes a credential, and blanks any that a service quotes back.

The conditional writes are S3's: a put with `If-None-Match: *` (create only if absent) and one with
`If-Match: <ETag>` (replace only the version we read). Some S3-compatible services ignore those headers;
`conditional_writes_work` probes a bucket once per process. Other fsspec protocols have no such write here.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

from .environment import storage_secrets
from .errors import PointADError, first_line

__all__ = ["StorageError", "Stamped", "protocol_of", "is_s3", "storage_options", "filesystem", "storage_error",
           "drop_s3_clients", "check_location", "create_if_absent", "replace_if_match", "read_stamped", "delete_if_match",
           "conditional_writes_work", "NO_CONDITIONAL_WRITE"]

S3_PROTOCOLS = frozenset({"s3", "s3a"})
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
# botocore's attempts per request (standard mode: jittered back-off, throttling retried) and s3fs's own loop
# around it (which retries timeouts and cut-off bodies): a refused connection fails in about 3 s, a silent
# endpoint in about 2 x 5 s; only a service that accepts and then never answers can take 2 x 2 x 30 s
BOTOCORE_ATTEMPTS = 2
S3FS_RETRIES = 2
NO_CONDITIONAL_WRITE = "has no conditional write (only S3's If-None-Match / If-Match are used)"

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
           "InvalidClientTokenId", "UnrecognizedClientException", "AllAccessDisabled", "AccountProblem", "403",
           "Forbidden"}
_NO_BUCKET = {"NoSuchBucket"}
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_NO_KEY = {"NoSuchKey", "404", "NotFound"}
_conditional_cache: dict[tuple[str, str], bool] = {}


class StorageError(PointADError):
    """Object storage refused or could not be reached; the message names the URL and the reason."""


@dataclass(frozen=True)
class Stamped:
    """An object's bytes with the service's stamps: its ETag (the version a conditional write names), its
    LastModified and the Date of the response that read it, both on the service's clock (None where the
    service sent no Date)."""
    data: bytes
    etag: str
    modified: datetime
    service_now: datetime | None

    def age(self) -> float:
        """Seconds since the object was last written, on the service's clock where it sent one (each stamp has
        1 s resolution, so the true age is within 1 s of this), else on this host's."""
        now = self.service_now or datetime.now(UTC)
        return (now - self.modified).total_seconds()


def protocol_of(url) -> str:
    """The fsspec protocol of `url` ("s3", "memory", ...); "file" for a plain path."""
    text = os.fspath(url)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    return scheme.lower() if scheme else "file"


def is_s3(url) -> bool:
    return protocol_of(url) in S3_PROTOCOLS


def storage_options(url, *, endpoint_url: str | None = None) -> dict:
    """The fsspec options our code opens `url` with (for Zarr or UPath): for S3, bounded timeouts and
    attempts, and the endpoint if one is given; nothing for other protocols."""
    if not is_s3(url):
        return {}
    config = {"connect_timeout": CONNECT_TIMEOUT_S, "read_timeout": READ_TIMEOUT_S,
              "retries": {"max_attempts": BOTOCORE_ATTEMPTS, "mode": "standard"}}
    # max_concurrency 1: s3fs otherwise asks each object's size (a HEAD) before every GET, to split downloads
    # over 50 MiB into ranges; a chunk of ours is a few MiB at most (benchmarks/store_io_bench.py: 65 -> 42
    # requests per row written, 34 -> 17 per row read)
    return {"config_kwargs": config, "max_concurrency": 1, **({"endpoint_url": endpoint_url} if endpoint_url else {})}


def filesystem(url, *, endpoint_url: str | None = None, asynchronous: bool = False):
    """The fsspec filesystem of `url` (one instance per process and options: fsspec caches them), with the
    bounded waits of `storage_options` for S3. asynchronous: an instance for async callers (Zarr's
    FsspecStore wants one); S3 only, other protocols come as they are."""
    import fsspec
    options = storage_options(url, endpoint_url=endpoint_url)
    if asynchronous and is_s3(url):
        options["asynchronous"] = True
    fs = fsspec.filesystem(protocol_of(url), **options)
    if is_s3(url):
        fs.retries = S3FS_RETRIES  # s3fs's own retry loop: a class attribute, not a constructor option
    return fs


def drop_s3_clients() -> None:
    """Close and forget every S3 filesystem this process holds, so that the next one is made with the settings
    of now. s3fs closes a synchronous instance's connections when it is collected, never an asynchronous one's
    (Zarr's, driven by Zarr's event loop): forgotten unclosed, its sockets stay open and aiohttp says "Unclosed
    client session" when it is collected."""
    try:
        import s3fs
    except ImportError:
        return
    from zarr.core import sync as zarr_sync
    zarr_loop = zarr_sync.loop[0]  # the loop its client was made on; None: never started, or stopped at exit
    for fs in list(s3fs.S3FileSystem._cache.values()):
        client = getattr(fs, "_s3creator", None)
        if fs.asynchronous and client is not None:
            # s3fs's own closing: on the running loop (0.1 s at most), else the connector's sockets directly
            s3fs.S3FileSystem.close_session(zarr_loop, client)
            fs._s3 = fs._s3creator = None
    s3fs.S3FileSystem.clear_instance_cache()


def _split(url) -> tuple[str, str]:
    """(bucket, key) of an s3:// URL; key "" for a bucket root."""
    rest = os.fspath(url).split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key.strip("/")


def _endpoint(url) -> str:
    """The endpoint requests for `url` go to, as scheme://host[:port] (no user info, no path)."""
    try:
        fs = filesystem(url)
        if fs.s3 is None:
            from fsspec.asyn import sync
            sync(fs.loop, fs.set_session)
        parts = urlsplit(fs.s3.meta.endpoint_url)
        return urlunsplit((parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), "", "", ""))
    except Exception:  # naming the endpoint must never hide the error it is for
        return "the configured endpoint"


def _scrub(text: str) -> str:
    for secret in storage_secrets():
        text = text.replace(secret, "***")
    return text


def _chain(exc: BaseException):
    """`exc`, its causes and contexts, and a botocore connection error's inner error, outermost first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        inner = getattr(exc, "kwargs", None)
        inner = inner.get("error") if isinstance(inner, dict) else None
        exc = exc.__cause__ or exc.__context__ or (inner if isinstance(inner, BaseException) else None)


def _code(exc: BaseException) -> str | None:
    """The service's error code ("NoSuchBucket", "403", ...) found in `exc`'s chain, or None."""
    for link in _chain(exc):
        response = getattr(link, "response", None)
        if isinstance(response, dict) and isinstance(response.get("Error"), dict):
            return str(response["Error"].get("Code") or "") or None
    return None


def _unreachable(exc: BaseException) -> str | None:
    """Why the endpoint could not be reached, if that is what `exc` says, else None."""
    from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError
    for link in _chain(exc):
        if isinstance(link, ConnectTimeoutError):
            return f"no connection within {CONNECT_TIMEOUT_S} s"
        if isinstance(link, ReadTimeoutError | TimeoutError):
            return f"no answer within {READ_TIMEOUT_S} s"
        if isinstance(link, ConnectionClosedError):
            return "the connection was closed"
        if isinstance(link, socket.gaierror):
            return "unknown host name"
        if isinstance(link, OSError) and link.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                                         errno.ECONNRESET, errno.ETIMEDOUT):
            return os.strerror(link.errno).lower()
    if any(isinstance(link, EndpointConnectionError) for link in _chain(exc)):
        return "could not connect"
    return None


def storage_error(exc: BaseException, url) -> StorageError:
    """One line naming `url` and why object storage failed: the endpoint unreachable (named), the bucket
    missing, the credentials missing, wrong or denied, or else the first line of the error. No secret in it."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    if isinstance(exc, StorageError):
        return exc
    url = os.fspath(url)
    code = _code(exc)
    unreachable = _unreachable(exc)
    if unreachable:
        reason = f"cannot reach the storage endpoint {_endpoint(url)} ({unreachable}); check AWS_ENDPOINT_URL " \
                 f"(or the endpoint option) and the network"
    elif any(isinstance(link, NoCredentialsError | PartialCredentialsError) for link in _chain(exc)):
        reason = "no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or " \
                 "~/.aws/credentials"
    elif code in _NO_BUCKET or (code is None and "bucket does not exist" in str(exc)):
        reason = f"bucket '{_split(url)[0]}' does not exist at {_endpoint(url)}"
    elif code in _DENIED or (code is None and isinstance(exc, PermissionError)):
        reason = f"access denied at {_endpoint(url)} ({first_line(exc)}): check the credentials and their permissions"
    else:
        reason = first_line(exc)
    return StorageError(_scrub(f"{url}: {reason}"))


def check_location(url) -> None:
    """Raise StorageError (one line, see `storage_error`) unless `url`'s bucket answers to our credentials:
    one cheap request (HEAD bucket) before Zarr or a lease is involved. Other protocols: nothing to check."""
    if not is_s3(url):
        return
    fs = filesystem(url)
    bucket, _ = _split(url)
    try:
        _call(fs, "head_bucket", Bucket=bucket)
    except Exception as exc:
        if _code(exc) in _NO_KEY | _NO_BUCKET:  # HEAD has no body: a missing bucket is a bare 404
            raise StorageError(_scrub(f"{os.fspath(url)}: bucket '{bucket}' does not exist at {_endpoint(url)}")) from None
        raise storage_error(exc, url) from None


def _call(fs, method: str, **kwargs) -> dict:
    from fsspec.asyn import sync
    return sync(fs.loop, fs._call_s3, method, **kwargs)


def _s3_key(url) -> tuple[object, str, str]:
    """(filesystem, bucket, key) of an s3:// URL naming an object; StorageError for another protocol or a
    bucket root."""
    url = os.fspath(url)
    if not is_s3(url):
        raise StorageError(f"{url}: {protocol_of(url)}:// storage {NO_CONDITIONAL_WRITE}")
    bucket, key = _split(url)
    if not bucket or not key:
        raise StorageError(f"{url}: names a bucket, not an object in it")
    return filesystem(url), bucket, key


def create_if_absent(url, data: bytes) -> str | None:
    """Write `data` to the S3 object `url` only if no object is there (If-None-Match: *); its ETag, or None
    if an object already exists."""
    fs, bucket, key = _s3_key(url)
    try:
        return _call(fs, "put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")["ETag"]
    except FileExistsError:
        return None
    except Exception as exc:
        if _code(exc) in _PRECONDITION:
            return None
        raise storage_error(exc, url) from None


def replace_if_match(url, data: bytes, etag: str) -> str | None:
    """Replace the S3 object `url` with `data` only if it is still the version `etag` (If-Match); the new
    ETag, or None if the object changed or is gone."""
    fs, bucket, key = _s3_key(url)
    try:
        return _call(fs, "put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)["ETag"]
    except Exception as exc:
        if _code(exc) in _PRECONDITION | _NO_KEY:
            return None
        raise storage_error(exc, url) from None


def read_stamped(url, limit: int = 1 << 20) -> Stamped | None:
    """The S3 object `url` (its first `limit` bytes) with its ETag, LastModified and the service's Date; None
    if there is no such object."""
    fs, bucket, key = _s3_key(url)
    try:
        response = _call(fs, "get_object", Bucket=bucket, Key=key, Range=f"bytes=0-{limit - 1}")
        from fsspec.asyn import sync
        data = sync(fs.loop, response["Body"].read)
    except Exception as exc:
        if _code(exc) in _NO_KEY:
            return None
        if _code(exc) == "InvalidRange":  # an empty object: no byte 0 to start a range at
            return _read_empty(fs, bucket, key, url)
        raise storage_error(exc, url) from None
    return Stamped(data, response["ETag"], response["LastModified"], _service_now(response))


def _read_empty(fs, bucket: str, key: str, url) -> Stamped | None:
    try:
        response = _call(fs, "head_object", Bucket=bucket, Key=key)
    except Exception as exc:
        if _code(exc) in _NO_KEY:
            return None
        raise storage_error(exc, url) from None
    return Stamped(b"", response["ETag"], response["LastModified"], _service_now(response))


def _service_now(response: dict) -> datetime | None:
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        return None


def delete_if_match(url, etag: str) -> bool:
    """Delete the S3 object `url` only if it is still the version `etag` (If-Match); False if it changed or
    is gone (then it is not ours to delete)."""
    fs, bucket, key = _s3_key(url)
    try:
        _call(fs, "delete_object", Bucket=bucket, Key=key, IfMatch=etag)
    except Exception as exc:
        if _code(exc) in _PRECONDITION | _NO_KEY:
            return False
        raise storage_error(exc, url) from None
    return True


def conditional_writes_work(url) -> bool:
    """Whether the service holding `url` honours S3's conditional writes, probed once per endpoint and bucket
    per process: a probe object beside `url` is created twice with If-None-Match (the second must be
    refused) and replaced with a wrong If-Match (refused too), then deleted. False for other protocols."""
    if not is_s3(url):
        return False
    bucket, key = _split(os.fspath(url))
    cache_key = (_endpoint(url), bucket)
    if cache_key not in _conditional_cache:
        parent = key.rpartition("/")[0]
        probe = f"s3://{bucket}/{parent + '/' if parent else ''}.pointad-probe-{uuid.uuid4().hex}"
        body = json.dumps({"probe": "pointad conditional write"}).encode()
        try:
            if create_if_absent(probe, body) is None:
                raise StorageError(f"{probe}: a fresh probe key exists already")
            works = create_if_absent(probe, body) is None and replace_if_match(probe, body, '"0"') is None
        finally:
            try:
                _call(filesystem(url), "delete_object", Bucket=bucket, Key=_split(probe)[1])
            except Exception:
                pass  # the probe's own error, if any, is the one to report; a left probe object is harmless
        _conditional_cache[cache_key] = works
    return _conditional_cache[cache_key]
