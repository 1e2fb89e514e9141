"""Writing the render store (design §4): creating it, appending identity rows, writing sample rows, attributes.

Who writes what: the coordinator alone creates the store, appends identity rows and updates the
attributes; each worker process writes whole rows of its own samples with `write_sample`, every array of
the row first and `samples/complete` last. Worker-written arrays are chunked 1 along N, so two workers
never share a chunk, and Zarr's local store writes each chunk file atomically (temp + rename).
The row count N is the length of `samples/sample_id`, resized last on append (its new values are in
place before), so a reader opened while a build appends sees N rows with every identity set, and only
complete rows are read (`shared/store.py`). One writer at a time: `render build` holds the store's writer
lock (`shared/lock.py`) around creating, appending and rendering. Schema v1 stores are never written:
every write refuses them (MIGRATE_NOTE).

Consolidated metadata (a copy of every array's `zarr.json` inside the root one, which xarray and dask read
in one go) is written by `consolidate` when a build, an append, a repair or a migration finishes, under the
writer lock. Every write that changes an array's metadata or the root attributes removes the copy first, so
a store holds either a copy equal to its arrays' metadata or none (a killed build: xarray then reads each
array's own, with a warning). Our reader never uses the copy (`shared/store.py`).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import warnings
from dataclasses import dataclass

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec
from zarr.core.array import AsyncArray
from zarr.core.sync import sync  # runs a coroutine on Zarr's own event loop, as zarr.Array does

from .errors import PointADError, StoreSchemaError
from .io import os_error, remove_stale_temp_siblings, temp_sibling
from .location import as_location, is_remote, write_document, zarr_store
from .store import CHECKED_FROM, ROW_COUNT, open_group, open_store, read_attrs
from .store_schema import (
    ARRAYS,
    BY_FIELD,
    IDENTITY,
    MIGRATE_NOTE,
    SCHEMA_VERSION,
    ArraySpec,
    SampleArrays,
    StoreAttrs,
    check_failures,
)

# Every chunk of a row is written, even one that holds only the fill value (Zarr skips those by default),
# so a missing chunk file means damage (`render verify`).
WRITE_ALL = {"write_empty_chunks": True}
IDENTITY_CHUNK = 4096  # identity arrays are written by the coordinator only, so they may share chunks
# zstd level 1: a 112 896-point row compresses ~8x faster than at level 5 (0.04 s vs 0.31 s) for ~8% more
# bytes (benchmarks/render_bench.py). Blosc frames record their own codec and level, so rows written at any
# level (stores of older versions used 5) decode the same
CLEVEL = 1
_MUTABLE_ATTRS = ("failures", "render", "software")
CONSOLIDATED = "consolidated_metadata"  # the root zarr.json's key for the copy (zarr 3's name)
_COMPLETE = next(spec for spec in ARRAYS if spec.path == "samples/complete")


def _compressor(dtype: str) -> BloscCodec:
    # byte shuffle groups the bytes of multi-byte numbers; bool packs best bit-shuffled
    return BloscCodec(cname="zstd", clevel=CLEVEL, shuffle="bitshuffle" if dtype == "bool" else "shuffle")


def _chunks(spec: ArraySpec, attrs: StoreAttrs) -> tuple[int, ...]:
    """1 along N and the whole row in one chunk for worker-written arrays; IDENTITY_CHUNK rows otherwise."""
    return (1 if spec.worker else IDENTITY_CHUNK, *spec.row_shape(attrs))


def _is_empty_dir(path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def writable_attrs(group: zarr.Group, path) -> StoreAttrs:
    """The store's attributes; StoreSchemaError if this version may not write it (schema v1)."""
    attrs = read_attrs(group, path)
    if attrs.schema_version != SCHEMA_VERSION:
        raise StoreSchemaError(f"{path}: {MIGRATE_NOTE.format(path=path)}")
    return attrs


def require_writable(path) -> StoreAttrs:
    """The attributes of the store at `path`; StoreSchemaError (one line naming `render migrate`) for a
    schema v1 store, which this version reads but does not write."""
    path = as_location(path)
    return writable_attrs(open_group(path, "r"), path)


