"""Metrics of design §7 against their naive twins, hand-computed cases and the documented reference values."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pointad.eval.metrics import (
    aupro_components,
    aupro_graph,
    aupro_organized,
    aupro_organized_naive,
    aupro_pointad_compat,
    aupro_pointad_compat_naive,
    graph_components,
    image_metrics,
    point_auroc,
    pro_curve,
)


def _assert_close(ours, expected, what, tol=1e-6):
    assert abs(ours - expected) <= tol, f"{what}: ours {ours!r}, expected {expected!r}, diff {abs(ours - expected):.3g}"


# --- random maps -------------------------------------------------------------------------------------

def _random_maps(seed, n=5, height=16, width=20, levels=40, missing=0.1):
    """Maps with several blobs (one on the border, one diagonal-only pair), one map without anomaly,
    scores on a coarse grid (ties within and across classes), missing pixels and a wholly missing region."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, height, width), np.uint8)
    rows, cols = np.ogrid[:height, :width]
    for i in range(1, n):  # map 0 stays normal
        for _ in range(rng.integers(1, 4)):
            r, c, rad = rng.integers(0, height), rng.integers(0, width), rng.uniform(1, 3.5)
            masks[i][(rows - r) ** 2 + (cols - c) ** 2 <= rad**2] = 1
    masks[1, 0:3, 0:4] = 1                         # touches the border
    masks[2, -3, -3] = masks[2, -2, -2] = 255      # joined only diagonally (and nonzero != 1 is anomalous)
    masks[3, 5:7, 9:11] = 1                        # will be entirely missing below
    masks[3, 4, 8:12] = masks[3, 7, 8:12] = masks[3, 5:7, 8] = masks[3, 5:7, 11] = 0
    scores = rng.integers(0, levels, masks.shape) / levels + 0.35 * (masks != 0) * rng.random(masks.shape)
    scores = np.round(scores * levels) / levels     # ties again after the shift
    valid = rng.random(masks.shape) > missing
    valid[3, 5:7, 9:11] = False
    return masks, scores, valid


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("use_valid", [True, False])
def test_points_aupro_matches_naive_on_random_maps(seed, use_valid):
    masks, scores, valid = _random_maps(seed)
    valid = valid if use_valid else None
    for max_fpr in (0.3, 0.05, 1.0):
        _assert_close(aupro_organized(masks, scores, valid, max_fpr=max_fpr),
                      aupro_organized_naive(masks, scores, valid, max_fpr), f"seed {seed}, max_fpr {max_fpr}")


@pytest.mark.parametrize("seed", range(3))
def test_points_aupro_matches_naive_with_distinct_float32_scores(seed):
    masks, _, valid = _random_maps(seed, levels=10**6)
    scores = np.random.default_rng(seed + 100).random(masks.shape).astype(np.float32) + 0.2 * (masks != 0)
    _assert_close(aupro_organized(masks, scores, valid), aupro_organized_naive(masks, scores, valid), f"seed {seed}")


def test_invalid_pixels_count_nowhere_and_may_hold_nan():
    masks, scores, valid = _random_maps(7)
    noisy = np.where(valid, scores, np.nan)
    assert aupro_organized(masks, noisy, valid) == aupro_organized(masks, scores, valid)
    # missing normal pixels away from every region turned anomalous form regions with no valid pixel: dropped
    lonely = (ndimage.convolve((masks != 0).astype(int), np.ones((1, 3, 3)), mode="constant") == 0) & ~valid
    flipped = np.where(lonely, 1, masks)
    _assert_close(aupro_organized(flipped, scores, valid), aupro_organized(masks, scores, valid), "flipped")


# --- hand-made cases ---------------------------------------------------------------------------------

