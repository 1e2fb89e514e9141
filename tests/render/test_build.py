"""render build end to end (design §3, §4): real Open3D rendering into a real Zarr store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from pointad.render.build import build_store
from pointad.render.camera import fit_camera, project
from pointad.render.cli import render
from pointad.render.options import RenderOptions
from pointad.render.rasterize import DrawStyle, downsample, worker_rasterizer
from pointad.render.readers import list_samples, preprocess_options, read_sample
from pointad.render.view_plan import make_view_plan
from pointad.shared.store import open_store

FIELDS = ("image", "mask", "pixel", "visible", "xyz", "valid", "label", "grid_index", "proxy", "knn", "knn_weight",
          "rgb", "rgb_mask", "n_points", "grid_hw")
SMALL = RenderOptions(views=3, image_size=96, supersample=2, max_points=96 * 96, point_size=3)  # = reference_store's


def assert_same_stores(a, b):
    """Equal identities and equal arrays, row for row (rows matched by sample id)."""
    sa, sb = open_store(a), open_store(b)
    rows_b = {sb.identity(i)["sample_id"]: i for i in range(len(sb))}
    assert len(sa) == len(sb) and sa.complete.all() and sb.complete.all()
    for i in range(len(sa)):
        x, y = sa.sample(i), sb.sample(rows_b[sa.identity(i)["sample_id"]])
        for field in FIELDS:
            assert np.array_equal(getattr(x, field), getattr(y, field)), (sa.identity(i)["sample_id"], field)


def ran_in_own_process(request) -> bool:
    """Run this test in a child pytest instead (True), unless we are that child (False).

    Filament initialises GLFW for its whole process (a legacy window cannot follow) and its
    teardown can abort the interpreter at exit, so its tests never share the suite's process.
    """
    if os.environ.get("POINTAD_TEST_CHILD"):
        return False
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", request.node.nodeid],
                           cwd=request.config.rootpath, env={**os.environ, "POINTAD_TEST_CHILD": "1"},
                           capture_output=True, text=True)
    assert "1 passed" in child.stdout, child.stdout[-3000:] + child.stderr[-2000:]
    return True


@pytest.mark.parametrize("plan,renderer", [("paper", "legacy"), ("pointad-code", "legacy"),
                                           pytest.param("paper", "filament", marks=pytest.mark.slow)])
def test_markers_land_within_one_pixel_of_the_projection(plan, renderer, request):
    """Each marker point, drawn large and alone, appears centred within 1 px of our projected (u, v)."""
    if renderer == "filament" and ran_in_own_process(request):
        return
    rng = np.random.default_rng(7)
    cloud = rng.standard_normal((2000, 3)) * [0.03, 0.02, 0.01] + [0.01, -0.02, 0.3]
    size, scale = 120, 3
    camera = fit_camera(cloud, size)
    rotations = make_view_plan(plan, 9).rotations
    pixel, _, inside = project(cloud, camera, rotations)
    # four markers whose projections stay >= 12 px apart in every view, so none hides another
    markers = [0]
    for candidate in range(1, len(cloud)):
        gaps = np.abs(pixel[:, markers] - pixel[:, [candidate]]).max(-1)
        if (gaps >= 12).all() and inside[:, candidate].all():
            markers.append(candidate)
        if len(markers) == 4:
            break
    assert len(markers) == 4
    rasterizer = worker_rasterizer(size * scale, renderer)
    style = DrawStyle(point_size=7, background=(0, 0, 0), light_on=False)
    worst = 0.0
    for k, extrinsic in enumerate(camera.extrinsics(rotations)):
        for m in range(4):
            # draw all markers (a single point has no extent and Open3D skips it), only marker m white
            colours = np.zeros((4, 3))
            colours[m] = 1
            rasterizer.set_cloud(cloud[markers], colours)
            image = downsample(rasterizer.capture(camera.intrinsic(scale), extrinsic, style,
                                                  camera.distance * 0.05, camera.distance * 10), scale)[..., 0]
            rows, cols = np.nonzero(image > 0.05)
            assert rows.size, f"marker {m} not drawn in view {k}"
            weights = image[rows, cols]
            centre = np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()
            worst = max(worst, float(np.abs(centre - pixel[k, markers[m]]).max()))
    assert worst <= 1.0, f"a marker landed {worst:.2f} px from its projection"


@pytest.mark.parametrize("seed", [0, 1])
def test_projection_agrees_with_a_float64_reference(seed):
    """project works in float32 (bit-reproducible); against float64 it may only differ by one pixel, and
    only for points within a hair of a pixel boundary."""
    rng = np.random.default_rng(seed)
    cloud = (rng.standard_normal((20000, 3)) * [0.03, 0.02, 0.01] + [0.01, -0.02, 0.3]).astype(np.float32)
    camera = fit_camera(cloud, 336)
    rotations = make_view_plan("paper", 9).rotations
    pixel, depth, inside = project(cloud, camera, rotations)
    extrinsics = camera.extrinsics(rotations)
    cam = np.einsum("vij,pj->vpi", extrinsics[:, :3, :3], cloud.astype(np.float64)) + extrinsics[:, None, :3, 3]
    exact = camera.focal * cam[..., :2] / cam[..., 2:] + (336 / 2 - 0.5)
    rounded = np.rint(exact)
    differs = pixel != rounded
    assert np.abs(pixel - rounded).max() <= 1 and (np.abs(np.abs(exact - rounded)[differs] - 0.5) < 1e-3).all()
    assert differs.mean() < 1e-3 and inside.all()
    np.testing.assert_allclose(depth, cam[..., 2], rtol=1e-6)
    again = project(cloud.copy(), camera, rotations)
    assert all(np.array_equal(a, b) for a, b in zip(again, (pixel, depth, inside)))


def test_reference_store_records_splatted_masks(reference_store):
    assert open_store(reference_store).attrs.render.masks == "splat"


def test_build_then_verify_info_and_show(reference_store, mvtec_dataset, tmp_path):
    runner = CliRunner()
    result = runner.invoke(render, ["verify", str(reference_store)])
    assert result.exit_code == 0 and "6 complete samples checked, 0 problem(s)" in result.output, result.output
    result = runner.invoke(render, ["info", str(reference_store)])
    assert result.exit_code == 0 and "cookie" in result.output and "failures: 0" in result.output
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(render, ["show", str(reference_store), "--sample", "cookie/test/bump/xyz/000.tiff",
                                    "--out", str(sheet)])
    assert result.exit_code == 0 and sheet.stat().st_size > 1000


def test_store_rows_hold_the_readers_points_and_consistent_masks(reference_store, mvtec_dataset):
    _, entry = mvtec_dataset
    store = open_store(reference_store)
    refs = {r.sample_id: r for r in list_samples(entry, ["cookie"], ["test"])}
    for i in range(len(store)):
        stored = store.sample(i)
        ref = refs[stored.sample_id]
        sample = read_sample(entry, ref, preprocess_options(entry, "cookie", image_size=96, max_points=96 * 96))
        n = sample.n_points
        assert stored.n_points == n and stored.valid[:n].all() and not stored.valid[n:].any()
        assert np.array_equal(stored.xyz[:n], sample.points) and np.array_equal(stored.label[:n], sample.point_labels)
        assert np.array_equal(stored.grid_index[:n], sample.grid_index)
        assert np.array_equal(stored.rgb, sample.rgb) and stored.sample_label == ref.label
        masks_hit = stored.mask.reshape(3, -1).any(axis=1)
        if sample.point_labels.any():
            assert masks_hit.any(), f"{ref.sample_id}: anomalous points but no rendered mask"
            # the rendered masks cover the visible anomalous points' pixels in most cases
            k = int(np.argmax(stored.mask.reshape(3, -1).sum(axis=1)))
            seen = stored.visible[k, :n] & stored.label[:n].astype(bool)
            u, v = stored.pixel[k, :n, 0][seen], stored.pixel[k, :n, 1][seen]
            assert stored.mask[k, v, u].mean() > 0.8
        else:
            assert not masks_hit.any(), f"{ref.sample_id}: good sample with a non-empty mask"
        # views are lit grey points on white: some background, some object
        assert (stored.image == 255).all(-1).mean() > 0.2 and (stored.image < 250).any()


@pytest.mark.slow
def test_filament_renderer_builds_a_consistent_store(mvtec_dataset, tmp_path, request):
    if ran_in_own_process(request):
        return
    _, entry = mvtec_dataset
    out = tmp_path / "filament.zarr"
    options = RenderOptions(views=2, image_size=64, supersample=2, max_points=4096, point_size=4, renderer="filament")
    result = build_store(entry, out, options, classes=["cookie"], splits=["test"])
    assert result.rendered == 6 and not result.failures
    verified = CliRunner().invoke(render, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output
    image = open_store(out).sample(0).image
    assert (image == 255).all(-1).mean() > 0.2 and (image < 200).any()  # white background, shaded object


@pytest.mark.slow
def test_two_workers_equal_one(reference_store, mvtec_dataset, tmp_path):
    _, entry = mvtec_dataset
    out = tmp_path / "two.zarr"
    result = build_store(entry, out, SMALL, classes=["cookie"], splits=["test"], workers=2)
    assert result.rendered == 6
    assert_same_stores(reference_store, out)


@pytest.mark.slow
def test_threads_per_worker_from_the_command_line_build_the_same_store(reference_store, mvtec_dataset, tmp_path):
    _, entry = mvtec_dataset
    common = ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "cookie", "--splits", "test",
              "--views", "3", "--image-size", "96", "--supersample", "2", "--max-points", str(96 * 96),
              "--point-size", "3"]
    for workers, threads in (("1", "1"), ("2", "2")):  # one thread for a lone worker; two for each of two
        out = tmp_path / f"j{workers}-t{threads}.zarr"
        result = CliRunner().invoke(render, [*common, "--out", str(out), "-j", workers, "--threads", threads])
        assert result.exit_code == 0, result.output
        assert_same_stores(reference_store, out)
    many = tmp_path / "many.zarr"  # more threads than CPUs: a warning, and still the same store
    warned = CliRunner().invoke(render, [*common, "--out", str(many), "--threads", str(2 * os.cpu_count() + 1)])
    assert warned.exit_code == 0 and "oversubscribed" in warned.output, warned.output
    assert_same_stores(reference_store, many)
    refused = CliRunner().invoke(render, [*common, "--out", str(tmp_path / "zero.zarr"), "--threads", "0"])
    assert refused.exit_code == 1 and "Error: --threads must be in 1..1024, got 0" in refused.output
    assert not (tmp_path / "zero.zarr").exists()


@pytest.mark.slow
def test_dask_local_cluster_equals_one_worker(reference_store, mvtec_dataset, tmp_path):
    pytest.importorskip("distributed")
    _, entry = mvtec_dataset
    out = tmp_path / "dask.zarr"
    result = build_store(entry, out, SMALL, classes=["cookie"], splits=["test"], workers=2, backend="dask")
    assert result.rendered == 6 and not result.failures
    assert_same_stores(reference_store, out)


@pytest.mark.slow
def test_a_build_leaves_no_runtime_folder_in_tmpdir(mvtec_dataset, tmp_path):
    # Mesa wants XDG_RUNTIME_DIR; a process without one makes a private folder in TMPDIR (render/rasterize.py),
    # which must be gone when the coordinator and its two workers have exited
    _, entry = mvtec_dataset
    temp = tmp_path / "tmp"
    temp.mkdir()
    environment = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"} | {"TMPDIR": str(temp)}
    command = [sys.executable, "-m", "pointad.render.cli", "build", "--format", "mvtec3d", "--root", str(entry.root),
               "--classes", "cookie", "--splits", "test", "--out", str(tmp_path / "s.zarr"), "--views", "2",
               "--image-size", "48", "--supersample", "1", "--max-points", str(48 * 48), "--workers", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    assert open_store(tmp_path / "s.zarr").complete.all()
    assert sorted(p.name for p in temp.iterdir()) == []


def test_sigkill_part_way_then_rerun_equals_uninterrupted(reference_store, mvtec_dataset, tmp_path):
    _, entry = mvtec_dataset
    out = tmp_path / "killed.zarr"
    command = [sys.executable, "-m", "pointad.render.cli", "build", "--format", "mvtec3d", "--root", str(entry.root),
               "--classes", "cookie", "--splits", "test", "--out", str(out), "--views", "3", "--image-size", "96",
               "--supersample", "2", "--max-points", str(96 * 96), "--point-size", "3"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    flags = out / "samples" / "complete" / "c"  # a row's flag chunk exists once it is complete (False is the fill)
    # polled by listing that folder, not by opening the store: a few rows take well under a second to draw
    while time.time() < deadline and process.poll() is None:
        time.sleep(0.005)
        if flags.is_dir() and len(os.listdir(flags)) >= 2:
            break
    assert process.poll() is None, "the build finished before the kill: it should land part-way"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = open_store(out)
    assert 2 <= partial.complete.sum() < 6, "the kill should land part-way through the build"
    assert subprocess.run(command, capture_output=True).returncode == 0
    assert_same_stores(reference_store, out)
    assert build_store(entry, out, SMALL, classes=["cookie"], splits=["test"]).skipped == 6


@pytest.mark.slow
def test_second_dataset_appends_and_keeps_the_first(reference_store, real3d_dataset, tmp_path):
    import shutil
    out = tmp_path / "both.zarr"
    shutil.copytree(reference_store, out)
    _, entry = real3d_dataset
    result = build_store(entry, out, SMALL, classes=["torus"], splits=["test"])
    assert result.rendered == 6
    store = open_store(out)
    assert sorted({store.identity(i)["dataset"] for i in range(len(store))}) == ["synthetic-mvtec3d",
                                                                                 "synthetic-real3d"]
    assert len(store) == 12 and store.complete.all()
    unorganized = store.sample(int(store.indices(class_name="torus")[0]))
    assert tuple(unorganized.grid_hw) == (0, 0) and (unorganized.grid_index == -1).all()
    first = open_store(reference_store)
    for i in range(len(first)):
        assert np.array_equal(store.sample(i).image, first.sample(i).image)


@pytest.mark.slow
def test_failures_are_listed_and_exit_1_unless_keep_going(mvtec_dataset, tmp_path):
    import shutil
    _, entry = mvtec_dataset
    root = tmp_path / "data"
    shutil.copytree(entry.root / "cookie", root / "cookie")
    broken = root / "cookie" / "test" / "dent" / "xyz" / "000.tiff"
    broken.write_bytes(b"not a tiff")
    out = tmp_path / "f.zarr"
    args = ["build", "--format", "mvtec3d", "--root", str(root), "--splits", "test", "--out", str(out), "--views",
            "2", "--image-size", "64", "--supersample", "1", "--max-points", "4096"]
    result = CliRunner().invoke(render, args)
    assert result.exit_code == 1
    assert f"failed: cookie/test/dent/xyz/000.tiff: {broken}: unreadable TIFF" in result.output
    failures = open_store(out).attrs.failures
    assert [f["sample_id"] for f in failures] == ["cookie/test/dent/xyz/000.tiff"]
    assert CliRunner().invoke(render, args + ["--keep-going"]).exit_code == 0
    verify = CliRunner().invoke(render, ["verify", str(out)])
    assert verify.exit_code == 1 and "row" in verify.output and "is incomplete" in verify.output


def test_other_render_options_into_the_same_store_is_an_error(reference_store, mvtec_dataset):
    _, entry = mvtec_dataset
    from dataclasses import replace

    from pointad.shared.errors import PointADError
    with pytest.raises(PointADError, match=r"store was built with other render options \(.*views.*\)"):
        build_store(entry, reference_store, replace(SMALL, views=5), classes=["cookie"], splits=["test"])


@pytest.mark.slow
def test_ablation_options_are_recorded_and_applied(mvtec_dataset, tmp_path):
    _, entry = mvtec_dataset
    out = tmp_path / "ablation.zarr"
    options = RenderOptions(views=2, angle_shift=0.1, light="-", downsample=0.5, image_size=64, supersample=1,
                            max_points=4096, point_size=2, visibility="surface")
    build_store(entry, out, options, classes=["cookie"], splits=["test"])
    store = open_store(out)
    render_attrs = store.attrs.render
    assert (render_attrs.light, render_attrs.downsample, render_attrs.visibility) == ("-", 0.5, "surface")
    assert store.attrs.view_plan["angles"] == pytest.approx([-np.pi / 3 + 0.1, np.pi / 3 + 0.1])
    full = read_sample(entry, list_samples(entry, ["cookie"], ["test"])[0],
                       preprocess_options(entry, "cookie", image_size=64, max_points=4096))
    assert store.sample(0).n_points == round(full.n_points * 0.5)
    verified = CliRunner().invoke(render, ["verify", str(out)])
    assert verified.exit_code == 0, verified.output
