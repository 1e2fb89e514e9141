"""Per-view visibility (design §3.6) against its naive twins (z-buffer loops), hand-made scenes and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from pointad.render.camera import fit_camera, project
from pointad.render.view_plan import make_view_plan
from pointad.render.visibility import (
    nearest_per_pixel,
    nearest_per_pixel_naive,
    surface_visible,
    surface_visible_naive,
)


def _assert_same(ours, expected):
    wrong = np.argwhere(ours != expected)
    assert len(wrong) == 0, (f"{len(wrong)} of {ours.size} (view, point) entries differ, first "
                             f"{[tuple(w) for w in wrong[:5]]}: ours {ours[tuple(wrong[0])]}")


def _random_scene(seed, views=3, count=400, size=8):
    """Many points per pixel, depths on a coarse grid so exact ties happen, some padding and outside points."""
    rng = np.random.default_rng(seed)
    pixel = rng.integers(0, size, (views, count, 2)).astype(np.int16)
    depth = (rng.integers(-3, 20, (views, count)) * 0.25).astype(np.float32)
    valid = rng.random(count) > 0.1
    inside = rng.random((views, count)) > 0.1
    return pixel, depth, valid, inside, size


def _one_view(pixels, depths):
    return np.array([pixels], dtype=np.int16), np.array([depths], dtype=np.float32)


# --- hand-made cases (the fast rules and their naive twins alike) --------------------------------------

BOTH = pytest.mark.parametrize("nearest, surface", [(nearest_per_pixel, surface_visible),
                                                     (nearest_per_pixel_naive, surface_visible_naive)],
                               ids=["fast", "naive"])


@BOTH
def test_nearer_of_two_points_in_one_pixel_wins(nearest, surface):
    pixel, depth = _one_view([(2, 1), (2, 1), (0, 0)], [3.0, 2.0, 5.0])
    visible = nearest(pixel, depth, np.ones(3, bool), 4)
    assert visible.tolist() == [[False, True, True]]


@BOTH
def test_equal_depths_the_lower_index_wins(nearest, surface):
    pixel, depth = _one_view([(1, 1), (1, 1), (1, 1)], [2.0, 1.0, 1.0])
    assert nearest(pixel, depth, np.ones(3, bool), 4).tolist() == [[False, True, False]]
    # -0.0 and +0.0 compare equal, so they tie as well
    pixel, depth = _one_view([(1, 1), (1, 1)], [0.0, -0.0])
    assert nearest(pixel, depth, np.ones(2, bool), 4).tolist() == [[True, False]]


@BOTH
def test_u_is_the_column_and_v_the_row(nearest, surface):
    # (u=1, v=0) and (u=0, v=1) are different pixels: both points win their own
    pixel, depth = _one_view([(1, 0), (0, 1)], [1.0, 2.0])
    assert nearest(pixel, depth, np.ones(2, bool), 2).tolist() == [[True, True]]


@BOTH
def test_padding_and_outside_points_are_never_visible_and_do_not_occlude(nearest, surface):
    pixel, depth = _one_view([(0, 0), (0, 0), (0, 0)], [1.0, 2.0, 3.0])
    valid = np.array([False, True, True])
    inside = np.array([[True, False, True]])
    assert nearest(pixel, depth, valid, 2).tolist() == [[False, True, False]]
    assert nearest(pixel, depth, valid, 2, inside=inside).tolist() == [[False, False, True]]
    assert surface(pixel, depth, valid, 2, 5.0, inside=inside).tolist() == [[False, False, True]]


@BOTH
def test_points_compete_only_within_their_own_view(nearest, surface):
    pixel = np.zeros((2, 2, 2), dtype=np.int16)
    depth = np.array([[1.0, 2.0], [2.0, 1.0]], dtype=np.float32)
    assert nearest(pixel, depth, np.ones(2, bool), 1).tolist() == [[True, False], [False, True]]


@BOTH
def test_surface_keeps_points_within_the_tolerance_of_the_nearest(nearest, surface):
    pixel, depth = _one_view([(0, 0)] * 4 + [(1, 1)], [1.0, 1.05, 1.2, 1.0, 9.0])
    visible = surface(pixel, depth, np.ones(5, bool), 2, tolerance=0.1)
    assert visible.tolist() == [[True, True, False, True, True]]


def test_pixels_off_the_image_are_refused_unless_masked_out():
    pixel, depth = _one_view([(0, 0), (4, 0)], [1.0, 1.0])
    with pytest.raises(ValueError, match=r"point 1 in view 0 has pixel \(4, 0\) outside the 4x4 image"):
        nearest_per_pixel(pixel, depth, np.ones(2, bool), 4)
    assert nearest_per_pixel(pixel, depth, np.array([True, False]), 4).tolist() == [[True, False]]
    inside = np.array([[True, False]])
    assert surface_visible(pixel, depth, np.ones(2, bool), 4, 0.0, inside=inside).tolist() == [[True, False]]


def test_mismatched_shapes_and_negative_tolerance_are_refused():
    pixel, depth = _one_view([(0, 0), (1, 0)], [1.0, 1.0])
    with pytest.raises(ValueError, match="shapes disagree"):
        nearest_per_pixel(pixel, depth, np.ones(3, bool), 4)
    with pytest.raises(ValueError, match="inside has shape"):
        nearest_per_pixel(pixel, depth, np.ones(2, bool), 4, inside=np.ones(2, bool))
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        surface_visible(pixel, depth, np.ones(2, bool), 4, -0.1)


def _two_sheets(size=24, side=30, gap=0.5):
    """Two parallel side x side grids of the unit square, at z = 0 (point indices < side^2) and z = gap."""
    g = np.linspace(0.0, 1.0, side)
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    points = np.concatenate([np.c_[xy, np.zeros(len(xy))], np.c_[xy, np.full(len(xy), gap)]])
    # one view from the front (angle 0) and one from behind (angle pi): the paper plan, shifted by pi
    rotations = np.concatenate([make_view_plan("paper", 1).rotations,
                                make_view_plan("paper", 1, angle_shift=np.pi).rotations])
    pixel, depth, inside = project(points, fit_camera(points, size), rotations)
    low = np.arange(len(points)) < side * side
    return pixel, depth, inside, low, size


@pytest.mark.parametrize("rule", ["nearest", "surface"])
def test_two_parallel_sheets_each_hides_the_other_from_its_side(rule):
    pixel, depth, inside, low, size = _two_sheets()
    assert inside.all(), "the fitted camera must see both sheets whole from both sides"
    valid = np.ones(len(low), bool)
    if rule == "nearest":
        visible = nearest_per_pixel(pixel, depth, valid, size, inside=inside)
    else:  # a tolerance well below the gap between the sheets
        visible = surface_visible(pixel, depth, valid, size, tolerance=0.05, inside=inside)
    # camera z = -(z - c) + D in the unrotated view: the sheet at z = 0.5 is the near one from the front
    front, back = visible
    assert front[~low].any() and not front[low].any(), f"front view shows {front[low].sum()} far-sheet points"
    assert back[low].any() and not back[~low].any(), f"back view shows {back[~low].sum()} far-sheet points"
    if rule == "surface":  # every point of a flat sheet facing the camera is within tolerance
        assert front[~low].all() and back[low].all()


# --- fast == naive ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_nearest_matches_naive_on_random_scenes(seed):
    pixel, depth, valid, inside, size = _random_scene(seed)
    _assert_same(nearest_per_pixel(pixel, depth, valid, size, inside=inside),
                 nearest_per_pixel_naive(pixel, depth, valid, size, inside))
    _assert_same(nearest_per_pixel(pixel, depth, valid, size), nearest_per_pixel_naive(pixel, depth, valid, size))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("tolerance", [0.0, 0.3, 2.0])
def test_surface_matches_naive_on_random_scenes(seed, tolerance):
    pixel, depth, valid, inside, size = _random_scene(seed)
    _assert_same(surface_visible(pixel, depth, valid, size, tolerance, inside=inside),
                 surface_visible_naive(pixel, depth, valid, size, tolerance, inside))


def _projected_cloud(seed, count=1500, size=32, views=5):
    """A noisy height field seen through the paper's view plan: what render build feeds these functions."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, (count, 2))
    z = 0.3 * np.exp(-3 * (xy**2).sum(1)) + 0.01 * rng.standard_normal(count)
    points = np.c_[xy, z].astype(np.float32)
    pixel, depth, inside = project(points, fit_camera(points, size), make_view_plan("paper", views).rotations)
    valid = rng.random(count) > 0.05
    return pixel, depth, valid, inside, size


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nearest_and_surface_match_naive_on_projected_clouds(seed):
    pixel, depth, valid, inside, size = _projected_cloud(seed)
    _assert_same(nearest_per_pixel(pixel, depth, valid, size, inside=inside),
                 nearest_per_pixel_naive(pixel, depth, valid, size, inside))
    _assert_same(surface_visible(pixel, depth, valid, size, 0.02, inside=inside),
                 surface_visible_naive(pixel, depth, valid, size, 0.02, inside))