# Two maps of 1 x 4. Region A: map 0 pixel 0 (1 pixel), region B: map 1 pixels 1-2 (2 pixels).
# PRO weights: A's pixel 1/2, each of B's pixels 1/4. Normal pixels: 0.95, 0.2, 0.1 | 0.7, 0.5 (5).
# Distinct thresholds, descending, and the curve (FPR, PRO):
#   0.95 -> (1/5, 0)   0.9 (A) -> (1/5, 1/2)   0.7 (a normal and B's first pixel tie) -> (2/5, 3/4)
#   0.5 -> (3/5, 3/4)  0.3 (B) -> (3/5, 1)     0.2 -> (4/5, 1)   0.1 -> (1, 1)
# FPR 0.3 falls between (0.2, 0.5) and (0.4, 0.75): PRO(0.3) = 0.5 + 0.25 * 0.1 / 0.2 = 0.625.
# Area: 0 from (0,0) to (0.2,0), 0 on the vertical, then 0.1 * (0.5 + 0.625) / 2 = 0.05625.
# AU-PRO = 0.05625 / 0.3 = 0.1875.
HAND_MASKS = np.array([[[1, 0, 0, 0]], [[0, 1, 1, 0]]], np.uint8)
HAND_SCORES = np.array([[[0.9, 0.95, 0.2, 0.1]], [[0.7, 0.7, 0.3, 0.5]]])


def test_hand_case_interpolates_at_0_3():
    _assert_close(aupro_organized(HAND_MASKS, HAND_SCORES), 0.1875, "hand case", tol=1e-12)
    _assert_close(aupro_organized_naive(HAND_MASKS, HAND_SCORES), 0.1875, "naive twin on the hand case", tol=1e-12)
    # up to FPR 0.4 the area ends exactly on the point (0.4, 0.75): (0.5 + 0.75) / 2 * 0.2 = 0.125, / 0.4
    _assert_close(aupro_organized(HAND_MASKS, HAND_SCORES, max_fpr=0.4), 0.3125, "hand case at 0.4", tol=1e-12)


def test_hand_case_is_unchanged_by_missing_pixels_and_a_missing_region():
    # map 0 gains two missing normal pixels with top scores; map 1 gains a missing pixel inside B
    # (B keeps 2 valid pixels), a normal pixel, and a missing anomalous pixel forming its own region
    masks = np.array([[[1, 0, 0, 0, 0, 0]], [[0, 1, 1, 1, 0, 1]]], np.uint8)
    scores = np.array([[[0.9, 0.95, 0.2, 0.1, 0.99, 0.98]], [[0.7, 0.7, 0.3, 0.0, 0.5, 0.99]]])
    valid = np.array([[[1, 1, 1, 1, 0, 0]], [[1, 1, 1, 0, 1, 0]]], bool)
    _assert_close(aupro_organized(masks, scores, valid), 0.1875, "hand case with missing pixels", tol=1e-12)


def test_pro_curve_of_the_hand_case_has_its_corners():
    region = np.array([0, -1, -1, -1, -1, 1, 1, -1])
    fpr, pro = pro_curve(region, HAND_SCORES.ravel())
    corners = {(round(f, 12), round(p, 12)) for f, p in zip(fpr, pro)}
    expected = {(0, 0), (0.2, 0), (0.2, 0.5), (0.4, 0.75), (0.6, 0.75), (0.6, 1), (1, 1)}
    assert corners == expected, f"corners {sorted(corners)}"
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)


def test_diagonal_neighbours_form_one_region():
    # (0,0) touches (1,1) only diagonally. 8-connected: one region of 3 pixels, only (0,0) scores above
    # the normals, so PRO = 1/3 from FPR 0 to FPR 1 and AU-PRO = 1/3. With 4-connectivity the regions
    # {(0,0)} and {(1,1),(1,2)} would give PRO = (1 + 0) / 2 = 1/2 instead.
    masks = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]]])
    scores = np.array([[[0.9, 0.5, 0.5], [0.5, 0.0, 0.0], [0.5, 0.5, 0.5]]])
    _assert_close(aupro_organized(masks, scores), 1 / 3, "diagonal pair", tol=1e-12)
    _assert_close(aupro_organized_naive(masks, scores), 1 / 3, "naive twin on the diagonal pair", tol=1e-12)


def test_pointad_compat_regions_are_8_connected_like_skimage_label():
    # skimage.measure.label (the released code) uses full connectivity by default: 8 in 2-D
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[0, 2, 2] = masks[0, 3, 3] = masks[0, 3, 4] = 1  # one region only through a diagonal
    scores = np.random.default_rng(0).random(masks.shape)
    scores[0, 2, 2], scores[0, 3, 3], scores[0, 3, 4] = 0.99, 0.0, 0.0
    ours = aupro_pointad_compat(masks, scores)
    _assert_close(ours, aupro_pointad_compat_naive(masks, scores), "8-connected", tol=1e-12)
    four = aupro_pointad_compat_naive(masks, scores, structure=ndimage.generate_binary_structure(2, 1))
    assert abs(ours - four) > 0.05, f"4-connectivity gives {four}, ours {ours}: the test cannot tell them apart"


