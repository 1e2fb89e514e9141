"""`eval report --export-maps DIR` and the `mvtec-official` protocol (design §7.3, §7.4).

The report's mvtec-official numbers are recomputed here from the exported files alone (read with tifffile)
and the dataset's ground-truth PNGs, by code written apart from eval/: I-AUROC with sklearn on each map's
maximum, AU-PRO as MVTec's script defines it (every pixel, regions by scipy's 8-connected labelling, one curve
point per distinct score, trapezoid up to FPR 0.3). The map geometry is checked against a brute-force walk and
against the store's own preprocessing (render.preprocess).
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from pointad.eval.cli import eval_
from pointad.eval.official_protocol import (
    BACKGROUND,
    background_below,
    official_metrics,
    original_cells,
    original_map,
    store_grid_truth,
)
from pointad.render.preprocess import pad_to_square, resize_nearest
from pointad.shared.store import open_store

MVTEC, REAL3D = "synthetic-mvtec3d", "synthetic-real3d"
BLOCKS = ("point", "rgb", "multimodal")
LIMIT = 0.3


# --- the definition, written out (test-only) ------------------------------------------------------------

def _trapezoid_up_to(x, y, x_max):
    """Area under the polyline (x, y) from x[0] to x_max, the curve interpolated linearly at x_max."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    inside = x <= x_max
    area = float(np.sum((x[inside][1:] - x[inside][:-1]) * (y[inside][1:] + y[inside][:-1]) / 2))
    first_out = np.flatnonzero(~inside)
    if first_out.size and inside.any():
        j = first_out[0]
        x0, x1, y0, y1 = x[j - 1], x[j], y[j - 1], y[j]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x_max - x0) * (y0 + y_at) / 2
    return area


def _official_au_pro(maps, truths, limit=LIMIT):
    """MVTec's AU-PRO: sort every pixel by score (descending), FPR and PRO accumulate per pixel, one curve point
    per distinct score (the last of a run of ties), (0, 0) before and (1, 1) after, area up to `limit` / limit."""
    scores, normal, weight, regions = [], [], [], 0
    for anomaly_map, truth in zip(maps, truths):
        labelled, count = ndimage.label(truth, structure=np.ones((3, 3)))
        share = np.zeros(truth.shape)
        for k in range(1, count + 1):
            share[labelled == k] = 1.0 / np.count_nonzero(labelled == k)
        scores.append(np.asarray(anomaly_map, np.float64).ravel())
        normal.append((labelled == 0).ravel())
        weight.append(share.ravel())
        regions += count
    scores, normal, weight = map(np.concatenate, (scores, normal, weight))
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    fpr = np.cumsum(normal[order]) / normal.sum()
    pro = np.cumsum(weight[order]) / regions
    last_of_tie = np.append(ranked[1:] != ranked[:-1], True)
    fpr = np.concatenate([[0.0], np.minimum(fpr[last_of_tie], 1.0), [1.0]])
    pro = np.concatenate([[0.0], np.minimum(pro[last_of_tie], 1.0), [1.0]])
    return _trapezoid_up_to(fpr, pro, limit) / limit


