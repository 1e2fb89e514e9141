"""`render migrate`: upgrade a schema v1 render store to v2 in place (design §4).

What changes: each array's `zarr.json` gains `dimension_names` and its attributes (meaning, units, fill
value; `samples/complete` keeps its chunk record); the arrays `cameras/intrinsic` and `cameras/extrinsic`
are added, computed from each row's points and the v1 attributes exactly as v1's `render verify` derived
them (`fit_camera`, the recorded view plan); the root attributes are rewritten in v2's form, then the
consolidated metadata is written (design §4.3). No chunk
of the v1 arrays is touched. Every file is replaced atomically (temp + rename, or one PUT on object
storage), and until the root
attributes say v2 the store reads as the v1 store it was, so a killed migration leaves a readable store
and running it again finishes the job. Holds the store's writer lock throughout.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..shared.errors import PointADError
from ..shared.io import os_error
from ..shared.location import as_location, write_document
from ..shared.lock import writer_lock
from ..shared.store import ARRAYS, RenderStore, StoreAttrs, open_group, open_store, read_attrs
from ..shared.store_schema import SCHEMA_VERSION, V2_ONLY
from ..shared.store_write import array_attributes, array_kwargs, consolidate, drop_consolidated
from .camera import fit_camera
from .view_plan import ViewPlan

__all__ = ["migrate_store", "store_cameras"]


def store_cameras(store: RenderStore, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """(intrinsic (R, 3, 3), extrinsic (R, V, 4, 4)) float64 of `rows` (default: all), derived from each
    row's valid points and the store's `camera` and `view_plan` attributes as the renderer fits them;
    NaN for incomplete rows (they hold no points yet)."""
    attrs = store.attrs
    rows = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
    rotations = ViewPlan.from_dict(attrs.view_plan).rotations
    intrinsic = np.full((len(rows), 3, 3), np.nan)
    extrinsic = np.full((len(rows), attrs.views, 4, 4), np.nan)
    complete = store.complete
    for j, row in enumerate(rows):
        if not complete[row]:
            continue
        batch = store.read_batch([int(row)], ("xyz", "n_points"))
        points = batch["xyz"][0, : int(batch["n_points"][0])]
        if len(points) == 0:
            continue
        camera = fit_camera(points, attrs.image_size, attrs.camera["fov_degrees"], attrs.camera["margin"])
        intrinsic[j], extrinsic[j] = camera.intrinsic(), camera.extrinsics(rotations)
    return intrinsic, extrinsic


def migrate_store(path, *, single_writer: bool = False) -> str:
    """Upgrade the store at `path` (a path or a URL) to schema v2 in place; return one line saying what was done.

    A v2 store is left as it is. LockedError if a build (or another migration) holds the store;
    single_writer: see `shared/lock.writer_lock`.
    """
    path = as_location(path)
    opened = open_store(path)  # a clear error for anything that is not a readable render store
    if opened.schema_version == SCHEMA_VERSION:
        return f"{path}: already schema_version {SCHEMA_VERSION}; nothing to do"
    try:
        with writer_lock(path, "render migrate", single_writer=single_writer):
            return _migrate_locked(path)
    except OSError as exc:
        raise os_error(exc, path) from None


def _migrate_locked(path: Path) -> str:
    group = open_group(path, "r")
    attrs = read_attrs(group, path)
    if attrs.schema_version == SCHEMA_VERSION:  # migrated meanwhile
        return f"{path}: already schema_version {SCHEMA_VERSION}; nothing to do"
    store = RenderStore(path, group)
    drop_consolidated(path)  # another tool's copy of the v1 metadata would go stale below
    for spec in ARRAYS:
        if spec.path not in V2_ONLY:
            _upgrade_array_metadata(path / spec.path / "zarr.json", spec)
    intrinsic, extrinsic = store_cameras(store)
    writable = open_group(path, "r+")
    for spec, values in zip([s for s in ARRAYS if s.path in V2_ONLY], (intrinsic, extrinsic)):
        parent, name = spec.path.split("/")
        array = writable.require_group(parent).create_array(
            name, shape=values.shape, **array_kwargs(spec, attrs), attributes=array_attributes(spec),
            overwrite=True, config={"write_empty_chunks": True})  # every chunk on disk, as a build writes it
        if len(values):
            array[:] = values
    _write_root_attrs(path, attrs)  # from here on the store reads as v2
    consolidate(path)  # last: the copy of the v2 metadata xarray opens the store by (design §4.3)
    return (f"{path}: migrated from schema_version 1 to {SCHEMA_VERSION}: dimension names and attributes on "
            f"every array, cameras of {int(store.complete.sum())} complete row(s) computed")


def _upgrade_array_metadata(document: Path, spec) -> None:
    """Add v2's dimension names and attributes to a v1 array's zarr.json (atomically), keeping its own."""
    try:
        meta = json.loads(document.read_text())
    except ValueError as exc:
        raise PointADError(f"{document}: unreadable ({exc}); run 'render build --repair' with the pointad "
                           "version that wrote the store, then migrate") from None
    names = list(spec.dimension_names())
    if len(meta.get("shape", [])) != len(names):
        raise PointADError(f"{document}: {len(meta.get('shape', []))} dimensions, schema says {len(names)}")
    meta["dimension_names"] = names
    meta["attributes"] = {**array_attributes(spec), **meta.get("attributes", {})}
    write_document(document, json.dumps(meta, indent=2))


def _write_root_attrs(path: Path, attrs: StoreAttrs) -> None:
    document = path / "zarr.json"
    meta = json.loads(document.read_text())
    meta["attributes"] = attrs.to_dict()
    write_document(document, json.dumps(meta, indent=2))
