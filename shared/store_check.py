"""Damage a render store can take on disk, found and mended (design §8).

A chunk file that is deleted reads back as the fill value (zeros), so only its absence tells it from
data; a chunk of random or truncated bytes fails to decode; a damaged `zarr.json` makes its array
unreadable. `chunk_problems` finds the first two per row (the rows are then rendered again), and
`rewrite_array_metadata` rewrites the third from the schema, the root attributes and the row count,
leaving every chunk as it was.
"""

from __future__ import annotations

import asyncio

import numpy as np
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .errors import first_line
from .location import as_location, write_document
from .store import ARRAYS, IDENTITY, ROW_COUNT, RenderStore, open_group
from .store_write import array_attributes, array_kwargs, writable_attrs

__all__ = ["chunk_problems", "rewrite_array_metadata"]


def chunk_problems(store: RenderStore, rows=None, decode: bool = False) -> list[tuple[int, str, str]]:
    """(row, array path, reason) for each chunk of `rows` (default: the complete rows) that is missing,
    or with `decode`, does not decode; empty if every chunk is there (and decodes).

    Worker-written arrays have one chunk per row; the identity arrays' shared chunks are checked too.
    Chunk keys come from each array's own chunk key encoding. The existence check covers rows from
    `store.chunks_checked_from` on (rows written by older versions may lack chunks that held only zeros).
    """
    rows = store.indices() if rows is None else np.asarray(rows, dtype=np.int64)
    required = rows[rows >= store.chunks_checked_from]
    checks = []  # (row, array, chunk coordinates)
    for spec in store._specs():
        array = store.array(spec.path)
        extra = (0,) * (array.ndim - 1)
        if spec.worker:
            if spec.path != "samples/complete":  # a row whose flag chunk is gone reads as incomplete anyway
                checks += [(int(row), array, (int(row), *extra)) for row in required]
        else:
            per_chunk = array.chunks[0]
            checks += [(int(required[required // per_chunk == c][0]), array, (int(c), *extra))
                       for c in np.unique(required // per_chunk)]

    async def exists(array, coords):
        return await (array.async_array.store_path / array.metadata.encode_chunk_key(coords)).exists()

    async def all_exist():
        return await asyncio.gather(*(exists(array, coords) for _, array, coords in checks))
    found, missing = [], set()
    for (row, array, coords), there in zip(checks, sync(all_exist()) if checks else []):
        if not there:
            missing.add((row, array.path))
            found.append((row, array.path, f"chunk {array.metadata.encode_chunk_key(coords)} is missing "
                                           "(it would read as zeros)"))
    if decode:
        for row in map(int, rows):
            arrays = [store.array(spec.path) for spec in store._specs()
                      if spec.field is not None and (row, spec.path) not in missing]

            async def read_all(row=row, arrays=arrays):
                return await asyncio.gather(*(a.async_array.getitem(row) for a in arrays), return_exceptions=True)
            for array, result in zip(arrays, sync(read_all())):
                if isinstance(result, Exception):
                    key = array.metadata.encode_chunk_key((row, *(0,) * (array.ndim - 1)))
                    found.append((row, array.path, f"chunk {key} does not decode ({first_line(result, typed=True)})"))
    return sorted(found, key=lambda problem: problem[:2])


def rewrite_array_metadata(path) -> list[str]:
    """Rewrite the `zarr.json` of each array of the schema that cannot be opened; return their paths.

    The metadata of an array is fixed by the schema and the root attributes but for its length, which is
    the row count (`samples/sample_id`, or if that one is damaged, the shortest other identity array).
    Chunks stay as they were; rows whose chunks do not fit show up in `chunk_problems`. Writer only.
    """
    path = as_location(path)
    group = open_group(path, "r")
    attrs = writable_attrs(group, path)  # a v1 store's metadata is not v2's: migrate it first
    broken, lengths = [], {}
    for spec in ARRAYS:
        try:
            lengths[spec.path] = group[spec.path].shape[0]
        except KeyError:
            continue  # a missing array is a schema error, not damage this can mend
        except Exception:
            broken.append(spec)
    if not broken:
        return []
    identity = [lengths[f"samples/{name}"] for name in IDENTITY if f"samples/{name}" in lengths]
    if not identity:
        raise ValueError(f"{path}: every identity array is unreadable; the rows cannot be recovered")
    n = lengths.get(ROW_COUNT, min(identity))
    for spec in broken:
        model = zarr.create_array(store={}, shape=(n, *spec.row_shape(attrs)), **array_kwargs(spec, attrs),
                                  attributes=array_attributes(spec, n))
        document = model.metadata.to_buffer_dict(default_buffer_prototype())["zarr.json"].to_bytes()
        write_document(path / spec.path / "zarr.json", document)
    return [spec.path for spec in broken]