def _cell_brute_force(source_index, length, size):
    """The grid cell a source row reads: the last cell i whose sampled row floor(i * length / size) <= it."""
    return max(i for i in range(size) if (i * length) // size <= source_index)


# --- the geometry and the math -----------------------------------------------------------------------------

@pytest.mark.parametrize("original_hw, grid, square", [((13, 9), 7, "pad"), ((9, 13), 7, "pad"),
                                                     ((13, 9), 7, "stretch"), ((5, 8), 11, "pad")])
def test_each_original_pixel_reads_the_cell_its_row_and_column_fall_in(original_hw, grid, square):
    height, width = original_hw
    rows, cols = original_cells(original_hw, (grid, grid), square)
    side = max(height, width)
    top, left = ((side - height) // 2, (side - width) // 2) if square == "pad" else (0, 0)
    length_h, length_w = (side, side) if square == "pad" else (height, width)
    assert rows.tolist() == [_cell_brute_force(r + top, length_h, grid) for r in range(height)]
    assert cols.tolist() == [_cell_brute_force(c + left, length_w, grid) for c in range(width)]


@pytest.mark.parametrize("original_hw, square", [((400, 400), "pad"), ((900, 400), "pad"), ((400, 700), "pad"),
                                                 ((800, 600), "stretch")])
def test_resizing_the_exported_map_as_preprocessing_does_gives_the_store_grid_back(original_hw, square):
    """Every cell's score (and its background) comes back where preprocessing would sample it."""
    rng = np.random.default_rng(0)
    grid_hw = (336, 336)
    measured = np.ones(original_hw, bool)  # cells made of padding hold no point: left out
    scanned = resize_nearest(pad_to_square(measured) if square == "pad" else measured, 336).ravel()
    cells = np.flatnonzero(scanned & (rng.random(336 * 336) < 0.6))  # the rest of the scan: no point
    scores = rng.random(cells.size).astype(np.float32)
    exported = original_map(scores, cells, grid_hw, original_hw, square)
    assert exported.shape == original_hw and exported.dtype == np.float32
    again = resize_nearest(pad_to_square(exported) if square == "pad" else exported, 336).ravel()
    assert np.array_equal(again[cells], scores)
    empty = np.setdiff1d(np.flatnonzero(scanned), cells)
    assert empty.size and np.all(again[empty] == BACKGROUND)


@pytest.mark.parametrize("original_hw, square", [((400, 400), "pad"), ((900, 400), "pad"), ((300, 500), "stretch")])
def test_the_ground_truth_on_the_store_grid_is_what_preprocessing_makes(original_hw, square):
    truth = np.random.default_rng(1).random(original_hw) < 0.3
    made = resize_nearest((pad_to_square(truth) if square == "pad" else truth).astype(np.uint8), 336) != 0
    assert np.array_equal(store_grid_truth(truth, (336, 336), square), made)


def test_background_lies_below_every_score_and_a_score_at_it_is_refused():
    assert background_below([np.array([0.0, 0.5])]) == BACKGROUND
    assert background_below([np.array([-3.5, 2.0])]) == -5.0
    with pytest.raises(ValueError, match="not below every score"):
        original_map(np.array([-1.0]), np.array([0]), (2, 2), (4, 4), background=-1.0)


def test_official_metrics_of_hand_made_maps():
    truth = np.zeros((6, 6), bool)
    truth[1:3, 1:3] = True
    good = np.zeros((6, 6), bool)
    perfect = [truth * 1.0 + 0.1, np.full((6, 6), 0.1)]
    assert official_metrics(perfect, [truth, good]) == {"i_auroc": 1.0, "ap": 1.0, "p_auroc": 1.0, "aupro": 1.0}
    reversed_ = [1.0 - m for m in perfect]
    out = official_metrics(reversed_, [truth, good])
    assert out["p_auroc"] == 0.0 and out["aupro"] == 0.0
    flat = official_metrics([np.zeros((6, 6)), np.zeros((6, 6))], [truth, good])
    assert math.isclose(flat["aupro"], 0.15) and flat["i_auroc"] == 0.5  # PRO = FPR on the whole curve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_official_metrics_equal_the_definition_on_random_maps_of_several_sizes(seed):
    rng = np.random.default_rng(seed)
    maps, truths = [], []
    for shape in ((20, 30), (25, 25), (18, 40), (30, 20)):
        truth = ndimage.binary_dilation(rng.random(shape) < 0.01, iterations=2)
        maps.append(np.round(rng.random(shape) + 0.5 * truth, 2).astype(np.float32))  # rounding: many ties
        truths.append(truth)
    truths[1][:] = False  # one good sample
    out = official_metrics(maps, truths)
    labels = [int(t.any()) for t in truths]
    maxima = [float(m.max()) for m in maps]
    assert math.isclose(out["i_auroc"], roc_auc_score(labels, maxima), abs_tol=1e-12)
    assert math.isclose(out["ap"], average_precision_score(labels, maxima), abs_tol=1e-12)
    all_labels = np.concatenate([t.ravel() for t in truths])
    assert math.isclose(out["p_auroc"], roc_auc_score(all_labels, np.concatenate([m.ravel() for m in maps])),
                        abs_tol=1e-12)
    assert math.isclose(out["aupro"], _official_au_pro(maps, truths), abs_tol=1e-12)


# --- the command ----------------------------------------------------------------------------------------------

def _run(args):
    return CliRunner().invoke(eval_, ["report", "--device", "cpu", "--method", "clip-rendering", "--model", "tiny",
                                      "--setting", "cross-dataset", *map(str, args)])


@pytest.fixture(scope="module")
def exported(eval_store, mvtec_dataset, tmp_path_factory):
    """(report JSON, export folder, dataset root): the baseline on the MVTec-format classes, every protocol."""
    root = mvtec_dataset[1].root
    folder = tmp_path_factory.mktemp("export") / "maps"
    out = folder.parent / "report.json"
    result = _run(["--store", eval_store, "--dataset", MVTEC, "--protocol", "all", "--export-maps", folder,
                   "--root", root, "--report-format", "json", "--out", out])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), folder, root


def _check_official_rows(report, folder, dataset, truth_png) -> int:
    """Recompute every mvtec-official row of `report` from the exported TIFFs and the ground-truth PNGs
    (truth_png(class, defect folder, stem) -> its path); return how many rows were checked."""
    manifest = json.loads((folder / dataset / "manifest.json").read_text())
    assert manifest["protocol"] == "mvtec-official" and manifest["pro_integration_limit"] == LIMIT
    rows = {(r["block"], r["class"]): r for r in report["rows"] if r["protocol"] == "mvtec-official"}
    checked = 0
    for entry in manifest["maps"]:
        for class_name, info in entry["classes"].items():
            maps, truths = [], []
            for tiff in sorted((folder / dataset / entry["folder"] / class_name / "test").glob("*/*.tiff")):
                with Image.open(truth_png(class_name, tiff.parent.name, tiff.stem)) as png:
                    truth = np.asarray(png) > 0
                anomaly_map = tifffile.imread(tiff)
                with tifffile.TiffFile(tiff) as opened:  # deflate: any tifffile decodes it with Python's zlib
                    assert opened.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
                assert anomaly_map.dtype == np.float32 and anomaly_map.shape == truth.shape
                assert anomaly_map.min() >= info["background"]
                maps.append(anomaly_map)
                truths.append(truth)
            assert len(maps) == info["samples"] == 6
            row = rows[entry["block"], class_name]
            labels = [int(t.any()) for t in truths]
            expected = {"I-AUROC": roc_auc_score(labels, [m.max() for m in maps]),
                        "AUPRO": _official_au_pro(maps, truths)}
            for column, value in expected.items():
                assert math.isclose(row[column], value, abs_tol=1e-9), (entry["block"], class_name, column,
                                                                         row[column], value)
            checked += 1
    return checked


@pytest.mark.slow
def test_the_printed_mvtec_official_numbers_follow_from_the_exported_files_alone(exported):
    report, folder, root = exported
    checked = _check_official_rows(report, folder, MVTEC,
                                   lambda class_name, defect, stem: root / class_name / "test" / defect / "gt"
                                   / f"{stem}.png")
    assert checked == 6  # 3 blocks x 2 classes
    # the report says which protocol each number follows, and where the maps are
    assert report["header"]["protocols"] == ["points", "pointad-compat", "mvtec-official"]
    assert "MVTec 3D-AD's evaluation script" in report["header"]["protocol_definitions"]["mvtec-official"]
    assert report["header"]["export_maps"] == str(folder / MVTEC)


@pytest.mark.slow
def test_raw_eyecandies_maps_take_the_size_of_their_masks_and_give_the_printed_numbers(eyecandies_dataset,
                                                                                      tmp_path):
    """Eyecandies as it is downloaded keeps <id>_mask.png beside <id>_depth.png: the export reads those masks,
    writes <class>/test/<good|bad>/<id>.tiff, and the printed numbers follow from the files."""
    from pointad.render.build import build_store
    from pointad.render.options import RenderOptions
    entry = eyecandies_dataset[1]
    store = tmp_path / "renders.zarr"
    build_store(entry, store, RenderOptions(views=3, image_size=336, supersample=1, point_size=2), classes=["cookie"],
                splits=["test"])
    folder, out = tmp_path / "maps", tmp_path / "report.json"
    result = _run(["--store", store, "--dataset", entry.name, "--protocol", "mvtec-official", "--export-maps", folder,
                   "--root", entry.root, "--report-format", "json", "--out", out])
    assert result.exit_code == 0, result.output
    data = entry.root / "cookie" / "test_public" / "data"
    masks = {mask.name.removesuffix("_mask.png"): mask for mask in data.glob("*_mask.png")}
    exported = sorted((folder / entry.name / "run-0" / "point" / "cookie" / "test").glob("*/*.tiff"))
    assert sorted(t.stem for t in exported) == sorted(masks)  # every test sample, by its number
    for tiff in exported:  # good or bad as its mask says
        assert tiff.parent.name == ("bad" if np.asarray(Image.open(masks[tiff.stem])).any() else "good")
    assert _check_official_rows(json.loads(out.read_text()), folder, entry.name,
                                lambda class_name, defect, stem: data / f"{stem}_mask.png") == 3  # 3 blocks


@pytest.mark.slow
def test_each_map_holds_the_sample_scores_at_its_points_cells(exported, eval_store):
    """A cell's score is in every original pixel that reads it; the background where the store has no point."""
    _, folder, _ = exported
    store = open_store(eval_store)
    row = next(int(r) for r in store.indices(dataset=MVTEC, class_name="torus", split="test")
               if store.identity(int(r))["label"] == 1)
    sample = store.sample(row)
    identity = store.identity(row)
    stem = identity["sample_id"].rsplit("/", 1)[1].removesuffix(".tiff")
    anomaly_map = tifffile.imread(folder / MVTEC / "run-0" / "point" / "torus" / "test" / identity["defect_type"]
                                  / f"{stem}.tiff")
    back = resize_nearest(pad_to_square(anomaly_map), 336).ravel()
    cells = sample.grid_index[sample.valid]
    assert (back[cells] > BACKGROUND).all()
    empty = np.setdiff1d(np.arange(336 * 336), cells)
    assert (back[empty] == BACKGROUND).all()


@pytest.mark.slow
def test_unorganized_samples_export_their_point_scores(eval_store, real3d_dataset, tmp_path):
    folder = tmp_path / "maps"
    out = tmp_path / "report.json"
    result = _run(["--store", eval_store, "--dataset", REAL3D, "--classes", "cookie", "--protocol", "mvtec-official",
                   "--export-maps", folder, "--report-format", "json", "--out", out])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    store = open_store(eval_store)
    maxima, labels = [], []
    for r in store.indices(dataset=REAL3D, class_name="cookie", split="test"):
        identity = store.identity(int(r))
        stem = identity["sample_id"].rsplit("/", 1)[1].rsplit(".", 1)[0]
        scores = np.load(folder / REAL3D / "run-0" / "point" / "cookie" / "test" / identity["defect_type"]
                         / f"{stem}.npy")
        assert scores.dtype == np.float32 and scores.shape == (int(store.sample(int(r)).valid.sum()),)
        maxima.append(float(scores.max()))
        labels.append(identity["label"])
    row = next(r for r in report["rows"] if r["block"] == "point" and r["class"] == "cookie")
    assert math.isclose(row["I-AUROC"], roc_auc_score(labels, maxima), abs_tol=1e-9)
    assert row["AUPRO"] is None and row["P-AUROC"] is None


@pytest.mark.slow
def test_markdown_labels_each_table_with_its_protocol(eval_store, mvtec_dataset, tmp_path):
    result = _run(["--store", eval_store, "--dataset", MVTEC, "--classes", "cookie", "--protocol", "mvtec-official",
                   "--export-maps", tmp_path / "maps", "--root", mvtec_dataset[1].root])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    heading = lines.index("## point (mvtec-official)")
    assert lines[heading + 2].startswith("protocol mvtec-official: MVTec 3D-AD's evaluation script on the exported")


@pytest.mark.slow
def test_a_ground_truth_that_does_not_match_the_store_is_refused(eval_store, mvtec_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mvtec_dataset[1].root / "cookie", root / "cookie")
    gt = next(p for p in sorted((root / "cookie" / "test").glob("*/gt/*.png")) if p.parent.parent.name != "good")
    Image.fromarray(np.zeros_like(np.asarray(Image.open(gt)))).save(gt)  # the defect erased
    result = _run(["--store", eval_store, "--dataset", MVTEC, "--classes", "cookie", "--export-maps",
                   tmp_path / "maps", "--root", root])
    assert result.exit_code == 1
    last = result.output.strip().split("\r")[-1].strip()  # after the scoring bar: the class was scored
    assert last.startswith(f"Error: {gt}: does not match the store's labels of sample cookie/"), result.output
    assert "\n" not in last and "Traceback" not in result.output


@pytest.mark.slow
def test_a_missing_ground_truth_is_refused_before_any_scoring(eval_store, mvtec_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(mvtec_dataset[1].root / "cookie", root / "cookie")
    gt = sorted((root / "cookie" / "test").glob("*/gt/*.png"))[-1]
    gt.unlink()
    result = _run(["--store", eval_store, "--dataset", MVTEC, "--classes", "cookie", "--export-maps",
                   tmp_path / "maps", "--root", root])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {gt}: ground truth not found; --export-maps reads MVTec 3D-AD's layout "
                                     "<class>/test/<defect>/gt/<stem>.png beside xyz/, or raw Eyecandies' <id>_mask.png "
                                     "beside <id>_depth.png (is --root the dataset's folder?)")


@pytest.mark.parametrize("args, message", [
    (["--protocol", "mvtec-official"], "--protocol mvtec-official scores the exported maps: give --export-maps DIR"),
    (["--root", "x"], "--root applies to --export-maps only"),
])
def test_options_that_need_an_export_are_refused(eval_store, args, message):
    result = _run(["--store", eval_store, "--dataset", MVTEC, *args])
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_folder_holding_other_files_is_refused_before_any_work(eval_store, tmp_path):
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "notes.txt").write_text("mine")
    result = _run(["--store", eval_store, "--dataset", MVTEC, "--export-maps", tmp_path / "maps"])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {tmp_path / 'maps'}: holds other files; --export-maps writes into a new "
                                     "or empty folder")
    assert [p.name for p in (tmp_path / "maps").iterdir()] == ["notes.txt"]


def test_a_dataset_the_registry_does_not_know_needs_root(eval_store, tmp_path):
    result = _run(["--store", eval_store, "--dataset", MVTEC, "--classes", "cookie", "--export-maps", tmp_path / "m"])
    assert result.exit_code == 1 and "pass --root, its folder" in result.output, result.output
