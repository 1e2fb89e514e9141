"""Preprocessing math (design §2) against hand-made scenes and plainly-correct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pointad.render.background import belt_box, belt_frame, constant_background, rigid_transform
from pointad.render.preprocess import (
    PreprocessOptions,
    border_mask,
    check_finite_grid,
    distinct_point_indices,
    farthest_point_indices,
    farthest_point_order,
    fit_plane,
    flip_x180,
    largest_cluster,
    options_for_format,
    pad_to_square,
    preprocess_organized,
    preprocess_unorganized,
    resize_nearest,
)
from pointad.shared.errors import ConfigError


def _fps_by_loop(points, count, start=0):
    """Farthest-point sampling, the textbook loop: from `start`, repeatedly take the farthest from the chosen set."""
    chosen = [start]
    distance = np.linalg.norm(points - points[start], axis=1)
    for _ in range(count - 1):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(points - points[nxt], axis=1))
    return np.array(chosen)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("size", [500, 30_000])
def test_farthest_point_sampling_matches_the_loop(seed, size):
    """The fast sampler's picks, in order, are the textbook loop's from the same first point."""
    points = np.random.default_rng(seed).random((size, 3)).astype(np.float32).astype(np.float64)
    order = farthest_point_order(points, 60)
    assert np.array_equal(order, _fps_by_loop(points, 60, start=int(order[0])))
    assert np.array_equal(farthest_point_indices(points, 60), np.sort(order))


def test_farthest_point_sampling_is_deterministic_and_spreads_out():
    points = np.random.default_rng(3).random((5000, 3))
    first, again = farthest_point_indices(points, 200), farthest_point_indices(points, 200)
    assert np.array_equal(first, again) and len(np.unique(first)) == 200
    # covering radius: every point lies near a chosen one, nearer than for the first 200 points
    from scipy.spatial import cKDTree
    cover = cKDTree(points[first]).query(points)[0].max()
    assert cover < 0.7 * cKDTree(points[:200]).query(points)[0].max()


def test_farthest_point_sampling_keeps_everything_under_budget():
    points = np.random.default_rng(0).random((50, 3))
    assert np.array_equal(farthest_point_indices(points, 80), np.arange(50))


def _repeated_cloud(distinct: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a shuffled cloud of `distinct` points, each 1 to 5 times; the distinct points)."""
    rng = np.random.default_rng(seed)
    unique = rng.random((distinct, 3)).astype(np.float32).astype(np.float64)
    cloud = np.repeat(unique, rng.integers(1, 6, distinct), axis=0)
    return cloud[rng.permutation(len(cloud))], unique


def test_fpsample_alone_repeats_points_once_the_distinct_ones_run_out():
    """Why farthest_point_indices looks for repeats (issue 21, item 7): the raw order repeats points."""
    cloud, unique = _repeated_cloud()
    order = farthest_point_order(cloud, len(unique) + 10)
    assert len(np.unique(cloud[order], axis=0)) == len(unique) < len(order)


@pytest.mark.parametrize("count", [1, 10, 39, 40, 41, 100])
def test_farthest_point_sampling_of_repeated_points_keeps_distinct_ones(count):
    """min(count, distinct) points, none twice; all the distinct points once the count reaches them."""
    cloud, unique = _repeated_cloud()
    chosen = farthest_point_indices(cloud, count)
    assert len(chosen) == min(count, len(unique)) and np.array_equal(chosen, np.unique(chosen))
    picked = cloud[chosen]
    assert len(np.unique(picked, axis=0)) == len(chosen)
    if count >= len(unique):
        assert np.array_equal(np.unique(picked, axis=0), np.unique(unique, axis=0))
    else:  # still farthest-point sampling: the textbook loop over the distinct points, from the same first pick
        start = cloud[farthest_point_order(cloud, count)[0]]
        first = int(np.flatnonzero((unique == start).all(axis=1))[0])
        assert np.array_equal(np.unique(picked, axis=0), np.unique(unique[_fps_by_loop(unique, count, first)], axis=0))


def _distinct_by_loop(points) -> list[int]:
    seen = {}
    for index, point in enumerate(np.asarray(points, np.float32).tolist()):
        seen.setdefault(tuple(c + 0.0 for c in point), index)
    return sorted(seen.values())


@pytest.mark.parametrize("seed", [0, 1])
def test_distinct_points_match_the_loop(seed):
    cloud, unique = _repeated_cloud(seed=seed)
    assert distinct_point_indices(cloud).tolist() == _distinct_by_loop(cloud) and len(_distinct_by_loop(cloud)) == 40


