"""Schema v2 (design §4, issue 11): a store other tools read (xarray, dask), its cameras, the sample table,
and schema v1 stores read but not written until `render migrate` makes them equal to a fresh v2 build."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import dask.array
import numpy as np
import pytest
import xarray
import zarr
from click.testing import CliRunner

from pointad.render.camera import fit_camera, project
from pointad.render.cli import render
from pointad.render.migrate import migrate_store
from pointad.render.options import RenderOptions
from pointad.render.view_plan import ViewPlan
from pointad.shared.errors import PointADError, StoreSchemaError
from pointad.shared.store import open_store, store_fingerprint
from pointad.shared.store_schema import ARRAYS, CAMERA_CONVENTION, RENDER_ELSEWHERE, SAMPLE_FIELDS
from pointad.shared.store_write import append_samples, write_sample

OPTIONS = RenderOptions(views=2, image_size=48, supersample=1, max_points=48 * 48, point_size=3, renderer="splat",
                         normals="auto")  # what the build of tests/conftest.py, choosing none, records


@pytest.fixture(scope="module")
def v2_store(cookie_splat_48):
    """A fresh v2 build of the cookie test split (6 rows) drawn with OPTIONS, splat renderer (no Open3D window);
    tests/conftest.py builds it once. Read-only: tests change copies."""
    assert RenderOptions.from_store(open_store(cookie_splat_48).attrs.render, "synthetic-mvtec3d", "cookie") == OPTIONS
    return cookie_splat_48


def test_xarray_opens_every_group_lazily_with_named_dimensions(v2_store):
    tree = xarray.open_datatree(v2_store, engine="zarr")  # the consolidated copy a build writes (design §4.3)
    groups = {"samples", "views", "points", "rgb", "cameras"}
    assert set(tree.children) == groups
    seen = set()
    for name in groups:
        dataset = tree[name].dataset
        for variable, array in dataset.data_vars.items():
            path = f"{name}/{variable}"
            seen.add(path)
            assert not isinstance(array.variable._data, np.ndarray), f"{path} was loaded eagerly"
            stored = zarr.open_array(v2_store / path, mode="r")
            assert array.dims == tuple(stored.metadata.dimension_names) and array.shape == stored.shape, path
            assert array.dims[0] == "sample" and not set(array.dims) & set(dataset.variables), path
            assert {"meaning", "units", "fill_value"} <= set(array.attrs), path
    assert seen == {spec.path for spec in ARRAYS}
    views = tree["views"].dataset
    assert views["image"].dims == ("sample", "view", "row", "col", "channel")
    assert tree["points"].dataset["pixel"].dims == ("sample", "view", "point", "uv")
    store = open_store(v2_store)
    np.testing.assert_array_equal(views["image"][4].values, store.sample(4).image)  # a lazy read, one row
    assert tree["samples"].dataset["sample_id"].values.tolist() == store.table()["sample_id"].tolist()


# design §4.2's table, written out by hand: the dimension names every array must carry
DESIGN_DIMENSIONS = {
    **{f"samples/{name}": ("sample",) for name in ("dataset", "class_name", "split", "defect_type", "sample_id",
                                                   "label", "n_points", "complete")},
    "samples/grid_hw": ("sample", "hw"),
    "views/image": ("sample", "view", "row", "col", "channel"),
    "views/mask": ("sample", "view", "row", "col"),
    "points/pixel": ("sample", "view", "point", "uv"),
    "points/visible": ("sample", "view", "point"),
    "points/xyz": ("sample", "point", "axis"),
    **{f"points/{name}": ("sample", "point") for name in ("valid", "label", "grid_index", "proxy")},
    "points/knn": ("sample", "point", "neighbour"),
    "points/knn_weight": ("sample", "point", "neighbour"),
    "rgb/image": ("sample", "row", "col", "channel"),
    "rgb/mask": ("sample", "row", "col"),
    "cameras/intrinsic": ("sample", "row3", "col3"),
    "cameras/extrinsic": ("sample", "view", "row4", "col4"),
}


def test_every_array_carries_the_design_tables_dimension_names(v2_store):
    """Read from each array's zarr.json as JSON (no zarr, no schema module): the names of design §4.2."""
    found = {spec.path: tuple(json.loads((v2_store / spec.path / "zarr.json").read_text())["dimension_names"])
             for spec in ARRAYS}
    assert found == DESIGN_DIMENSIONS


