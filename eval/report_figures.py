"""The figures of `eval report --figures DIR` (design §7), one folder per test class, from the first run:

- `roc.png`: sample-level ROC per block (point, RGB, multimodal), AUROC in the legend;
- `pro.png`: PRO against FPR per block (protocol `points`: valid points, k-NN regions when unorganized);
- per chosen sample (`pick_rows`: the sample ids asked for, or else the first anomalous ones in store
  order and the first good one):
  `<sample>_views.png` (each rendering with its anomaly map), `<sample>_rgb.png` (the RGB image and its
  map, when the sample has RGB), `<sample>_point.ply` and `<sample>_multimodal.ply` (the valid points
  coloured by their scores, with `score` and the ground-truth `label` as PLY properties
  (`figures.write_scored_ply`): open in CloudCompare or MeshLab, or with `open3d.t.io.read_point_cloud`).
Colour scales are shared within a class (the range of that class's scores), so its samples compare.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..shared.names import path_component, unique_component
from .class_metrics import BLOCKS, block_arrays, graph_arrays, grid_maps
from .figures import graph_pro_curve, organized_pro_curve, write_pro_plot, write_roc_plot, write_scored_ply, write_view_sheet
from .score_maps import SampleScores


def pick_rows(store, rows, anomalous: int, sample_ids=()) -> set[int]:
    """The rows among `rows` whose sample id is in `sample_ids` when given, else the first `anomalous`
    anomalous rows and the first good row (store order)."""
    identities = {int(r): store.identity(int(r)) for r in rows}
    if sample_ids:
        return {r for r, identity in identities.items() if identity["sample_id"] in set(sample_ids)}
    bad = [r for r, identity in identities.items() if identity["label"] == 1][:anomalous]
    good = [r for r, identity in identities.items() if identity["label"] == 0][:1]
    return set(bad + good)


def file_stem(sample_id: str) -> str:
    """A sample id as one file name (`shared.names.path_component`): its file suffix dropped, path separators
    and other odd characters '_', never '..' or hidden."""
    return path_component(re.sub(r"\.[A-Za-z]+$", "", str(sample_id)), fallback="sample")


def class_folder(directory, class_name: str) -> Path:
    """directory/<class name as one folder name>: a name that had to be cleaned gets a hash of the original
    (`shared.names.unique_component`), so no class name reaches outside `directory` or shares a folder."""
    return Path(directory) / unique_component(class_name, fallback="class")


def _score_range(arrays) -> tuple[float, float]:
    values = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low, low + 1e-6)


def _curves(results: list[SampleScores]) -> tuple[dict, dict]:
    """({block: (sample labels, sample scores)}, {block: (fpr, pro)}) of the blocks with samples."""
    roc, pro = {}, {}
    for block in BLOCKS:
        samples, sample_scores, point_scores = block_arrays(results, block)
        if not samples:
            continue
        roc[block] = (np.array([s.identity["label"] for s in samples]), np.array(sample_scores))
        if all(s.organized for s in samples):
            pro[block] = organized_pro_curve(*grid_maps(samples, point_scores))
        else:
            pro[block] = graph_pro_curve(*graph_arrays(samples, point_scores))
    return roc, pro


def write_class_figures(directory, class_name: str, results: list[SampleScores], store, run_label: str) -> list[Path]:
    """Write the class's figures (module docstring) under `class_folder(directory, class_name)`; return the paths.

    results: the class's scored samples; those with `view_maps` (scored with keep_view_maps) get the
    per-sample figures, their renderings and points read from `store`.
    """
    folder = class_folder(directory, class_name)
    roc, pro = _curves(results)
    written = [write_roc_plot(folder / "roc.png", roc, f"{class_name}: sample ROC ({run_label})"),
               write_pro_plot(folder / "pro.png", pro, f"{class_name}: PRO, valid points ({run_label})")]
    chosen = [r for r in results if r.view_maps is not None]
    if not chosen:
        return written
    map_range = _score_range([r.view_maps for r in chosen])
    point_range = _score_range([r.point_scores for r in results])
    for result in chosen:
        stored = store.sample(int(result.identity["row"]))
        stem = file_stem(result.identity["sample_id"])
        kind = "anomalous" if result.identity["label"] else "good"
        title = f"{class_name} {result.identity['sample_id']} ({kind}), score {result.score:.3f}"
        written.append(write_view_sheet(folder / f"{stem}_views.png", stored.image, result.view_maps, title,
                                        vmin=map_range[0], vmax=map_range[1]))
        points = stored.xyz[stored.valid]
        about = [f"pointad sample {result.identity['sample_id']} class {class_name} run {run_label}",
                 "pointad colour scale shared by the class's samples"]
        written.append(write_scored_ply(folder / f"{stem}_point.ply", points, result.point_scores, *point_range,
                                        labels=result.point_labels, comments=about))
        if result.has_rgb and result.rgb_view_map is not None:
            written.append(write_view_sheet(folder / f"{stem}_rgb.png", stored.rgb[None], result.rgb_view_map[None],
                                            f"{title}, RGB", columns=1, vmin=map_range[0], vmax=map_range[1]))
            written.append(write_scored_ply(folder / f"{stem}_multimodal.ply", points,
                                            result.multimodal_point_scores,
                                            *_score_range([r.multimodal_point_scores for r in results if r.has_rgb]),
                                            labels=result.point_labels, comments=about))
    return written
