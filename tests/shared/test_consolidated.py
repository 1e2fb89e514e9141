"""Consolidated metadata (design §4.3, issue 20 item 5): when a build, an append, a repair or a migration
finishes, the root zarr.json holds a copy of every group's and array's metadata, so xarray opens the store
without its warning and without reading each array's zarr.json; the copy always equals what the arrays'
own zarr.json files say, or is absent (a build killed before it finished), never stale."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import xarray
from click.testing import CliRunner

from pointad.render.build import build_store
from pointad.render.cli import render
from pointad.render.migrate import migrate_store
from pointad.render.options import RenderOptions
from pointad.shared.store import open_store, store_fingerprint
from pointad.shared.store_schema import ARRAYS
from pointad.shared.store_write import append_samples, consolidate, update_attrs

# tests/conftest.py's cookie_splat_48: the options the copies below were drawn with
OPTIONS = RenderOptions(views=2, image_size=48, supersample=1, max_points=48 * 48, point_size=3, renderer="splat")
CLI_OPTIONS = ["--views", "2", "--image-size", "48", "--supersample", "1", "--max-points", str(48 * 48),
               "--point-size", "3", "--renderer", "splat"]
GROUPS = ("samples", "views", "points", "rgb", "cameras")


def on_disk_metadata(store: Path) -> dict:
    """{node path: its zarr.json as JSON} for every group and array below the root, read file by file."""
    return {document.parent.relative_to(store).as_posix(): json.loads(document.read_text())
            for document in store.rglob("zarr.json") if document.parent != store}


def consolidated(store: Path) -> dict | None:
    """The copy in the root zarr.json ({node path: metadata}), None if there is none."""
    copy = json.loads((store / "zarr.json").read_text()).get("consolidated_metadata")
    return None if copy is None else copy["metadata"]


def assert_consolidated_and_true(store: Path) -> None:
    """The copy exists, names every node and equals each node's own zarr.json; xarray opens the store, its
    root and every group, with warnings as errors, and sees the rows our reader sees."""
    copy = consolidated(store)
    assert copy is not None, f"{store}: no consolidated metadata"
    real = on_disk_metadata(store)
    assert set(copy) == set(real) and {spec.path for spec in ARRAYS} <= set(real), sorted(set(copy) ^ set(real))
    for path in real:
        entry = dict(copy[path])
        if entry["node_type"] == "group":  # zarr keeps the tree flat in the root: a group's own copy is empty
            assert entry.pop("consolidated_metadata")["metadata"] == {}, path
        assert entry == real[path], f"{path}: consolidated {entry} != on disk {real[path]}"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xarray.open_zarr(store)
        samples = xarray.open_zarr(store, group="samples")
        tree = xarray.open_datatree(store, engine="zarr")
    assert set(tree.children) == set(GROUPS)
    assert samples.sizes["sample"] == len(open_store(store))
    assert samples["sample_id"].values.tolist() == open_store(store).table()["sample_id"].tolist()


def assert_warns_without_consolidated(store: Path) -> None:
    """No copy: xarray says so and reads each array's own metadata (the slow path), never a stale copy."""
    assert consolidated(store) is None
    with pytest.warns(RuntimeWarning, match="consolidated metadata"):
        samples = xarray.open_zarr(store, group="samples")
    assert samples.sizes["sample"] == len(open_store(store))


@pytest.fixture
def store_copy(cookie_splat_48, tmp_path) -> Path:
    """A copy of the conftest's cookie store (6 rows, built by build_store) to change."""
    return Path(shutil.copytree(cookie_splat_48, tmp_path / "renders.zarr"))


def test_a_finished_build_is_consolidated(cookie_splat_48):
    assert_consolidated_and_true(cookie_splat_48)


