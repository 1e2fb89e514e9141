"""Figures of the evaluation stage: view heatmap sheets, score-coloured PLYs, ROC and PRO plots.

Pure functions build arrays or `matplotlib.figure.Figure`s; the `write_*` functions save them atomically
(`shared.io.atomic_path`: parent folders created, a temporary name renamed on success) and return the path.
Drawing goes through `Figure` + `FigureCanvasAgg`, never pyplot: no global state, no display, thread-safe.
Curves are computed with `eval.metrics`, so a legend's AUROC / AU-PRO is the number the report tabulates.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from sklearn.metrics import auc, roc_curve

from ..shared.io import atomic_path
from .metrics import aupro_from_curve, graph_components, organized_component_ids, pro_curve

HEAT_CMAP = "jet"
PANEL_INCHES = 2.6   # one view of a sheet
TITLE_INCHES = 0.3   # a view's title above it
MARGIN_INCHES = 0.6  # sheet title (height), colour bar (width)


# --- colours ----------------------------------------------------------------------------------------------

def score_colors(scores, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """(P, 3) float64 RGB in [0, 1]: linear ramp from blue (score vmin) to red (score vmax), clipped.

    scores: (P,) float. The ramp is (s, 0, 1 - s) with s = (score - vmin) / (vmax - vmin) clipped to [0, 1].
    """
    _check_range(vmin, vmax)
    s = np.clip((np.asarray(scores, np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
    return np.stack([s, np.zeros_like(s), 1.0 - s], axis=1)


def heatmap_overlay(image, heat, alpha: float = 0.5, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Return (S, S, 3) uint8: (1 - alpha) * image + alpha * jet(heat), rounded; NaN heat keeps the image.

    image: (S, S, 3) uint8 (any H, W); heat: (S, S) float (float16 view maps included), clipped to
    [vmin, vmax] and normalised to [0, 1] before matplotlib's "jet" colormap.
    """
    image = np.asarray(image)
    heat = np.asarray(heat, np.float64)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat has shape {heat.shape}, image {image.shape}; heat must be the image's (H, W)")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_range(vmin, vmax)
    missing = np.isnan(heat)
    level = (np.clip(np.where(missing, vmin, heat), vmin, vmax) - vmin) / (vmax - vmin)
    colour = colormaps[HEAT_CMAP](level)[..., :3] * 255.0
    blended = np.rint((1.0 - alpha) * image + alpha * colour)
    return np.where(missing[..., None], image, blended).astype(np.uint8)


# --- the per-view heatmap sheet -----------------------------------------------------------------------------

def sheet_size(views: int, columns: int = 3) -> tuple[float, float]:
    """(width, height) in inches of a sheet of `views` panels in `columns` columns (fewer if views < columns)."""
    if views < 1 or columns < 1:
        raise ValueError(f"need at least one view and one column, got views={views}, columns={columns}")
    columns = min(columns, views)
    rows = math.ceil(views / columns)
    return columns * PANEL_INCHES + MARGIN_INCHES, rows * (PANEL_INCHES + TITLE_INCHES) + MARGIN_INCHES


def view_sheet_figure(images, heats, title: str, columns: int = 3, vmin: float = 0.0,
                      vmax: float = 1.0) -> Figure:
    """Return a Figure: a grid of `heatmap_overlay` panels titled "view k" (k = 0-based view index), one
    colour bar for [vmin, vmax] and `title` above. images: (V, S, S, 3) uint8; heats: (V, S, S) float."""
    images, heats = np.asarray(images), np.asarray(heats)
    if images.ndim != 4 or heats.shape != images.shape[:3]:
        raise ValueError(f"images {images.shape} and heats {heats.shape} must be (V, S, S, 3) and (V, S, S)")
    views = len(images)
    figure = Figure(figsize=sheet_size(views, columns), layout="constrained")
    columns = min(columns, views)
    axes = figure.subplots(math.ceil(views / columns), columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < views:
            ax.imshow(heatmap_overlay(images[k], heats[k], vmin=vmin, vmax=vmax), interpolation="nearest")
            ax.set_title(f"view {k}", fontsize=9)
    mappable = ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=colormaps[HEAT_CMAP])
    figure.colorbar(mappable, ax=axes, shrink=0.8, label="anomaly score")
    figure.suptitle(title)
    return figure


