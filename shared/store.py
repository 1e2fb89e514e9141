"""Reading the render store (design §4): a Zarr v3 group, the only way other stages touch renders.

The row count N is the length of `samples/sample_id`, which a build resizes last on append (its new values
are in place before); a reader takes it before any other array's shape, and rows past it in other arrays
(an append killed half-way) are ignored. So a reader opened while a build appends sees N rows with every
identity set, and only complete rows are read. Writing is `shared/store_write.py`'s. Schema v1 stores are
read (no cameras); `open_store` also reads the HDF5 twin that `render export` writes (`shared/h5store.py`).

Opening checks every array's metadata against the schema before any row is read (design §8): rank, row
shape and dtype from the root attributes, the chunking of §4.3, and that the chunks of `samples/sample_id`
holding the N rows are on disk. So a tampered `zarr.json` claiming 10^9 rows, or chunks of 10^9 rows, is one
line naming the array, never an allocation of what it claims.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import zarr
import zarr.errors
from zarr.core.sync import sync  # runs a coroutine on Zarr's own event loop, as zarr.Array does

from .errors import PointADError, StoreSchemaError, first_line
from .location import as_location, is_remote, zarr_store
from .store_schema import (
    ARRAYS,
    BY_FIELD,
    FORMAT,
    IDENTITY,
    SAMPLE_FIELDS,
    SCHEMA_VERSION,
    V2_ONLY,
    ArraySpec,
    SampleArrays,
    StoreAttrs,
    StoredSample,
)

__all__ = ["FORMAT", "SCHEMA_VERSION", "StoreAttrs", "SampleArrays", "StoredSample", "RenderStore", "open_store",
           "store_fingerprint"]

# what to do about a store this code cannot open at all (render build cannot resume it either)
_UNUSABLE = "render into another --out"
# `samples/complete` records from which row on every chunk of a row is on disk (shared/store_write.py writes
# them all; older versions skipped chunks holding only the fill value): only those rows' chunks are required
CHECKED_FROM = "every_chunk_written_from_row"
ROW_COUNT = "samples/sample_id"
# identity arrays (coordinator-written) share chunks of IDENTITY_CHUNK = 4096 rows (shared/store_write.py);
# a chunk of more rows than this was not written by any version
MAX_SHARED_CHUNK = 1 << 16
DEFAULT_BATCH_FIELDS = ("image", "pixel", "visible", "valid", "label", "proxy")


def open_group(path, mode: str) -> zarr.Group:
    """The store's root group at a location (`shared/location.py`: a path or a URL); one that is missing or
    holds no Zarr group is 'not a store'; on object storage, an unreachable endpoint, a missing bucket or
    refused credentials is a one-line PointADError (`shared/remote.py`)."""
    path = as_location(path)
    if is_remote(path):
        _check_location_once(str(path))  # before Zarr: its errors for a dead endpoint are retries and a traceback
    try:
        # never the consolidated copy (design §4.3): each array's own zarr.json is the truth while a build appends
        # zarr_format 3: every schema version is Zarr v3, and Zarr would otherwise look for v2's .zgroup and
        # .zattrs too (a request each on object storage)
        return zarr.open_group(zarr_store(path, read_only=mode == "r"), mode=mode, use_consolidated=False,
                               zarr_format=3)
    except (FileNotFoundError, NotADirectoryError, zarr.errors.NodeNotFoundError,
            zarr.errors.ContainsArrayError) as exc:
        raise StoreSchemaError(f"{path}: not a pointad render store (no Zarr group there)") from exc
    except (ValueError, RecursionError) as exc:  # the group's zarr.json is not JSON (or nested past Python's
        # recursion limit), or not Zarr metadata
        raise StoreSchemaError(f"{path}: the store's zarr.json is unreadable ({first_line(exc, typed=True)})") from None


@functools.lru_cache(maxsize=64)
def _check_location_once(url: str) -> None:
    """`remote.check_location` once per URL and process (a failure is not cached): a worker opens the store
    again whenever its metadata changed (shared/store_write.py), and needs no extra request for a check its
    coordinator already made."""
    from .remote import check_location
    check_location(url)


def read_attrs(group: zarr.Group, path: Path) -> StoreAttrs:
    return StoreAttrs.from_dict(dict(group.attrs), source=str(path))


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
                                   f"{_describe_rows(selection)}: a chunk does not decode "
                                   f"({first_line(result, typed=True)}); "
                                   "run 'render verify', then 'render build --repair'") from None
    return results


def _tuple(items) -> str:
    """A shape as Python prints one, its letters unquoted: (N=6, 3, 96) or (N=6,)."""
    return f"({', '.join(map(str, items))}{',' if len(items) == 1 else ''})"


def _describe_rows(selection) -> str:
    if isinstance(selection, slice):
        return f"{selection.start}-{selection.stop - 1}"
    if isinstance(selection, np.ndarray):
        return ", ".join(map(str, selection[:5].tolist())) + (" ..." if selection.size > 5 else "")
    return str(selection)


class RenderStore:
    """Read-only view of a store as it was when opened: rows, identities and completion flags.

    Rows written after opening become visible by opening the store again. A schema v1 store reads the
    same but for its cameras (None in samples; `render migrate` computes them).
    """

    unusable = _UNUSABLE  # what to do about arrays that do not fit the schema

    def __init__(self, path, group: zarr.Group):
        self.path = as_location(path)
        self.attrs = read_attrs(group, self.path)
        self._arrays = {}
        # the row count before any other shape: an append grows every other array before this one
        for spec in sorted(self._specs(), key=lambda s: s.path != ROW_COUNT):
            try:
                self._arrays[spec.path] = group[spec.path]
            except KeyError:
                raise StoreSchemaError(f"{self.path}: array {spec.path} missing; {_UNUSABLE}") from None
            except Exception as exc:  # a damaged zarr.json: JSON or metadata errors of several kinds
                raise StoreSchemaError(f"{self.path}: array {spec.path}: its zarr.json is unreadable "
                                       f"({first_line(exc, typed=True)}); 'render build --repair' rewrites it from the "
                                       "schema") from None
        self._index_arrays()

    def _specs(self) -> tuple[ArraySpec, ...]:
        """The arrays of ARRAYS this store's schema version has."""
        return tuple(s for s in ARRAYS if self.attrs.schema_version >= 2 or s.path not in V2_ONLY)

    def _index_arrays(self) -> None:
        """Row count, schema checks, identity columns and flags, once `self._arrays` holds every array."""
        self._arrays = {spec.path: self._arrays[spec.path] for spec in self._specs()}
        count = self._arrays[ROW_COUNT]
        self._n = count.shape[0] if len(count.shape) == 1 else 0  # another rank: _check_array names it
        # the row count first: every other array is judged against it
        for spec in sorted(self._specs(), key=lambda s: s.path != ROW_COUNT):
            self._check_array(spec)
            if spec.path == ROW_COUNT:
                self._check_rows_stored(count)
        self._identity = {name: self._column(f"samples/{name}", self._strings) for name in IDENTITY}
        self._label = self._column("samples/label", lambda p: np.asarray(self._arrays[p][: self._n]))
        self._complete = self._column("samples/complete", lambda p: np.asarray(self._arrays[p][: self._n]))
        checked = self._array_attr("samples/complete", CHECKED_FROM, self._n)
        self.chunks_checked_from = int(checked) if isinstance(checked, int) and checked >= 0 else self._n

    def _column(self, path: str, read) -> np.ndarray:
        """`read(path)`, the N rows of a 1-d array; a chunk that does not decode is a StoreSchemaError naming it."""
        try:
            return read(path)
        except Exception as exc:  # codecs and chunk shapes that do not fit the bytes fail in many ways
            raise StoreSchemaError(f"{self.path}: array {path}: a chunk of rows 0-{self._n - 1} does not decode "
                                   f"({first_line(exc, typed=True)}); {self.unusable}") from None

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
        """StoreSchemaError naming the array unless its rank, row shape, dtype and chunks are the schema's and
        it has at least N rows (more: an append killed before it grew `samples/sample_id`, ignored)."""
        array = self._arrays[spec.path]
        row = spec.row_shape(self.attrs)
        shape = tuple(array.shape)
        dtype_ok = self._is_string(array) if spec.dtype == "str" else array.dtype == np.dtype(spec.dtype)
        if len(shape) != 1 + len(row) or shape[1:] != row or shape[0] < self._n or not dtype_ok:
            raise StoreSchemaError(f"{self.path}: array {spec.path} is {shape} {array.dtype}, schema says "
                                   f"{_tuple((f'N={self._n}', *row))} {spec.dtype}; {self.unusable}")
        chunks = self._chunks(array)
        most = 1 if spec.worker else MAX_SHARED_CHUNK
        if chunks is None or len(chunks) != len(shape) or tuple(chunks[1:]) != row or not 1 <= chunks[0] <= most:
            along = "1" if spec.worker else f"1..{most}"
            raise StoreSchemaError(f"{self.path}: array {spec.path} is chunked {chunks}, schema says "
                                   f"{_tuple((along, *row))}; {self.unusable}")

    def _chunks(self, array) -> tuple | None:
        """The array's chunk shape; None if it is stored otherwise (sharded: the schema's arrays are not)."""
        return None if array.shards is not None else tuple(array.chunks)

    def _check_rows_stored(self, count) -> None:
        """StoreSchemaError unless every chunk of `samples/sample_id` that holds one of the N rows is stored: the
        coordinator writes them all before it grows the array (shared/store_write.py), so a row count the
        chunks do not hold is a tampered or damaged `zarr.json`, and the identity columns are not read."""
        per_chunk = self._chunks(count)[0]
        needed = -(-self._n // per_chunk)
        stored = self._stored_chunks(count, needed)
        if stored < needed:
            raise StoreSchemaError(f"{self.path}: array {ROW_COUNT} says {self._n} rows, but {needed - stored} of "
                                   f"the {needed} chunks holding them are not on disk; {self.unusable}")

    def _stored_chunks(self, array, needed: int) -> int:
        """How many of the first `needed` chunks along N of the 1-d `array` are on disk (one listing)."""
        prefix = f"{array.path}/"

        async def keys():
            return {key[len(prefix):] async for key in array.store_path.store.list_prefix(prefix)}
        stored = sync(keys()) - {"zarr.json"}
        if len(stored) < needed:  # too few files: refused without naming each chunk (`needed` may be 10^9)
            return len(stored)
        return sum(array.metadata.encode_chunk_key((i,)) in stored for i in range(needed))

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

    def choose_dataset(self, dataset: str | None = None) -> str:
        """`dataset`, checked to be in the store, or the store's only dataset; PointADError listing the
        datasets otherwise (the commands' --dataset default)."""
        present = sorted(set(self._identity["dataset"].tolist()))
        if dataset is None:
            if len(present) != 1:
                raise PointADError(f"{self.path}: holds datasets {', '.join(present) or '(none)'}; "
                                   "choose one with --dataset")
            return present[0]
        if dataset not in present:
            raise PointADError(f"{self.path}: no dataset '{dataset}' (present: {', '.join(present) or 'none'})")
        return dataset

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
    path = as_location(path)
    if not is_remote(path) and (path.suffix in (".h5", ".hdf5") or (path.is_file() and _is_hdf5(path))):
        from .h5store import open_h5_store  # h5py only when an HDF5 file is read
        return open_h5_store(path)
    return RenderStore(path, open_group(path, "r"))


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
