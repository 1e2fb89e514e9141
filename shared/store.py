"""The render store on disk (design §4): a Zarr v3 group, the only way other stages touch renders.

Who writes what: the coordinator alone creates the store, appends identity rows and updates the
attributes; each worker process writes whole rows of its own samples with `write_sample`, every array of
the row first and `samples/complete` last. Worker-written arrays are chunked 1 along N, so two workers
never share a chunk, and Zarr's local store writes each chunk file atomically (temp + rename).
The row count N is the length of `samples/sample_id`, resized last on append (its new values are in
place before), and a reader takes it before any other array's shape; rows past it in other arrays (an
append killed half-way) are ignored and overwritten by the next append. So a reader opened while a build
appends sees N rows with every identity set, and only complete rows are read. One writer at a time:
`render build` holds the store's writer lock (`shared/lock.py`) around creating, appending and rendering.
Schema v1 stores are read (no cameras) but never written: every write refuses them (MIGRATE_NOTE).
`open_store` also reads the HDF5 twin that `render export` writes (`shared/h5store.py`).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import zarr
import zarr.errors
from zarr.codecs import BloscCodec
from zarr.core.array import AsyncArray
from zarr.core.sync import sync  # runs a coroutine on Zarr's own event loop, as zarr.Array does

from pointad.shared.errors import PointADError, StoreSchemaError
from pointad.shared.io import os_error, remove_stale_temp_siblings, temp_sibling
from pointad.shared.store_schema import (ARRAYS, BY_FIELD, FORMAT, IDENTITY, MIGRATE_NOTE, SAMPLE_FIELDS, SCHEMA_VERSION,
                                 V2_ONLY, ArraySpec, SampleArrays, StoreAttrs, StoredSample, check_failures)

__all__ = ["FORMAT", "SCHEMA_VERSION", "StoreAttrs", "SampleArrays", "StoredSample", "RenderStore", "create_store",
           "append_samples", "write_sample", "start_chunk_checks", "mark_incomplete", "set_failures", "update_attrs",
           "open_store", "store_fingerprint", "require_writable"]

# what to do about a store this code cannot open at all (render build cannot resume it either)
_UNUSABLE = "render into another --out"
# Every chunk of a row is written, even one that holds only the fill value (Zarr skips those by default),
# so a missing chunk file means damage. Stores of older versions skipped them: `samples/complete`
# records from which row on every chunk is on disk, and only those rows' chunks are required.
WRITE_ALL = {"write_empty_chunks": True}
CHECKED_FROM = "every_chunk_written_from_row"
IDENTITY_CHUNK = 4096  # identity arrays are written by the coordinator only, so they may share chunks
# zstd level 1: a 112 896-point row compresses ~8x faster than at level 5 (0.04 s vs 0.31 s) for ~8% more
# bytes (benchmarks/render_bench.py). Blosc frames record their own codec and level, so rows written at any
# level (stores of older versions used 5) decode the same
CLEVEL = 1
ROW_COUNT = "samples/sample_id"
DEFAULT_BATCH_FIELDS = ("image", "pixel", "visible", "valid", "label", "proxy")
_MUTABLE_ATTRS = ("failures", "render", "software")


def _compressor(dtype: str) -> BloscCodec:
    # byte shuffle groups the bytes of multi-byte numbers; bool packs best bit-shuffled
    return BloscCodec(cname="zstd", clevel=CLEVEL, shuffle="bitshuffle" if dtype == "bool" else "shuffle")


def _chunks(spec: ArraySpec, attrs: StoreAttrs) -> tuple[int, ...]:
    """1 along N and the whole row in one chunk for worker-written arrays; IDENTITY_CHUNK rows otherwise."""
    return (1 if spec.worker else IDENTITY_CHUNK, *spec.row_shape(attrs))


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _open_group(path: Path, mode: str) -> zarr.Group:
    """The store's root group; a path that is missing or holds no Zarr group is 'not a store'."""
    try:
        # consolidated metadata would go stale on every append, so the store never has any
        return zarr.open_group(path, mode=mode, use_consolidated=False)
    except (FileNotFoundError, NotADirectoryError, zarr.errors.NodeNotFoundError,
            zarr.errors.ContainsArrayError) as exc:
        raise StoreSchemaError(f"{path}: not a pointad render store (no Zarr group there)") from exc
    except ValueError as exc:  # the group's zarr.json is not JSON, or not Zarr metadata
        raise StoreSchemaError(f"{path}: the store's zarr.json is unreadable ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _read_attrs(group: zarr.Group, path: Path) -> StoreAttrs:
    return StoreAttrs.from_dict(dict(group.attrs), source=str(path))


def _writable_attrs(group: zarr.Group, path: Path) -> StoreAttrs:
    """The store's attributes; StoreSchemaError if this version may not write it (schema v1)."""
    attrs = _read_attrs(group, path)
    if attrs.schema_version != SCHEMA_VERSION:
        raise StoreSchemaError(f"{path}: {MIGRATE_NOTE.format(path=path)}")
    return attrs


def require_writable(path) -> StoreAttrs:
    """The attributes of the store at `path`; StoreSchemaError (one line naming `render migrate`) for a
    schema v1 store, which this version reads but does not write."""
    path = Path(path)
    return _writable_attrs(_open_group(path, "r"), path)


def create_store(path, attrs: StoreAttrs) -> None:
    """Create an empty store (N = 0, every array of ARRAYS) at `path`: a new path or an empty folder.

    Built under a temporary name next to `path` (`.<name>.tmp-<host>-<pid>`), then renamed, so a killed
    call leaves no half store; such leftovers of dead processes on this host are removed first. A store
    another process created meanwhile, or an OSError (disk full), is a one-line PointADError, and the
    temporary folder is gone.
    """
    path = Path(path)
    if path.exists() and not _is_empty_dir(path):
        try:
            open_store(path)
        except StoreSchemaError:
            raise PointADError(f"{path}: exists and is not an empty folder; remove it or choose another path") from None
        raise PointADError(f"{path}: already a render store; open it (render build resumes it) instead of creating it")
    tmp = temp_sibling(path)
    made = False  # the temp folder is removed on failure only if this call created it
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_siblings(path)
        # made in memory, then written file by file: Zarr's own concurrent writes could still be creating
        # folders after a failed one raised (disk full), and recreate the temp folder after its removal
        files = {}
        group = zarr.open_group(zarr.storage.MemoryStore(files), mode="w-", zarr_format=3, attributes=attrs.to_dict())
        for spec in ARRAYS:
            parent, name = spec.path.split("/")
            group.require_group(parent).create_array(name, shape=(0, *spec.row_shape(attrs)),
                                                     **_array_kwargs(spec, attrs), attributes=array_attributes(spec, 0))
        tmp.mkdir()
        made = True
        for key, value in sorted(files.items()):
            (tmp / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp / key).write_bytes(value.to_bytes())
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


def _array_kwargs(spec: ArraySpec, attrs: StoreAttrs) -> dict:
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
    path = Path(path)
    group = _open_group(path, "r+")
    _writable_attrs(group, path)
    columns = _identity_columns(identities)
    n, m = group[ROW_COUNT].shape[0], len(identities)
    seen = set(zip(group["samples/dataset"][:n].tolist(), group["samples/sample_id"][:n].tolist()))
    for key in zip(columns["dataset"], columns["sample_id"]):
        if key in seen:
            raise ValueError(f"{path}: sample {key[1]} of dataset {key[0]} is already in the store")
        seen.add(key)
    if m == 0:
        return range(n, n)
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


def _write_row(group: zarr.Group, index: int, arrays: SampleArrays) -> None:
    """Every SampleArrays array into row `index`; the completion flag is the caller's business."""
    targets = [group[spec.path].async_array.with_config(WRITE_ALL) for spec in BY_FIELD.values()]

    async def write_all():
        # all arrays in flight at once: compressing one overlaps with writing another; every write settles
        # before the first error is raised, so nothing is still writing when the caller hears of it
        return await asyncio.gather(*(t.setitem(index, getattr(arrays, name)) for t, name in zip(targets, BY_FIELD)),
                                    return_exceptions=True)
    errors = [result for result in sync(write_all()) if isinstance(result, BaseException)]
    if errors:
        raise errors[0]


def _read_rows(arrays: list, selection, store_path=None) -> list[np.ndarray]:
    """The same rows (an int, a slice, or sorted unique int64 indices) of each array, read concurrently.

    A chunk that does not decode (corrupt or truncated file) is a StoreSchemaError naming the array and rows.
    """
    async def read(array):
        if isinstance(selection, np.ndarray):
            return await array.async_array.get_orthogonal_selection((selection,))
        return await array.async_array.getitem(selection)

    async def read_all():
        return await asyncio.gather(*(read(a) for a in arrays), return_exceptions=True)
    results = sync(read_all())
    for array, result in zip(arrays, results):
        if isinstance(result, BaseException):
            if not isinstance(result, Exception):
                raise result
            raise StoreSchemaError(f"{store_path or array.store_path}: array {array.path} row(s) "
                                   f"{_describe_rows(selection)}: a chunk does not decode ({_first_line(result)}); "
                                   "run 'render verify', then 'render build --repair'") from None
    return results


def _describe_rows(selection) -> str:
    if isinstance(selection, slice):
        return f"{selection.start}-{selection.stop - 1}"
    if isinstance(selection, np.ndarray):
        return ", ".join(map(str, selection[:5].tolist())) + (" ..." if selection.size > 5 else "")
    return str(selection)


def write_sample(path, index: int, arrays: SampleArrays) -> None:
    """Write row `index` of the store at `path` (worker side), `samples/complete[index] = True` last.

    The flag is cleared first, so a rewritten row killed half-way reads as incomplete as well.
    Safe to call from several processes at once for different rows; ValueError if `arrays` does not fit.
    """
    path = Path(path)
    group = _open_group(path, "r+")
    arrays.validate(_writable_attrs(group, path))
    n = group[ROW_COUNT].shape[0]
    if not 0 <= index < n:
        raise IndexError(f"{path}: row {index} out of range (the store has {n} rows)")
    complete = group["samples/complete"]
    complete[index] = False
    _write_row(group, index, arrays)
    complete[index] = True


def start_chunk_checks(path) -> int:
    """Record, if the store has no record yet (an older version wrote it), that every row from now on
    has all its chunks written; return the first such row (coordinator only)."""
    group = _open_group(Path(path), "r+")
    _writable_attrs(group, Path(path))
    complete = group["samples/complete"]
    if CHECKED_FROM not in complete.attrs:
        complete.attrs[CHECKED_FROM] = int(_open_group(Path(path), "r")[ROW_COUNT].shape[0])
    return int(complete.attrs[CHECKED_FROM])


def mark_incomplete(path, rows) -> None:
    """Clear `samples/complete` of `rows` (coordinator only), so the next build renders them again."""
    path = Path(path)
    group = _open_group(path, "r+")
    _writable_attrs(group, path)
    complete = group["samples/complete"]
    for row in sorted({int(r) for r in rows}):
        complete[row] = False


def update_attrs(path, **changes) -> StoreAttrs:
    """Replace some of `failures`, `render`, `software` in the store's attributes (coordinator only)."""
    path = Path(path)
    unknown = sorted(set(changes) - set(_MUTABLE_ATTRS))
    if unknown:
        raise ValueError(f"{path}: store attribute(s) {unknown} cannot change after creation; "
                         f"changeable: {', '.join(_MUTABLE_ATTRS)}")
    group = _open_group(path, "r+")
    data = {**_writable_attrs(group, path).to_dict(), **changes}
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


class RenderStore:
    """Read-only view of a store as it was when opened: rows, identities and completion flags.

    Rows written after opening become visible by opening the store again. A schema v1 store reads the
    same but for its cameras (None in samples; `render migrate` computes them).
    """

    def __init__(self, path, group: zarr.Group):
        self.path = Path(path)
        self.attrs = _read_attrs(group, self.path)
        self._arrays = {}
        # the row count before any other shape: an append grows every other array before this one
        for spec in sorted(self._specs(), key=lambda s: s.path != ROW_COUNT):
            try:
                self._arrays[spec.path] = group[spec.path]
            except KeyError:
                raise StoreSchemaError(f"{self.path}: array {spec.path} missing; {_UNUSABLE}") from None
            except Exception as exc:  # a damaged zarr.json: JSON or metadata errors of several kinds
                raise StoreSchemaError(f"{self.path}: array {spec.path}: its zarr.json is unreadable "
                                       f"({_first_line(exc)}); 'render build --repair' rewrites it from the "
                                       "schema") from None
        self._index_arrays()

    def _specs(self) -> tuple[ArraySpec, ...]:
        """The arrays of ARRAYS this store's schema version has."""
        return tuple(s for s in ARRAYS if self.attrs.schema_version >= 2 or s.path not in V2_ONLY)

    def _index_arrays(self) -> None:
        """Row count, schema checks, identity columns and flags, once `self._arrays` holds every array."""
        self._arrays = {spec.path: self._arrays[spec.path] for spec in self._specs()}
        self._n = self._arrays[ROW_COUNT].shape[0]
        for spec in self._specs():
            self._check_array(spec)
        self._identity = {name: self._strings(f"samples/{name}") for name in IDENTITY}
        self._label = np.asarray(self._arrays["samples/label"][: self._n])
        self._complete = np.asarray(self._arrays["samples/complete"][: self._n])
        checked = self._array_attr("samples/complete", CHECKED_FROM, self._n)
        self.chunks_checked_from = int(checked) if isinstance(checked, int) and checked >= 0 else self._n

    def _array_attr(self, path: str, key: str, default):
        return self._arrays[path].attrs.get(key, default)

    def _strings(self, path: str) -> np.ndarray:
        """(N,) plain fixed-width str array of an identity column."""
        return np.array(self._arrays[path][: self._n].tolist(), dtype=str)  # numpy StringDType -> plain str

    def _is_string(self, array) -> bool:
        return array.dtype.kind == "T"

    def _read(self, paths: list[str], selection) -> list[np.ndarray]:
        """The same rows (int, slice or sorted unique int64 indices) of each array at `paths`."""
        return _read_rows([self._arrays[p] for p in paths], selection, self.path)

    def _check_array(self, spec: ArraySpec) -> None:
        array = self._arrays[spec.path]
        row = spec.row_shape(self.attrs)
        dtype_ok = self._is_string(array) if spec.dtype == "str" else array.dtype == np.dtype(spec.dtype)
        if array.shape[1:] != row or array.shape[0] < self._n or not dtype_ok:
            raise StoreSchemaError(f"{self.path}: array {spec.path} is {array.shape} {array.dtype}, schema says "
                                   f"(N={self._n}, {', '.join(map(str, row))}) {spec.dtype}; {_UNUSABLE}")

    def __len__(self) -> int:
        return self._n

    @property
    def schema_version(self) -> int:
        return self.attrs.schema_version

    def table(self) -> dict[str, np.ndarray]:
        """The sample table in one call: {row (N,) int64, dataset, class_name, split, defect_type, sample_id
        (N,) str, label (N,) uint8 (1 anomalous), complete (N,) bool}, copies, in row order."""
        return {"row": np.arange(self._n, dtype=np.int64), **{k: v.copy() for k, v in self._identity.items()},
                "label": self._label.astype(np.uint8), "complete": self._complete.copy()}

    def __repr__(self) -> str:
        return f"RenderStore({str(self.path)!r}, rows={self._n}, complete={int(self._complete.sum())})"

    @property
    def complete(self) -> np.ndarray:
        """(N,) bool, True where a worker finished writing the row."""
        return self._complete.copy()

    def _row(self, i) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) or not 0 <= i < self._n:
            raise IndexError(f"{self.path}: row {i!r} out of range (the store has {self._n} rows)")
        return int(i)

    def _complete_rows(self, rows: np.ndarray) -> None:
        incomplete = rows[~self._complete[rows]]
        if incomplete.size:
            listed = ", ".join(f"{r} ({self._identity['sample_id'][r]})" for r in incomplete[:5])
            raise StoreSchemaError(f"{self.path}: row(s) {listed}{' ...' if incomplete.size > 5 else ''} "
                                   "not completely written; re-run 'render build' to finish them")

    def identity(self, i: int) -> dict:
        """{dataset, class_name, split, defect_type, sample_id, label} of row i (complete or not)."""
        i = self._row(i)
        return {**{name: str(self._identity[name][i]) for name in IDENTITY}, "label": int(self._label[i])}

    def indices(self, dataset=None, class_name=None, split=None, complete_only: bool = True) -> np.ndarray:
        """Rows (int64, ascending) matching every given filter; each filter is a name or a list of names."""
        keep = self._complete.copy() if complete_only else np.ones(self._n, bool)
        for name, wanted in (("dataset", dataset), ("class_name", class_name), ("split", split)):
            if wanted is not None:
                keep &= np.isin(self._identity[name], [wanted] if isinstance(wanted, str) else list(wanted))
        return np.flatnonzero(keep)

    def sample(self, i: int) -> StoredSample:
        """Row i with every array (one chunk read per array); StoreSchemaError if the row is incomplete."""
        i = self._row(i)
        self._complete_rows(np.array([i]))
        present = [name for name, spec in BY_FIELD.items() if spec.path in self._arrays]
        values = dict.fromkeys(BY_FIELD)  # v1: no cameras, None
        values.update(zip(present, self._read([BY_FIELD[name].path for name in present], i)))
        values["n_points"] = int(values["n_points"])
        identity = self.identity(i)
        sample_label = identity.pop("label")
        return StoredSample(index=i, sample_label=sample_label, **identity, **values)

    def iter_samples(self, indices: Iterable[int] | None = None) -> Iterator[StoredSample]:
        """Samples of the given rows in order (default: every complete row)."""
        for i in self.indices() if indices is None else indices:
            yield self.sample(i)

    def read_batch(self, indices: Sequence[int], fields: Sequence[str] = DEFAULT_BATCH_FIELDS) -> dict[str, np.ndarray]:
        """{field: (B, ...) array} for rows `indices` (any order, repeats allowed), fields of SampleArrays.

        E.g. image (B, V, S, S, 3) uint8, pixel (B, V, P, 2) int16, valid (B, P) bool.
        """
        unknown = [f for f in fields if f not in BY_FIELD]
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; known: {', '.join(SAMPLE_FIELDS)}")
        absent = [f for f in fields if BY_FIELD[f].path not in self._arrays]
        if absent:
            raise StoreSchemaError(f"{self.path}: no {', '.join(absent)} in a schema_version 1 store; run "
                                   f"'render migrate {self.path}' to compute them")
        rows = np.array([self._row(i) for i in indices], dtype=np.int64)
        self._complete_rows(rows)
        unique, inverse = np.unique(rows, return_inverse=True)
        if unique.size and unique[-1] - unique[0] + 1 == unique.size:
            selection = slice(int(unique[0]), int(unique[-1]) + 1)  # contiguous rows: one plain slice
        else:
            selection = unique
        data = self._read([BY_FIELD[name].path for name in fields], selection)
        return {name: values[inverse] for name, values in zip(fields, data)}

    def array(self, path: str) -> zarr.Array:
        """The Zarr array at `path` of ARRAYS (e.g. 'views/image') as opened; for checks, not for reading rows."""
        return self._arrays[path]


