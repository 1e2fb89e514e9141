"""Scoring math of design §7 (`eval.score_maps`) against loop twins and hand-computed values, the scoring tail
`score_row` included (the store-driven part: test_report.py)."""

from __future__ import annotations

import numpy as np
import pytest

from pointad.eval.score_maps import (
    block_score,
    compact_knn,
    compat_fused_map,
    compat_grid_map,
    fused_point_map,
    fused_sample_score,
    is_organized,
    organized_weight,
    rgb_point_map,
    sample_score,
    score_row,
    smooth_graph,
    smooth_grid,
    smooth_organized,
)

# --- loop twins (slow, plainly correct, test-only) -----------------------------------------------------

def _smooth_organized_by_loop(scores, grid_index, grid_hw, sigma):
    """For each point: Gaussian-weighted mean over the points in its (2r+1)^2 window, r = int(4 sigma + 0.5)
    (scipy's truncation); missing cells simply hold no point. Points without a cell keep their score."""
    radius = int(4 * sigma + 0.5)
    width = grid_hw[1]
    out = np.array(scores, np.float64)
    for j, cell in enumerate(grid_index):
        if cell < 0:
            continue
        row, col = divmod(int(cell), width)
        total = norm = 0.0
        for i, other in enumerate(grid_index):
            if other < 0:
                continue
            r, c = divmod(int(other), width)
            if abs(r - row) <= radius and abs(c - col) <= radius:
                weight = np.exp(-((r - row) ** 2 + (c - col) ** 2) / (2 * sigma ** 2))
                total += weight * scores[i]
                norm += weight
        out[j] = total / norm
    return out


def _smooth_graph_by_loop(scores, knn, weight):
    out = np.array(scores, np.float64)
    for j in range(len(scores)):
        pairs = [(int(n), float(w)) for n, w in zip(knn[j], weight[j]) if n >= 0]
        norm = sum(w for _, w in pairs)
        if norm > 0:
            out[j] = sum(w * scores[n] for n, w in pairs) / norm
    return out


def _gaussian_reflect_by_loop(grid, sigma):
    """Plain 2-D Gaussian, window radius int(4 sigma + 0.5), border by mirroring (d c b a | a b c d), one
    weighted sum per cell: the released code's scipy `gaussian_filter` written out."""
    radius = int(4 * sigma + 0.5)
    padded = np.pad(np.asarray(grid, np.float64), radius, mode="symmetric")
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    out = np.zeros(np.shape(grid))
    for row in range(out.shape[0]):
        for col in range(out.shape[1]):
            out[row, col] = (padded[row:row + 2 * radius + 1, col:col + 2 * radius + 1] * kernel).sum()
    return out


def _random_organized(seed, height=23, width=31, fill=0.6, padding=5):
    """Scores of the points of a grid with missing cells, in shuffled order, plus padding points (-1)."""
    rng = np.random.default_rng(seed)
    cells = np.flatnonzero(rng.random(height * width) < fill)
    grid_index = np.concatenate([rng.permutation(cells), np.full(padding, -1)]).astype(np.int32)
    return rng.random(grid_index.size), grid_index, (height, width)


def _assert_close(fast, slow, tolerance=1e-9):
    difference = np.abs(fast - slow)
    worst = int(np.argmax(difference))
    assert difference[worst] < tolerance, f"largest difference {difference[worst]:.3g} at point {worst}"


# --- organized smoothing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sigma", [4.0, 1.5])
def test_organized_smoothing_matches_loop_with_missing_cells(seed, sigma):
    scores, grid_index, grid_hw = _random_organized(seed)
    fast = smooth_organized(scores, grid_index, grid_hw, sigma)
    _assert_close(fast, _smooth_organized_by_loop(scores, grid_index, grid_hw, sigma))


def test_missing_cells_neither_add_zeros_nor_count():
    # a constant field with holes stays constant: a zero-filled convolution would pull it down near holes
    _, grid_index, grid_hw = _random_organized(3, fill=0.3)
    scores = np.full(grid_index.size, 0.7)
    smoothed = smooth_organized(scores, grid_index, grid_hw)
    _assert_close(smoothed, scores, 1e-12)


def test_isolated_point_keeps_its_score_and_padding_is_untouched():
    grid_index = np.array([0, 40 * 40 - 1, -1], np.int32)  # opposite corners: 39 px apart, beyond the window
    smoothed = smooth_organized(np.array([0.2, 0.9, 0.5]), grid_index, (40, 40))
    _assert_close(smoothed, np.array([0.2, 0.9, 0.5]), 1e-12)