def create_store(path, attrs: StoreAttrs) -> None:
    """Create an empty store (N = 0, every array of ARRAYS) at `path`: a new path or an empty folder.

    Built under a temporary name next to `path` (`.<name>.tmp-<host>-<pid>`), then renamed, so a killed
    call leaves no half store; such leftovers of dead processes on this host are removed first. A store
    another process created meanwhile, or an OSError (disk full), is a one-line PointADError, and the
    temporary folder is gone.
    """
    path = as_location(path)
    files = _empty_store_files(attrs)
    if path.exists() and not _is_empty_dir(path) and not _only_our_leftovers(path, files):
        try:
            open_store(path)
        except StoreSchemaError:
            raise PointADError(f"{path}: exists and is not an empty folder; remove it or choose another path") from None
        raise PointADError(f"{path}: already a render store; open it (render build resumes it) instead of creating it")
    if is_remote(path):
        _create_remote(path, files)
        return
    tmp = temp_sibling(path)
    made = False  # the temp folder is removed on failure only if this call created it
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_siblings(path)
        tmp.mkdir()
        made = True
        for key, value in sorted(files.items()):
            (tmp / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp / key).write_bytes(value)
        try:
            os.rename(tmp, path)  # POSIX: replaces an empty folder too
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise PointADError(f"{path}: created by another process meanwhile; open it (render build "
                                   "resumes it) instead of creating it") from None
            raise
    except OSError as exc:
        raise os_error(exc, path) from None
    finally:
        if made and tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)


def _empty_store_files(attrs: StoreAttrs) -> dict[str, bytes]:
    """Every file of an empty store (key -> bytes), made in memory: written file by file afterwards, because
    Zarr's own concurrent writes could still be creating folders after a failed one raised (disk full), and
    recreate a temp folder after its removal."""
    files = {}
    group = zarr.open_group(zarr.storage.MemoryStore(files), mode="w-", zarr_format=3, attributes=attrs.to_dict())
    for spec in ARRAYS:
        parent, name = spec.path.split("/")
        group.require_group(parent).create_array(name, shape=(0, *spec.row_shape(attrs)),
                                                 **array_kwargs(spec, attrs), attributes=array_attributes(spec, 0))
    return {key: value.to_bytes() for key, value in files.items()}


def _only_our_leftovers(path, files: dict[str, bytes]) -> bool:
    """True if the objects under a URL are all keys an empty store has, but not its root zarr.json: what a
    killed `_create_remote` leaves, rewritten by the next one. On disk the temp folder plays this part."""
    if not is_remote(path):
        return False
    prefix = path.path.rstrip("/") + "/"
    keys = {key[len(prefix):] for key in path.fs.find(path.path)}
    return "zarr.json" not in keys and keys <= set(files)


def _create_remote(path, files: dict[str, bytes]) -> None:
    """Write an empty store to object storage: every array's metadata, then the root zarr.json last and only
    if absent (the service's conditional write): until that one object exists the URL is not a store, so a
    killed call leaves no half store, and of two creators one is refused."""
    from .remote import create_if_absent, is_s3, storage_error
    root = path.path.rstrip("/")
    try:
        path.fs.pipe({f"{root}/{key}": value for key, value in files.items() if key != "zarr.json"})
        if is_s3(str(path)):
            created = create_if_absent(str(path / "zarr.json"), files["zarr.json"])
        else:  # no conditional write there: the writer lease holds only by the user's --single-writer promise
            created = (path / "zarr.json").write_bytes(files["zarr.json"])
    except OSError as exc:
        raise storage_error(exc, str(path)) from None
    if created is None:
        raise PointADError(f"{path}: created by another process meanwhile; open it (render build resumes it) "
                           "instead of creating it")


def array_kwargs(spec: ArraySpec, attrs: StoreAttrs) -> dict:
    """How create_store makes the array of `spec` (all but its shape)."""
    return dict(chunks=_chunks(spec, attrs), dtype=str if spec.dtype == "str" else spec.dtype, fill_value=spec.fill,
                compressors=_compressor(spec.dtype), dimension_names=spec.dimension_names())


def array_attributes(spec: ArraySpec, checked_from: int | None = None) -> dict:
    """The attributes of the array of `spec`: meaning, units, fill value; `samples/complete` also records
    from which row on every chunk is written (CHECKED_FROM)."""
    extra = {CHECKED_FROM: checked_from} if spec.path == "samples/complete" and checked_from is not None else {}
    return {**spec.attributes(), **extra}


def _identity_columns(identities: list[dict]) -> dict[str, list]:
    """Columns of IDENTITY + label, checked: every key present, no other, label 0 or 1."""
    keys = {*IDENTITY, "label"}
    columns = {key: [] for key in (*IDENTITY, "label")}
    for i, identity in enumerate(identities):
        if set(identity) != keys:
            raise ValueError(f"identity {i} has keys {sorted(identity)}; expected {sorted(keys)}")
        for key in IDENTITY:
            if not isinstance(identity[key], str) or not identity[key]:
                raise ValueError(f"identity {i}: {key} must be a non-empty string, got {identity[key]!r}")
        if identity["label"] not in (0, 1):
            raise ValueError(f"identity {i}: label must be 0 or 1, got {identity['label']!r}")
        for key in columns:
            columns[key].append(identity[key])
    return columns


