"""The `mvtec-official` protocol (design §7.3): MVTec 3D-AD's evaluation script's definition, arrays in, numbers out.

The script reads one anomaly map per test sample at the size of its ground-truth PNG and scores
- I-AUROC from each map's maximum, the sample's label being whether its ground truth has an anomalous pixel;
- AU-PRO over every pixel of every map (background included), regions the 8-connected components of each
  ground truth, up to FPR 0.3, divided by 0.3 (`metrics.aupro_components`, the official curve).
We add AP from the same maxima and P-AUROC over the same pixels, so the table keeps its four columns.

Our maps live on the store's organized grid (H, W) (336 x 336 in the paper's stores), which preprocessing made
from the scan by padding it to a square with missing pixels (`square: pad`; `stretch` resizes directly) and
resizing by nearest neighbour: cell i holds source row s_i = floor(i * L / S) (design §2.3). `original_map`
undoes that: padded row R reads the last cell whose source row is at or before it, i = ceil((R + 1) * S / L) - 1
(cell i covers rows s_i .. s_(i+1) - 1), then the padding is cropped. So every pixel preprocessing sampled reads
its own cell back (resizing the map again gives the grid), and the pixels between take the cell above and left
of them. Columns likewise. Cells holding no point (missing in the scan, background removed, left out by
--downsample) get `background`, a value below every score.
Unorganized clouds have no map: their per-point scores give I-AUROC and AP from the maxima, and no point metric.
"""

from __future__ import annotations

import math

import numpy as np

from .metrics import aupro_components, image_metrics, organized_component_ids, point_auroc

MAX_FPR = 0.3
BACKGROUND = -1.0  # below every score our methods give (probabilities, distances: >= 0)
SQUARING = ("pad", "stretch")


def original_cells(original_hw, grid_hw, square: str = "pad") -> tuple[np.ndarray, np.ndarray]:
    """Return (rows (H0,), cols (W0,)) int64: the grid row of each original pixel row and the grid column of each
    original pixel column (module docstring). original_hw: (H0, W0) of the scan and its ground truth; grid_hw:
    (H, W) of the store."""
    if square not in SQUARING:
        raise ValueError(f"square must be one of {', '.join(SQUARING)}, got {square!r}")
    height, width = (int(x) for x in original_hw)
    grid_h, grid_w = (int(x) for x in grid_hw)
    if min(height, width, grid_h, grid_w) <= 0:
        raise ValueError(f"grid sizes must be positive, got original {original_hw}, store grid {grid_hw}")
    if square == "stretch":
        return _cells(np.arange(height), height, grid_h), _cells(np.arange(width), width, grid_w)
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return _cells(np.arange(height) + top, side, grid_h), _cells(np.arange(width) + left, side, grid_w)


def _cells(source, length: int, size: int) -> np.ndarray:
    """The cell of each source index (< length) of a nearest resize length -> size: the last cell i whose source
    index floor(i * length / size) is at or before it, ceil((r + 1) * size / length) - 1."""
    return ((source + 1) * size + length - 1) // length - 1


def original_map(point_scores, grid_index, grid_hw, original_hw, square: str = "pad",
                 background: float = BACKGROUND) -> np.ndarray:
    """Return the anomaly map (H0, W0) float32 on the original grid: each pixel the score of the point in its
    store cell (`original_cells`), `background` where that cell holds none.

    point_scores: (n,) of the valid points; grid_index: (n,) int, row * W + col on the store grid (>= 0);
    grid_hw: (H, W). ValueError if a score is not above `background`.
    """
    scores = np.asarray(point_scores, np.float32)
    grid_index = np.asarray(grid_index, np.int64)
    grid_h, grid_w = (int(x) for x in grid_hw)
    if scores.size and not float(scores.min()) > background:
        raise ValueError(f"background {background} is not below every score (min {float(scores.min())})")
    grid = np.full(grid_h * grid_w, background, np.float32)
    grid[grid_index] = scores
    rows, cols = original_cells(original_hw, grid_hw, square)
    return grid.reshape(grid_h, grid_w)[rows[:, None], cols[None, :]]