# --- invariants ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_each_hit_pixel_has_exactly_one_visible_point(seed):
    for pixel, depth, valid, inside, size in (_random_scene(seed), _projected_cloud(seed)):
        visible = nearest_per_pixel(pixel, depth, valid, size, inside=inside)
        considered = valid & inside
        for view in range(len(depth)):
            cell = pixel[view, :, 1].astype(int) * size + pixel[view, :, 0]
            hits = np.bincount(cell[considered[view]], minlength=size * size)
            shown = np.bincount(cell[visible[view]], minlength=size * size)
            assert np.array_equal(shown, (hits > 0).astype(int)), (
                f"view {view}: pixels {np.flatnonzero(shown != (hits > 0))[:5]} have "
                f"{shown[shown != (hits > 0)][:5]} visible points")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_is_a_superset_of_nearest_and_equal_at_zero_tolerance_except_ties(seed):
    pixel, depth, valid, inside, size = _random_scene(seed)
    nearest = nearest_per_pixel(pixel, depth, valid, size, inside=inside)
    for tolerance in (0.0, 0.25, 1.0):
        surface = surface_visible(pixel, depth, valid, size, tolerance, inside=inside)
        assert not (nearest & ~surface).any(), f"tolerance {tolerance}: a nearest point is not surface-visible"
    extra = surface_visible(pixel, depth, valid, size, 0.0, inside=inside) & ~nearest
    assert extra.any(), "the random scene is meant to contain exact ties"
    # every extra point ties with its pixel's visible point
    for view, point in np.argwhere(extra):
        same_pixel = (pixel[view] == pixel[view, point]).all(-1) & nearest[view]
        assert depth[view, same_pixel].tolist() == [depth[view, point]]
    # with all depths distinct the two rules agree exactly
    offset = np.random.default_rng(seed).permuted(np.tile(np.arange(depth.shape[1]), (len(depth), 1)), axis=1)
    distinct = depth + (offset * 1e-4).astype(np.float32)  # < 0.04, below the 0.25 depth step
    _assert_same(surface_visible(pixel, distinct, valid, size, 0.0, inside=inside),
                 nearest_per_pixel(pixel, distinct, valid, size, inside=inside))
