"""`eval report --report-format json` carries the per-sample scores: the table's sample metrics follow from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from click.testing import CliRunner
from sklearn.metrics import average_precision_score, roc_auc_score

from pointad.shared.cli import pointad
from pointad.shared.store import open_store

MVTEC = "synthetic-mvtec3d"


@pytest.fixture(scope="module")
def json_report(eval_store, tmp_path_factory):
    """The JSON report of the untrained baseline (tiny model) on the organized, RGB dataset's cookie class,
    both protocols. A whole report (seconds), so the tests using it are marked slow."""
    result = CliRunner().invoke(pointad, ["eval", "report", "--store", str(eval_store), "--dataset", MVTEC,
                                          "--method", "clip-rendering", "--model", "tiny", "--report-format", "json",
                                          "--protocol", "both", "--classes", "cookie", "--device", "cpu",
                                          "--figures", tmp_path_factory.mktemp("figures"), "--figure-samples", "1"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_every_test_sample_is_listed_once_with_its_identity(json_report, eval_store):
    store = open_store(eval_store)
    expected = {(store.identity(int(r))["sample_id"], store.identity(int(r))["label"], store.identity(int(r))["class_name"])
                for r in store.indices(dataset=MVTEC, class_name="cookie", split="test")}
    listed = [(s["sample_id"], s["label"], s["class"]) for s in json_report["samples"]]
    assert len(listed) == len(set(listed)) and set(listed) == expected
    assert {s["run"] for s in json_report["samples"]} == {"clip-rendering"}
    assert all(isinstance(s[block], float) for s in json_report["samples"] for block in ("point", "rgb", "multimodal"))


@pytest.mark.parametrize("protocol", ["points", "pointad-compat"])
@pytest.mark.slow
def test_the_samples_reproduce_the_tables_i_auroc_and_ap(json_report, protocol):
    samples = json_report["samples"]
    checked = 0
    for row in json_report["rows"]:
        if row["protocol"] != protocol or row["class"] == "mean":
            continue
        mine = [s for s in samples if s["class"] == row["class"]]
        labels = [s["label"] for s in mine]
        scores = [s[row["block"]] if protocol == "points" else s["pointad-compat"][row["block"]] for s in mine]
        assert row["I-AUROC"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12), (row["class"], row["block"])
        assert row["AP"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        checked += 1
    assert checked == 3   # class cookie, blocks point, rgb, multimodal



@pytest.mark.slow
def test_figure_plys_carry_the_ground_truth_labels_and_the_class_scale(json_report, eval_store):
    store = open_store(eval_store)
    folder = Path(json_report["header"]["figures"]) / "cookie"
    clouds = sorted(folder.glob("*_point.ply"))
    assert len(clouds) == 2   # one anomalous, one good
    by_stem = {s["sample_id"].removesuffix(".tiff").replace("/", "_"): s["row"] for s in json_report["samples"]}
    scales = set()
    for path in clouds:
        stored = store.sample(by_stem[path.name.removesuffix("_point.ply")])
        cloud = o3d.t.io.read_point_cloud(str(path))
        np.testing.assert_array_equal(cloud.point["label"].numpy().ravel(), stored.label[stored.valid])
        score = cloud.point["score"].numpy().ravel()
        header = path.read_bytes().split(b"end_header")[0].decode()
        vmin, vmax = (float(v) for v in header.split("pointad colour_scale ")[1].split()[:2])
        assert vmin <= score.min() and score.max() <= vmax
        scales.add((vmin, vmax))
    assert len(scales) == 1   # one scale for the class's samples, so their colours compare