def test_distinct_points_compare_as_stored():
    """-0.0 is 0.0, and float64 points that float32 (the store's type) cannot tell apart are one point."""
    points = np.array([[0.0, 1, 2], [-0.0, 1, 2], [1, 1, 1], [1 + 1e-12, 1, 1], [1 + 1e-3, 1, 1]])
    assert distinct_point_indices(points).tolist() == [0, 2, 4] == _distinct_by_loop(points)


@pytest.mark.parametrize("shape", [(400, 400), (800, 800), (200, 200), (513, 640), (336, 336)])
def test_resize_nearest_matches_torch_interpolate(shape):
    array = np.random.default_rng(shape[0]).random((*shape, 3)).astype(np.float32)
    ours = resize_nearest(array, 336)
    theirs = torch.nn.functional.interpolate(torch.from_numpy(array).permute(2, 0, 1)[None], size=(336, 336),
                                             mode="nearest")[0].permute(1, 2, 0).numpy()
    assert np.array_equal(ours, theirs)


def test_flip_is_rotation_by_pi_about_x():
    points = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
    rotation = np.array([[1, 0, 0], [0, np.cos(np.pi), -np.sin(np.pi)], [0, np.sin(np.pi), np.cos(np.pi)]])
    np.testing.assert_allclose(flip_x180(points), points @ rotation.T, atol=1e-6)


def test_border_mask_width():
    mask = border_mask(30, 40, 10)
    assert mask[:10].all() and mask[-10:].all() and mask[:, :10].all() and mask[:, -10:].all()
    assert not mask[10:20, 10:30].any() and mask.sum() == 30 * 40 - 10 * 20