def test_every_write_that_changes_metadata_removes_the_copy_first(store_copy):
    update_attrs(store_copy, failures=[])
    assert_warns_without_consolidated(store_copy)
    consolidate(store_copy)
    assert_consolidated_and_true(store_copy)
    identity = {"dataset": "extra", "class_name": "cookie", "split": "test", "defect_type": "good",
                "sample_id": "cookie/test/good/xyz/999.tiff", "label": 0}
    append_samples(store_copy, [identity])  # every array grows: a copy would say 6 rows
    assert len(open_store(store_copy)) == 7
    assert_warns_without_consolidated(store_copy)


@pytest.mark.slow
def test_an_append_build_consolidates_the_grown_store(store_copy, mvtec_dataset):
    _, entry = mvtec_dataset
    before = len(open_store(store_copy))
    result = build_store(entry, store_copy, OPTIONS, classes=["torus"], splits=["test"])
    assert result.rendered > 0 and not result.failures
    assert len(open_store(store_copy)) == before + result.rendered
    assert_consolidated_and_true(store_copy)


def test_a_repair_consolidates_what_it_rewrote(store_copy, mvtec_dataset):
    (store_copy / "samples" / "label" / "zarr.json").write_text("{ not json")
    _, entry = mvtec_dataset
    result = build_store(entry, store_copy, OPTIONS, classes=["cookie"], splits=["test"], repair=True)
    assert any("samples/label" in line for line in result.damaged), result.damaged
    assert_consolidated_and_true(store_copy)


def make_consolidated_v1(make_v1, v2: Path, out: Path) -> Path:
    """`make_v1`'s v1 store with a copy of that v1 metadata consolidated by another tool."""
    make_v1(v2, out)
    root = json.loads((out / "zarr.json").read_text())
    root["consolidated_metadata"] = {"kind": "inline", "must_understand": False, "metadata": on_disk_metadata(out)}
    (out / "zarr.json").write_text(json.dumps(root))
    return out


@pytest.mark.slow
def test_a_migration_consolidates_the_v2_metadata(cookie_splat_48, tmp_path, make_v1):
    v1 = make_consolidated_v1(make_v1, cookie_splat_48, tmp_path / "v1.zarr")
    assert "cameras/intrinsic" not in consolidated(v1)
    done = CliRunner().invoke(render, ["migrate", str(v1)])
    assert done.exit_code == 0, done.output
    assert_consolidated_and_true(v1)
    assert "cameras/intrinsic" in consolidated(v1)
    assert consolidated(v1)["samples/label"]["dimension_names"] == ["sample"]
    assert store_fingerprint(v1) == store_fingerprint(cookie_splat_48)
    assert migrate_store(v1).endswith("nothing to do")


# the build's own last step, replaced in a child process by a SIGKILL of that process: everything is written,
# the copy is not (a real kill -9 at exactly that point, which a timed kill cannot hit)
KILL_AT_CONSOLIDATION = """
import os, signal, sys
from pointad.render import build
build.consolidate = lambda path: os.kill(os.getpid(), signal.SIGKILL)
from pointad.render.cli import render
render(sys.argv[1:])
"""


@pytest.mark.slow
def test_kill_9_before_consolidation_leaves_a_readable_store_the_next_build_consolidates(store_copy, mvtec_dataset):
    _, entry = mvtec_dataset
    command = [sys.executable, "-c", KILL_AT_CONSOLIDATION, "build", "--format", "mvtec3d", "--root", str(entry.root),
               "--classes", "torus", "--splits", "test", "--out", str(store_copy), *CLI_OPTIONS]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    store = open_store(store_copy)  # our reader: every row of the append, each complete
    assert len(store) > 6 and store.complete.all()
    assert_warns_without_consolidated(store_copy)  # removed when the append began: never stale
    done = CliRunner().invoke(render, ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "torus",
                                       "--splits", "test", "--out", str(store_copy), *CLI_OPTIONS])
    assert done.exit_code == 0, done.output
    assert " 0 rendered" in done.output
    assert_consolidated_and_true(store_copy)
