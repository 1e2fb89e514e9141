"""Splatted mask views (render/masks.py, design §3.5) against a plain loop, hand cases and Open3D's own drawing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from pointad.render.camera import Camera, fit_camera
from pointad.render.cli import render
from pointad.render.masks import anomalous_on_top, binarise_blocks, footprints, splat_masks, supersampled_positions
from pointad.render.options import RenderOptions
from pointad.render.rasterize import DrawStyle, downsample, worker_rasterizer
from pointad.render.readers import list_samples, preprocess_options, read_sample
from pointad.render.sample_render import render_masks, render_sample
from pointad.shared.errors import ConfigError
from pointad.shared.store import open_store
from pointad.shared.store_write import set_failures


def _full(white, top, left, size):
    """anomalous_on_top's per-view boxes placed into (V, size, size) images."""
    out = np.zeros((len(white), size, size), bool)
    for k in range(len(white)):
        out[k, top[k]:top[k] + white.shape[1], left[k]:left[k] + white.shape[2]] = white[k]
    return out


def _white_by_loop(u, v, depth, labels, point_size, size):
    """The z-buffer drawn point by point: snap to 1/256 px, fill columns u - N/2 <= i < u + N/2 and rows
    v - N/2 < j <= v + N/2, keep a pixel's first nearest point (strictly nearer replaces it)."""
    views, count = depth.shape
    nearest = np.full((views, size, size), np.inf, np.float32)
    winner = np.full((views, size, size), -1)
    half = point_size / 2
    for k in range(views):
        for p in range(count):
            if depth[k, p] <= 0:
                continue
            x, y = round(float(u[k, p]) * 256) / 256, round(float(v[k, p]) * 256) / 256
            for row in range(size):
                for col in range(size):
                    if x - half <= col < x + half and y - half < row <= y + half and depth[k, p] < nearest[k, row, col]:
                        nearest[k, row, col], winner[k, row, col] = depth[k, p], p
    return (winner >= 0) & np.asarray(labels, bool)[winner]


def _first_difference(a, b):
    where = np.argwhere(a != b)
    return f"{len(where)} pixels differ, first at (view, row, col) {tuple(where[0])}" if len(where) else "equal"


@pytest.mark.parametrize("seed,point_size", [(0, 1.0), (1, 3.0), (2, 4.0), (3, 6.5), (4, 2.5)])
def test_matches_loop_on_random_points(seed, point_size):
    rng = np.random.default_rng(seed)
    views, count, size = 3, 120, 24
    u = rng.uniform(-4, size + 4, (views, count))  # some footprints hang over the edges or miss the image
    v = rng.uniform(-4, size + 4, (views, count))
    depth = rng.uniform(-0.2, 1.0, (views, count)).astype(np.float32)  # some behind the camera
    depth[0, 5] = depth[0, 6]  # a tie: the lower index wins
    labels = rng.random(count) < 0.3
    white, top, left = anomalous_on_top(u, v, depth, labels, point_size, size)
    fast = _full(white, top, left, size)
    slow = _white_by_loop(u, v, depth, labels, point_size, size)
    assert fast.any() and np.array_equal(fast, slow), _first_difference(fast, slow)


def test_matches_loop_when_some_views_have_no_anomalous_point():
    rng = np.random.default_rng(5)
    views, count, size = 4, 60, 30
    u, v = rng.uniform(0, size, (2, views, count))
    depth = rng.uniform(0.5, 1.0, (views, count)).astype(np.float32)
    labels = np.zeros(count, bool)
    labels[:3] = True
    depth[1:3, :3] = -1  # the anomalous points are behind the camera in views 1 and 2
    white, top, left = anomalous_on_top(u, v, depth, labels, 3.0, size, block=3)
    fast = _full(white, top, left, size)
    assert np.array_equal(fast, _white_by_loop(u, v, depth, labels, 3.0, size))
    assert fast[0].any() and not fast[1:3].any()
    assert (top % 3 == 0).all() and (left % 3 == 0).all() and white.shape[1] % 3 == 0 and white.shape[2] % 3 == 0


