"""`pointad detect --method mutual-scoring` (issue 13): a cloud scored against a reference store's samples.

A sample of the evaluation store, given as a cloud file, is rendered as the store was (3 views, supersample
1, point size 2: bit for bit, see test_detect_numbers.py), left out of its own reference, and scored
against the other test samples of its class: its point scores must be those `eval report --method
mutual-scoring` gives the same row (`eval.mutual.score_class`, with the report's backbone), each input point
taking the score of its nearest stored point (KD-tree here, in the input frame: the MVTec 3D-AD
preprocessing turns the scan 180 degrees about X).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from scipy.spatial import cKDTree

from pointad.eval.detect import detect_mutual, reference_rows
from pointad.eval.mutual import mutual_model_config, score_class
from pointad.eval.options import MutualOptions
from pointad.eval.report import BASELINE_SEED
from pointad.eval.runs import BackboneCache
from pointad.shared.cli import pointad
from pointad.shared.store import open_store
from pointad.train.model.model_config import load_model_config

MVTEC = "synthetic-mvtec3d"
TURN_BACK = np.array([1.0, -1.0, -1.0])


def _crack(eval_store, mvtec_dataset) -> tuple[int, Path]:
    store = open_store(eval_store)
    row = next(int(r) for r in store.indices(dataset=MVTEC, class_name="cookie", split="test")
               if store.identity(int(r))["defect_type"] == "crack")
    return row, Path(mvtec_dataset[1].root) / store.identity(row)["sample_id"]


def _report_scores(eval_store, row, options, inputs):
    """What `eval report --method mutual-scoring` gives the row, mapped to the input points."""
    store = open_store(eval_store)
    rows = [int(r) for r in store.indices(dataset=MVTEC, class_name="cookie", split="test")]
    backbone = BackboneCache(None, "cpu").get(mutual_model_config(load_model_config("tiny"), options.layers),
                                              BASELINE_SEED)
    scored = score_class(eval_store, rows, backbone, options)[rows.index(row)]
    sample = store.sample(row)
    _, nearest = cKDTree(sample.xyz[:sample.n_points].astype(np.float64) * TURN_BACK).query(inputs)
    return scored.point_scores[nearest], scored.score


def _measured(path: Path) -> np.ndarray:
    grid = tifffile.imread(path).astype(np.float64)
    return grid[(np.nan_to_num(grid) != 0).any(axis=-1)]


def _assert_close(got, expected, tolerance=1e-5):
    difference = np.abs(np.asarray(got, np.float64) - expected)
    worst = int(np.argmax(difference))
    assert difference[worst] <= tolerance, f"largest difference {difference[worst]:.3g} at input point {worst}"


@pytest.mark.slow
def test_a_store_sample_gets_the_reports_mutual_scores(eval_store, mvtec_dataset):
    row, path = _crack(eval_store, mvtec_dataset)
    options = MutualOptions(radii=(1, 3), rescore_ks=())   # the sample score: the point map's maximum
    reference = reference_rows(eval_store, MVTEC, "cookie")
    result = detect_mutual(path, reference, model="tiny", options=options)
    assert result.reference.excluded == [open_store(eval_store).identity(row)["sample_id"]]
    assert row not in result.reference.rows and len(result.reference.rows) == len(reference.rows) - 1 == 5
    expected, score = _report_scores(eval_store, row, options, result.points)
    _assert_close(result.point_scores, expected)
    assert result.score == pytest.approx(score, abs=1e-5)
    assert np.ptp(expected) > 0  # not a constant map, which any scorer would match


@pytest.mark.slow
def test_the_command_scores_against_all_views_and_writes_pointads_outputs(eval_store, mvtec_dataset, tmp_path):
    row, path = _crack(eval_store, mvtec_dataset)
    out = tmp_path / "out"
    result = CliRunner().invoke(pointad, ["detect", str(path), "--method", "mutual-scoring", "--reference",
                                          str(eval_store), "--dataset", MVTEC, "--class", "cookie", "--model", "tiny",
                                          "--mutual-views", "all", "--mutual-radii", "1", "--out", str(out),
                                          "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"detect: mutual-scoring against 6 test sample(s) of {MVTEC}/cookie in {eval_store}; "
                               "model tiny; views all")
    assert lines[1].startswith(f"detect: render options recorded in reference store {eval_store}: views 3, ")
    sample_id = open_store(eval_store).identity(row)["sample_id"]
    assert f"detect: left out of the reference, being the cloud itself: {sample_id}" in lines
    summary = json.loads((out / "scores.json").read_text())
    assert summary["method"] == "mutual-scoring" and summary["checkpoint"] is None
    assert summary["reference"] | {"store": None} == {"store": None, "dataset": MVTEC, "class": "cookie", "samples": 5,
                                                      "excluded": [sample_id], "sample_score":
                                                      "maximum of the point scores, not re-scored"}
    inputs = _measured(path)
    expected, score = _report_scores(eval_store, row, MutualOptions(views="all", radii=(1,), rescore_ks=()), inputs)
    _assert_close(np.load(out / "scores.npy"), expected)
    assert summary["sample_score"] == pytest.approx(score, abs=1e-5)
    assert (out / "scores.ply").is_file()


@pytest.mark.parametrize("args, message", [
    (["--dataset", MVTEC, "--class", "bagel"],
     "dataset 'synthetic-mvtec3d' has no test samples of class 'bagel' (classes: cookie, torus)"),
    (["--dataset", MVTEC], "dataset 'synthetic-mvtec3d' holds classes cookie, torus; choose one with --class"),
    (["--class", "cookie"], "holds datasets synthetic-mvtec3d, synthetic-real3d; choose one with --dataset"),
])
def test_a_reference_without_the_class_is_a_one_line_error(eval_store, mvtec_dataset, tmp_path, args, message):
    _, path = _crack(eval_store, mvtec_dataset)
    result = CliRunner().invoke(pointad, ["detect", str(path), "--method", "mutual-scoring", "--reference",
                                          str(eval_store), "--model", "tiny", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {eval_store}: {message}"]
    assert not (tmp_path / "out" / "scores.npy").exists()


def test_mutual_options_belong_to_mutual_scoring(tmp_path):
    cloud = tmp_path / "cloud.xyz"
    cloud.write_text("0 0 0\n")
    result = CliRunner().invoke(pointad, ["detect", str(cloud), "--checkpoint", str(tmp_path), "--reference",
                                          str(tmp_path)])
    assert result.exit_code == 2 and "--reference: for --method mutual-scoring only" in result.output


# --- a reference store built with --downsample (issue 21, item 6) ------------------------------------------

@pytest.fixture(scope="module")
def downsampled_store(mvtec_dataset, tmp_path_factory):
    """The cookie test samples rendered as the evaluation store, but with --downsample 0.5."""
    from pointad.render.build import build_store
    from pointad.render.options import RenderOptions
    out = tmp_path_factory.mktemp("downsampled") / "renders.zarr"
    build_store(mvtec_dataset[1], out, RenderOptions(views=3, image_size=336, supersample=1, point_size=2,
                                                     downsample=0.5), classes=["cookie"], splits=["test"])
    return out


def _nearest_by_brute_force(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(Q,) index of the nearest of `points` to each query, from every distance (no tree)."""
    from scipy.spatial.distance import cdist
    points, queries = np.asarray(points, np.float64), np.asarray(queries, np.float64)
    return np.concatenate([cdist(queries[start:start + 1024], points, "sqeuclidean").argmin(axis=1)
                           for start in range(0, len(queries), 1024)])


