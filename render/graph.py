"""Neighbour structures on a cloud, design §3.7: the proxy of points seen in no view, and the k-NN graph.

Both are written to the store (`points/proxy`, `points/knn`, `points/knn_weight`) and read by eval;
distances are 3D Euclidean on `points/xyz`, padding points take part in nothing.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


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
    distance, neighbour = cKDTree(cloud).query(cloud, k=found, workers=workers)
    distance = distance.reshape(count, found)
    neighbour = neighbour.reshape(count, found)
    distance, neighbour = _self_first(distance, neighbour)

    sigma = float(np.median(distance[:, -1]))
    if sigma <= 0:
        sigma = float(distance.max()) or 1.0
    gauss = np.exp(-(distance**2) / (2 * sigma**2))
    gauss /= gauss.sum(axis=1, keepdims=True)  # >= 1 before dividing: the self column weighs exp(0)

    indices[valid_index, :found] = valid_index[neighbour]
    weights[valid_index, :found] = gauss.astype(np.float16)
    return indices, weights


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
