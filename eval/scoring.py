"""Per-sample scores of PointAD, design §7 (paper section 3.6): point maps, sample scores, RGB and fusion.

The math is in pure functions (arrays in, arrays out); `score_store` is the streaming driver that reads
a store in batches, runs the frozen model and yields one `SampleScores` per row, so memory depends on
the batch size, not on the store. `score_batch` scores rows already in memory (`score_arrays`: one
rendered `SampleArrays`, as `pointad detect` has). Letters as in the store (design §4): B samples, V views, P points,
S pixels, k neighbours, D feature dimension; (H, W) an organized grid (`grid_hw`).

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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from pointad.shared.store import open_store
from pointad.shared.threads import run_each, worker_pool
from pointad.train.model.backbone import encode_views
from pointad.train.model.maps import back_project, class_probabilities, patch_maps

SIGMA = 4.0
BASELINE_PROMPTS = ("A photo of a normal {}.", "A photo of an anomalous {}.")  # clip-rendering, design §7
BATCH_FIELDS = ("image", "pixel", "visible", "valid", "label", "proxy", "grid_index", "grid_hw", "knn",
                "knn_weight", "rgb")


# --- math: arrays in, arrays out -----------------------------------------------------------------------

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


# --- the streaming driver --------------------------------------------------------------------------------

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


TextFeatures = torch.Tensor | Callable[[str], torch.Tensor]


def baseline_text_features(backbone) -> Callable[[str], torch.Tensor]:
    """clip-rendering: class name -> (2, D) features of "A photo of a normal/an anomalous <cls>." (no training)."""
    cache: dict[str, torch.Tensor] = {}

    def features(class_name: str) -> torch.Tensor:
        if class_name not in cache:
            with torch.no_grad():
                cache[class_name] = backbone.encode_text([p.format(class_name) for p in BASELINE_PROMPTS])
        return cache[class_name]
    return features


def _text_for(text_features: TextFeatures, class_names: list[str], device) -> torch.Tensor:
    """(2, D) shared features, or (B, 2, D) one pair per sample from a per-class callable."""
    if torch.is_tensor(text_features):
        return text_features.to(device).float()
    return torch.stack([text_features(name) for name in class_names]).to(device).float()


@dataclass(frozen=True)
class BatchFeatures:
    """The frozen model's features of one batch, shared by every run scored with that model.

    views: (global (B, V, D), patches (L, B*V, G*G, D)) of the renderings; rgb: the same for the RGB
    images of the rows in `rgb_rows` (organized rows with RGB), or None when there are none.
    """

    views: tuple
    rgb_rows: list[int]
    rgb: tuple | None


def encode_batch(batch: dict, backbone, device="cpu", autocast: bool = False) -> BatchFeatures:
    """Run the vision tower once over a batch's renderings and RGB images (`score_batch` reuses them)."""
    count = batch["image"].shape[0]
    rgb_rows = [i for i in range(count) if _organized(batch, i) and batch["rgb"][i].any()]
    views = encode_views(backbone, batch["image"], device, autocast)
    rgb = encode_views(backbone, batch["rgb"][rgb_rows][:, None], device, autocast) if rgb_rows else None
    return BatchFeatures(views=views, rgb_rows=rgb_rows, rgb=rgb)


def _organized(batch: dict, i: int) -> bool:
    return bool(batch["grid_hw"][i].min() > 0 and (batch["grid_index"][i][batch["valid"][i]] >= 0).all())


def _anomaly_outputs(features: tuple, text: torch.Tensor, size: int):
    """(view P_a (B, V), anomaly maps (B, V, S, S)) from `encode_views` output and the text features."""
    global_feature, patches = features
    b, v = global_feature.shape[:2]
    with torch.no_grad():
        view_probs = class_probabilities(text, global_feature)[..., 1]
        maps2d = patch_maps(text, patches, size)[:, 1].reshape(b, v, size, size)
    return view_probs, maps2d


