"""Proxy and k-NN graph (design §3.7) against brute-force loops, hand-made clouds and invariants."""

from __future__ import annotations

import numpy as np
import pytest

from pointad.render.graph import knn_graph, nearest, nearest_naive, proxy_indices


def _proxy_by_loop(points, valid, visible_any):
    """Per point: itself if seen, else the seen point at the smallest brute-force distance; -1 for padding."""
    seen = [j for j in range(len(points)) if valid[j] and visible_any[j]]
    proxy = np.full(len(points), -1)
    for j in range(len(points)):
        if valid[j]:
            proxy[j] = j if visible_any[j] else min(seen, key=lambda i: np.linalg.norm(points[i] - points[j]))
    return proxy


def _knn_by_loop(points, valid, k):
    """Per valid point: all valid points sorted by (distance, not-self), the first k, Gaussian weights."""
    members = [j for j in range(len(points)) if valid[j]]
    rows = {}
    for j in members:
        distance = {i: float(np.linalg.norm(points[i] - points[j])) for i in members}
        rows[j] = sorted(members, key=lambda i: (distance[i], i != j))[:k]
        rows[j] = [(i, distance[i]) for i in rows[j]]
    sigma = float(np.median([row[-1][1] for row in rows.values()]))
    if sigma == 0:  # the documented guard: the largest neighbour distance, else 1 (k = 1: self only)
        sigma = max(d for row in rows.values() for _, d in row) or 1.0
    indices = np.full((len(points), k), -1)
    weights = np.zeros((len(points), k))
    for j, row in rows.items():
        gauss = [np.exp(-d * d / (2 * sigma * sigma)) for _, d in row]
        indices[j, : len(row)] = [i for i, _ in row]
        weights[j, : len(row)] = np.array(gauss) / sum(gauss)
    return indices, weights


def _cloud(seed, count=300, padding=0.1):
    """Random points in a box; padding rows hold NaN so any use of them would show."""
    rng = np.random.default_rng(seed)
    points = rng.random((count, 3)).astype(np.float32) * [2.0, 1.0, 0.5]
    valid = rng.random(count) > padding
    points[~valid] = np.nan
    return points, valid, rng


def _assert_weights_close(ours, expected, atol=2e-3):
    diff = np.abs(ours.astype(np.float64) - expected)
    where = np.unravel_index(np.argmax(diff), diff.shape)
    assert diff.max() <= atol, f"largest weight difference {diff.max():.2e} at {where}"


# --- proxy -----------------------------------------------------------------------------------------

def test_proxy_hand_made_line():
    points = np.array([[0.0, 0, 0], [1, 0, 0], [2.2, 0, 0], [3, 0, 0], [9, 9, 9], [2.9, 0, 0]])
    valid = np.array([True, True, True, True, False, True])
    visible_any = np.array([True, False, False, True, True, False])
    # 1 is nearer to 0 (1.0) than to 3 (2.0); 2 is nearer to 3 (0.8) than to 0 (2.2); 4 is padding
    assert proxy_indices(points, valid, visible_any).tolist() == [0, 0, 3, 3, -1, 3]


def test_proxy_ignores_visible_padding():
    points = np.array([[0.0, 0, 0], [1, 0, 0], [5, 0, 0]])
    proxy = proxy_indices(points, np.array([False, True, True]), np.array([True, False, True]))
    assert proxy.tolist() == [-1, 2, 2] and proxy.dtype == np.int32