def write_view_sheet(path, images, heats, title: str, columns: int = 3, vmin: float = 0.0,
                     vmax: float = 1.0, dpi: int = 150) -> Path:
    """Write `view_sheet_figure` as a PNG of exactly `sheet_size` * dpi pixels, atomically; return the path."""
    return _save(view_sheet_figure(images, heats, title, columns, vmin, vmax), path, dpi)


# --- the score-coloured cloud ----------------------------------------------------------------------------

PLY_SCALE_COMMENT = "pointad colour_scale"  # "<name> <vmin> <vmax>" in a scored PLY's comments


def color_scale(scores, threshold: float | None = None) -> tuple[float, float]:
    """(vmin, vmax) of a score-coloured cloud: the scores' min..max, or, with a threshold, the smallest range
    centred on it that holds every score (the threshold is then the middle colour). A constant cloud gets a
    range of width 1e-6 (from its value, or around the threshold)."""
    values = np.asarray(scores, np.float64).ravel()
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if threshold is not None:
        half = max(abs(high - threshold), abs(threshold - low), 5e-7)
        return float(threshold) - half, float(threshold) + half
    return (low, high) if high > low else (low, low + 1e-6)


def _ply_vertex_dtype(with_labels: bool) -> np.dtype:
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
              ("score", "<f4")]
    return np.dtype(fields + ([("label", "u1")] if with_labels else []))


_PLY_TYPES = {"<f8": "double", "<f4": "float", "|u1": "uchar"}


def write_scored_ply(path, points, scores, vmin: float | None = None, vmax: float | None = None, *,
                     labels=None, threshold: float | None = None, comments=()) -> Path:
    """Write a binary little-endian PLY of points (P, 3) with, per point, `score_colors` as uchar
    red/green/blue, the score as `property float score` and, when labels (P,) 0/1 are given, `property uchar
    label`; atomically; return the path.

    The colour scale is [vmin, vmax] when given, else `color_scale(scores, threshold)`; it is written in the
    comments as "pointad colour_scale <vmin> <vmax>" (repr floats), with the threshold and `comments` (one
    line each). Written with numpy, so Open3D's tensor API (`open3d.t.io.read_point_cloud`: point["score"],
    point["label"]), CloudCompare and MeshLab (scalar fields) see the numbers, not only the colours.
    """
    points = np.asarray(points, np.float64)
    scores = np.asarray(scores)
    if points.ndim != 2 or points.shape[1] != 3 or scores.shape != (len(points),):
        raise ValueError(f"points {points.shape} and scores {scores.shape} must be (P, 3) and (P,)")
    if labels is not None and np.shape(labels) != (len(points),):
        raise ValueError(f"labels {np.shape(labels)} must be (P,) like the scores")
    if (vmin is None) != (vmax is None):
        raise ValueError("give both vmin and vmax, or neither")
    if vmin is None:
        vmin, vmax = color_scale(scores, threshold)
    vertex = np.empty(len(points), _ply_vertex_dtype(labels is not None))
    vertex["x"], vertex["y"], vertex["z"] = points.T
    shown = np.where(np.isfinite(scores), scores, vmin)  # a nan score (none expected) is painted as vmin
    colours = np.rint(score_colors(shown, vmin, vmax) * 255.0).astype(np.uint8)
    vertex["red"], vertex["green"], vertex["blue"] = colours.T
    vertex["score"] = scores.astype(np.float32)
    if labels is not None:
        vertex["label"] = np.asarray(labels).astype(np.uint8)
    notes = ["pointad scored cloud: score = per-point anomaly score (higher = more anomalous)",
             f"{PLY_SCALE_COMMENT} {float(vmin)!r} {float(vmax)!r} (blue = vmin, red = vmax, clipped)"]
    if threshold is not None:
        notes.append(f"pointad threshold {float(threshold)!r}")
    if labels is not None:
        notes.append("pointad label = ground truth, 1 anomalous, 0 normal")
    lines = ["ply", "format binary_little_endian 1.0"]
    lines += [f"comment {' '.join(str(note).split())}" for note in [*notes, *comments]]
    lines.append(f"element vertex {len(points)}")
    lines += [f"property {_PLY_TYPES[vertex.dtype.fields[name][0].str]} {name}" for name in vertex.dtype.names]
    lines.append("end_header")
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(("\n".join(lines) + "\n").encode("ascii", "replace"))
            handle.write(vertex.tobytes())
    return path


# --- ROC ---------------------------------------------------------------------------------------------------

