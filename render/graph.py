"""Neighbour structures on a cloud, design §3.7: the proxy of points seen in no view, and the k-NN graph.

Both are written to the store (`points/proxy`, `points/knn`, `points/knn_weight`) and read by eval;
distances are 3D Euclidean on `points/xyz`, padding points take part in nothing.
"""

from __future__ import annotations

import numpy as np
from pykdtree.kdtree import KDTree
from scipy.spatial import cKDTree

# Two neighbour distances whose ratio is within 1 + TIED count as tied: far above the rounding of a float64
# squared distance (a few 1e-16), far below any gap between distinct neighbours a scan has
TIED = 1e-9
# `nearest` first asks pykdtree about PROBE points spread over the cloud; where over MOSTLY_TIED of them are
# tied (duplicated points, coordinates on a lattice), cKDTree alone is faster than both trees
PROBE, MOSTLY_TIED = 256, 0.25


def proxy_indices(points, valid, visible_any, knn: np.ndarray | None = None, workers: int = -1) -> np.ndarray:
    """Return proxy (P,) int32: the point whose scores stand in for each point (design §3.7).

    points: (P, 3) float; valid: (P,) bool, False for padding; visible_any: (P,) bool, visible in
    at least one view (`visible.any(axis=0)`). A valid visible point is its own proxy; a valid point
    visible in no view gets the index of its nearest (3D Euclidean) valid visible point (one of them
    if several are equally near); padding gets -1 (visibility of padding is ignored). Raises
    ValueError if no valid point is visible in any view.
    knn: optional (P, k) neighbours of each valid point by increasing distance (`knn_graph`'s indices):
    the first seen one is the nearest seen point, since every point nearer than it is listed before it;
    a KD-tree of the seen points is built only for the points with no seen neighbour in their row.
    workers: threads of the KD-tree query (-1: one per CPU); the result does not depend on it.
    """
    points = np.asarray(points, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    seen = valid & np.asarray(visible_any, dtype=bool)
    if not seen.any():
        raise ValueError("no point is visible in any view")
    proxy = np.full(len(points), -1, dtype=np.int32)
    seen_index = np.flatnonzero(seen)
    proxy[seen_index] = seen_index
    unseen_index = np.flatnonzero(valid & ~seen)
    if knn is not None and len(unseen_index):
        rows = np.asarray(knn)[unseen_index]
        seen_here = seen[np.maximum(rows, 0)] & (rows >= 0)
        listed = seen_here.any(axis=1)
        proxy[unseen_index[listed]] = rows[listed, seen_here[listed].argmax(axis=1)]
        unseen_index = unseen_index[~listed]
    if len(unseen_index):
        _, nearest = cKDTree(points[seen_index]).query(points[unseen_index], k=1, workers=workers)
        proxy[unseen_index] = seen_index[nearest]
    return proxy


def knn_graph(points, valid, k: int = 8, workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """Return indices (P, k) int32 and weights (P, k) float16: the smoothing graph of design §3.7.

    points: (P, 3) float; valid: (P,) bool, False for padding. Row j of a valid point lists its k
    nearest valid points (3D Euclidean) by increasing distance, itself first (column 0, distance 0,
    even when other points coincide with it); ties among equally distant neighbours are broken
    arbitrarily. Weights are Gaussian, w = exp(-d^2 / (2 sigma^2)), with sigma the median over valid
    points of the distance to their k-th neighbour (the last column, self counted as the first);
    if that median is 0 (heavily duplicated points), sigma is the largest neighbour distance, and 1
    if all distances are 0. Each valid row is normalised to sum to 1 (before rounding to float16), so
    the smoothed score of point j is sum_i weights[j, i] * score[indices[j, i]].
    Padding rows: indices -1, weights 0. With fewer than k valid points the missing trailing columns
    are -1 with weight 0 (and sigma uses the last available neighbour). These are the store's
    `points/knn` and `points/knn_weight` arrays.
    workers: threads of the KD-tree query (-1: one per CPU); the result does not depend on it.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    points = np.asarray(points, dtype=np.float64)
    valid_index = np.flatnonzero(np.asarray(valid, dtype=bool))
    indices = np.full((len(points), k), -1, dtype=np.int32)
    weights = np.zeros((len(points), k), dtype=np.float16)
    count = len(valid_index)
    if count == 0:
        return indices, weights
    found = min(k, count)
    cloud = points[valid_index]
    distance, neighbour = _self_first(*nearest(cloud, found, workers))

    sigma = float(np.median(distance[:, -1]))
    if sigma <= 0:
        sigma = float(distance.max()) or 1.0
    gauss = np.exp(-(distance**2) / (2 * sigma**2))
    gauss /= gauss.sum(axis=1, keepdims=True)  # >= 1 before dividing: the self column weighs exp(0)

    indices[valid_index, :found] = valid_index[neighbour]
    weights[valid_index, :found] = gauss.astype(np.float16)
    return indices, weights


def nearest(cloud: np.ndarray, found: int, workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(distance, neighbour), each (n, found): each point's `found` nearest among the (n, 3) float64 `cloud`,
    bit for bit what `cKDTree(cloud).query(cloud, k=found)` answers, ties included, in about two thirds of its
    time (`nearest_naive`; benchmarks/knn_bench.py).

    pykdtree answers first, with one neighbour more (unless most of PROBE points spread over the cloud are tied:
    then cKDTree answers alone, the faster way there). A row whose found + 1 distances (found where the cloud has
    no more points) are all distinct, each over the one before by more than a factor 1 + TIED, has one answer
    in one order, which both trees give with the same distances (the square root of ((dx dx + dy dy) + dz dz),
    to the bit). The other rows (equal distances, duplicated points) are asked of cKDTree, whose order among
    equals is its own; its rows do not depend on which others are asked. workers: cKDTree's threads (-1: one
    per CPU); pykdtree's are OpenMP's, as the process limits them (render/build.py). The answer depends on
    neither."""
    count = len(cloud)
    seen = min(found + 1, count)
    fast = KDTree(cloud)
    probe = cloud[:: max(1, count // PROBE)]
    if _tied(fast.query(probe, k=seen)[0].reshape(len(probe), seen)).mean() > MOSTLY_TIED:
        return nearest_naive(cloud, found, workers)
    distance, neighbour = fast.query(cloud, k=seen)
    distance = distance.reshape(count, seen)
    neighbour = neighbour.reshape(count, seen).astype(np.intp)
    tied = _tied(distance)
    distance, neighbour = distance[:, :found].copy(), neighbour[:, :found].copy()
    rows = np.flatnonzero(tied)
    if len(rows):
        again, which = cKDTree(cloud).query(cloud[rows], k=found, workers=workers)
        distance[rows], neighbour[rows] = again.reshape(len(rows), found), which.reshape(len(rows), found)
    return distance, neighbour


def _tied(distance: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of ascending distances where two are equal (within TIED), a 0 after a 0 included."""
    return ~(distance[:, 1:] > distance[:, :-1] * (1 + TIED)).all(axis=1)


def nearest_naive(cloud: np.ndarray, found: int, workers: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """`nearest` by cKDTree alone (what every row was before; the benchmark's baseline)."""
    distance, neighbour = cKDTree(cloud).query(cloud, k=found, workers=workers)
    return distance.reshape(len(cloud), found), neighbour.reshape(len(cloud), found)


def _self_first(distance, neighbour):
    """Put each row's own index (0..n-1) in column 0 at distance 0, keep the others in query order.

    The KD-tree may list a coincident point before the point itself, or (more than k coincident
    points) not list it at all; then the last neighbour makes room. Only those rows are reordered."""
    rows, found = neighbour.shape
    distance, neighbour = distance.copy(), neighbour.copy()
    odd = np.flatnonzero(neighbour[:, 0] != np.arange(rows))
    if len(odd):
        # a stable sort moves the point's own column (if listed) to the end and keeps the others in order;
        # keeping the first found - 1 drops it, or the farthest neighbour where the point was not listed
        order = np.argsort(neighbour[odd] == odd[:, None], axis=1, kind="stable")[:, : found - 1]
        neighbour[odd, 1:] = np.take_along_axis(neighbour[odd], order, axis=1)
        distance[odd, 1:] = np.take_along_axis(distance[odd], order, axis=1)
        neighbour[odd, 0] = odd
    distance[:, 0] = 0
    return distance, neighbour