def open_store(path) -> RenderStore:
    """Open the store at `path` read-only: a Zarr store (schema v2, or v1 without cameras), or its HDF5 twin
    (a file, `render export`); StoreSchemaError (message starting with the path) if it is not a pointad
    render store, has another format or schema_version, or its arrays do not match the schema."""
    path = Path(path)
    if path.suffix in (".h5", ".hdf5") or (path.is_file() and _is_hdf5(path)):
        from pointad.shared.h5store import open_h5_store  # h5py only when an HDF5 file is read
        return open_h5_store(path)
    return RenderStore(path, _open_group(path, "r"))


def _is_hdf5(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def store_fingerprint(path) -> str:
    """16 hex digits over the attributes (less `failures`) and the identity of every row, in order.

    Unchanged by workers finishing rows or by failures being recorded; changed by appending samples
    or by any change of render options; the same for a store and its HDF5 twin, and for a v1 store before
    and after `render migrate` (StoreAttrs.identity_form).
    """
    store = open_store(path)
    digest = hashlib.sha256()
    digest.update(json.dumps(store.attrs.identity_form(), sort_keys=True).encode())
    for name in IDENTITY:
        digest.update(json.dumps(store._identity[name].tolist()).encode())
    digest.update(store._label.astype(np.uint8).tobytes())
    return digest.hexdigest()[:16]