@pytest.mark.parametrize("anomalous_nearer", [True, False])
def test_nearer_of_two_overlapping_points_decides_the_pixel(anomalous_nearer):
    # anomalous point 0 at (u, v) = (10, 10), normal point 1 one column right; size 4:
    # point 0 fills columns 8..11, point 1 columns 9..12, both rows 9..12
    u, v = np.array([[10.0, 11.0]]), np.array([[10.0, 10.0]])
    depth = np.array([[1.0, 2.0] if anomalous_nearer else [2.0, 1.0]], np.float32)
    white, top, left = anomalous_on_top(u, v, depth, np.array([True, False]), 4, 20)
    got = _full(white, top, left, 20)[0]
    expected = np.zeros((20, 20), bool)
    expected[9:13, 8:12 if anomalous_nearer else 9] = True
    assert np.array_equal(got, expected), np.argwhere(got != expected)


def test_equal_depths_go_to_the_point_drawn_first():
    u, v = np.array([[10.0, 10.0]]), np.array([[10.0, 10.0]])
    depth = np.ones((1, 2), np.float32)
    first_anomalous = _full(*anomalous_on_top(u, v, depth, np.array([True, False]), 2, 20), 20)
    first_normal = _full(*anomalous_on_top(u, v, depth, np.array([False, True]), 2, 20), 20)
    assert first_anomalous.sum() == 4 and not first_normal.any()


def test_footprint_rule_by_hand():
    # columns u - N/2 <= i < u + N/2, rows v - N/2 < j <= v + N/2
    col0, cols, row0, rows = footprints(np.array([10.25, 10.0, 10.5]), np.array([10.25, 10.0, 10.5]), 3)
    assert col0.tolist() == [9, 9, 9] and cols.tolist() == [3, 3, 3]
    assert row0.tolist() == [9, 9, 10] and rows.tolist() == [3, 3, 3]
    col0, cols, row0, rows = footprints(np.array([10.0, 10.5 - 1 / 1024]), np.array([10.0, 10.2]), 6.5)
    # 10 - 3.25 <= i < 13.25: 7..13; 10.499 snaps to 10.5: 7.25 <= i < 13.75: 8..13
    assert col0.tolist() == [7, 8] and cols.tolist() == [7, 6]
    # 6.75 < j <= 13.25: 7..13; 10.2 snaps to 10.19921875: 6.949 < j <= 13.449: 7..13
    assert row0.tolist() == [7, 7] and rows.tolist() == [7, 7]


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_block_binarisation_matches_the_rendered_paths_downsample(factor):
    white = np.random.default_rng(factor).random((2, 12 * factor, 12 * factor)) < 0.5
    rendered = np.stack([downsample(w[..., None].astype(np.float32), factor)[..., 0] >= 0.5 for w in white])
    assert np.array_equal(binarise_blocks(white, factor), rendered.astype(np.uint8))


@pytest.mark.parametrize("point_size", [1, 2, 3, 6, 7, 12, 6.5])
def test_point_footprints_match_open3d(point_size):
    """Sparse points drawn by Open3D (legacy Visualizer, EGL) fill exactly the pixels `footprints` says."""
    rng = np.random.default_rng(int(point_size * 10))
    size, scale = 60, 3
    camera = Camera(image_size=size, focal=70.0, centre=(0.0, 0.0, 0.0), distance=1.0)
    grid = 18 + 36 * np.arange(5)  # supersampled pixel positions, 36 apart: no footprints overlap
    u = (grid[:, None] + rng.uniform(-1, 1, (5, 5))).ravel()
    v = (grid[None, :] + rng.uniform(-1, 1, (5, 5))).ravel()
    z = rng.uniform(0.9, 1.1, 25)
    intrinsic = camera.intrinsic(scale)
    # back-project through the camera: X_cam = diag(1, -1, -1) (X - c) + (0, 0, D), the identity view
    points = np.stack([(u - intrinsic[0, 2]) * z / intrinsic[0, 0], -(v - intrinsic[1, 2]) * z / intrinsic[1, 1],
                       -(z - camera.distance)], axis=1)
    rotations = np.eye(3)[None]
    rasterizer = worker_rasterizer(size * scale)
    rasterizer.set_cloud(points, np.ones((25, 3)))
    drawn = rasterizer.capture(intrinsic, camera.extrinsics(rotations)[0], DrawStyle(point_size, (0, 0, 0), False),
                               0.05, 10.0)[..., 0] > 0.5
    su, sv, depth = supersampled_positions(points, camera, rotations, scale)
    assert np.abs(su[0] - u).max() < 1e-3 and np.abs(sv[0] - v).max() < 1e-3
    splat = _full(*anomalous_on_top(su, sv, depth, np.ones(25, bool), point_size, size * scale), size * scale)
    assert np.array_equal(splat[0], drawn), _first_difference(splat, drawn[None])


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