def append_samples(path, identities: list[dict]) -> range:
    """Add one row per identity ({dataset, class_name, split, defect_type, sample_id, label}); return the rows.

    Coordinator only. Every array grows along N; the new rows are incomplete until a worker writes them.
    A (dataset, sample_id) already in the store, or repeated in `identities`, is a ValueError.
    """
    path = as_location(path)
    group = open_group(path, "r+")
    writable_attrs(group, path)
    columns = _identity_columns(identities)
    n, m = group[ROW_COUNT].shape[0], len(identities)
    seen = set(zip(group["samples/dataset"][:n].tolist(), group["samples/sample_id"][:n].tolist()))
    for key in zip(columns["dataset"], columns["sample_id"]):
        if key in seen:
            raise ValueError(f"{path}: sample {key[1]} of dataset {key[0]} is already in the store")
        seen.add(key)
    if m == 0:
        return range(n, n)
    drop_consolidated(path)  # the arrays grow: a copy of their metadata would say the old length
    # resize and fill everything else first: until samples/sample_id grows, the new rows do not exist
    for spec in sorted(ARRAYS, key=lambda s: s.path == ROW_COUNT):
        array = group[spec.path]
        group_name, name = spec.path.split("/")
        if group_name == "samples" and name in columns:
            # values first, through a grown copy of the array kept in memory, then the new shape: a reader
            # that sees the grown samples/sample_id also sees its values (chunk files are replaced whole)
            grown = AsyncArray(array.metadata.update_shape((n + m, *array.shape[1:])), array.async_array.store_path,
                               WRITE_ALL)
            sync(grown.setitem(slice(n, n + m), np.asarray(columns[name], dtype=np.uint8 if name == "label" else str)))
        array.resize((n + m, *array.shape[1:]))
    return range(n, n + m)


def _write_row(targets: dict, index: int, arrays: SampleArrays) -> None:
    """Every SampleArrays array into row `index` of `targets` (array path -> zarr.Array); the completion flag is
    the caller's business."""
    writers = [targets[spec.path].async_array.with_config(WRITE_ALL) for spec in BY_FIELD.values()]

    async def write_all():
        # all arrays in flight at once: compressing one overlaps with writing another; every write settles
        # before the first error is raised, so nothing is still writing when the caller hears of it
        return await asyncio.gather(*(w.setitem(index, getattr(arrays, name)) for w, name in zip(writers, BY_FIELD)),
                                    return_exceptions=True)
    errors = [result for result in sync(write_all()) if isinstance(result, BaseException)]
    if errors:
        raise errors[0]


@dataclass
class _RowTarget:
    """A store opened for writing rows: its attributes, row count and the arrays a row goes to."""
    documents: bytes  # the metadata it was opened under (`_row_documents`)
    attrs: StoreAttrs
    n: int
    arrays: dict


# per worker process: store location -> the store as last opened for rows. Opening reads every array's
# zarr.json (about 20 files: 13 ms a row on disk, 20 requests on object storage); a row then reads only the
# two documents of `_row_documents`
_ROW_TARGETS: dict[str, _RowTarget] = {}


def _row_documents(path) -> bytes:
    """The root zarr.json and the row-count array's zarr.json, joined; b"" where either is missing (no store:
    open_group says so in its words). The same bytes mean the same attributes (so the same schema and options,
    which every array's metadata but its length follows from) and the same row count."""
    names = [path / "zarr.json", path / ROW_COUNT / "zarr.json"]
    if is_remote(path):  # two GETs in one call (a file object would HEAD each first)
        found = path.fs.cat([name.path for name in names], on_error="return")
        for value in found.values():
            if isinstance(value, BaseException) and not isinstance(value, FileNotFoundError):
                raise value
        texts = [found.get(name.path) for name in names]
    else:
        texts = []
        for name in names:
            try:
                texts.append(name.read_bytes())
            except OSError:
                texts.append(None)
    if any(not isinstance(text, bytes) for text in texts):
        return b""
    return b"\0".join(texts)


def _open_for_rows(path, documents: bytes) -> _RowTarget:
    group = open_group(path, "r+")
    attrs = writable_attrs(group, path)
    targets = {spec.path: group[spec.path] for spec in (*BY_FIELD.values(), _COMPLETE)}
    return _RowTarget(documents, attrs, group[ROW_COUNT].shape[0], targets)


