"""Metrics of one test class (design §7): a class's `SampleScores` -> I-AUROC, AP, P-AUROC, AUPRO per block.

The scored samples of a class are laid out as the metrics want them: organized maps (N, H, W) on their
grids, unorganized clouds (N, P) with their k-NN graphs, or the released code's full grids
(`pointad-compat`); `eval/report.py` tabulates, `eval/report_figures.py` draws the same arrays.
"""

from __future__ import annotations

import math

import numpy as np

from ..shared.errors import PointADError
from ..shared.limits import nonfinite
from .metrics import aupro_components, aupro_graph, aupro_pointad_compat, image_metrics, organized_component_ids, point_auroc
from .score_maps import SampleScores

BLOCKS = ("point", "rgb", "multimodal")
METRICS = {"i_auroc": "I-AUROC", "ap": "AP", "p_auroc": "P-AUROC", "aupro": "AUPRO"}


def nonfinite_scores(result: SampleScores) -> str | None:
    """What of one sample's scores is NaN or +-inf ("the sample score is nan; 3 of 1200 point scores are NaN or
    inf"), or None when every score (point, RGB and multimodal blocks, the compat grids) is finite."""
    found = []
    for block, score, points in (("", result.score, result.point_scores),
                                 ("RGB ", result.rgb_score, result.rgb_point_scores),
                                 ("multimodal ", result.multimodal_score, result.multimodal_point_scores)):
        if score is not None and not math.isfinite(float(score)):
            found.append(f"the {block}sample score is {float(score)}")
        bad = 0 if points is None else nonfinite(points)
        if bad:
            found.append(f"{bad} of {np.size(points)} {block}point scores are NaN or inf")
    for block, (grid, score) in (result.compat or {}).items():
        if nonfinite(grid) or not math.isfinite(float(score)):
            found.append(f"the {block} pointad-compat scores are NaN or inf")
    return "; ".join(found) or None


def require_finite_scores(results, source: str) -> None:
    """PointADError in one line naming `source` (a checkpoint, a run and class) and the sample when a score of
    `results` (SampleScores) is NaN or inf: the metrics, a report or a detection would be silently wrong or
    invalid JSON. Such scores come from prompts or weights that are not finite (a diverged run)."""
    for result in results:
        problem = nonfinite_scores(result)
        if problem is not None:
            sample = result.identity.get("sample_id", "?")
            raise PointADError(f"{source}: sample {sample}: {problem} (prompts or model weights not finite? a "
                               "diverged run); use another checkpoint or train again")


def block_arrays(results: list[SampleScores], block: str):
    """(samples, sample scores, point scores per sample) of one block; RGB blocks keep samples with RGB."""
    if block == "point":
        return results, [r.score for r in results], [r.point_scores for r in results]
    kept = [r for r in results if r.has_rgb]
    return (kept, [getattr(r, f"{block}_score") for r in kept], [getattr(r, f"{block}_point_scores") for r in kept])


def grid_maps(samples, point_scores):
    """(labels, scores, valid) (N, H, W) on the organized grids, padded to the largest grid (valid False)."""
    height = max(s.grid_hw[0] for s in samples)
    width = max(s.grid_hw[1] for s in samples)
    labels = np.zeros((len(samples), height, width), np.uint8)
    scores = np.zeros((len(samples), height, width), np.float64)
    valid = np.zeros((len(samples), height, width), bool)
    for i, (sample, values) in enumerate(zip(samples, point_scores)):
        rows, cols = np.divmod(sample.grid_index, sample.grid_hw[1])
        labels[i, rows, cols], scores[i, rows, cols], valid[i, rows, cols] = sample.point_labels, values, True
    return labels, scores, valid


def organized_regions(samples) -> np.ndarray:
    """(M,) int64 region id of every sample's points in order, -1 for normal ones: 8-connected components of
    each sample's mask on its own grid, numbered apart across samples.

    What `aupro_organized(*grid_maps(...))` counts, without the (N, H, W) grids: memory stays with the points.
    """
    ids, offset = [], 0
    for sample in samples:
        labels = np.asarray(sample.point_labels)
        region = np.full(len(labels), -1, np.int64)
        if labels.any():
            mask = np.zeros(int(np.prod(sample.grid_hw)), np.uint8)
            mask[sample.grid_index] = labels
            region = organized_component_ids(mask.reshape(sample.grid_hw))[np.divmod(sample.grid_index,
                                                                                      sample.grid_hw[1])]
            region[region >= 0] += offset
            offset = int(region.max()) + 1
        ids.append(region)
    return np.concatenate(ids)


def graph_arrays(samples, point_scores):
    """(labels, scores, knn, valid) (N, n_max[, k]) of unorganized samples, padded (valid False, knn -1)."""
    n_max = max(len(s.point_labels) for s in samples)
    k = samples[0].knn.shape[1]
    labels = np.zeros((len(samples), n_max), np.uint8)
    scores = np.zeros((len(samples), n_max), np.float64)
    knn = np.full((len(samples), n_max, k), -1, np.int32)
    valid = np.zeros((len(samples), n_max), bool)
    for i, (sample, values) in enumerate(zip(samples, point_scores)):
        n = len(sample.point_labels)
        labels[i, :n], scores[i, :n], knn[i, :n], valid[i, :n] = sample.point_labels, values, sample.knn, True
    return labels, scores, knn, valid


def compat_arrays(samples, block):
    """(labels, scores (N, H, W), sample scores) of the released code's grid maps (`SampleScores.compat`)."""
    if any(s.compat is None for s in samples):
        raise ValueError("pointad-compat needs samples scored with compat=True")
    labels, _, _ = grid_maps(samples, [s.point_labels for s in samples])  # missing cells: label 0
    scores = np.zeros(labels.shape, np.float64)
    for i, sample in enumerate(samples):
        grid = sample.compat[block][0]
        scores[i, :grid.shape[0], :grid.shape[1]] = grid
    return labels, scores, [s.compat[block][1] for s in samples]


def class_metrics(results: list[SampleScores], block: str, protocol: str) -> dict[str, float]:
    """{i_auroc, ap, p_auroc, aupro} of one class's scored samples in one block and protocol (nan if undefined)."""
    samples, sample_scores, point_scores = block_arrays(results, block)
    if not samples:
        return {name: math.nan for name in METRICS}
    sample_labels = np.array([s.identity["label"] for s in samples])
    organized = all(s.organized for s in samples)
    if protocol == "points":
        out = image_metrics(sample_labels, np.array(sample_scores))
        out["p_auroc"] = point_auroc(np.concatenate([s.point_labels for s in samples]), np.concatenate(point_scores))
        if organized:
            out["aupro"] = aupro_components(organized_regions(samples), np.concatenate(point_scores))
        else:
            labels, scores, knn, valid = graph_arrays(samples, point_scores)
            out["aupro"] = aupro_graph(labels, scores, knn, valid)
    elif organized:
        labels, scores, compat_scores = compat_arrays(samples, block)
        out = image_metrics(sample_labels, np.array(compat_scores))
        out["p_auroc"] = point_auroc(labels.ravel(), scores.ravel())
        out["aupro"] = aupro_pointad_compat(labels, scores)
    else:  # no grid to fill: sample metrics as in `points`, no point metrics
        out = image_metrics(sample_labels, np.array(sample_scores)) | {"p_auroc": math.nan, "aupro": math.nan}
    return out