def test_perfect_reversed_and_constant_scores_give_the_documented_values():
    masks, _, valid = _random_maps(1)
    anomalous = (masks != 0).astype(float)
    _assert_close(aupro_organized(masks, anomalous, valid), 1.0, "perfect", tol=1e-12)
    _assert_close(aupro_organized(masks, -anomalous, valid), 0.0, "reversed", tol=1e-12)
    for max_fpr in (0.3, 0.1, 1.0):
        _assert_close(aupro_organized(masks, np.full(masks.shape, 0.25), valid, max_fpr=max_fpr), max_fpr / 2,
                      f"constant, max_fpr {max_fpr}", tol=1e-12)


def test_undefined_aupro_is_nan():
    normal_only = np.zeros((2, 4, 4), np.uint8)
    assert np.isnan(aupro_organized(normal_only, np.random.default_rng(0).random((2, 4, 4))))
    assert np.isnan(aupro_organized(np.ones((1, 3, 3)), np.zeros((1, 3, 3))))
    region_missing = np.zeros((1, 4, 4), np.uint8)
    region_missing[0, 1, 1] = 1
    valid = np.ones((1, 4, 4), bool)
    valid[0, 1, 1] = False
    assert np.isnan(aupro_organized(region_missing, np.zeros((1, 4, 4)), valid))


def test_bad_input_is_refused_with_a_reason():
    masks, scores, _ = _random_maps(0)
    with pytest.raises(ValueError, match="must match"):
        aupro_organized(masks, scores[:, :-1])
    with pytest.raises(ValueError, match=r"max_fpr must be in \(0, 1\]"):
        aupro_organized(masks, scores, max_fpr=0.0)
    with pytest.raises(ValueError, match="NaN"):
        aupro_organized(masks, np.where(masks != 0, np.nan, scores))
    with pytest.raises(ValueError, match="NaN"):
        aupro_pointad_compat(masks, np.full(masks.shape, np.nan))
    with pytest.raises(ValueError, match="component_id must be integer"):
        aupro_components(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match=r"knn indices must lie in \[-1, 2\]"):
        graph_components(np.array([1, 1, 0]), np.array([[0, 3], [1, 0], [2, -1]]))


# --- graph AU-PRO ------------------------------------------------------------------------------------

def _grid_knn(height, width):
    """(H*W, 9) the 3x3 neighbourhood of each grid cell, itself first, -1 off the grid."""
    rows, cols = np.divmod(np.arange(height * width), width)
    offsets = [(0, 0)] + [(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]
    knn = np.full((height * width, 9), -1, np.int32)
    for j, (dr, dc) in enumerate(offsets):
        r, c = rows + dr, cols + dc
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        knn[inside, j] = r[inside] * width + c[inside]
    return knn


def test_graph_regions_of_a_hand_made_graph():
    # points 0..7 on a line; each lists its right neighbour only (edges one way); 4 -> 5 missing
    labels = np.array([0, 1, 1, 1, 0, 1, 1, 0])
    knn = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, -1], [5, 6], [6, 7], [7, -1]])
    region = graph_components(labels, knn)
    assert region[[0, 4, 7]].tolist() == [-1, -1, -1]
    assert len({*region[1:4]}) == 1 and len({*region[5:7]}) == 1 and region[1] != region[5], region.tolist()
    # a missing point cuts its region in two
    valid = np.ones(8, bool)
    valid[2] = False
    region = graph_components(labels, knn, valid)
    assert region[2] == -1 and region[1] != region[3], region.tolist()
    # two samples with the same layout keep their regions apart
    both = graph_components(np.stack([labels, labels]), np.stack([knn, knn]))
    assert len(set(both[both >= 0].tolist())) == 4, both.tolist()


def test_graph_aupro_of_two_regions_equals_the_grid_layout():
    labels = np.array([0, 1, 1, 1, 0, 1, 1, 0])
    scores = np.array([0.1, 0.8, 0.3, 0.6, 0.5, 0.5, 0.9, 0.2])
    knn = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, -1], [5, 6], [6, 7], [7, -1]])
    expected = aupro_organized_naive(labels.reshape(1, 1, 8), scores.reshape(1, 1, 8))
    _assert_close(aupro_graph(labels, scores, knn), expected, "line graph")
    _assert_close(aupro_organized(labels.reshape(1, 8), scores.reshape(1, 8)), expected, "line grid")