def test_named_dimensions_select_what_the_stored_axes_hold(v2_store):
    """Arrays with two axes of one size (S x S images and masks, 3 x 3 and 4 x 4 cameras, V = 2 views beside the
    2 pixel coordinates): a swap of their names would go unseen by shapes. xarray, asked for each array in
    design §4.2's order of names, must give the bytes as written; every case below is asymmetric under such a
    swap, so a swapped name fails. The cameras' known entries are selected by name as well."""
    tree = xarray.open_datatree(v2_store, engine="zarr", consolidated=False)
    store = open_store(v2_store)
    rows = store.indices()
    for path, dims in DESIGN_DIMENSIONS.items():
        group, name = path.split("/")
        stored = zarr.open_array(v2_store / path, mode="r")[...]
        named = tree[group].dataset[name].transpose(*dims).values
        assert named.shape == stored.shape and np.array_equal(named, stored, equal_nan=True), path
        for first, second in itertools.combinations(range(1, len(dims)), 2):
            if stored.shape[first] == stored.shape[second]:
                assert not np.array_equal(stored, np.swapaxes(stored, first, second), equal_nan=True), \
                    f"{path}: axes {dims[first]}, {dims[second]} symmetric here: the case cannot tell them apart"
    cameras = tree["cameras"].dataset
    principal = OPTIONS.image_size / 2 - 0.5
    assert (cameras["intrinsic"].isel(sample=rows).sel(row3=0, col3=2).values == principal).all()
    assert (cameras["intrinsic"].isel(sample=rows).sel(row3=2, col3=0).values == 0).all()
    np.testing.assert_array_equal(cameras["extrinsic"].isel(sample=rows).sel(row4=3).values,
                                  np.broadcast_to([0.0, 0.0, 0.0, 1.0], (len(rows), OPTIONS.views, 4)))
    # a visible point's pixel (u = col, v = row) is drawn in its view: selected by name, not by position
    views = tree["views"].dataset["image"]
    pixel = tree["points"].dataset["pixel"]
    for row in rows[:2]:
        sample = store.sample(int(row))
        view, point = np.argwhere(sample.visible)[0]
        u, v = pixel.isel(sample=row, view=view, point=point).sel(uv=[0, 1]).values
        assert (u, v) == tuple(sample.pixel[view, point])
        assert views.isel(sample=row, view=view, row=v, col=u).values.any()


def test_dask_reads_a_view_array_chunk_by_chunk(v2_store):
    image = dask.array.from_zarr(str(v2_store), component="views/image")
    assert image.chunks[0] == (1,) * 6 and image.numblocks == (6, 1, 1, 1, 1)
    store = open_store(v2_store)
    for row in range(6):
        np.testing.assert_array_equal(image.blocks[row].compute()[0], store.sample(row).image)
    assert int(image.sum().compute()) == sum(int(store.sample(r).image.sum(dtype=np.int64)) for r in range(6))


