"""Fixtures of the store tests: a v1 store made from a v2 build (test_store_v2, test_consolidated)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pointad.shared.store_schema import ARRAYS, CAMERA_CONVENTION, V2_ONLY


@pytest.fixture
def make_v1():
    """`make_v1(v2, out)`: a copy of store `v2` at `out` in schema v1's layout (returns `out`)."""
    return write_v1_layout


def write_v1_layout(v2: Path, out: Path) -> Path:
    """The same store in schema v1's layout, as the v1 code wrote it: no cameras, no dimension names, no
    array attributes but the chunk record, every render option inside `render` as well, prose camera."""
    shutil.copytree(v2, out)
    for group in V2_ONLY:
        shutil.rmtree(out / group.split("/")[0], ignore_errors=True)
    for spec in ARRAYS:
        document = out / spec.path / "zarr.json"
        if document.exists():
            meta = json.loads(document.read_text())
            meta.pop("dimension_names", None)
            meta["attributes"] = {k: v for k, v in meta["attributes"].items() if k == "every_chunk_written_from_row"}
            document.write_text(json.dumps(meta))
    root = json.loads((out / "zarr.json").read_text())
    attrs = root["attributes"]
    attrs["schema_version"] = 1
    attrs["camera"] = {k: v for k, v in attrs["camera"].items() if k not in CAMERA_CONVENTION}
    attrs["render"] = {**attrs["render"], **{k: attrs[k] for k in ("views", "image_size", "max_points", "knn")},
                       "fov_degrees": attrs["camera"]["fov_degrees"], "margin": attrs["camera"]["margin"]}
    (out / "zarr.json").write_text(json.dumps(root))
    return out
