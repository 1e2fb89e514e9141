"""The HDF5 twin of a render store (design §4): one file with the same paths, dtypes, attributes and chunks.

`export_h5` writes it from a Zarr store (`render export`); `open_h5_store` reads it as a RenderStore, so
train and eval take `--store renders.h5`. Zarr stays the format that workers write: HDF5 has no safe
concurrent writers, so the twin is written whole, once, and is never appended to.

Layout: groups `samples`, `views`, `points`, `rgb`, `cameras` as in the Zarr store; identity strings are
variable-length UTF-8. Attributes are JSON text (HDF5 attributes hold no nested mappings): the root's are
the store's root attributes, each dataset's are its Zarr attributes plus `dimension_names`, and
`json.loads` of each gives the Zarr value back. Compression: gzip level 4 with HDF5's byte shuffle, which
every HDF5 reader decodes without plugins (the Zarr store uses Blosc/zstd, which would need hdf5plugin).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from .errors import PointADError, StoreSchemaError, first_line
from .io import os_error, temp_sibling
from .location import as_location
from .store import FORMAT, ROW_COUNT, RenderStore, StoreAttrs, open_group, open_store
from .store_write import require_writable

__all__ = ["export_h5", "open_h5_store", "GZIP_LEVEL"]

GZIP_LEVEL = 4
ROWS_PER_COPY = 16  # rows read from Zarr per copy step: bounded memory, several chunks per read


def _json_attrs(attrs) -> dict:
    """h5py attributes parsed as JSON. The items are read whole first: h5py's items() generator holds h5py's
    global lock between items, so one left half-way by a parse error keeps the lock until it is collected,
    and any other thread that touches h5py meanwhile (a garbage collection in zarr's I/O thread) deadlocks."""
    return {key: json.loads(value) for key, value in list(attrs.items())}


def export_h5(store_path, out) -> int:
    """Write the HDF5 twin of the Zarr store at `store_path` to `out`; return the rows written (N).

    Written under a temporary name beside `out`, then renamed: a killed export leaves no half file. `out`
    may replace only an earlier twin (a file whose root attribute `format` is ours); a schema v1 store is
    refused (migrate it first: the twin holds the current schema).
    """
    store_path, out = as_location(store_path), Path(out)
    require_writable(store_path)  # v1 refused with the one-line note naming `render migrate`
    store = open_store(store_path)
    if out.exists():
        _check_replaceable(out)
    group = open_group(store_path, "r")
    n = len(store)
    tmp = temp_sibling(out)
    made = False  # the temp file is removed on failure only if this call created it
    try:
        with h5py.File(tmp, "x") as file:  # "x": never truncate a file that is not ours
            made = True
            for key, value in group.attrs.items():
                file.attrs[key] = json.dumps(value)
            for spec in store._specs():
                source = store.array(spec.path)
                row = source.shape[1:]
                string = spec.dtype == "str"
                target = file.create_dataset(
                    spec.path, shape=(n, *row), maxshape=(None, *row), chunks=source.chunks,
                    dtype=h5py.string_dtype("utf-8") if string else np.dtype(spec.dtype),
                    compression="gzip", compression_opts=GZIP_LEVEL, shuffle=not string,
                    **({} if string else {"fillvalue": np.array(spec.fill, dtype=spec.dtype)}))
                for key, value in source.attrs.items():
                    target.attrs[key] = json.dumps(value)
                target.attrs["dimension_names"] = json.dumps(list(source.metadata.dimension_names))
                step = n if not spec.worker else ROWS_PER_COPY
                for start in range(0, n, max(step, 1)):
                    values = source[start: start + step]
                    target[start: start + len(values)] = values.astype(object) if string else values
        os.replace(tmp, out)
    except OSError as exc:
        raise os_error(exc, out) from None
    finally:
        if made and tmp.is_file():
            tmp.unlink()
    return n


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but an HDF5 twin of ours."""
    try:
        with h5py.File(out, "r") as file:
            ours = json.loads(file.attrs.get("format", "null")) == FORMAT
    except (OSError, ValueError, TypeError):  # TypeError: a `format` that is not text (a number, an array)
        ours = False
    if not ours:
        raise PointADError(f"{out}: exists and is not an HDF5 render store; remove it or choose another --out")


class H5RenderStore(RenderStore):
    """A RenderStore read from the HDF5 twin; the file stays open (read-only) while the object lives."""

    unusable = "export the store again"

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._file = h5py.File(self.path, "r")
        except (OSError, ValueError) as exc:
            raise StoreSchemaError(f"{self.path}: not a pointad render store (not a readable HDF5 file: "
                                   f"{first_line(exc, typed=True)})") from None
        try:
            attrs = _json_attrs(self._file.attrs)
        except (TypeError, ValueError, RecursionError) as exc:
            raise StoreSchemaError(f"{self.path}: root attributes are not JSON text ({first_line(exc, typed=True)}); "
                                   "not a twin written by 'render export'") from None
        self.attrs = StoreAttrs.from_dict(attrs, source=str(self.path))
        self._arrays = {}
        for spec in self._specs():
            array = self._file.get(spec.path)
            if not isinstance(array, h5py.Dataset):
                raise StoreSchemaError(f"{self.path}: array {spec.path} missing; export the store again")
            self._arrays[spec.path] = array
        self._index_arrays()

    def _check_array(self, spec) -> None:
        super()._check_array(spec)
        rows = self._arrays[spec.path].shape[0]
        if rows != self._n:  # written whole, once: every array has exactly N rows
            raise StoreSchemaError(f"{self.path}: array {spec.path} has {rows} rows, {ROW_COUNT} {self._n}; "
                                   f"{self.unusable}")

    def _chunks(self, array) -> tuple | None:
        return None if array.chunks is None else tuple(array.chunks)

    def _stored_chunks(self, array, needed: int) -> int:
        """How many of the first `needed` chunks along N of the 1-d `array` are allocated in the file."""
        count = array.id.get_num_chunks()
        if count < needed:
            return count
        starts = {array.id.get_chunk_info(i).chunk_offset[0] for i in range(count)}
        return sum(i * array.chunks[0] in starts for i in range(needed))

    def __getstate__(self):
        raise TypeError("an open HDF5 store is not picklable; pass its path and open it in each process")

    def _array_attr(self, path: str, key: str, default):
        value = self._arrays[path].attrs.get(key)
        if value is None:
            return default
        try:
            return json.loads(value)
        except (TypeError, ValueError, RecursionError) as exc:
            raise StoreSchemaError(f"{self.path}: array {path}: attribute {key} is not JSON text "
                                   f"({first_line(exc, typed=True)}); {self.unusable}") from None

    def _strings(self, path: str) -> np.ndarray:
        return np.array(self._arrays[path].asstr()[: self._n].tolist(), dtype=str)

    def _is_string(self, array) -> bool:
        return h5py.check_string_dtype(array.dtype) is not None

    def _read(self, paths, selection):
        if isinstance(selection, np.ndarray):
            selection = selection.tolist()  # h5py: increasing indices along one axis
        out = []
        for path in paths:
            try:
                out.append(np.asarray(self._arrays[path][selection]))
            except (OSError, ValueError) as exc:  # a damaged chunk fails its filter pipeline
                raise StoreSchemaError(f"{self.path}: array {path}: rows do not read ({first_line(exc, typed=True)}); "
                                       "export the store again") from None
        return out

    def close(self) -> None:
        self._file.close()


def open_h5_store(path) -> H5RenderStore:
    """Open the HDF5 twin at `path` read-only (StoreSchemaError naming the path if it is not one)."""
    return H5RenderStore(path)

