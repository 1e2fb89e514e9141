"""The point maps `score_store` hands to the report, rebuilt from its own per-view maps by plain loops.

`score_store(..., keep_view_maps=True)` returns the anomaly map of every view (float16) next to the
point scores. From those maps and the store's pixel, visible, proxy, grid and k-NN arrays this test
redoes design §5 and §7 by hand: each point's mean over the views that see it (a point seen nowhere takes
its proxy's value), then the smoothing the sample's kind asks for: the k-NN graph with the stored
weights for an unorganized cloud, a normalised Gaussian (sigma 4 px, radius 16, missing cells left
out) on the organized grid, and for RGB the plain Gaussian of the RGB map read at each point's cell
and the smoothed mean of the two maps (multimodal).
"""

from __future__ import annotations

import numpy as np
import pytest

from pointad.eval.runs import BackboneCache, load_run
from pointad.eval.scoring import score_store
from pointad.shared.store import open_store

MVTEC, REAL3D = "synthetic-mvtec3d", "synthetic-real3d"
SIGMA, RADIUS = 4.0, 16  # scipy's gaussian_filter truncates at 4 sigma: radius int(4 * 4 + 0.5)
# The kept view maps are float16: values in [0, 1) are rounded by at most 2^-12 = 2.4e-4, and means and
# smoothing (convex combinations) keep that bound; measured worst case 1.4e-4.
TOLERANCE = 3e-4


def _back_project_by_loop(view_maps, sample):
    """(n,) per-point mean of the view maps over the views that see the point; unseen points: their proxy's."""
    n = sample.n_points
    total, count = np.zeros(n), np.zeros(n)
    for view, values in enumerate(np.asarray(view_maps, np.float64)):
        for j in np.flatnonzero(sample.visible[view, :n]):
            column, row = sample.pixel[view, j]
            total[j] += values[row, column]
            count[j] += 1
    seen = count > 0
    raw = np.where(seen, total / np.maximum(count, 1), 0.0)
    return np.where(seen, raw, raw[sample.proxy[:n]])


def _graph_smooth_by_loop(scores, knn, weight):
    out = np.array(scores, np.float64)
    for j in range(len(scores)):
        pairs = [(int(m), float(w)) for m, w in zip(knn[j], weight[j]) if m >= 0]
        norm = sum(w for _, w in pairs)
        if norm > 0:
            out[j] = sum(w * scores[m] for m, w in pairs) / norm
    return out


def _gauss_1d(grid, axis):
    """Unnormalised Gaussian along one axis, zero beyond the border: sum over offsets of w(d) * shifted grid."""
    out = np.zeros_like(grid)
    size = grid.shape[axis]
    for d in range(-RADIUS, RADIUS + 1):
        weight = np.exp(-d * d / (2 * SIGMA * SIGMA))
        target = [slice(None)] * 2
        source = [slice(None)] * 2
        target[axis] = slice(max(0, -d), min(size, size - d))
        source[axis] = slice(max(0, d), min(size, size + d))
        out[tuple(target)] += weight * grid[tuple(source)]
    return out


def _gauss(grid):
    return _gauss_1d(_gauss_1d(np.asarray(grid, np.float64), 0), 1)


def _grid_smooth(scores, cells, grid_hw):
    """Normalised Gaussian of point scores on their cells: gauss(values * mask) / gauss(mask), read back."""
    values, mask = np.zeros(grid_hw), np.zeros(grid_hw)
    values.ravel()[cells] = scores
    mask.ravel()[cells] = 1.0
    return _gauss(values).ravel()[cells] / _gauss(mask).ravel()[cells]


@pytest.fixture(scope="module")
def scored(eval_store, numbers_run):
    """(store sample, SampleScores with view maps) of a good and an anomalous row of each dataset."""
    store = open_store(eval_store)
    rows = []
    for dataset in (REAL3D, MVTEC):
        cookie = [int(r) for r in store.indices(dataset=dataset, class_name="cookie", split="test")]
        rows += [next(r for r in cookie if store.identity(r)["label"] == label) for label in (0, 1)]
    run = load_run(numbers_run, BackboneCache(None, "cpu"))
    results = score_store(eval_store, rows, run.backbone, run.text, batch_size=4, keep_view_maps=True)
    return [(store.sample(r), s) for r, s in zip(rows, results)]


def _assert_close(code, loop, what):
    difference = np.abs(np.asarray(code, np.float64) - loop)
    worst = int(np.argmax(difference))
    assert difference[worst] <= TOLERANCE, f"{what}: largest difference {difference[worst]:.3g} at point {worst}"


def test_unorganized_point_maps_are_the_graph_smoothed_back_projection(scored):
    for sample, result in scored:
        if sample.dataset != REAL3D:
            continue
        n = sample.n_points
        raw = _back_project_by_loop(result.view_maps, sample)
        expected = _graph_smooth_by_loop(raw, sample.knn[:n], sample.knn_weight[:n].astype(np.float64))
        _assert_close(result.point_scores, expected, sample.sample_id)
        assert np.abs(raw - expected).max() > 100 * TOLERANCE  # the smoothing is visible at this tolerance


def test_organized_point_rgb_and_multimodal_maps_follow_the_grid_smoothing(scored):
    checked = 0
    for sample, result in scored:
        if sample.dataset != MVTEC:
            continue
        n, grid_hw = sample.n_points, tuple(int(x) for x in sample.grid_hw)
        cells = sample.grid_index[:n]
        raw = _back_project_by_loop(result.view_maps, sample)
        point = _grid_smooth(raw, cells, grid_hw)
        _assert_close(result.point_scores, point, f"{sample.sample_id} point")
        assert np.abs(raw - point).max() > 100 * TOLERANCE
        rgb = (_gauss(result.rgb_view_map) / _gauss(np.ones(grid_hw))).ravel()[cells]
        _assert_close(result.rgb_point_scores, rgb, f"{sample.sample_id} rgb")
        _assert_close(result.multimodal_point_scores, _grid_smooth((point + rgb) / 2, cells, grid_hw),
                      f"{sample.sample_id} multimodal")
        checked += 1
    assert checked == 2