def test_two_neighbours_average_with_gaussian_weights():
    # cells (0, 0) and (0, 1): each point's window holds both, weights 1 and exp(-1 / 32)
    smoothed = smooth_organized(np.array([0.0, 1.0]), np.array([0, 1]), (5, 5))
    w = np.exp(-1 / 32)
    _assert_close(smoothed, np.array([w / (1 + w), 1 / (1 + w)]), 1e-12)


# --- graph smoothing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_graph_smoothing_matches_loop(seed):
    rng = np.random.default_rng(seed)
    points, k = 60, 6
    knn = rng.integers(0, points, (points, k)).astype(np.int32)
    knn[rng.random((points, k)) < 0.2] = -1
    knn[-3:] = -1                                   # padding rows: no neighbours
    weight = rng.random((points, k)).astype(np.float16)
    weight = (weight / weight.sum(axis=1, keepdims=True)).astype(np.float16)
    scores = rng.random(points)
    _assert_close(smooth_graph(scores, knn, weight), _smooth_graph_by_loop(scores, knn, weight))
    assert np.array_equal(smooth_graph(scores, knn, weight)[-3:], scores[-3:])


def test_graph_smoothing_by_hand():
    knn = np.array([[0, 1], [1, 0], [2, -1]])
    weight = np.array([[0.75, 0.25], [0.5, 0.5], [1.0, 0.0]])
    _assert_close(smooth_graph(np.array([1.0, 3.0, 5.0]), knn, weight), np.array([1.5, 2.0, 5.0]), 1e-12)


def test_compact_knn_renumbers_valid_points():
    valid = np.array([True, False, True, True])
    knn = np.array([[0, 1], [1, 2], [3, 1], [-1, 0]])
    assert compact_knn(knn, valid).tolist() == [[0, -1], [2, -1], [-1, 0]]


# --- sample scores and fusion ---------------------------------------------------------------------------------

def test_sample_score_by_hand():
    assert sample_score(np.array([0.2, 0.4, 0.6]), np.array([0.1, 0.9, 0.3])) == pytest.approx(0.65)


def test_fused_score_by_hand():
    # 1/2 (1/2 (0.4 + 0.6) + 0.8)
    assert fused_sample_score(0.6, 0.4, np.array([0.1, 0.8])) == pytest.approx(0.65)


def test_fused_map_of_two_constant_maps_is_their_mean():
    _, grid_index, grid_hw = _random_organized(4)
    fused = fused_point_map(np.full(grid_index.size, 0.2), np.full(grid_index.size, 0.6), grid_index, grid_hw)
    _assert_close(fused[grid_index >= 0], np.full(int((grid_index >= 0).sum()), 0.4), 1e-12)


def test_fused_map_is_the_smoothed_mean_of_the_maps():
    scores, grid_index, grid_hw = _random_organized(5)
    other = np.random.default_rng(6).random(scores.size)
    expected = _smooth_organized_by_loop((scores + other) / 2, grid_index, grid_hw, 4.0)
    _assert_close(fused_point_map(scores, other, grid_index, grid_hw), expected)


def test_a_shared_weight_gives_the_same_maps_to_the_bit():
    scores, grid_index, grid_hw = _random_organized(7)
    other = np.random.default_rng(8).random(scores.size)
    weight = organized_weight(grid_index, grid_hw, 2.5)
    assert np.array_equal(smooth_organized(scores, grid_index, grid_hw, 2.5, weight),
                          smooth_organized(scores, grid_index, grid_hw, 2.5))
    assert np.array_equal(fused_point_map(scores, other, grid_index, grid_hw, 2.5, weight),
                          fused_point_map(scores, other, grid_index, grid_hw, 2.5))
    # another grid's weight is not the same: the maps would move if a row took its neighbour's
    _, elsewhere, _ = _random_organized(9, height=grid_hw[0], width=grid_hw[1])
    assert not np.array_equal(organized_weight(elsewhere, grid_hw, 2.5), weight)


def test_rgb_point_map_with_the_cached_full_grid_weight_equals_the_normalised_convolution():
    rgb_map = np.random.default_rng(3).random((12, 10))
    grid_index = np.arange(120)
    expected = smooth_grid(rgb_map, np.ones_like(rgb_map), 1.5).ravel()
    for _ in range(2):  # the second call reads the cache
        assert np.array_equal(rgb_point_map(rgb_map, grid_index, sigma=1.5), expected)


def test_rgb_point_map_reads_the_smoothed_grid_at_each_point():
    rgb_map = np.zeros((9, 9))
    rgb_map[4, 4] = 1.0
    values = rgb_point_map(rgb_map, np.array([4 * 9 + 4, 0, -1]), sigma=1.0)
    assert values[0] > values[1] > 0 and values[2] == 0
    # every cell holds a value, so the centre is the plain (border-free) Gaussian weight of itself
    kernel = np.exp(-np.arange(-4, 5) ** 2 / 2)
    assert values[0] == pytest.approx(1 / kernel.sum() ** 2)