@pytest.mark.slow
def test_a_downsampled_reference_scores_the_cloud_as_the_report_does(downsampled_store, mvtec_dataset):
    """The store sample renders as its row (half its points), is recognised as itself and left out, and each
    input point takes the report's score of its nearest stored point (brute force, in the input frame)."""
    store = open_store(downsampled_store)
    row, path = _crack(downsampled_store, mvtec_dataset)
    options = MutualOptions(radii=(1, 3), rescore_ks=())
    reference = reference_rows(downsampled_store, MVTEC, "cookie")
    result = detect_mutual(path, reference, model="tiny", options=options)
    assert result.render.options.downsample == 0.5
    assert result.reference.excluded == [store.identity(row)["sample_id"]] and row not in result.reference.rows
    inputs = _measured(path)
    np.testing.assert_array_equal(result.points, inputs)
    sample = store.sample(row)
    assert sample.n_points < 0.6 * len(inputs)
    rows = [int(r) for r in store.indices(dataset=MVTEC, class_name="cookie", split="test")]
    backbone = BackboneCache(None, "cpu").get(mutual_model_config(load_model_config("tiny"), options.layers),
                                              BASELINE_SEED)
    scored = score_class(downsampled_store, rows, backbone, options)[rows.index(row)]
    frame = sample.xyz[:sample.n_points].astype(np.float64) * TURN_BACK
    _assert_close(result.point_scores, scored.point_scores[_nearest_by_brute_force(frame, inputs)])
    assert result.score == pytest.approx(scored.score, abs=1e-5)