def test_cameras_are_the_renderers_and_reproduce_the_stored_pixels(v2_store):
    store = open_store(v2_store)
    rotations = ViewPlan.from_dict(store.attrs.view_plan).rotations
    for row in range(len(store)):
        sample = store.sample(row)
        points = sample.xyz[: sample.n_points]
        camera = fit_camera(points, 48, OPTIONS.fov_degrees, OPTIONS.margin)
        np.testing.assert_array_equal(sample.intrinsic, camera.intrinsic())
        np.testing.assert_array_equal(sample.extrinsic, camera.extrinsics(rotations))
        # an independent float64 pinhole through the stored matrices lands in the stored pixel
        homogeneous = np.c_[points, np.ones(len(points))].astype(np.float64)
        xyz = np.einsum("vij,pj->vpi", sample.extrinsic, homogeneous)[..., :3]
        uv = (xyz @ sample.intrinsic.T)[..., :2] / xyz[..., 2:]
        pixel, _, inside = project(points, camera, rotations)
        gap = np.abs(uv - sample.pixel[:, : sample.n_points])[inside]
        assert gap.max() <= 0.5 + 1e-4, f"row {row}: largest gap {gap.max()} px"
    attrs = zarr.open_group(v2_store, mode="r").attrs
    assert {k: attrs["camera"][k] for k in CAMERA_CONVENTION} == CAMERA_CONVENTION
    assert not set(RENDER_ELSEWHERE) & set(attrs["render"])  # each option once on disk
    assert store.attrs.render.views == 2 and store.attrs.render.fov_degrees == OPTIONS.fov_degrees


def test_table_returns_every_identity_column_in_one_call(v2_store):
    store = open_store(v2_store)
    table = store.table()
    assert set(table) == {"row", "dataset", "class_name", "split", "defect_type", "sample_id", "label", "complete"}
    assert table["row"].tolist() == list(range(6)) and table["complete"].all()
    for row in range(6):
        identity = store.identity(row)
        assert {k: (table[k][row].item()) for k in identity} == identity
    assert (table["label"] == (table["defect_type"] != "good")).all()


@pytest.mark.slow
def test_v1_store_reads_the_same_but_refuses_writes_until_migrated(v2_store, tmp_path, make_v1):
    v1 = make_v1(v2_store, tmp_path / "v1.zarr")
    old, new = open_store(v1), open_store(v2_store)
    assert old.schema_version == 1 and old.attrs == replace(new.attrs, schema_version=1)
    for row in range(6):
        a, b = old.sample(row), new.sample(row)
        assert a.intrinsic is None and a.extrinsic is None
        for name in SAMPLE_FIELDS:
            if name not in ("intrinsic", "extrinsic"):
                assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert store_fingerprint(v1) == store_fingerprint(v2_store)  # runs made on v1 resume after migrating
    with pytest.raises(StoreSchemaError, match="no intrinsic in a schema_version 1 store"):
        old.read_batch([0], ("intrinsic",))
    note = f"^{v1}: schema_version 1 store, read-only in this version; run 'render migrate {v1}' to upgrade it"
    before = {p: p.read_bytes() for p in sorted(v1.rglob("*")) if p.is_file()}
    with pytest.raises(StoreSchemaError, match=note):
        write_sample(v1, 0, new.sample(0))
    with pytest.raises(StoreSchemaError, match=note):
        append_samples(v1, [{**old.identity(0), "sample_id": "other"}])
    # v1 verify derives the cameras (as migrate does) and finds what v2's finds with the stored ones
    problems = [_problems(v, str(v)) for v in (v1, v2_store)]
    assert problems[0] == problems[1] and not [p for p in problems[0] if "pixel" in p or "visib" in p]
    assert {p: p.read_bytes() for p in sorted(v1.rglob("*")) if p.is_file()} == before  # nothing written


def _problems(path, name):
    verified = CliRunner().invoke(render, ["verify", str(path)])
    return [line.replace(name, "STORE") for line in verified.stdout.splitlines() if line.startswith("problem:")]


def test_verify_checks_the_pixels_against_the_stored_cameras(v2_store, tmp_path):
    out = tmp_path / "moved.zarr"
    shutil.copytree(v2_store, out)
    extrinsic = zarr.open_array(out / "cameras/extrinsic", mode="r+")
    moved = extrinsic[3]
    moved[1, 0, 3] += 0.2 * abs(moved[1, 2, 3])  # view 1 of row 3 shifted sideways
    extrinsic[3] = moved
    sample_id = open_store(out).identity(3)["sample_id"]
    added = sorted(set(_problems(out, str(out))) - set(_problems(v2_store, str(v2_store))))
    assert added[0].startswith(f"problem: synthetic-mvtec3d:{sample_id}: stored pixels differ from the projection "
                               "through the stored cameras at ")
    assert all(sample_id in line for line in added)