# --- the released code's scoring (pointad-compat) -----------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_compat_grid_map_is_the_plain_gaussian_of_the_zero_filled_grid(seed):
    scores, grid_index, grid_hw = _random_organized(seed, height=11, width=13)
    grid = np.zeros(grid_hw)
    on_grid = grid_index >= 0
    grid.flat[grid_index[on_grid]] = scores[on_grid]  # missing cells stay 0; padding points have no cell
    expected = _gaussian_reflect_by_loop(grid, 1.5)
    _assert_close(compat_grid_map(scores, grid_index, grid_hw, sigma=1.5).ravel(), expected.ravel())


def test_compat_holes_pull_scores_down_where_normalised_smoothing_does_not():
    # one point alone in a large grid: the released code dilutes it with the zeros around it
    grid_index = np.array([20 * 41 + 20])
    compat = compat_grid_map(np.array([1.0]), grid_index, (41, 41), sigma=1.0)
    kernel = np.exp(-np.arange(-4, 5) ** 2 / 2)
    assert compat[20, 20] == pytest.approx(1 / kernel.sum() ** 2)
    assert compat[20, 21] > 0  # a missing cell gets a score
    assert smooth_organized(np.array([1.0]), grid_index, (41, 41), sigma=1.0)[0] == pytest.approx(1.0)


def test_compat_fused_map_of_two_constant_grids_is_their_mean():
    fused = compat_fused_map(np.full((7, 9), 0.2), np.full((7, 9), 0.6))
    assert np.allclose(fused, 0.4, atol=1e-12)


def test_compat_fused_map_smooths_the_mean_again():
    rng = np.random.default_rng(3)
    point, rgb = rng.random((10, 12)), rng.random((10, 12))
    expected = _gaussian_reflect_by_loop((point + rgb) / 2, 1.0)
    _assert_close(compat_fused_map(point, rgb, sigma=1.0).ravel(), expected.ravel())


# --- the scoring tail (`score_row`), shared by PointAD and mutual scoring ---------------------------------------

def _organized_row(seed, height=9, width=11, padding=4):
    """A store row on a (height, width) grid with missing cells and `padding` slots (valid False) at the end."""
    rng = np.random.default_rng(seed)
    cells = rng.permutation(np.flatnonzero(rng.random(height * width) < 0.7))
    n, slots = cells.size, cells.size + padding
    valid = np.arange(slots) < n
    knn = np.where(valid[:, None], rng.integers(0, n, (slots, 3)), -1)
    row = dict(valid=valid, label=(rng.random(slots) < 0.3).astype(np.uint8) * valid,
               grid_index=np.concatenate([cells, np.full(padding, -1)]).astype(np.int32),
               grid_hw=np.array([height, width]), knn=knn.astype(np.int32),
               knn_weight=np.where(knn >= 0, 1 / 3, 0).astype(np.float16))
    return row, rng.random(slots).astype(np.float32), rng.random((height, width)).astype(np.float32)


def _expected_maps(row, raw, rgb_map, sigma):
    """Point, RGB and multimodal point maps and the released code's three grids, by the loop twins."""
    valid, (height, width) = row["valid"], row["grid_hw"]
    cells = row["grid_index"][valid]
    point = _smooth_organized_by_loop(raw[valid].astype(np.float64), cells, (height, width), sigma)
    every_cell = _smooth_organized_by_loop(rgb_map.ravel().astype(np.float64), np.arange(height * width),
                                           (height, width), sigma)
    rgb = every_cell[cells]
    fused = _smooth_organized_by_loop((point + rgb) / 2, cells, (height, width), sigma)
    zero_filled = np.zeros(height * width)
    zero_filled[cells] = raw[valid]
    point_grid = _gaussian_reflect_by_loop(zero_filled.reshape(height, width), sigma)
    rgb_grid = _gaussian_reflect_by_loop(rgb_map, sigma)
    return point, rgb, fused, (point_grid, rgb_grid, _gaussian_reflect_by_loop((point_grid + rgb_grid) / 2, sigma))