@pytest.mark.parametrize("dataset,point_size,supersample", [("mvtec_dataset", 6, 3), ("mvtec_dataset", 6.5, 3),
                                                            ("real3d_dataset", 12, 3), ("real3d_dataset", 3, 2)])
@pytest.mark.slow
def test_splatted_masks_match_rendered_masks(dataset, point_size, supersample, request):
    """IoU >= 0.95 (design §3.5) over all views of every anomalous test sample; good samples all zero."""
    _, entry = request.getfixturevalue(dataset)
    options = RenderOptions(views=5, image_size=160, supersample=supersample, max_points=160 * 160,
                            point_size=point_size)
    rasterizer = worker_rasterizer(160 * supersample)
    ious = {}
    for ref in list_samples(entry, splits=["test"]):
        sample = read_sample(entry, ref, preprocess_options(entry, ref.class_name, image_size=160,
                                                            max_points=160 * 160))
        camera = fit_camera(sample.points, options.image_size)
        splat = splat_masks(sample.points, sample.point_labels, camera, options.plan.rotations, point_size,
                            supersample)
        if not ref.label:
            assert splat.shape == (5, 160, 160) and not splat.any(), ref.sample_id
            continue
        rasterizer.set_cloud(sample.points, np.zeros((sample.n_points, 3)))
        rendered = render_masks(rasterizer, sample.point_labels, camera, camera.extrinsics(options.plan.rotations),
                                point_size, supersample)
        assert rendered.any(), ref.sample_id
        ious[ref.sample_id] = _iou(splat, rendered)
    assert len(ious) >= 8
    assert min(ious.values()) >= 0.95, {k: round(float(x), 4) for k, x in ious.items()}


def test_render_sample_splat_equals_render_option_except_masks(mvtec_dataset):
    _, entry = mvtec_dataset
    options = RenderOptions(views=3, image_size=96, supersample=2, max_points=96 * 96, point_size=3)
    prep = preprocess_options(entry, "cookie", image_size=96, max_points=96 * 96)
    rasterizer = worker_rasterizer(96 * 2)
    refs = list_samples(entry, ["cookie"], ["test"])
    for ref in (next(r for r in refs if r.label), next(r for r in refs if not r.label)):
        sample = read_sample(entry, ref, prep)
        splat = render_sample(sample, options, rasterizer)
        rendered = render_sample(sample, replace(options, masks="render"), rasterizer)
        assert _iou(splat.mask, rendered.mask) >= 0.95 and splat.mask.any() == bool(ref.label)
        for name in ("image", "pixel", "visible", "proxy", "knn", "xyz"):
            assert np.array_equal(getattr(splat, name), getattr(rendered, name)), name


@pytest.mark.slow
def test_masks_option_is_validated_recorded_and_part_of_the_store_identity(mvtec_dataset, tmp_path):
    assert RenderOptions().masks == "splat" and RenderOptions(renderer="filament").masks == "render"
    with pytest.raises(ConfigError, match="--masks must be one of splat, render"):
        RenderOptions(masks="paint")
    # the footprint is the legacy renderer's; Filament draws its points otherwise (IoU 0.6-0.98 measured)
    with pytest.raises(ConfigError, match="with --renderer filament use --masks render"):
        RenderOptions(renderer="filament", masks="splat")
    _, entry = mvtec_dataset
    out = tmp_path / "rendered-masks.zarr"
    args = ["build", "--format", "mvtec3d", "--root", str(entry.root), "--classes", "cookie", "--splits", "test",
            "--out", str(out), "--views", "2", "--image-size", "64", "--supersample", "1", "--max-points", "4096"]
    result = CliRunner().invoke(render, args + ["--masks", "render"])
    assert result.exit_code == 0, result.output
    store = open_store(out)
    assert store.attrs.render.masks == "render" and store.complete.all()
    assert any(store.sample(i).mask.any() for i in range(len(store)))
    again = CliRunner().invoke(render, args)  # default --masks splat into a store built with rendered masks
    assert again.exit_code == 1 and "other render options (masks)" in again.output, again.output
    # a store written before the option existed has no `masks` key: it rendered its masks
    recorded = store.attrs.render.to_dict()
    set_failures(out, store.attrs.failures, render={k: v for k, v in recorded.items() if k != "masks"})
    resumed = CliRunner().invoke(render, args + ["--masks", "render"])
    assert resumed.exit_code == 0 and f"{len(store)} already complete" in resumed.output, resumed.output
    assert "other render options (masks)" in CliRunner().invoke(render, args).output
