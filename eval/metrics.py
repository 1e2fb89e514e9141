"""Metrics of the evaluation stage, design §7: I-AUROC and AP per sample, P-AUROC and AU-PRO per point.

Arrays in, numbers out; no I/O. AU-PRO comes in the two documented protocols:

- ``points`` (default, honest): the official MVTec AU-PRO on valid points only. Ground-truth regions are
  the 8-connected components of each map's mask (organized grids, `aupro_organized`) or the connected
  components of the anomalous points on the k-NN graph (unorganized clouds, `aupro_graph`). For a
  threshold t, PRO(t) = mean over all regions of all samples of the fraction of the region's points with
  score >= t, FPR(t) = fraction of normal points with score >= t. The curve has one point per distinct
  score, starts at (0, 0) and is integrated with the trapezoid rule up to FPR = max_fpr, interpolated
  linearly at max_fpr, then divided by max_fpr. Invalid points (missing in the scan, padding) count
  nowhere: not as normal points, not in a region's size; a region is labelled on the full mask and keeps
  only its valid points, and a region with no valid point is dropped.
  Reference values: a perfect ranking gives 1, a reversed one 0, all-equal scores give max_fpr / 2
  (PRO = FPR on the whole curve), which is also what random scores give in expectation.
- ``pointad-compat`` (`aupro_pointad_compat`): the released PointAD code's number, for comparing with
  published tables: every cell of the grid (missing points included, score 0 and label 0 as the caller
  passes them), 200 linear thresholds, a point is positive when its score is strictly above the
  threshold, only curve points with FPR < max_fpr kept, FPR min-max normalised, sklearn's `auc`.

Undefined values are nan, never an error: AUROC and AP with one class only, AU-PRO with no normal point
or no ground-truth region.

Both AU-PRO protocols have a `_naive` twin at the end of the module: the definition computed literally
(per threshold, per region, regions by flood fill), slow, sharing no helper with the fast code. The tests
compare fast with naive; `benchmarks/eval_bench.py` times both in one run.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import auc, average_precision_score, roc_auc_score

# 8-connectivity: the official MVTec scripts label with a 3x3 block of ones, and skimage.measure.label
# (the released PointAD code) defaults to full connectivity, which is the same thing in 2-D.
_EIGHT = np.ones((3, 3), dtype=bool)


def image_metrics(labels, scores) -> dict[str, float]:
    """Return {"i_auroc", "ap"} of sample scores. labels: (N,) 0/1 (1 = anomalous); scores: (N,) float.

    Both are nan when only one class is present (AUROC and AP are undefined there).
    """
    labels, scores = _flat_pair(labels, scores, "labels", "scores")
    if not _two_classes(labels):
        return {"i_auroc": float("nan"), "ap": float("nan")}
    return {"i_auroc": float(roc_auc_score(labels, scores)), "ap": float(average_precision_score(labels, scores))}


def point_auroc(labels, scores) -> float:
    """Return the point-level AUROC (P-AUROC). labels: (M,) 0/1 over the points that count; scores: (M,).

    Callers select the valid points first (design §7 `points` protocol); nan with one class only.
    """
    labels, scores = _flat_pair(labels, scores, "labels", "scores")
    return float(roc_auc_score(labels, scores)) if _two_classes(labels) else float("nan")


def aupro_organized(masks, scores, valid=None, max_fpr: float = 0.3) -> float:
    """Return the AU-PRO of organized maps, protocol ``points`` (official MVTec AU-PRO on valid points).

    masks: (N, H, W) bool/uint8, nonzero = anomalous; scores: (N, H, W) float; valid: (N, H, W) bool or
    None (all valid). A single (H, W) map may be passed as is. Regions: 8-connected components of each
    map's full mask, counted on their valid pixels only (see the module docstring).
    """
    masks, scores = _as_maps(masks), _as_maps(scores)
    _same_shape(masks, scores, "masks", "scores")
    anomalous = masks != 0
    if valid is not None:
        valid = _as_maps(valid).astype(bool, copy=False)
        _same_shape(valid, scores, "valid", "scores")
    region = _label_maps(anomalous)  # 0 = normal, regions numbered 1.. across all maps
    normal_keep = ~anomalous if valid is None else ~anomalous & valid
    anomalous_keep = anomalous if valid is None else anomalous & valid
    return _aupro(scores[normal_keep], scores[anomalous_keep], region[anomalous_keep] - 1, max_fpr)


def organized_component_ids(masks) -> np.ndarray:
    """Return region ids (N, H, W) int64 of anomalous pixels, -1 for normal ones; an (H, W) mask gives (H, W).

    masks: (N, H, W) nonzero = anomalous. Regions are the 8-connected components of each full mask (as in
    `aupro_organized`), numbered 0.. across maps. Callers keep the valid pixels, then `pro_curve` or
    `aupro_components` on them reproduces `aupro_organized`.
    """
    masks = np.asarray(masks)
    region = _label_maps(_as_maps(masks) != 0).astype(np.int64) - 1
    return region.reshape(masks.shape)


def graph_components(labels, knn, valid=None) -> np.ndarray:
    """Return region ids (N, P) int64 of anomalous points on the k-NN graph, -1 for normal or invalid points.

    labels: (N, P) 0/1 (or (P,) for one sample); knn: (N, P, k) int neighbour indices within each sample,
    -1 = none (the store's `points/knn`); valid: (N, P) bool or None. Two valid anomalous points are in one
    region when a k-NN edge joins them in either direction. Ids are numbered across samples, so the
    regions of different samples never merge.
    """
    labels = np.asarray(labels)
    knn = np.asarray(knn)
    if labels.ndim == 1:  # one sample: answer in its shape
        return graph_components(labels[None], knn[None], None if valid is None else np.asarray(valid)[None])[0]
    if labels.ndim != 2 or knn.ndim != 3 or knn.shape[:2] != labels.shape:
        raise ValueError(f"labels {labels.shape} and knn {knn.shape} must be (N, P) and (N, P, k)")
    n_samples, n_points, k = knn.shape
    if not np.issubdtype(knn.dtype, np.integer):
        raise ValueError(f"knn must hold integer indices, got {knn.dtype}")
    if knn.size and (knn.max() >= n_points or knn.min() < -1):
        raise ValueError(f"knn indices must lie in [-1, {n_points - 1}] (-1 = no neighbour), "
                         f"got {knn.min()}..{knn.max()}")
    anomalous = labels != 0
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        _same_shape(valid, labels, "valid", "labels")
        anomalous &= valid
    flat = anomalous.ravel()
    points = np.flatnonzero(flat)  # global indices of the valid anomalous points: the subgraph's nodes
    node = np.full(flat.size, -1, dtype=np.int64)
    node[points] = np.arange(len(points))
    # only their own neighbour rows matter: an edge needs an anomalous point at both ends
    target = knn.reshape(-1, k)[points].astype(np.int64)
    has = target >= 0
    target = np.where(has, target + (points - points % n_points)[:, None], 0)
    both = has & flat[target]
    source = np.broadcast_to(np.arange(len(points))[:, None], target.shape)[both]
    edges = sparse.coo_matrix((np.ones(len(source), dtype=np.int8), (source, node[target[both]])),
                              shape=(len(points), len(points)))
    _, component = connected_components(edges, directed=False)
    region = np.full(flat.size, -1, dtype=np.int64)
    region[points] = component
    return region.reshape(labels.shape)


def aupro_graph(labels, scores, knn, valid=None, max_fpr: float = 0.3) -> float:
    """Return the AU-PRO of unorganized clouds, protocol ``points``, regions from `graph_components`.

    labels, scores: (N, P) (or (P,)); knn: (N, P, k) with -1 = none; valid: (N, P) bool or None.
    """
    region = graph_components(labels, knn, valid)
    scores = np.asarray(scores)
    _same_shape(scores, region, "scores", "labels")
    if valid is None:
        return aupro_components(region.ravel(), scores.ravel(), max_fpr)
    keep = np.asarray(valid, dtype=bool).reshape(region.shape)
    return aupro_components(region[keep], scores[keep], max_fpr)


def aupro_components(component_id, scores, max_fpr: float = 0.3) -> float:
    """Return the AU-PRO (protocol ``points``) of points already grouped into ground-truth regions.

    component_id: (M,) int, the region of each anomalous point (any non-negative ids, several samples'
    regions numbered apart), -1 for normal points; scores: (M,) float. Only the points that count are
    passed (valid ones). The core of `aupro_organized` and `aupro_graph`.
    """
    component_id, scores = _flat_pair(component_id, scores, "component_id", "scores")
    if not np.issubdtype(component_id.dtype, np.integer):
        raise ValueError(f"component_id must be integer, got {component_id.dtype}")
    anomalous = component_id >= 0
    return _aupro(scores[~anomalous], scores[anomalous], component_id[anomalous], max_fpr)


def pro_curve(component_id, scores) -> tuple[np.ndarray, np.ndarray]:
    """Return (fpr, pro), the whole PRO curve of `aupro_components`' input as a polyline from (0, 0) to (1, 1).

    Only the corners are listed: between two distinct anomalous scores PRO is constant and only FPR moves,
    so the curve through every distinct threshold is this polyline with collinear points removed. Empty
    arrays when the curve is undefined (no normal point or no region).
    """
    component_id, scores = _flat_pair(component_id, scores, "component_id", "scores")
    anomalous = component_id >= 0
    curve = _corners(scores[~anomalous], scores[anomalous], component_id[anomalous], max_fpr=1.0)
    return curve if curve is not None else (np.empty(0), np.empty(0))


def aupro_from_curve(fpr, pro, max_fpr: float = 0.3) -> float:
    """Return the AU-PRO of a `pro_curve` polyline: trapezoid area up to max_fpr (interpolated) / max_fpr.

    fpr, pro: (C,) float, fpr non-decreasing from 0; nan for the empty curve (undefined).
    """
    fpr, pro = _flat_pair(fpr, pro, "fpr", "pro")
    _check_max_fpr(max_fpr)
    if fpr.size == 0:
        return float("nan")
    return _area_up_to(np.asarray(fpr, np.float64), np.asarray(pro, np.float64), max_fpr) / max_fpr


def aupro_pointad_compat(masks, scores, max_fpr: float = 0.3, steps: int = 200) -> float:
    """Return the AU-PRO as the released PointAD code computes it (protocol ``pointad-compat``).

    masks: (N, H, W) nonzero = anomalous; scores: (N, H, W) float, the whole grid (missing points with
    score 0 and label 0, as the released evaluation sees them). Thresholds: numpy's arange from the
    minimum to the maximum score in steps of (max - min) / steps (200 values, occasionally 201 through
    floating-point rounding, exactly like the released code); positive = score > threshold; regions
    8-connected per map; PRO = mean overlap over all regions of all maps; FPR over label-0 cells; points
    with FPR < max_fpr kept, FPR min-max normalised to [0, 1], sklearn `auc`. nan where the released code
    would fail or return nan: constant scores, no region, no normal cell, fewer than two points kept or
    all kept FPRs equal.
    """
    masks, scores = _as_maps(masks), _as_maps(scores)
    _same_shape(masks, scores, "masks", "scores")
    _check_max_fpr(max_fpr)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    anomalous = masks != 0
    low, high = scores.min(), scores.max()
    n_normal = anomalous.size - np.count_nonzero(anomalous)
    if not high > low or n_normal == 0 or not anomalous.any():
        return float("nan")
    thresholds = np.arange(low, high, (high - low) / steps)
    n_thresholds = len(thresholds)
    # level = how many thresholds lie strictly below a score: the cell is positive at thresholds[:level]
    above = _count_above(np.searchsorted(thresholds, scores[~anomalous], side="left"), n_thresholds)
    fpr = above / n_normal
    region = _label_maps(anomalous)[anomalous] - 1
    n_regions = int(region.max()) + 1
    level = np.searchsorted(thresholds, scores[anomalous], side="left")
    hits = np.bincount(region * (n_thresholds + 1) + level, minlength=n_regions * (n_thresholds + 1))
    hits = hits.reshape(n_regions, n_thresholds + 1)
    hits_above = np.cumsum(hits[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (regions, thresholds): > thresholds[j]
    pro = (hits_above / hits.sum(axis=1, keepdims=True)).mean(axis=0)
    kept = fpr < max_fpr
    if np.count_nonzero(kept) < 2:
        return float("nan")
    fpr, pro = fpr[kept], pro[kept]
    span = fpr.max() - fpr.min()
    if span == 0:
        return float("nan")
    return float(auc((fpr - fpr.min()) / span, pro))


# --- the exact PRO curve ------------------------------------------------------------------------------

def _aupro(normal_scores, anomalous_scores, region, max_fpr):
    """AU-PRO from the normal points' scores and the anomalous points' scores and region ids (>= 0)."""
    _check_max_fpr(max_fpr)
    curve = _corners(normal_scores, anomalous_scores, region, max_fpr)
    if curve is None:
        return float("nan")
    return _area_up_to(*curve, max_fpr) / max_fpr


def _corners(normal_scores, anomalous_scores, region, max_fpr):
    """(fpr, pro) corners of the exact PRO curve, exact up to FPR = max_fpr; None when undefined.

    Each anomalous point adds 1 / (|its region| * n_regions) to PRO once the threshold reaches its
    score. Walking the distinct anomalous scores a_1 > a_2 > ... with PRO_i the weight at or above a_i,
    the curve runs horizontally at PRO_{i-1} to FPR(> a_i), then straight (ties between normal and
    anomalous points) to (FPR(>= a_i), PRO_i). FPR needs only normal scores above the cut, the score at
    which FPR first exceeds max_fpr (design §9): one partition and a sort of that top part replace the
    full sort; the curve beyond the cut is replaced by a horizontal run to FPR 1, which agrees with it up
    to max_fpr.
    """
    if np.isnan(normal_scores).any() or np.isnan(anomalous_scores).any():
        raise ValueError("scores contain NaN at points that count")
    n_normal = normal_scores.size
    sizes = np.bincount(region) if region.size else np.zeros(0, np.int64)
    n_regions = np.count_nonzero(sizes)
    if n_normal == 0 or n_regions == 0:
        return None
    # +2 rather than +1: FPR(cut) > max_fpr must hold in floating point too
    k = min(n_normal, int(np.floor(max_fpr * n_normal)) + 2)
    top = np.array(normal_scores, copy=True)
    if k < n_normal:
        top.partition(n_normal - k)
        cut = top[n_normal - k]
        top = top[top >= cut]  # ties with the cut may sit below the partition index
    else:
        cut = -np.inf
    top.sort()
    keep = anomalous_scores >= cut
    values, group = np.unique(anomalous_scores[keep], return_inverse=True)
    weight = np.bincount(group, weights=1.0 / (sizes[region[keep]] * n_regions), minlength=len(values))
    values, pro = values[::-1], np.cumsum(weight[::-1])
    normal_above = (len(top) - np.searchsorted(top, values, side="right")) / n_normal
    normal_at_or_above = (len(top) - np.searchsorted(top, values, side="left")) / n_normal
    fpr = np.concatenate([[0.0], np.column_stack([normal_above, normal_at_or_above]).ravel(), [1.0]])
    pro_before = np.concatenate([[0.0], pro])[:-1]
    pro = np.concatenate([[0.0], np.column_stack([pro_before, pro]).ravel(), pro[-1:] if len(pro) else [0.0]])
    return fpr, pro


def _area_up_to(x, y, x_max):
    """Trapezoid area under the polyline (x, y), x non-decreasing from 0, up to x_max (interpolated there)."""
    inside = np.searchsorted(x, x_max, side="right")  # x[:inside] <= x_max < x[inside:]
    area = float(np.sum((x[1:inside] - x[:inside - 1]) * (y[1:inside] + y[:inside - 1])) / 2)
    if inside < len(x) and x[inside - 1] < x_max:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_at) / 2
    return area


# --- helpers ------------------------------------------------------------------------------------------

def _label_maps(anomalous):
    """(N, H, W) int32 region numbers, 8-connected within each map, numbered 1.. across maps; 0 = normal."""
    region = np.zeros(anomalous.shape, dtype=np.int32)
    offset = 0
    for i in np.flatnonzero(anomalous.any(axis=(1, 2))):
        count = ndimage.label(anomalous[i], structure=_EIGHT, output=region[i])
        region[i][anomalous[i]] += offset
        offset += count
    return region


def _count_above(level, n_thresholds):
    """(n_thresholds,) number of entries with level > j, for each threshold index j."""
    counts = np.bincount(level, minlength=n_thresholds + 1)
    return np.cumsum(counts[::-1])[::-1][1:]


def _as_maps(array):
    array = np.asarray(array)
    if array.ndim == 2:
        return array[None]
    if array.ndim != 3:
        raise ValueError(f"expected (N, H, W) maps or one (H, W) map, got shape {array.shape}")
    return array


def _flat_pair(first, second, first_name, second_name):
    first, second = np.asarray(first), np.asarray(second)
    if first.ndim != 1 or first.shape != second.shape:
        raise ValueError(f"{first_name} {first.shape} and {second_name} {second.shape} must be 1-D of one length")
    return first, second


def _same_shape(first, second, first_name, second_name):
    if first.shape != second.shape:
        raise ValueError(f"{first_name} has shape {first.shape}, {second_name} {second.shape}; they must match")


def _two_classes(labels):
    return np.unique(labels).size == 2


def _check_max_fpr(max_fpr):
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")


# --- naive twins: the definitions, literally (slow; they share no helper with the code above) ------------

def aupro_organized_naive(masks, scores, valid=None, max_fpr: float = 0.3) -> float:
    """`aupro_organized` from its definition: every distinct score a threshold, overlaps region by region.

    Regions by breadth-first flood fill (8-connected), a region keeps its valid pixels and is dropped
    without one, FPR over the valid normal pixels, trapezoids segment by segment, the last cut at max_fpr.
    Same inputs and value (no checks, no nan cases); time grows with thresholds x pixels.
    """
    valid = np.ones(np.shape(masks), bool) if valid is None else valid
    regions, normal = [], []
    for mask, score, ok in zip(masks, scores, valid):
        for region in _regions_by_flood(np.asarray(mask) != 0):
            kept = [score[r, c] for r, c in region if ok[r, c]]
            if kept:
                regions.append(np.array(kept))
        normal.extend(score[(mask == 0) & ok].tolist())
    normal = np.array(normal)
    thresholds = sorted(set(normal.tolist()) | {s for region in regions for s in region.tolist()}, reverse=True)
    xs, ys = [0.0], [0.0]
    for t in thresholds:
        xs.append(np.count_nonzero(normal >= t) / len(normal))
        ys.append(sum(np.count_nonzero(region >= t) / len(region) for region in regions) / len(regions))
    area = 0.0
    for j in range(1, len(xs)):
        x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
            continue
        if x0 < max_fpr:  # the segment crossing max_fpr, cut there by linear interpolation
            y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_at) / 2
        break
    return area / max_fpr


def aupro_pointad_compat_naive(masks, scores, max_fpr: float = 0.3, steps: int = 200, structure=None) -> float:
    """`aupro_pointad_compat` as the released PointAD code defines it, literally: per threshold, per map,
    per region. structure: the labelling's connectivity (3 x 3 ones, 8-connected, by default). Same inputs
    and value where that is defined (no checks, no nan cases)."""
    structure = np.ones((3, 3)) if structure is None else structure
    masks, scores = np.asarray(masks), np.asarray(scores)
    low, high = scores.min(), scores.max()
    fprs, pros = [], []
    for th in np.arange(low, high, (high - low) / steps):
        positive = scores > th
        overlaps = []
        for mask, pos in zip(masks, positive):
            labelled, count = ndimage.label(mask != 0, structure=structure)
            for r in range(1, count + 1):
                region = labelled == r
                overlaps.append(pos[region].sum() / region.sum())
        normal = masks == 0
        fprs.append((positive & normal).sum() / normal.sum())
        pros.append(np.mean(overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    kept = fprs < max_fpr
    fprs = (fprs[kept] - fprs[kept].min()) / (fprs[kept].max() - fprs[kept].min())
    return float(auc(fprs, pros[kept]))


def _regions_by_flood(mask):
    """8-connected regions of a 2-D bool mask by breadth-first flood fill: a list of lists of (row, col)."""
    height, width = mask.shape
    seen = np.zeros(mask.shape, bool)
    regions = []
    for row, col in zip(*np.nonzero(mask)):
        if seen[row, col]:
            continue
        seen[row, col] = True
        queue, region = deque([(row, col)]), []
        while queue:
            r, c = queue.popleft()
            region.append((r, c))
            for rr in range(max(r - 1, 0), min(r + 2, height)):
                for cc in range(max(c - 1, 0), min(c + 2, width)):
                    if mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        queue.append((rr, cc))
        regions.append(region)
    return regions