@pytest.mark.parametrize("seed", range(4))
def test_graph_aupro_on_the_grid_neighbourhood_equals_organized(seed):
    masks, scores, valid = _random_maps(seed)
    n, height, width = masks.shape
    knn = np.broadcast_to(_grid_knn(height, width), (n, height * width, 9))

    def flat(maps):
        return maps.reshape(n, height * width)

    _assert_close(aupro_graph(flat(masks), flat(scores), knn), aupro_organized(masks, scores), f"seed {seed}")
    # missing normal pixels only: regions are the same on the grid and the graph
    normal_missing = valid | (masks != 0)
    _assert_close(aupro_graph(flat(masks), flat(scores), knn, flat(normal_missing)),
                  aupro_organized(masks, scores, normal_missing), f"seed {seed}, missing normal pixels")


# --- pointad-compat ----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_pointad_compat_matches_the_released_definition(seed):
    masks, scores, valid = _random_maps(seed, levels=10**6)
    scores = np.where(valid, scores, 0.0).astype(np.float32)  # missing points: score 0, label 0
    masks = np.where(valid, masks, 0)
    _assert_close(aupro_pointad_compat(masks, scores), aupro_pointad_compat_naive(masks, scores), f"seed {seed}", tol=1e-9)


def test_pointad_compat_leaves_out_an_fpr_of_exactly_max_fpr():
    """Hand-made: 10 normal cells, so FPR takes the values 0.0, 0.1, ... exactly; 3 of them score above the
    thresholds in [0.45, 0.6), where FPR == 0.3 exactly. The released code keeps FPR < 0.3 only."""
    normal = [0.0, 0.0, 0.0, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 0.9]
    defect = [0.5, 0.7, 0.95, 1.0]
    scores = np.array([normal[:7], normal[7:] + defect], dtype=np.float64)[None]   # (1, 2, 7)
    masks = np.array([[0] * 7, [0] * 3 + [1] * 4])[None]
    assert 3 / 10 == 0.3  # the edge FPR is the float max_fpr itself
    ours = aupro_pointad_compat(masks, scores)
    _assert_close(ours, aupro_pointad_compat_naive(masks, scores), "strict FPR < 0.3", tol=1e-12)
    with_edge = aupro_pointad_compat_naive(masks, scores, max_fpr=0.3 + 1e-9)  # what keeping FPR == 0.3 would give
    assert abs(ours - with_edge) > 1e-3, (ours, with_edge)


def test_pointad_compat_differs_from_points_where_it_should():
    masks, scores, _ = _random_maps(2)
    compat, points = aupro_pointad_compat(masks, scores), aupro_organized(masks, scores)
    assert 0 <= compat <= 1 and abs(compat - points) > 1e-3, (compat, points)
    assert np.isnan(aupro_pointad_compat(masks, np.zeros(masks.shape)))  # constant scores


# --- sample and point metrics --------------------------------------------------------------------------

def test_image_metrics_match_hand_values():
    # pairs (positive, negative) ranked right: 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4; wrong: 0.35 < 0.4 -> 3/4
    # AP: ranking 0.8 (+), 0.4 (-), 0.35 (+), 0.1 (-): precision at the positives 1 and 2/3 -> 5/6
    metrics = image_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    _assert_close(metrics["i_auroc"], 0.75, "i_auroc", tol=1e-12)
    _assert_close(metrics["ap"], 5 / 6, "ap", tol=1e-12)


def test_point_auroc_counts_ties_as_half():
    # pairs: 0.5 vs 0.2 right, 0.5 vs 0.5 tie (1/2), 0.9 vs both right -> 3.5 / 4
    _assert_close(point_auroc(np.array([0, 0, 1, 1]), np.array([0.2, 0.5, 0.5, 0.9])), 0.875, "p_auroc", 1e-12)


def test_one_class_gives_nan_without_error():
    metrics = image_metrics(np.zeros(4), np.arange(4.0))
    assert np.isnan(metrics["i_auroc"]) and np.isnan(metrics["ap"])
    assert np.isnan(point_auroc(np.ones(3), np.arange(3.0)))
    with pytest.raises(ValueError, match="must be 1-D of one length"):
        point_auroc(np.zeros(3), np.zeros(4))
