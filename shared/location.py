"""Where a render store lives: a local path, or a URL on object storage (design §4.6).

`as_location` turns what a user typed into a location: a plain path or `file://...` is a `pathlib.Path`,
handled exactly as before; any other fsspec URL (`s3://bucket/key`, `gs://`, `memory://`, ...) is a
`upath.UPath` (universal_pathlib, the `cloud` extra), which gives a URL the path operations the store code
uses (`/`, `.name`, `.parent`, `.exists()`, `.read_text()`). Whether a location is remote is its type:
`isinstance(location, Path)` is local.

Credentials never travel in a location: a URL carrying them (`s3://key:secret@bucket`) is refused, and the
filesystem takes them from the standard places (the environment, ~/.aws, the service's metadata), so
printing a location never prints a secret. On object storage every object is written whole by one PUT, which
the service makes visible at once or not at all: that is the atomic replace a temp file and a rename give on
disk (`write_document`).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .errors import PointADError

__all__ = ["as_location", "is_remote", "zarr_store", "write_document", "display", "CLOUD_EXTRA"]

CLOUD_EXTRA = 'pip install "pointad-toolkit[cloud]" (s3fs, universal_pathlib)'


def as_location(value):
    """A `Path` for a local path or `file://` URL, a `UPath` for any other URL; PointADError in one line for
    a URL with credentials in it, or when the `cloud` extra is missing."""
    if isinstance(value, Path):
        return value
    if not isinstance(value, str) and hasattr(value, "protocol"):  # already a UPath
        return value
    text = str(value)
    if "://" not in text:
        return Path(text)
    parts = urlsplit(text)
    if parts.scheme in ("file", "local"):
        return Path(parts.path)
    if "@" in parts.netloc:  # user:secret@bucket: never accepted, so never printed or recorded
        raise PointADError(f"{parts.scheme}://...@{parts.netloc.rsplit('@', 1)[1]}{parts.path}: credentials in a "
                           "URL are not accepted; give them as the service's tools expect (environment variables "
                           "such as AWS_ACCESS_KEY_ID, or ~/.aws/credentials)")
    try:
        from upath import UPath
    except ImportError:
        raise PointADError(f"{text}: a store on object storage needs the cloud extra: {CLOUD_EXTRA}") from None
    if parts.scheme == "s3":
        from .remote import storage_options
        return UPath(text, **storage_options(text))
    return UPath(text)


def is_remote(location) -> bool:
    """True for a location on object storage (anything `as_location` did not make a `Path`)."""
    return not isinstance(location, Path)


def display(location) -> str:
    """How messages name a location: the path as given, or the URL (which holds no credentials)."""
    return str(location)


def zarr_store(location, read_only: bool):
    """What `zarr.open_group` opens: the local path itself (Zarr's LocalStore, as before), or an FsspecStore
    over the URL with the filesystem options of `shared/remote.py` (bounded timeouts)."""
    if not is_remote(location):
        return location
    import zarr.storage

    from .remote import filesystem, is_s3
    if is_s3(str(location)):
        # an asynchronous instance (Zarr's event loop drives it) with remote.py's bounded waits and retries, which
        # from_url's storage options cannot set (s3fs's own retry loop would stay at 5)
        return zarr.storage.FsspecStore(filesystem(str(location), asynchronous=True), path=location.path.rstrip("/"),
                                        read_only=read_only)
    return zarr.storage.FsspecStore.from_url(str(location), storage_options=dict(location.storage_options),
                                             read_only=read_only)


def write_document(path, content: str | bytes) -> None:
    """Replace the small file or object at `path` whole: a temp file renamed over it on disk, a single PUT on
    object storage (visible whole or not at all)."""
    data = content.encode() if isinstance(content, str) else content
    if is_remote(path):
        path.write_bytes(data)
        return
    from .io import atomic_path
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
