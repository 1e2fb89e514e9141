"""Every cell `eval report` prints, recomputed from the raw per-sample scores by code written apart.

The scoring stays the code's (`eval.scoring.score_store`: point, RGB and multimodal maps and sample
scores, and the released code's grids). Everything after it is redone here from the definitions in
design §7, reading point labels (sample labels follow from them), grid cells and k-NN graphs from the
store itself: sklearn's AUROC and AP on raw arrays, the regions by flood fill, the `points` AU-PRO
walked threshold by threshold, the `pointad-compat` AU-PRO as the released code's 200-threshold loop,
and plain means over classes.
One fixed tiny run, both synthetic datasets (organized with RGB; unorganized), both protocols; the
report's JSON must agree to 1e-9 in every cell.
"""

from __future__ import annotations

import json
import math
from collections import deque

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.metrics import auc, average_precision_score, roc_auc_score

from pointad.eval.cli import eval_
from pointad.eval.runs import BackboneCache, load_run
from pointad.eval.scoring import score_store
from pointad.shared.store import open_store

MVTEC, REAL3D = "synthetic-mvtec3d", "synthetic-real3d"
COLUMNS = ("I-AUROC", "AP", "P-AUROC", "AUPRO")
MAX_FPR = 0.3


# --- the definitions, written out (test-only) ------------------------------------------------------------

def _auroc(labels, scores):
    labels = np.asarray(labels)
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else math.nan


def _ap(labels, scores):
    labels = np.asarray(labels)
    return float(average_precision_score(labels, scores)) if 0 < labels.sum() < labels.size else math.nan


def _flood_fill(nodes, neighbours):
    """Connected components of `nodes` (a set); neighbours(node) -> candidate nodes. Returns lists of nodes."""
    left, regions = set(nodes), []
    while left:
        start = left.pop()
        region, queue = [start], deque([start])
        while queue:
            for other in neighbours(queue.popleft()):
                if other in left:
                    left.remove(other)
                    region.append(other)
                    queue.append(other)
        regions.append(region)
    return regions


def _grid_regions(cells, width):
    """8-connected regions of the anomalous cells (flat indices row * width + col) of one map."""
    def around(cell):
        row, col = divmod(cell, width)
        return [(row + dr) * width + col + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                if (dr or dc) and 0 <= col + dc < width]
    return _flood_fill({int(c) for c in cells}, around)


def _graph_regions(anomalous, knn):
    """Regions of the anomalous points (indices) of one cloud: joined by a k-NN edge in either direction."""
    anomalous = {int(j) for j in anomalous}
    links = {j: set() for j in anomalous}
    for j in anomalous:
        for other in knn[j]:
            if other >= 0 and int(other) in anomalous and other != j:
                links[j].add(int(other))
                links[int(other)].add(j)
    return _flood_fill(anomalous, links.__getitem__)


def _aupro_by_definition(normal_scores, region_scores, max_fpr=MAX_FPR):
    """design §7 `points`: at every distinct score t (descending) FPR(t) = share of normal points >= t and
    PRO(t) = mean over the regions of the share of their points >= t; the polyline from (0, 0) is
    integrated by trapezoids up to FPR = max_fpr, interpolated there, divided by max_fpr."""
    if len(normal_scores) == 0 or not region_scores:
        return math.nan
    scores = np.concatenate([normal_scores, *region_scores])
    owner = np.concatenate([np.full(len(normal_scores), -1)]
                           + [np.full(len(s), r) for r, s in enumerate(region_scores)])
    order = np.argsort(-scores, kind="stable")
    scores, owner = scores[order].tolist(), owner[order].tolist()
    step = [1.0 / (len(s) * len(region_scores)) for s in region_scores]
    n_normal = len(normal_scores)
    xs, ys = [0.0], [0.0]
    normal_above, pro, i = 0, 0.0, 0
    while i < len(scores) and xs[-1] <= max_fpr:
        threshold = scores[i]
        while i < len(scores) and scores[i] == threshold:
            if owner[i] < 0:
                normal_above += 1
            else:
                pro += step[owner[i]]
            i += 1
        xs.append(normal_above / n_normal)
        ys.append(pro)
    area = 0.0
    for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:]):
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_at) / 2
            break
    return area / max_fpr