def test_proxy_refuses_a_cloud_seen_in_no_view():
    points = np.zeros((3, 3))
    with pytest.raises(ValueError, match="no point is visible in any view"):
        proxy_indices(points, np.ones(3, bool), np.zeros(3, bool))
    with pytest.raises(ValueError, match="no point is visible in any view"):  # only padding is "seen"
        proxy_indices(points, np.array([True, True, False]), np.array([False, False, True]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("from_graph", [False, True])
def test_proxy_matches_the_loop_on_random_clouds(seed, from_graph):
    points, valid, rng = _cloud(seed)
    visible_any = rng.random(len(points)) > 0.7
    knn = None
    if from_graph:  # 3 neighbours: some unseen points have a seen one listed, others need the KD-tree
        knn = knn_graph(points, valid, k=3)[0]
        listed = (visible_any[np.maximum(knn, 0)] & (knn >= 0)).any(axis=1)[valid & ~visible_any]
        assert listed.any() and not listed.all()
    proxy = proxy_indices(points, valid, visible_any, knn)
    expected = _proxy_by_loop(points, valid, visible_any)
    assert proxy.dtype == np.int32 and proxy.shape == (len(points),)
    # the same point, or (ties aside) another one exactly as near
    got = np.linalg.norm(points[np.maximum(proxy, 0)] - points, axis=1)
    want = np.linalg.norm(points[np.maximum(expected, 0)] - points, axis=1)
    same = (proxy == expected) | np.isclose(got, want, rtol=0, atol=1e-6)
    assert same[valid].all(), f"points {np.flatnonzero(valid & ~same)[:5]}: ours {proxy[valid & ~same][:5]}"
    assert (proxy[~valid] == -1).all()
    # invariants: seen points are their own proxy, every proxy target is a valid seen point
    seen = valid & visible_any
    assert np.array_equal(proxy[seen], np.flatnonzero(seen))
    assert (valid[proxy[valid]] & visible_any[proxy[valid]]).all()


# --- k-NN graph --------------------------------------------------------------------------------------

def test_knn_hand_made_line():
    points = np.array([[0.0, 0, 0], [7, 7, 7], [1, 0, 0], [3, 0, 0]])
    valid = np.array([True, False, True, True])
    indices, weights = knn_graph(points, valid, k=2)
    assert indices.tolist() == [[0, 2], [-1, -1], [2, 0], [3, 2]]
    # 2nd-neighbour distances 1, 1, 2 -> sigma = 1
    near = np.exp(-0.5) / (1 + np.exp(-0.5))
    far = np.exp(-2.0) / (1 + np.exp(-2.0))
    _assert_weights_close(weights, np.array([[1 - near, near], [0, 0], [1 - near, near], [1 - far, far]]))
    assert indices.dtype == np.int32 and weights.dtype == np.float16


def test_knn_with_fewer_valid_points_than_k_leaves_trailing_columns_empty():
    points = np.array([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [5, 5, 5]])
    indices, weights = knn_graph(points, np.array([True, True, True, False]), k=8)
    assert indices.shape == (4, 8) and weights.shape == (4, 8)
    assert indices[:3, :3].tolist() == [[0, 1, 2], [1, 0, 2], [2, 0, 1]]
    assert (indices[:, 3:] == -1).all() and (weights[:, 3:] == 0).all()
    assert (indices[3] == -1).all() and (weights[3] == 0).all()
    assert np.allclose(weights[:3].astype(np.float64).sum(1), 1, atol=2e-3)


def test_knn_puts_self_first_among_coincident_points():
    # five copies of one point and k = 3: the tree may list any copy first, or not list the point itself
    points = np.array([[1.0, 1, 1]] * 5 + [[2.0, 1, 1]])
    indices, weights = knn_graph(points, np.ones(6, bool), k=3)
    assert np.array_equal(indices[:, 0], np.arange(6))
    assert all(len(set(row)) == 3 for row in indices.tolist())
    assert set(indices[5, 1:]) <= set(range(5))
    # copies are at distance 0 -> median 3rd-neighbour distance 0 -> sigma falls back to the largest (1)
    _assert_weights_close(weights[:5], np.full((5, 3), 1 / 3))


def test_knn_of_identical_points_has_uniform_weights():
    indices, weights = knn_graph(np.zeros((4, 3)), np.ones(4, bool), k=4)
    assert np.array_equal(indices[:, 0], np.arange(4)) and np.isfinite(weights.astype(float)).all()
    _assert_weights_close(weights, np.full((4, 4), 0.25))


def test_knn_of_only_padding_is_empty():
    indices, weights = knn_graph(np.full((3, 3), np.nan), np.zeros(3, bool), k=2)
    assert (indices == -1).all() and (weights == 0).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("workers", [1, -1])  # a build worker's one thread, and every CPU
def test_knn_matches_the_loop_on_random_clouds(seed, k, workers):
    points, valid, _ = _cloud(seed, count=200)
    indices, weights = knn_graph(points, valid, k=k, workers=workers)
    expected, expected_weights = _knn_by_loop(points, valid, k)
    # random float coordinates: no distance ties, so the order is unique
    wrong = np.argwhere((indices != expected).any(1))
    assert len(wrong) == 0, f"rows {wrong[:5].ravel()} differ, first: {indices[wrong[0, 0]]} vs {expected[wrong[0, 0]]}"
    _assert_weights_close(weights, expected_weights)
    # invariants: self first, rows sum to 1, padding rows empty
    assert np.array_equal(indices[valid, 0], np.flatnonzero(valid))
    assert np.allclose(weights[valid].astype(np.float64).sum(1), 1, atol=k * 1e-3)
    assert (indices[~valid] == -1).all() and (weights[~valid] == 0).all()
    assert valid[indices[valid]].all()


@pytest.mark.parametrize("seed", [0, 1])
def test_knn_among_many_coincident_points_matches_the_loop_up_to_ties(seed):
    # points on a coarse integer grid: most rows have copies, so the tree lists another copy first or
    # leaves the point out, and those rows (anywhere in the cloud) must be reordered, the others kept
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 3, (150, 3)).astype(np.float64)
    valid = rng.random(150) > 0.1
    k = 6
    indices, _ = knn_graph(points, valid, k=k)
    expected, _ = _knn_by_loop(points, valid, k)
    rows = np.flatnonzero(valid)
    assert np.array_equal(indices[rows, 0], rows)
    assert all(len(set(indices[j])) == k and valid[indices[j]].all() for j in rows)
    # ties are broken arbitrarily: the distances listed must be the loop's, in the same order
    ours = np.linalg.norm(points[indices[rows]] - points[rows, None], axis=-1)
    theirs = np.linalg.norm(points[expected[rows]] - points[rows, None], axis=-1)
    worst = np.abs(ours - theirs).max(axis=1)
    assert worst.max() == 0, f"row {rows[np.argmax(worst)]} lists other distances than the loop"


def test_knn_refuses_k_below_one():
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_graph(np.zeros((2, 3)), np.ones(2, bool), k=0)


def _clouds():
    """Clouds by what their neighbour distances hold: all distinct, exact ties (an integer grid), duplicated
    points, few points, points far from the origin; and clouds where a few rows are tied among many that are
    not (a lattice beside a random cloud, some points duplicated), which both trees answer."""
    rng = np.random.default_rng(7)
    smooth = rng.random((3000, 3)).astype(np.float32)
    grid = np.stack(np.meshgrid(np.arange(12), np.arange(12), np.arange(3), indexing="ij"), -1).reshape(-1, 3)
    mixed = np.concatenate([smooth[:1500], grid.astype(np.float32) * 0.01 + 2])
    return {"distinct": smooth, "integer grid": grid.astype(np.float32),
            "duplicated": np.concatenate([smooth, smooth[:700]]), "few": smooth[:6], "one": smooth[:1],
            "far": smooth * 1000 + 5e4, "mixed": mixed,
            "some duplicated": np.concatenate([smooth, smooth[:100]])}


@pytest.mark.parametrize("name", list(_clouds()))
@pytest.mark.parametrize("found", [1, 5, 9])
def test_nearest_is_ckdtree_bit_for_bit_ties_included(name, found):
    # pykdtree answers the rows whose distances are all distinct, cKDTree the rest: together they must be exactly
    # what cKDTree alone answers, order among equal distances and every bit of the distances included
    cloud = np.asarray(_clouds()[name], np.float64)
    found = min(found, len(cloud))
    distance, neighbour = nearest(cloud, found, workers=1)
    want_distance, want_neighbour = nearest_naive(cloud, found, workers=1)
    assert np.array_equal(neighbour, want_neighbour)
    assert np.array_equal(distance.view(np.int64), want_distance.view(np.int64))
    assert np.array_equal(nearest(cloud, found, workers=-1)[1], neighbour)


def test_nearest_rows_without_ties_are_the_brute_force_order():
    # an independent check of the fast path: distinct distances have one order, the brute force's
    cloud = np.random.default_rng(3).random((400, 3))
    distance, neighbour = nearest(cloud, 6)
    squared = ((cloud[:, None, :] - cloud[None, :, :]) ** 2).sum(-1)
    assert np.array_equal(neighbour, np.argsort(squared, axis=1, kind="stable")[:, :6])
    assert np.allclose(distance, np.sqrt(np.take_along_axis(squared, neighbour, axis=1)), rtol=1e-12, atol=0)