def test_build_on_a_v1_store_is_one_line_naming_migrate(v2_store, mvtec_dataset, tmp_path, make_v1):
    _, entry = mvtec_dataset
    v1 = make_v1(v2_store, tmp_path / "v1.zarr")
    args = ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "cookie", "--splits", "test",
            "--out", str(v1), "--views", "2", "--image-size", "48", "--supersample", "1", "--max-points", "2304",
            "--point-size", "3", "--renderer", "splat"]
    for extra in ([], ["--repair"]):
        result = CliRunner().invoke(render, args + extra)
        assert result.exit_code == 1
        assert result.output.strip().splitlines()[-1] == (
            f"Error: {v1}: schema_version 1 store, read-only in this version; run 'render migrate {v1}' to "
            "upgrade it in place")


def _metadata(path: Path) -> dict:
    return {str(p.relative_to(path)): json.loads(p.read_text()) for p in sorted(path.rglob("zarr.json"))}


def _chunks(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "zarr.json" and not p.name.startswith(".")}


def test_migrate_makes_a_v1_store_equal_to_a_fresh_v2_build(v2_store, tmp_path, make_v1):
    v1 = make_v1(v2_store, tmp_path / "v1.zarr")
    result = CliRunner().invoke(render, ["migrate", str(v1)])
    assert result.exit_code == 0, result.output
    assert "migrated from schema_version 1 to 2" in result.output and "cameras of 6 complete row(s)" in result.output
    assert _metadata(v1) == _metadata(v2_store)
    assert _chunks(v1) == _chunks(v2_store)  # v1 chunks untouched, cameras bit for bit the renderer's
    assert open_store(v1).attrs == open_store(v2_store).attrs
    again = CliRunner().invoke(render, ["migrate", str(v1)])
    assert again.exit_code == 0 and "already schema_version 2; nothing to do" in again.output


KILL_AFTER = """
import sys
import pointad.render.migrate as m
calls = []
real = m._upgrade_array_metadata
def stop(document, spec):
    real(document, spec)
    calls.append(1)
    if len(calls) == int(sys.argv[2]):
        import os; os.kill(os.getpid(), 9)
m._upgrade_array_metadata = stop
m.migrate_store(sys.argv[1])
"""


@pytest.mark.parametrize("after", [3, 17])
@pytest.mark.slow
def test_migration_killed_part_way_leaves_a_readable_v1_store_and_finishes_on_rerun(v2_store, tmp_path, make_v1, after):
    v1 = make_v1(v2_store, tmp_path / "v1.zarr")
    expected = [open_store(v1).sample(r).image for r in range(6)]
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER, str(v1), str(after)], cwd=Path(__file__).parents[2],
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]
    half = open_store(v1)
    assert half.schema_version == 1 and [np.array_equal(half.sample(r).image, expected[r]) for r in range(6)] == [True] * 6
    assert migrate_store(v1).startswith(f"{v1}: migrated")
    assert _metadata(v1) == _metadata(v2_store) and _chunks(v1) == _chunks(v2_store)


def test_choose_dataset_takes_the_only_one_or_names_them(eval_store, tmp_path):
    store = open_store(eval_store)
    names = sorted(set(store.table()["dataset"].tolist()))
    assert len(names) == 2  # the shared fixture holds two datasets
    assert [store.choose_dataset(n) for n in names] == names
    with pytest.raises(PointADError, match=f"holds datasets {names[0]}, {names[1]}; choose one with --dataset"):
        store.choose_dataset()
    with pytest.raises(PointADError, match=f"no dataset 'nope' \\(present: {names[0]}, {names[1]}\\)"):
        store.choose_dataset("nope")