def score_store(store_path, rows, backbone, text_features: TextFeatures, device="cpu", batch_size: int = 4,
                sigma: float = SIGMA, autocast: bool = False, compat: bool = False,
                keep_view_maps=False) -> Iterator[SampleScores]:
    """Yield `SampleScores` for each of `rows` (in order), reading and scoring `batch_size` rows at a time.

    text_features: (2, D) [g_n, g_a] for every sample, or a callable class name -> (2, D) (coop prompts,
    the clip-rendering baseline). Point maps: back-projection of the anomalous patch maps (design §5), then
    `smooth_organized` on samples with a grid, else `smooth_graph`. RGB and fusion for organized
    samples whose rgb/image is not all zero. Each result's identity is the row's, plus "row". compat:
    also the released code's grid maps and scores. keep_view_maps: True, or a set of rows whose
    per-view maps are kept (for figures).
    """
    for scored in score_store_runs(store_path, rows, backbone, [text_features], device, batch_size, sigma,
                                   autocast, compat, keep_view_maps):
        yield scored[0]


def score_store_runs(store_path, rows, backbone, texts: list, device="cpu", batch_size: int = 4,
                     sigma: float = SIGMA, autocast: bool = False, compat: bool = False,
                     keep_view_maps=False, prefetch: bool = True) -> Iterator[list[SampleScores]]:
    """As `score_store` for several runs of one frozen model: yield per row a list, one `SampleScores` per
    text features of `texts`. The vision tower runs once per batch for all of them (the model is frozen,
    only the prompts differ between runs); keep_view_maps applies to the first run. prefetch: read the next
    batch from the store in a thread while this one is scored (the same scores either way)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")  # -2 would score nothing
    store = open_store(store_path)
    rows = [int(r) for r in rows]
    chunks = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]

    def read(chunk):
        return store.read_batch(chunk, BATCH_FIELDS), [store.identity(r) | {"row": r} for r in chunk]
    # the next batch is read (decompressed: Blosc releases the GIL) while this one is scored; the rows of a
    # batch are smoothed on threads of their own (scipy's filters release the GIL too)
    with ThreadPoolExecutor(max_workers=1) as reader, worker_pool() as row_pool:
        pending = reader.submit(read, chunks[0]) if chunks and prefetch else None
        for number, chunk in enumerate(chunks):
            batch, identities = pending.result() if prefetch else read(chunk)
            if prefetch and number + 1 < len(chunks):
                pending = reader.submit(read, chunks[number + 1])
            keep = [keep_view_maps is True or (bool(keep_view_maps) and r in keep_view_maps) for r in chunk]
            features = encode_batch(batch, backbone, device, autocast)
            per_run = [list(score_batch(batch, identities, backbone, text, device, sigma, autocast, compat,
                                        keep if run == 0 else None, features, row_pool))
                       for run, text in enumerate(texts)]
            for i in range(len(chunk)):
                yield [scored[i] for scored in per_run]


def score_arrays(arrays, identity: dict, backbone, text_features: TextFeatures, device="cpu", sigma: float = SIGMA,
                 autocast: bool = False) -> SampleScores:
    """`SampleScores` of one in-memory row (a `shared.store.SampleArrays`, e.g. from `render_sample`).

    identity: needs "class_name" (for per-class text features); kept as the result's identity.
    """
    batch = {name: np.asarray(getattr(arrays, name))[None] for name in BATCH_FIELDS}
    return next(score_batch(batch, [identity], backbone, text_features, device, sigma, autocast))


def _compat_scores(raw_points, grid_index, grid_hw, view_probs, rgb_map, rgb_prob, sigma) -> dict:
    """block -> (grid map (H, W) float32, sample score) as the released code scores (module docstring)."""
    point_grid = compat_grid_map(raw_points, grid_index, grid_hw, sigma)
    out = {"point": (point_grid, sample_score(view_probs, point_grid))}
    if rgb_map is not None:
        rgb_grid = gaussian_filter(np.asarray(rgb_map, np.float64), sigma)
        fused = compat_fused_map(point_grid, rgb_grid, sigma)
        out["rgb"] = (rgb_grid, sample_score([rgb_prob], rgb_grid))
        out["multimodal"] = (fused, fused_sample_score(out["point"][1], out["rgb"][1], fused))
    return {block: (grid.astype(np.float32), score) for block, (grid, score) in out.items()}


def score_batch(batch: dict, identities: list[dict], backbone, text_features: TextFeatures, device="cpu",
                sigma: float = SIGMA, autocast: bool = False, compat: bool = False,
                keep_view_maps: list[bool] | None = None, features: BatchFeatures | None = None,
                pool: ThreadPoolExecutor | None = None) -> Iterator[SampleScores]:
    """Yield `SampleScores` per row of `batch` ({field: (B, ...)} with the BATCH_FIELDS, as `read_batch` gives).

    compat: also the released code's grid maps (organized rows); keep_view_maps: per row, keep its view maps;
    features: the batch's `encode_batch` output when already computed (else computed here); pool: threads
    that smooth the rows side by side (the same scores, in row order), else one row after another.
    """
    count = len(identities)
    keep_view_maps = keep_view_maps or [False] * count
    features = features if features is not None else encode_batch(batch, backbone, device, autocast)
    size = batch["image"].shape[2]
    text = _text_for(text_features, [i["class_name"] for i in identities], device)
    view_probs, maps2d = _anomaly_outputs(features.views, text, size)
    with torch.no_grad():
        tensors = {k: torch.from_numpy(batch[k]).to(device) for k in ("pixel", "visible", "valid", "proxy")}
        raw = back_project(maps2d, tensors["pixel"], tensors["visible"], tensors["valid"], tensors["proxy"])
    raw, view_probs = raw.cpu().numpy(), view_probs.cpu().numpy()

    organized = [_organized(batch, i) for i in range(count)]
    with_rgb = features.rgb_rows
    rgb_probs = rgb_maps = None
    if with_rgb:
        rgb_text = text[with_rgb] if text.ndim == 3 else text
        rgb_probs, rgb_maps = _anomaly_outputs(features.rgb, rgb_text, batch["rgb"].shape[1])
        rgb_probs, rgb_maps = rgb_probs[:, 0].cpu().numpy(), rgb_maps[:, 0]

    def row_scores(i: int) -> SampleScores:
        valid = batch["valid"][i]
        grid_hw = tuple(int(x) for x in batch["grid_hw"][i])
        grid_index = batch["grid_index"][i][valid]
        # the point and multimodal maps of a row share its grid's weight (RGB rows are organized rows)
        weight = organized_weight(grid_index, grid_hw, sigma) if organized[i] else None
        if organized[i]:
            point_map = smooth_organized(raw[i][valid], grid_index, grid_hw, sigma, weight)
        else:
            point_map = smooth_graph(raw[i], batch["knn"][i], batch["knn_weight"][i])[valid]
        score = sample_score(view_probs[i], point_map)
        extra = {}
        rgb_grid = rgb_prob = None
        if i in with_rgb:
            j = with_rgb.index(i)
            rgb_map = rgb_maps[j]
            if keep_view_maps[i]:
                extra["rgb_view_map"] = rgb_map.cpu().numpy().astype(np.float16)
            if tuple(rgb_map.shape) != grid_hw:  # the RGB image is S x S; put its map on the grid
                rgb_map = F.interpolate(rgb_map[None, None], size=grid_hw, mode="bilinear",
                                        align_corners=False)[0, 0]
            rgb_grid, rgb_prob = rgb_map.cpu().numpy(), float(rgb_probs[j])
            rgb_points = rgb_point_map(rgb_grid, grid_index, sigma)
            rgb_score = sample_score(rgb_probs[j:j + 1], rgb_points)
            fused = fused_point_map(point_map, rgb_points, grid_index, grid_hw, sigma, weight)
            extra |= dict(rgb_point_scores=rgb_points.astype(np.float32), rgb_score=rgb_score,
                          multimodal_point_scores=fused.astype(np.float32),
                          multimodal_score=fused_sample_score(score, rgb_score, fused))
        if compat and organized[i]:
            extra["compat"] = _compat_scores(raw[i][valid], grid_index, grid_hw, view_probs[i], rgb_grid, rgb_prob,
                                             sigma)
        if keep_view_maps[i]:
            extra["view_maps"] = maps2d[i].cpu().numpy().astype(np.float16)
        return SampleScores(identity=identities[i], point_scores=point_map.astype(np.float32),
                            point_labels=batch["label"][i][valid], score=score,
                            grid_index=grid_index.astype(np.int32), grid_hw=grid_hw,
                            knn=compact_knn(batch["knn"][i], valid), **extra)

    yield from run_each(pool, row_scores, range(count))