def test_missing_pixels_and_corrupt_coordinates():
    xyz = np.ones((4, 4, 3), np.float32)
    xyz[0, 0] = 0
    xyz[1, 1] = np.nan
    assert check_finite_grid(xyz).sum() == 14  # all-zero and all-NaN pixels are missing, not errors
    xyz[2, 2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite coordinates at 1 pixel"):
        check_finite_grid(xyz)
    xyz[2, 2, 1] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        check_finite_grid(xyz)


def _measured_by_loop(xyz):
    """Per pixel: measured unless all three coordinates are 0 or all three are NaN."""
    return np.array([[not ((p == 0).all() or np.isnan(p).all()) for p in row] for row in xyz])


@pytest.mark.parametrize("with_nan", [False, True])
def test_measured_pixels_match_the_per_pixel_rule(with_nan):
    """Both paths of check_finite_grid: all finite (fast) and with all-NaN missing pixels."""
    rng = np.random.default_rng(int(with_nan))
    xyz = rng.standard_normal((30, 40, 3)).astype(np.float32)
    xyz[rng.random((30, 40)) < 0.3] = 0                 # missing, MVTec style
    xyz[rng.random((30, 40, 3)) < 0.1] = 0              # single zero coordinates: still measured
    xyz[0, 0] = [-0.0, 0.0, -0.0]                        # negative zeros are zeros
    if with_nan:
        xyz[rng.random((30, 40)) < 0.2] = np.nan        # missing, scanner style
    assert np.array_equal(check_finite_grid(xyz), _measured_by_loop(xyz))


def _tilted_plane_with_box(size=200, seed=0):
    """A tilted plane 0.3 m away with a 10 mm tall box in the middle; returns (xyz, box mask)."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size]
    x, y = (u - size / 2) * 5e-4, (v - size / 2) * 5e-4
    box = (np.abs(x) < 0.02) & (np.abs(y) < 0.015)
    z = 0.3 + 0.05 * x - 0.03 * y - 0.010 * box + 2e-5 * rng.standard_normal(x.shape)
    return np.stack([x, y, z], -1).astype(np.float32), box


def test_fit_plane_recovers_a_known_plane():
    xyz, box = _tilted_plane_with_box()
    plane = fit_plane(xyz[~box], 0.005, 1000, 0)
    normal = np.array([0.05, -0.03, -1.0]) / np.linalg.norm([0.05, -0.03, -1.0])
    assert abs(abs(plane[:3] @ normal) - 1) < 1e-6


def test_plane_removal_keeps_the_object_and_drops_the_plane():
    xyz, box = _tilted_plane_with_box(size=336)
    result = preprocess_organized(xyz, None, None, PreprocessOptions())
    kept = np.zeros(336 * 336, bool)
    kept[result.grid_index] = True
    assert not (kept & ~box.reshape(-1)).any()
    assert (kept & box.reshape(-1)).sum() >= 0.99 * box.sum()


def test_object_filling_the_frame_is_a_clear_error():
    xyz = np.zeros((336, 336, 3), np.float32)
    xyz[100:200, 100:200] = 1.0  # nothing on the border to fit a plane to
    with pytest.raises(ValueError, match="only 0 valid border point"):
        preprocess_organized(xyz, None, None, PreprocessOptions())


def test_too_few_points_after_removal():
    xyz, _ = _tilted_plane_with_box()
    flat = xyz.copy()
    flat[..., 2] = 0.3 + 0.05 * flat[..., 0] - 0.03 * flat[..., 1]  # plane only
    with pytest.raises(ValueError, match=r"0 valid points after background removal \(need >= 100\)"):
        preprocess_organized(flat, None, None, PreprocessOptions())


def test_largest_cluster_keeps_the_big_blob():
    rng = np.random.default_rng(0)
    big = rng.normal(0, 0.002, (400, 3))
    small = rng.normal(0.1, 0.002, (50, 3))
    keep = largest_cluster(np.concatenate([big, small]), eps=0.006, min_points=10)
    assert keep[:400].all() and not keep[400:].any()


def test_unorganized_nan_is_an_error():
    points = np.random.default_rng(0).random((200, 3))
    points[7, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite coordinates in 1 point"):
        preprocess_unorganized(points, np.zeros(200), PreprocessOptions())


def test_options_reject_unknown_keys_and_bad_types():
    with pytest.raises(ConfigError, match="unknown key.*plane_distanse"):
        PreprocessOptions.from_dict({"plane_distanse": 0.01})
    with pytest.raises(ConfigError, match="'flip' must be true or false"):
        PreprocessOptions.from_dict({"flip": "no"})
    with pytest.raises(ConfigError, match="'background' must be one of plane, belt-box, none, got 'ransac'"):
        PreprocessOptions.from_dict({"background": "ransac"})
    with pytest.raises(ConfigError, match="'square' must be one of pad, stretch"):
        PreprocessOptions.from_dict({"square": "crop"})
    assert options_for_format("real3d").background == "none"
    assert options_for_format("eyecandies").background == "belt-box"
    assert options_for_format("mvtec3d", {"plane_distance": 0.01}).plane_distance == 0.01


# --- degenerate plane fits -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["one point", "a line"])
def test_degenerate_border_is_a_value_error_saying_so(kind):
    """Open3D finds no inliers for these (an IndexError escaped before); the reason is a ValueError."""
    t = np.linspace(0, 1, 400)[:, None]
    points = np.tile([[0.0, 0.37, -1.25]], (400, 1)) if kind == "one point" else t * np.array([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="cannot fit the background plane: the 400 border points span no plane"):
        fit_plane(points, 0.005, 100, 0)


# --- a converter's constant background -------------------------------------------------------------------

def test_constant_background_is_the_repeated_point_at_x_zero():
    xyz, box = _tilted_plane_with_box(size=100)
    xyz[~box] = (0.0, 0.2, -0.4)                  # the conversion's (0, a, b)
    xyz[0, :5] = (0.0, 0.3, 0.1)                  # a few x = 0 points elsewhere: real ones
    expected = ~box
    expected[0, :5] = False
    assert np.array_equal(constant_background(xyz), expected)
    assert not constant_background(_tilted_plane_with_box(size=100)[0]).any()
    zeros = np.zeros((50, 50, 3), np.float32)
    assert not constant_background(zeros).any()  # all-zero pixels are the ordinary missing convention


def test_converted_background_reads_as_missing_in_preprocessing():
    xyz, box = _tilted_plane_with_box(size=336)
    xyz[~box] = (0.0, 0.2, -0.4)
    result = preprocess_organized(xyz, None, None, PreprocessOptions(background="none"))
    assert np.array_equal(np.sort(result.grid_index), np.flatnonzero(box))


# --- the belt box --------------------------------------------------------------------------------------

def _belt_scene(size=200, tilt=0.35, distance=4.0):
    """Camera-frame grid of a belt (plane Z_w = 0, along Y_w) with walls beyond |X_w| = 1.1 and a 0.5-unit
    box standing on it, seen by a camera tilted by `tilt` about X (Blender units). Returns (xyz, box mask)."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    focal = 0.5 * size / (1.3 / distance)
    rays = np.stack([(u - size / 2) / focal, (v - size / 2) / focal, np.ones_like(u)], -1)
    c, s = np.cos(tilt), np.sin(tilt)
    rotation = np.array([[1, 0, 0], [0, -c, s], [0, -s, -c]])
    centre = np.array([0, -distance * s, distance * c])
    world_dir = rays @ rotation.T
    depth = -centre[2] / world_dir[..., 2]                      # the belt plane
    top_depth = (0.3 - centre[2]) / world_dir[..., 2]          # the box top, 0.3 units above the belt
    top_hit = centre + top_depth[..., None] * world_dir
    box = (np.abs(top_hit[..., 0]) < 0.25) & (np.abs(top_hit[..., 1]) < 0.25)
    wall_depth = (0.5 - centre[2]) / world_dir[..., 2]         # wall tops, 0.5 units up
    walls = np.abs((centre + wall_depth[..., None] * world_dir)[..., 0]) > 1.1
    depth = np.where(box, top_depth, np.where(walls, wall_depth, depth))
    return (rays * depth[..., None]).astype(np.float32), box


def test_belt_box_keeps_exactly_the_box_and_drops_belt_and_walls():
    xyz, box = _belt_scene()
    measured = np.ones(box.shape, bool)
    keep = belt_box(xyz, measured, height=0.02, length=1.8, half_width=1.0)
    assert np.array_equal(keep, box), f"{int((keep & ~box).sum())} extra, {int((box & ~keep).sum())} missing"


def test_belt_frame_measures_height_above_the_belt():
    xyz, box = _belt_scene()
    origin, along, up = belt_frame(xyz, np.ones(box.shape, bool))
    heights = (xyz[box].astype(np.float64) - origin) @ up
    np.testing.assert_allclose(heights, 0.3, atol=1e-4)       # the box top, 0.3 units above the belt
    assert abs(along @ up) < 1e-12 and abs(np.linalg.norm(up) - 1) < 1e-12


def test_belt_box_in_the_wrong_unit_loses_the_object():
    xyz, box = _belt_scene()
    keep = belt_box(xyz, np.ones(box.shape, bool), height=0.02, length=0.18, half_width=0.1)
    assert keep.sum() < 0.3 * box.sum()


# --- square grids -----------------------------------------------------------------------------------------

def _wide_scan(height=300, width=400):
    """A 400 x 300 grid (like tire's 800 x 600): tilted plane, a round 10 mm plateau, an RGB disk over it."""
    v, u = np.mgrid[0:height, 0:width]
    x, y = (u - width / 2) * 5e-4, (v - height / 2) * 5e-4
    disk = np.hypot(x, y) < 0.03
    z = 0.3 + 0.02 * x - 0.010 * disk
    rgb = np.where(disk[..., None], 200, 40).astype(np.uint8) * np.ones(3, np.uint8)
    return np.stack([x, y, z], -1).astype(np.float32), rgb, disk


def _disk_aspect(rgb):
    rows, cols = np.nonzero(rgb[..., 0] > 120)
    return (cols.max() - cols.min() + 1) / (rows.max() - rows.min() + 1)


def test_non_square_grid_is_padded_so_the_image_keeps_its_aspect():
    xyz, rgb, disk = _wide_scan()
    padded = preprocess_organized(xyz, rgb, None, PreprocessOptions())
    stretched = preprocess_organized(xyz, rgb, None, PreprocessOptions(square="stretch"))
    assert abs(_disk_aspect(padded.rgb) - 1) < 0.05
    assert abs(_disk_aspect(stretched.rgb) - 0.75) < 0.05      # 400 columns squeezed to the 300 rows' scale
    # geometry unchanged: every point is a grid point of the disk, the same distances either way
    source = {tuple(p) for p in xyz[disk] * np.array([1, -1, -1], np.float32)}
    for result in (padded, stretched):
        assert all(tuple(p) in source for p in result.points)
    # padding rows are missing pixels: none of the 336 x 336 grid's top 42 rows hold a point
    assert (padded.grid_index // 336).min() >= 42 and (padded.grid_index // 336).max() < 336 - 42


def test_pad_to_square_centres_the_data():
    np.testing.assert_array_equal(pad_to_square(np.array([[1, 2, 3]])), [[0, 0, 0], [1, 2, 3], [0, 0, 0]])
    a = np.arange(1, 7).reshape(2, 3)  # an odd difference: the extra row goes at the end
    np.testing.assert_array_equal(pad_to_square(a), [[1, 2, 3], [4, 5, 6], [0, 0, 0]])
    assert pad_to_square(np.ones((3, 3))).shape == (3, 3)
    assert pad_to_square(np.ones((5, 2, 3))).shape == (5, 5, 3)


# --- the pose --------------------------------------------------------------------------------------------

def test_rigid_transform_applies_rotation_then_translation_and_refuses_others():
    pose = np.eye(4)
    pose[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    pose[:3, 3] = [1, 2, 3]
    np.testing.assert_allclose(rigid_transform(np.array([[1.0, 0, 0]]), pose), [[1, 3, 3]])
    scaled = pose.copy()
    scaled[:3, :3] *= 2
    with pytest.raises(ValueError, match="not a rigid transform"):
        rigid_transform(np.zeros((1, 3)), scaled)