def store_grid_truth(truth, grid_hw, square: str = "pad") -> np.ndarray:
    """Return the ground truth (H, W) bool on the store grid as preprocessing makes it from the original one:
    padded to a square (`pad`) and resized by nearest neighbour, source index floor(i * L / S). truth: (H0, W0)."""
    truth = np.asarray(truth) != 0
    grid_h, grid_w = (int(x) for x in grid_hw)
    if square == "pad":
        side = max(truth.shape)
        top, left = (side - truth.shape[0]) // 2, (side - truth.shape[1]) // 2
        padded = np.zeros((side, side), bool)
        padded[top:top + truth.shape[0], left:left + truth.shape[1]] = truth
        truth = padded
    elif square != "stretch":
        raise ValueError(f"square must be one of {', '.join(SQUARING)}, got {square!r}")
    rows = np.arange(grid_h) * truth.shape[0] // grid_h
    cols = np.arange(grid_w) * truth.shape[1] // grid_w
    return truth[rows[:, None], cols[None, :]]


def background_below(scores) -> float:
    """The background value for maps of these scores (arrays): BACKGROUND, or floor(min) - 1 if a score is not
    above BACKGROUND."""
    low = min((float(np.min(s)) for s in scores if np.size(s)), default=0.0)
    return BACKGROUND if low > BACKGROUND else float(math.floor(low) - 1)


def official_metrics(maps, truths, max_fpr: float = MAX_FPR) -> dict[str, float]:
    """Return {i_auroc, ap, p_auroc, aupro} of one class's maps under the `mvtec-official` protocol.

    maps: (H0, W0) float arrays, one per sample (sizes may differ between samples); truths: the same shapes,
    nonzero = anomalous. Sample label: any anomalous pixel; sample score: the map's maximum. nan where undefined
    (one label only, no region).
    """
    maps, truths = list(maps), list(truths)
    if len(maps) != len(truths):
        raise ValueError(f"{len(maps)} maps but {len(truths)} ground truths")
    for i, (anomaly_map, truth) in enumerate(zip(maps, truths)):
        if np.shape(anomaly_map) != np.shape(truth) or np.ndim(truth) != 2:
            raise ValueError(f"sample {i}: map {np.shape(anomaly_map)} and ground truth {np.shape(truth)} must be "
                             "one (H, W) shape")
    if not maps:
        return {"i_auroc": math.nan, "ap": math.nan, "p_auroc": math.nan, "aupro": math.nan}
    labels = np.array([bool(np.any(t)) for t in truths], np.uint8)
    out = image_metrics(labels, np.array([float(np.max(m)) for m in maps]))
    scores = np.concatenate([np.asarray(m, np.float32).ravel() for m in maps])
    out["p_auroc"] = point_auroc(np.concatenate([(np.asarray(t) != 0).ravel() for t in truths]).astype(np.uint8),
                                 scores)
    ids, offset = [], 0
    for truth in truths:
        region = organized_component_ids(np.asarray(truth) != 0).astype(np.int32).ravel()
        count = int(region.max()) + 1 if region.size else 0
        region[region >= 0] += offset
        offset += count
        ids.append(region)
    out["aupro"] = aupro_components(np.concatenate(ids), scores, max_fpr)
    return out


def cloud_metrics(point_scores, labels) -> dict[str, float]:
    """Return {i_auroc, ap, p_auroc, aupro} of unorganized samples: I-AUROC and AP from each cloud's maximum
    score; no point metric (nan): the protocol is defined on pixel grids. point_scores: (n_i,) arrays;
    labels: (N,) 0/1."""
    maxima = np.array([float(np.max(s)) for s in point_scores])
    if not maxima.size:
        return {"i_auroc": math.nan, "ap": math.nan, "p_auroc": math.nan, "aupro": math.nan}
    return image_metrics(np.asarray(labels), maxima) | {"p_auroc": math.nan, "aupro": math.nan}
