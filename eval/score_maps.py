"""Per-sample scores of design §7.1 (paper section 3.6) from back-projected point scores: arrays in, arrays out.

Smoothing, sample scores, RGB fusion, the released code's grids, and `score_row`, the scoring tail that
turns one row's back-projected point scores into its `SampleScores`. PointAD (`eval.scoring`) and mutual
scoring (`eval.mutual`) both end in `score_row`; they differ only in where the per-view maps come from and
in whether the model's global anomaly probabilities enter the sample score. No store, no model, no torch:
the streaming shells read the store, run the vision tower and back-project. Letters as in the store
(design §4): V views, P points, k neighbours; (H, W) an organized grid (`grid_hw`).

Smoothing of missing cells (organized grids): normalised convolution. The scores are scattered to the
grid, then A = gauss(scores * mask) / gauss(mask), mask = 1 where a cell holds a point. A missing cell
(a hole in the scan, the background, or outside the grid, mode "constant") neither adds a zero to its
neighbours nor counts in their weight, so a point's smoothed score is the Gaussian-weighted mean of
the scores of the points around it. The kernel is scipy's: sigma 4 px, truncated at 4 sigma (a square
window of radius 16), separable.

The `pointad-compat` protocol scores as the released code does (`compat=True`): the raw point scores
are put on the full grid with 0 in every missing cell and smoothed by a plain Gaussian (scipy's default
border mode, "reflect"), so missing cells get scores and holes pull their neighbours down; the RGB map
is smoothed the same way, the multimodal map is the smoothed mean of the two smoothed maps, and the
sample scores take the maxima of these grids.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

SIGMA = 4.0
ROW_FIELDS = ("valid", "label", "grid_index", "grid_hw", "knn", "knn_weight")  # what `score_row` reads of a row


def smooth_grid(values, mask, sigma: float = SIGMA, weight: np.ndarray | None = None) -> np.ndarray:
    """Return the normalised Gaussian convolution (H, W) float64 of `values` over the cells where `mask`.

    values: (H, W) float; mask: (H, W) weights (1 = a cell holds a value, 0 = missing; counts allowed).
    Cells whose window holds no value get 0. weight: `grid_weight(mask, sigma)` when already computed (the
    maps of one sample share their grid's mask, so one filter serves them all).
    """
    values, mask = np.asarray(values, np.float64), np.asarray(mask, np.float64)
    numerator = gaussian_filter(values * mask, sigma, mode="constant", cval=0.0)
    denominator = grid_weight(mask, sigma) if weight is None else weight
    out = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=out, where=denominator > 1e-12)
    return out


def grid_weight(mask, sigma: float = SIGMA) -> np.ndarray:
    """The denominator of `smooth_grid`: gauss(mask), (H, W) float64."""
    return gaussian_filter(np.asarray(mask, np.float64), sigma, mode="constant", cval=0.0)


def organized_weight(grid_index, grid_hw, sigma: float = SIGMA) -> np.ndarray:
    """`grid_weight` of the points' cells: what every `smooth_organized` of these points divides by."""
    return grid_weight(_cell_counts(np.asarray(grid_index), grid_hw), sigma)


def _cell_counts(grid_index: np.ndarray, grid_hw) -> np.ndarray:
    height, width = (int(x) for x in grid_hw)
    cells = grid_index[grid_index >= 0].astype(np.int64)
    return np.bincount(cells, minlength=height * width).reshape(height, width).astype(np.float64)


def smooth_organized(point_scores, grid_index, grid_hw, sigma: float = SIGMA,
                     weight: np.ndarray | None = None) -> np.ndarray:
    """Return smoothed point scores (P,) float64: Gaussian sigma px on the organized grid, missing cells excluded.

    point_scores: (P,) float; grid_index: (P,) int, row * W + col, -1 = no grid cell (such points keep
    their own score); grid_hw: (H, W). Points sharing a cell are summed there and counted twice in the
    weight. See the module docstring for the treatment of missing cells. weight: `organized_weight` of the
    same grid_index and sigma, when already computed.
    """
    scores = np.asarray(point_scores, np.float64)
    grid_index = np.asarray(grid_index)
    height, width = (int(x) for x in grid_hw)
    on_grid = grid_index >= 0
    cells = grid_index[on_grid].astype(np.int64)
    total = np.bincount(cells, weights=scores[on_grid], minlength=height * width).reshape(height, width)
    count = _cell_counts(grid_index, grid_hw)
    average = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    smoothed = smooth_grid(average, count, sigma, weight).ravel()
    out = scores.copy()
    out[on_grid] = smoothed[cells]
    return out


def smooth_graph(point_scores, knn, knn_weight) -> np.ndarray:
    """Return smoothed point scores (P,) float64: A(j) = sum_k w[j, k] * s[knn[j, k]] over the stored graph.

    knn: (P, k) int, -1 = none; knn_weight: (P, k), rows summing to 1 over their neighbours. The sum is
    divided by the weight of the neighbours present (the float16 weights sum to 1 only up to rounding);
    a point with no neighbour (padding) keeps its own score.
    """
    scores = np.asarray(point_scores, np.float64)
    knn = np.asarray(knn)
    weight = np.where(knn >= 0, np.asarray(knn_weight, np.float64), 0.0)
    gathered = scores[np.where(knn >= 0, knn, 0)]
    total, norm = (weight * gathered).sum(axis=1), weight.sum(axis=1)
    return np.where(norm > 0, total / np.where(norm > 0, norm, 1.0), scores)


def sample_score(view_anomaly_probs, point_map) -> float:
    """Return A_s = 1/2 (mean_k P_a(f_k) + max A_m) (design §7). view_anomaly_probs: (V,); point_map: (n,) valid points."""
    return 0.5 * (float(np.mean(view_anomaly_probs)) + float(np.max(point_map)))


def fused_point_map(point_map, rgb_point_map, grid_index, grid_hw, sigma: float = SIGMA,
                    weight: np.ndarray | None = None) -> np.ndarray:
    """Return the multimodal map (P,) = smooth(1/2 (A_m + A_m_rgb)) on the organized grid (design §7).
    weight: as for `smooth_organized`."""
    mean = 0.5 * (np.asarray(point_map, np.float64) + np.asarray(rgb_point_map, np.float64))
    return smooth_organized(mean, grid_index, grid_hw, sigma, weight)


def fused_sample_score(point_sample_score: float, rgb_sample_score: float, fused_map) -> float:
    """Return the multimodal score 1/2 (1/2 (A_s_rgb + A_s) + max(multimodal map)) (design §7)."""
    return 0.5 * (0.5 * (rgb_sample_score + point_sample_score) + float(np.max(fused_map)))


def rgb_point_map(rgb_map, grid_index, sigma: float = SIGMA) -> np.ndarray:
    """Return A_m_rgb (P,) float64: the RGB anomaly map (H, W), smoothed on the full grid, read at each point's cell.

    Every cell of the RGB image holds a value, so the smoothing is a plain Gaussian (normalised only at
    the border). grid_index: (P,) int, -1 -> 0.
    """
    rgb_map = np.asarray(rgb_map, np.float64)
    weight = _full_grid_weight(rgb_map.shape, sigma)  # every cell holds a value: the same for every map
    smoothed = smooth_grid(rgb_map, np.ones_like(rgb_map), sigma, weight).ravel()
    grid_index = np.asarray(grid_index)
    return np.where(grid_index >= 0, smoothed[np.maximum(grid_index, 0)], 0.0)


@functools.lru_cache(maxsize=8)
def _full_grid_weight(shape: tuple, sigma: float) -> np.ndarray:
    """`grid_weight` of a grid with a value in every cell: the same for every RGB map of that shape."""
    weight = grid_weight(np.ones(shape), sigma)
    weight.flags.writeable = False
    return weight


def compat_grid_map(point_scores, grid_index, grid_hw, sigma: float = SIGMA) -> np.ndarray:
    """Return the released code's point map (H, W) float64: scores scattered to the grid, 0 in missing cells,
    then a plain Gaussian (border mode "reflect"). grid_index: (P,) int, row * W + col (points with -1 are
    left out); points sharing a cell are averaged."""
    height, width = (int(x) for x in grid_hw)
    grid_index = np.asarray(grid_index)
    on_grid = grid_index >= 0
    cells = grid_index[on_grid].astype(np.int64)
    total = np.bincount(cells, weights=np.asarray(point_scores, np.float64)[on_grid], minlength=height * width)
    count = np.bincount(cells, minlength=height * width)
    grid = np.divide(total, count, out=np.zeros_like(total), where=count > 0).reshape(height, width)
    return gaussian_filter(grid, sigma)


def compat_fused_map(point_grid, rgb_grid, sigma: float = SIGMA) -> np.ndarray:
    """Return the released code's multimodal map (H, W): a plain Gaussian of the mean of the two smoothed grids."""
    return gaussian_filter(0.5 * (np.asarray(point_grid, np.float64) + np.asarray(rgb_grid, np.float64)), sigma)


def compact_knn(knn, valid) -> np.ndarray:
    """Return the k-NN graph (n, k) of the valid points, renumbered 0..n-1; neighbours not valid -> -1."""
    knn, valid = np.asarray(knn), np.asarray(valid, bool)
    new_index = np.full(valid.shape[0] + 1, -1, np.int64)   # last slot answers for -1
    new_index[:-1][valid] = np.arange(int(valid.sum()))
    return new_index[np.where(knn >= 0, knn, -1)][valid].astype(np.int32)


def is_organized(grid_index, grid_hw) -> bool:
    """Whether points with these cells lie on an organized grid: (H, W) not empty and every point has a cell.
    grid_index: (n,) of the valid points."""
    return bool(min(int(x) for x in grid_hw) > 0 and (np.asarray(grid_index) >= 0).all())


# --- the scoring tail ----------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SampleScores:
    """Scores of one store row. Point arrays hold the n valid points, in store order.

    point_scores: A_m (n,) float32; point_labels: (n,) uint8; score: A_s. grid_index: (n,) int32 (-1 none),
    grid_hw: (H, W), (0, 0) if unorganized; knn: (n, k) int32 among the valid points. rgb_* and
    multimodal_*: None unless the sample is organized and has RGB. compat: with `compat=True` on an
    organized sample, block -> (grid map (H, W) float32, sample score) as the released code scores
    (module docstring), else None. view_maps: with `keep_view_maps=True`, the per-view anomaly maps
    (V, S, S) float16 (and rgb_view_map (S, S) when the sample has RGB), else None.
    """

    identity: dict
    point_scores: np.ndarray
    point_labels: np.ndarray
    score: float
    grid_index: np.ndarray
    grid_hw: tuple[int, int]
    knn: np.ndarray
    rgb_point_scores: np.ndarray | None = None
    rgb_score: float | None = None
    multimodal_point_scores: np.ndarray | None = None
    multimodal_score: float | None = None
    compat: dict | None = None
    view_maps: np.ndarray | None = None
    rgb_view_map: np.ndarray | None = None

    @property
    def organized(self) -> bool:
        return self.grid_hw[0] > 0 and self.grid_hw[1] > 0 and bool((self.grid_index >= 0).all())

    @property
    def has_rgb(self) -> bool:
        return self.rgb_score is not None


def block_score(probs, point_map) -> float:
    """Return a block's sample score: `sample_score` with the model's anomaly probabilities `probs` ((V,) of
    the views, (1,) of the RGB image), or the map's maximum alone when there are none (mutual scoring)."""
    return float(np.max(point_map)) if probs is None else sample_score(probs, point_map)


def score_row(raw_points, row: dict, identity: dict, *, view_probs=None, rgb_map=None, rgb_probs=None,
              sigma: float = SIGMA, compat: bool = False, view_maps=None, rgb_view_map=None) -> SampleScores:
    """Return the `SampleScores` of one row from its back-projected point scores (design §7.1, §7.5 step 4).

    raw_points: (P,) float, the row's back-projected anomaly scores (`train.model.maps.back_project`);
    row: the row's ROW_FIELDS, as one row of `read_batch` ({valid (P,) bool, label (P,) uint8, grid_index
    (P,), grid_hw (2,), knn (P, k), knn_weight (P, k)}). The point map is `smooth_organized` on a row with a
    grid (`is_organized`), else `smooth_graph`. view_probs: (V,) P_a of the views (`block_score`; None: the
    map's maximum). rgb_map: (H, W) RGB anomaly map on the row's grid, for organized rows with RGB (else
    None; ignored on other rows), with rgb_probs (1,) as view_probs. compat: also the released code's grids
    (`compat_scores`, organized rows). view_maps, rgb_view_map: kept on the result as given.
    """
    valid = row["valid"]
    grid_hw = tuple(int(x) for x in row["grid_hw"])
    grid_index = row["grid_index"][valid]
    organized = is_organized(grid_index, grid_hw)
    # the point and multimodal maps of a row share its grid's weight (RGB rows are organized rows)
    weight = organized_weight(grid_index, grid_hw, sigma) if organized else None
    if organized:
        point_map = smooth_organized(raw_points[valid], grid_index, grid_hw, sigma, weight)
    else:
        point_map = smooth_graph(raw_points, row["knn"], row["knn_weight"])[valid]
    score = block_score(view_probs, point_map)
    extra = {}
    use_rgb = rgb_map is not None and organized
    if use_rgb:
        rgb_points = rgb_point_map(rgb_map, grid_index, sigma)
        rgb_score = block_score(rgb_probs, rgb_points)
        fused = fused_point_map(point_map, rgb_points, grid_index, grid_hw, sigma, weight)
        extra |= dict(rgb_point_scores=rgb_points.astype(np.float32), rgb_score=rgb_score,
                      multimodal_point_scores=fused.astype(np.float32),
                      multimodal_score=fused_sample_score(score, rgb_score, fused), rgb_view_map=rgb_view_map)
    if compat and organized:
        extra["compat"] = compat_scores(raw_points[valid], grid_index, grid_hw, view_probs,
                                        rgb_map if use_rgb else None, rgb_probs, sigma)
    return SampleScores(identity=identity, point_scores=point_map.astype(np.float32),
                        point_labels=row["label"][valid], score=score, grid_index=grid_index.astype(np.int32),
                        grid_hw=grid_hw, knn=compact_knn(row["knn"], valid), view_maps=view_maps, **extra)


def compat_scores(raw_points, grid_index, grid_hw, view_probs=None, rgb_map=None, rgb_probs=None,
                  sigma: float = SIGMA) -> dict:
    """Return block -> (grid map (H, W) float32, sample score) as the released code scores (module docstring).

    raw_points: (n,) of the valid points; rgb_map: (H, W) or None (then the point block only); view_probs,
    rgb_probs: as for `score_row` (None: the grid's maximum).
    """
    point_grid = compat_grid_map(raw_points, grid_index, grid_hw, sigma)
    out = {"point": (point_grid, block_score(view_probs, point_grid))}
    if rgb_map is not None:
        rgb_grid = gaussian_filter(np.asarray(rgb_map, np.float64), sigma)
        fused = compat_fused_map(point_grid, rgb_grid, sigma)
        out["rgb"] = (rgb_grid, block_score(rgb_probs, rgb_grid))
        out["multimodal"] = (fused, fused_sample_score(out["point"][1], out["rgb"][1], fused))
    return {block: (grid.astype(np.float32), score) for block, (grid, score) in out.items()}