def roc_points(labels, scores) -> tuple[np.ndarray, np.ndarray, float]:
    """Return (fpr, tpr, auroc): sklearn's `roc_curve` and the area under it (equal to `roc_auc_score`).

    labels: (M,) 0/1, 1 = anomalous; scores: (M,) float. Empty curves and nan with one class only.
    """
    labels, scores = np.ravel(labels), np.ravel(scores)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must have one length")
    if np.unique(labels).size != 2:
        return np.empty(0), np.empty(0), float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr, float(auc(fpr, tpr))


def roc_figure(curves: dict, title: str) -> Figure:
    """Return a Figure with one ROC line per name of curves {name: (labels (M,), scores (M,))}, the legend
    giving each AUROC ("name (AUROC 0.923)", "n/a" when undefined) and the chance diagonal."""
    figure = Figure(figsize=(5.0, 5.0), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", linewidth=1, color="0.6")
    for name, (labels, scores) in curves.items():
        fpr, tpr, auroc = roc_points(labels, scores)
        ax.plot(fpr, tpr, label=legend_label(name, "AUROC", auroc))
    _finish_axes(ax, title, "false positive rate", "true positive rate")
    return figure


def write_roc_plot(path, curves: dict, title: str, dpi: int = 150) -> Path:
    """Write `roc_figure` as a PNG atomically; return the path."""
    return _save(roc_figure(curves, title), path, dpi)


# --- PRO ---------------------------------------------------------------------------------------------------

def organized_pro_curve(masks, scores, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """Return (fpr, pro), the whole PRO curve behind `metrics.aupro_organized` (protocol ``points``).

    masks, scores: (N, H, W) (or one (H, W) map); valid: same shape, bool, or None (all valid).
    Empty arrays when undefined.
    """
    region = organized_component_ids(masks)
    scores = np.asarray(scores)
    keep = np.ones(region.shape, bool) if valid is None else np.asarray(valid, bool)
    if scores.shape != region.shape or keep.shape != region.shape:
        raise ValueError(f"masks {region.shape}, scores {scores.shape} and valid {keep.shape} must match")
    return pro_curve(region[keep], scores[keep])


def graph_pro_curve(labels, scores, knn, valid=None) -> tuple[np.ndarray, np.ndarray]:
    """Return (fpr, pro), the whole PRO curve behind `metrics.aupro_graph` (protocol ``points``).

    labels, scores: (N, P) (or (P,)); knn: (N, P, k) int, -1 = none; valid: (N, P) bool or None.
    """
    region = graph_components(labels, knn, valid)
    scores = np.asarray(scores)
    keep = np.ones(region.shape, bool) if valid is None else np.asarray(valid, bool)
    if scores.shape != region.shape or keep.shape != region.shape:
        raise ValueError(f"labels {region.shape}, scores {scores.shape} and valid {keep.shape} must match")
    return pro_curve(region[keep], scores[keep])


def pro_figure(curves: dict, title: str, max_fpr: float = 0.3) -> Figure:
    """Return a Figure of PRO against FPR, one line per name of curves {name: (fpr (C,), pro (C,))}, a
    vertical line at max_fpr and the legend giving each `metrics.aupro_from_curve` up to max_fpr."""
    figure = Figure(figsize=(5.0, 5.0), layout="constrained")
    ax = figure.subplots()
    for name, (fpr, pro) in curves.items():
        value = aupro_from_curve(fpr, pro, max_fpr)
        ax.plot(fpr, pro, label=legend_label(name, f"AU-PRO@{max_fpr:g}", value))
    ax.axvline(max_fpr, linestyle=":", linewidth=1, color="0.4")
    _finish_axes(ax, title, "false positive rate", "per-region overlap")
    return figure


def write_pro_plot(path, curves: dict, title: str, max_fpr: float = 0.3, dpi: int = 150) -> Path:
    """Write `pro_figure` as a PNG atomically; return the path."""
    return _save(pro_figure(curves, title, max_fpr), path, dpi)


def legend_label(name: str, metric: str, value: float) -> str:
    """'name (metric 0.923)', or 'name (metric n/a)' when value is nan."""
    return f"{name} ({metric} {'n/a' if math.isnan(value) else f'{value:.3f}'})"


# --- helpers -----------------------------------------------------------------------------------------------

def _finish_axes(ax, title, xlabel, ylabel):
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title, aspect="equal")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)


def _save(figure: Figure, path, dpi: int) -> Path:
    path = Path(path)
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return path


def _check_range(vmin, vmax):
    if not vmax > vmin:
        raise ValueError(f"vmax must exceed vmin, got vmin={vmin}, vmax={vmax}")