def test_score_row_of_an_organized_row_with_rgb_follows_design_7_1():
    row, raw, rgb_map = _organized_row(0)
    view_probs, rgb_probs = np.array([0.2, 0.5, 0.8], np.float32), np.array([0.3], np.float32)
    view_maps = np.ones((3, 4, 4), np.float16)
    got = score_row(raw, row, {"row": 7}, view_probs=view_probs, rgb_map=rgb_map, rgb_probs=rgb_probs, sigma=1.0,
                    compat=True, view_maps=view_maps)
    point, rgb, fused, (point_grid, rgb_grid, fused_grid) = _expected_maps(row, raw, rgb_map, 1.0)
    _assert_close(got.point_scores, point, 1e-6)
    _assert_close(got.rgb_point_scores, rgb, 1e-6)
    _assert_close(got.multimodal_point_scores, fused, 1e-6)
    point_score = 0.5 * (np.mean(view_probs) + point.max())
    rgb_score = 0.5 * (0.3 + rgb.max())
    assert got.score == pytest.approx(point_score, rel=1e-6) and got.rgb_score == pytest.approx(rgb_score, rel=1e-6)
    assert got.multimodal_score == pytest.approx(0.5 * (0.5 * (point_score + rgb_score) + fused.max()), rel=1e-6)
    for block, grid, score in (("point", point_grid, 0.5 * (np.mean(view_probs) + point_grid.max())),
                               ("rgb", rgb_grid, 0.5 * (0.3 + rgb_grid.max()))):
        _assert_close(got.compat[block][0].ravel(), grid.ravel(), 1e-6)
        assert got.compat[block][1] == pytest.approx(score, rel=1e-6), block
    _assert_close(got.compat["multimodal"][0].ravel(), fused_grid.ravel(), 1e-6)
    n = int(row["valid"].sum())
    assert got.organized and got.has_rgb and got.identity == {"row": 7} and got.view_maps is view_maps
    assert got.grid_hw == (9, 11) and got.grid_index.dtype == np.int32 and got.grid_index.tolist() == \
        row["grid_index"][:n].tolist()
    assert got.point_labels.tolist() == row["label"][:n].tolist()
    assert np.array_equal(got.knn, compact_knn(row["knn"], row["valid"]))
    assert got.point_scores.dtype == got.rgb_point_scores.dtype == np.float32


def test_score_row_without_probabilities_takes_the_maxima():
    """Mutual scoring: no global anomaly probabilities, so every sample score is its map's maximum."""
    row, raw, rgb_map = _organized_row(1)
    got = score_row(raw, row, {}, rgb_map=rgb_map, sigma=1.0, compat=True)
    point, rgb, fused, (point_grid, rgb_grid, fused_grid) = _expected_maps(row, raw, rgb_map, 1.0)
    assert got.score == pytest.approx(point.max(), rel=1e-6) and got.rgb_score == pytest.approx(rgb.max(), rel=1e-6)
    assert got.multimodal_score == pytest.approx(0.5 * (0.5 * (point.max() + rgb.max()) + fused.max()), rel=1e-6)
    assert got.compat["point"][1] == pytest.approx(point_grid.max(), rel=1e-6)
    assert got.compat["rgb"][1] == pytest.approx(rgb_grid.max(), rel=1e-6)
    assert got.compat["multimodal"][1] == pytest.approx(
        0.5 * (0.5 * (point_grid.max() + rgb_grid.max()) + fused_grid.max()), rel=1e-6)


def test_score_row_without_rgb_has_the_point_block_only():
    row, raw, _ = _organized_row(2)
    got = score_row(raw, row, {}, view_probs=np.array([0.4], np.float32), sigma=1.0, compat=True)
    assert not got.has_rgb and got.rgb_point_scores is None and got.multimodal_score is None
    assert got.rgb_view_map is None and got.view_maps is None
    assert set(got.compat) == {"point"}


def test_score_row_of_an_unorganized_row_smooths_on_the_graph():
    row, raw, rgb_map = _organized_row(3)
    row = dict(row, grid_hw=np.array([0, 0]), grid_index=np.full(row["valid"].size, -1, np.int32))
    got = score_row(raw, row, {}, view_probs=np.array([0.1, 0.3], np.float32), rgb_map=rgb_map,
                    rgb_probs=np.array([0.9], np.float32), compat=True)
    expected = _smooth_graph_by_loop(raw.astype(np.float64), row["knn"], row["knn_weight"].astype(np.float64))
    _assert_close(got.point_scores, expected[row["valid"]], 1e-6)
    assert got.score == pytest.approx(0.5 * (0.2 + expected[row["valid"]].max()), rel=1e-6)
    # an RGB map on a row without a grid is ignored, and so is compat (the released code has no grid there)
    assert not got.organized and not got.has_rgb and got.compat is None
    assert np.array_equal(got.knn, compact_knn(row["knn"], row["valid"]))


def test_block_score_with_and_without_probabilities():
    assert block_score(np.array([0.2, 0.4]), np.array([0.1, 0.9])) == pytest.approx(0.5 * (0.3 + 0.9))
    assert block_score(None, np.array([0.1, 0.9, 0.4])) == 0.9


def test_is_organized_needs_a_grid_and_a_cell_for_every_point():
    assert is_organized(np.array([0, 5]), (2, 3))
    assert not is_organized(np.array([0, -1]), (2, 3))
    assert not is_organized(np.array([-1, -1]), (0, 0))
