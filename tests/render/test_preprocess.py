"""Preprocessing math (SPEC 2) against hand-made scenes and plainly-correct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from render.preprocess import (PreprocessOptions, border_mask, check_finite_grid, farthest_point_indices, fit_plane,
                               flip_x180, largest_cluster, options_for_format, preprocess_organized,
                               preprocess_unorganized, resize_nearest)
from shared.errors import ConfigError


def _fps_by_loop(points, count):
    """Farthest-point sampling, the textbook loop: start at 0, repeatedly take the farthest from the chosen set."""
    chosen = [0]
    distance = np.linalg.norm(points - points[0], axis=1)
    for _ in range(count - 1):
        nxt = int(np.argmax(distance))
        chosen.append(nxt)
        distance = np.minimum(distance, np.linalg.norm(points - points[nxt], axis=1))
    return np.sort(chosen)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_farthest_point_sampling_matches_the_loop(seed):
    points = np.random.default_rng(seed).random((500, 3))
    assert np.array_equal(farthest_point_indices(points, 60), _fps_by_loop(points, 60))


def test_farthest_point_sampling_keeps_everything_under_budget():
    points = np.random.default_rng(0).random((50, 3))
    assert np.array_equal(farthest_point_indices(points, 80), np.arange(50))


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
    with pytest.raises(ConfigError, match="'remove_plane' must be true or false"):
        PreprocessOptions.from_dict({"remove_plane": "no"})
    assert options_for_format("real3d").remove_plane is False
    assert options_for_format("mvtec3d", {"plane_distance": 0.01}).plane_distance == 0.01