def _aupro_released(masks, scores, max_fpr=MAX_FPR, steps=200):
    """The released PointAD code's `cal_pro_score`: thresholds np.arange(min, max, (max - min) / 200), a cell is
    positive when its score is above the threshold, PRO = mean over the 8-connected regions of every map,
    FPR over label-0 cells, points with FPR < max_fpr kept, FPR min-max normalised, sklearn's auc."""
    low, high = scores.min(), scores.max()
    width = masks.shape[2]
    regions = []
    for i, mask in enumerate(masks):
        for cells in _grid_regions(np.flatnonzero(mask), width):
            regions.append(scores[i].ravel()[cells])
    normal = scores[masks == 0]
    fprs, pros = [], []
    for threshold in np.arange(low, high, (high - low) / steps):
        fprs.append(np.count_nonzero(normal > threshold) / normal.size)
        pros.append(np.mean([np.count_nonzero(region > threshold) / region.size for region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    kept = fprs < max_fpr
    fprs = fprs[kept]
    return float(auc((fprs - fprs.min()) / (fprs.max() - fprs.min()), pros[kept]))


# --- one class's cells from its raw scores -----------------------------------------------------------------

def _points_aupro(stored, point_scores, organized):
    """AU-PRO (`points`) over the valid points of a class's samples."""
    normal, regions = [], []
    for sample, scores in zip(stored, point_scores):
        n = sample.n_points
        labels = sample.label[:n]
        normal.append(scores[labels == 0])
        anomalous = np.flatnonzero(labels)
        if organized:
            cell_to_point = dict(zip(sample.grid_index[:n][anomalous].tolist(), anomalous.tolist()))
            found = [[cell_to_point[c] for c in cells]
                     for cells in _grid_regions(list(cell_to_point), int(sample.grid_hw[1]))]
        else:
            found = _graph_regions(anomalous, sample.knn[:n])
        regions += [scores[np.array(points)] for points in found]
    return _aupro_by_definition(np.concatenate(normal), regions)


def _full_grid_labels(sample):
    height, width = (int(x) for x in sample.grid_hw)
    grid = np.zeros(height * width, np.uint8)
    grid[sample.grid_index[:sample.n_points]] = sample.label[:sample.n_points]
    return grid.reshape(height, width)


def _class_cells(stored, scored, block, protocol):
    """{column: value} of one class, block and protocol, from the store rows and their `SampleScores`."""
    if block != "point":
        keep = [i for i, s in enumerate(scored) if s.rgb_score is not None]
        stored, scored = [stored[i] for i in keep], [scored[i] for i in keep]
        if not scored:
            return {c: math.nan for c in COLUMNS}
    sample_labels = [int(s.label[:s.n_points].any()) for s in stored]  # anomalous iff it has an anomalous point
    organized = all(tuple(s.grid_hw) != (0, 0) for s in stored)
    if protocol == "pointad-compat" and organized:
        sample_scores = [s.compat[block][1] for s in scored]
        masks = np.stack([_full_grid_labels(s) for s in stored])
        grids = np.stack([np.asarray(s.compat[block][0], np.float64) for s in scored])
        return {"I-AUROC": _auroc(sample_labels, sample_scores), "AP": _ap(sample_labels, sample_scores),
                "P-AUROC": _auroc(masks.ravel(), grids.ravel()), "AUPRO": _aupro_released(masks, grids)}
    sample_scores = [{"point": s.score, "rgb": s.rgb_score, "multimodal": s.multimodal_score}[block] for s in scored]
    cells = {"I-AUROC": _auroc(sample_labels, sample_scores), "AP": _ap(sample_labels, sample_scores)}
    if protocol == "pointad-compat":  # an unorganized class has no grid to fill
        return cells | {"P-AUROC": math.nan, "AUPRO": math.nan}
    point_scores = [np.asarray({"point": s.point_scores, "rgb": s.rgb_point_scores,
                                "multimodal": s.multimodal_point_scores}[block], np.float64) for s in scored]
    point_labels = np.concatenate([s.label[:s.n_points] for s in stored])
    return cells | {"P-AUROC": _auroc(point_labels, np.concatenate(point_scores)),
                    "AUPRO": _points_aupro(stored, point_scores, organized)}


def _expected_rows(store_path, run_dir, dataset, classes):
    """{(protocol, block, class): {column: value}} recomputed from the raw scores, mean rows included."""
    store = open_store(store_path)
    run = load_run(run_dir, BackboneCache(None, "cpu"))
    expected = {}
    blocks = ("point", "rgb", "multimodal") if dataset == MVTEC else ("point",)
    for name in classes:
        rows = store.indices(dataset=dataset, class_name=name, split="test")
        stored = [store.sample(int(r)) for r in rows]
        scored = list(score_store(store_path, rows, run.backbone, run.text, batch_size=4, compat=True))
        assert [s.identity["sample_id"] for s in scored] == [s.sample_id for s in stored]
        for protocol in ("points", "pointad-compat"):
            for block in blocks:
                expected[protocol, block, name] = _class_cells(stored, scored, block, protocol)
    for protocol in ("points", "pointad-compat"):
        for block in blocks:
            mean = {}
            for column in COLUMNS:
                finite = [expected[protocol, block, n][column] for n in classes
                          if math.isfinite(expected[protocol, block, n][column])]
                mean[column] = sum(finite) / len(finite) if finite else math.nan
            expected[protocol, block, "mean"] = mean
    return expected


# --- the report against them ---------------------------------------------------------------------------------

# the unorganized dataset with one class only, to save its scoring time: the organized one covers the mean row
@pytest.mark.parametrize("dataset, classes", [(MVTEC, ["cookie", "torus"]), (REAL3D, ["cookie"])], ids=[MVTEC, REAL3D])
@pytest.mark.slow
def test_every_report_cell_equals_the_independent_recomputation(eval_store, numbers_run, dataset, classes, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(eval_, ["report", "--store", str(eval_store), "--checkpoints", str(numbers_run),
                                        "--dataset", dataset, "--setting", "cross-dataset", "--protocol", "both",
                                        *[f"--classes={name}" for name in classes],
                                        "--device", "cpu", "--report-format", "json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {(r["protocol"], r["block"], r["class"]): r for r in json.loads(out.read_text())["rows"]}
    expected = _expected_rows(eval_store, numbers_run, dataset, classes)
    assert sorted(rows) == sorted(expected)
    worst, where = 0.0, None
    for key, cells in expected.items():
        for column, value in cells.items():
            printed = rows[key][column]
            if math.isnan(value):
                assert printed is None and rows[key][f"{column} runs"] == 0, (key, column, printed)
                continue
            assert printed is not None, (key, column, value)
            assert rows[key][f"{column} runs"] == 1 and rows[key][f"{column} std"] == 0.0
            if abs(printed - value) > worst:
                worst, where = abs(printed - value), (key, column, printed, value)
    assert worst <= 1e-9, f"largest difference {worst:.3g} at {where}"
    if len(classes) > 1:  # the classes differ, so the mean row is no other statistic in disguise
        points = [expected["points", "point", name]["P-AUROC"] for name in classes]
        assert abs(points[0] - points[1]) > 1e-3