def _row_target(path) -> _RowTarget:
    """The store at `path` opened for writing rows: the process's last opening while `_row_documents` are the
    same bytes, else opened afresh."""
    if not is_remote(path):
        path = path.absolute()  # the arrays kept must not follow a later change of directory
    documents = _row_documents(path)
    cached = _ROW_TARGETS.get(str(path))
    if cached is None or not documents or cached.documents != documents:
        cached = _open_for_rows(path, documents)
        if documents:
            _ROW_TARGETS[str(path)] = cached
    return cached


def write_sample(path, index: int, arrays: SampleArrays) -> None:
    """Write row `index` of the store at `path` (worker side), `samples/complete[index] = True` last.

    The flag is cleared first, so a rewritten row killed half-way reads as incomplete as well.
    Safe to call from several processes at once for different rows; ValueError if `arrays` does not fit.
    """
    path = as_location(path)
    target = _row_target(path)
    arrays.validate(target.attrs)
    if not 0 <= index < target.n:
        raise IndexError(f"{path}: row {index} out of range (the store has {target.n} rows)")
    complete = target.arrays[_COMPLETE.path]
    complete[index] = False
    _write_row(target.arrays, index, arrays)
    complete[index] = True


def start_chunk_checks(path) -> int:
    """Record, if the store has no record yet (an older version wrote it), that every row from now on
    has all its chunks written; return the first such row (coordinator only)."""
    group = open_group(as_location(path), "r+")
    writable_attrs(group, as_location(path))
    complete = group["samples/complete"]
    if CHECKED_FROM not in complete.attrs:
        drop_consolidated(as_location(path))
        complete.attrs[CHECKED_FROM] = int(open_group(as_location(path), "r")[ROW_COUNT].shape[0])
    return int(complete.attrs[CHECKED_FROM])


def mark_incomplete(path, rows) -> None:
    """Clear `samples/complete` of `rows` (coordinator only), so the next build renders them again."""
    path = as_location(path)
    group = open_group(path, "r+")
    writable_attrs(group, path)
    complete = group["samples/complete"]
    for row in sorted({int(r) for r in rows}):
        complete[row] = False


def update_attrs(path, **changes) -> StoreAttrs:
    """Replace some of `failures`, `render`, `software` in the store's attributes (coordinator only).

    The root zarr.json is rewritten from the group as opened, without consolidated metadata
    (`open_group` never reads it), so the copy is gone until `consolidate` writes it again."""
    path = as_location(path)
    unknown = sorted(set(changes) - set(_MUTABLE_ATTRS))
    if unknown:
        raise ValueError(f"{path}: store attribute(s) {unknown} cannot change after creation; "
                         f"changeable: {', '.join(_MUTABLE_ATTRS)}")
    group = open_group(path, "r+")
    data = {**writable_attrs(group, path).to_dict(), **changes}
    attrs = StoreAttrs.from_dict(data, source=str(path))  # validates the new values before anything is written
    group.attrs.update(attrs.to_dict())
    return attrs


def set_failures(path, failures: list[dict], *, render: dict | None = None) -> StoreAttrs:
    """Replace the store's failure list ([{dataset, sample_id, reason}]), and its `render` options if given."""
    check_failures(failures)
    changes = {"failures": [dict(f) for f in failures]}
    if render is not None:
        changes["render"] = render
    return update_attrs(path, **changes)


def drop_consolidated(path) -> None:
    """Remove the consolidated metadata from the store's root zarr.json, if it has any (coordinator only,
    before a write that changes an array's metadata): atomically, the attributes untouched."""
    document = as_location(path) / "zarr.json"
    meta = json.loads(document.read_text())
    if CONSOLIDATED in meta:
        del meta[CONSOLIDATED]
        write_document(document, json.dumps(meta, indent=2))


def consolidate(path) -> None:
    """Write the store's consolidated metadata: a copy of every group's and array's metadata in the root
    zarr.json (one atomic write), so xarray and dask open the store in one read and without their warning.
    Coordinator only, under the writer lock, once the last row and attribute of a build, an append, a
    repair or a migration are written (design §4.3)."""
    path = as_location(path)
    writable_attrs(open_group(path, "r"), path)
    with warnings.catch_warnings():
        # zarr: consolidated metadata is not yet part of the Zarr v3 specification (zarr-python and xarray
        # read it; a reader that does not know it reads each array's own zarr.json, as ours does)
        warnings.filterwarnings("ignore", "Consolidated metadata is currently not part", zarr.errors.ZarrUserWarning)
        store = zarr.storage.LocalStore(path) if not is_remote(path) else zarr_store(path, read_only=False)
        zarr.consolidate_metadata(store, zarr_format=3)
