"""`pointad detect` scores equal the store's scores of the same sample, mapped to the input points here.

A cloud of the synthetic datasets is both a row of the evaluation store and a file `detect` can read.
Given no render options, `detect` renders as the checkpoint's training store was rendered (the store
uses non-default ones: 3 views, supersample 1, point size 2), so its rendering must be the stored row's
and its per-point scores the store-based scores of that row (`score_store`), each input point taking the
score of its nearest stored point, found by a KD-tree built in this test in the INPUT frame: the MVTec
3D-AD preprocessing turns the scan 180 degrees about X ((x, y, z) -> (x, -y, -z)), so the stored points
are turned back first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import tifffile
from scipy.spatial import cKDTree

from pointad.eval.detect import checkpoint_render, detect, render_cloud, write_detection
from pointad.eval.runs import BackboneCache, load_run
from pointad.eval.scoring import score_store
from pointad.shared.store import open_store

MVTEC, REAL3D = "synthetic-mvtec3d", "synthetic-real3d"


def _input_points(path: Path) -> np.ndarray:
    """The points a user's file holds: a TIFF's measured cells (not all zero, not NaN) row by row, or a cloud's."""
    if path.suffix == ".tiff":
        grid = tifffile.imread(path).astype(np.float64)
        return grid[(np.nan_to_num(grid) != 0).any(axis=-1)]
    return np.asarray(o3d.io.read_point_cloud(str(path)).points, np.float64)


# (dataset, turn back into the input frame, tolerance): the TIFF runs the very same rendering and scoring as
# the store row, bit for bit; the PCD is read as float64 here and as float32 by the dataset reader, which
# moves a few rendered pixels (measured on the crack sample: 5 of 22504 points differ, by at most 2.0e-5;
# on the bump sample 4.1e-5)
CASES = [(MVTEC, np.array([1.0, -1.0, -1.0]), 1e-6), (REAL3D, np.array([1.0, 1.0, 1.0]), 1e-4)]


@pytest.mark.parametrize("dataset, turn_back, tolerance", CASES, ids=[MVTEC, REAL3D])
@pytest.mark.slow
def test_detect_scores_are_the_store_scores_of_the_nearest_point(eval_store, numbers_run, mvtec_dataset,
                                                                  real3d_dataset, dataset, turn_back, tolerance,
                                                                  tmp_path):
    entry = (mvtec_dataset if dataset == MVTEC else real3d_dataset)[1]
    store = open_store(eval_store)
    row = next(int(r) for r in store.indices(dataset=dataset, class_name="cookie", split="test")
               if store.identity(int(r))["defect_type"] == "crack")
    sample = store.sample(row)
    path = Path(entry.root) / sample.sample_id
    result = detect(path, numbers_run)  # no render options: the checkpoint's record decides
    npy, _, _ = write_detection(result, tmp_path / "out")

    inputs = _input_points(path)
    np.testing.assert_array_equal(result.points, inputs)  # every input point, in input order
    run = load_run(numbers_run, BackboneCache(None, "cpu"))
    stored = next(score_store(eval_store, [row], run.backbone, run.text, batch_size=1))
    frame = sample.xyz[:sample.n_points].astype(np.float64) * turn_back
    _, nearest = cKDTree(frame).query(inputs)
    expected = stored.point_scores[nearest]
    difference = np.abs(np.load(npy) - expected)
    worst = int(np.argmax(difference))
    assert difference[worst] <= tolerance, f"largest difference {difference[worst]:.3g} at input point {worst}"
    assert abs(result.score - stored.score) <= tolerance
    assert len(inputs) > sample.n_points or dataset == REAL3D  # the TIFF's dropped cells took a neighbour's score


def _crack_row(store, dataset):
    return next(int(r) for r in store.indices(dataset=dataset, class_name="cookie", split="test")
                if store.identity(int(r))["defect_type"] == "crack")


def test_detect_renders_a_store_sample_as_the_store_did(eval_store, numbers_run, mvtec_dataset):
    store = open_store(eval_store)
    sample = store.sample(_crack_row(store, MVTEC))
    choice = checkpoint_render(numbers_run)
    assert choice.recorded and set(choice.sources.values()) == {"recorded"}
    assert (choice.options.views, choice.options.supersample, choice.options.point_size) == (3, 1, 2.0)
    _, _, _, arrays = render_cloud(Path(mvtec_dataset[1].root) / sample.sample_id, choice)
    np.testing.assert_array_equal(arrays.image, sample.image)   # (3, 336, 336, 3): every pixel of every view
    n = sample.n_points
    assert arrays.n_points == n
    np.testing.assert_array_equal(arrays.xyz[:n], sample.xyz[:n])
    np.testing.assert_array_equal(arrays.pixel[:, :n], sample.pixel[:, :n])
    np.testing.assert_array_equal(arrays.visible[:, :n], sample.visible[:, :n])
