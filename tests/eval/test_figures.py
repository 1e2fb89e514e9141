"""Figures: overlays against the colormap, PNG/PLY files read back, legend numbers equal to the metrics."""

from __future__ import annotations

import math

import numpy as np
import open3d as o3d
import pytest
from matplotlib import colormaps
from PIL import Image
from scipy.spatial import cKDTree
from sklearn.metrics import roc_auc_score

from pointad.eval import figures
from pointad.eval.figures import (
    graph_pro_curve,
    heatmap_overlay,
    organized_pro_curve,
    pro_figure,
    roc_figure,
    roc_points,
    sheet_size,
    write_pro_plot,
    write_roc_plot,
    write_scored_ply,
    write_view_sheet,
)
from pointad.eval.metrics import aupro_from_curve, aupro_graph, aupro_organized, organized_component_ids
from pointad.shared.errors import PointADError


def _jet255(value):
    """The 0..255 RGB matplotlib's jet gives a normalised value, rounded: the overlay's colour at alpha 1."""
    return np.rint(np.array(colormaps["jet"](value)[:3]) * 255)


def _overlay_by_loop(image, heat, alpha, vmin, vmax):
    out = image.copy()
    for r in range(image.shape[0]):
        for c in range(image.shape[1]):
            if not math.isnan(heat[r, c]):
                level = (min(max(heat[r, c], vmin), vmax) - vmin) / (vmax - vmin)
                colour = np.array(colormaps["jet"](level)[:3]) * 255
                out[r, c] = np.rint((1 - alpha) * image[r, c].astype(float) + alpha * colour)
    return out


def _random_views(seed, views=9, size=24):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (views, size, size, 3), dtype=np.uint8)
    ramp = np.linspace(0, 1, size)
    heats = np.broadcast_to(ramp[None, None, :] * ramp[None, :, None], (views, size, size)).copy()
    heats[:, :3, :3] = np.nan
    return images, heats


def _only_file(folder, name):
    assert sorted(p.name for p in folder.iterdir()) == [name], "temporary files left behind"


# --- overlay -----------------------------------------------------------------------------------------------

def test_overlay_with_alpha_zero_returns_the_image():
    images, heats = _random_views(0, views=1)
    np.testing.assert_array_equal(heatmap_overlay(images[0], heats[0], alpha=0.0), images[0])


@pytest.mark.parametrize("heat, vmin, vmax, level", [(0.3, 0.0, 1.0, 0.3), (5.0, 0.0, 10.0, 0.5),
                                                      (20.0, 0.0, 10.0, 1.0), (-1.0, 0.0, 1.0, 0.0)])
def test_overlay_with_alpha_one_is_the_jet_colour(heat, vmin, vmax, level):
    image = np.full((4, 4, 3), 77, np.uint8)
    out = heatmap_overlay(image, np.full((4, 4), heat), alpha=1.0, vmin=vmin, vmax=vmax)
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out, np.broadcast_to(_jet255(level), (4, 4, 3)))


def test_nan_heat_keeps_the_image():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    heat = np.array([[np.nan, 0.9, np.nan], [0.1, np.nan, 0.5]], np.float16)
    out = heatmap_overlay(image, heat, alpha=0.7)
    np.testing.assert_array_equal(out[np.isnan(heat)], image[np.isnan(heat)])
    assert (out[~np.isnan(heat)] != image[~np.isnan(heat)]).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlay_matches_the_loop(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    heat = rng.uniform(-0.5, 2.5, (7, 9))
    heat[rng.random((7, 9)) < 0.2] = np.nan
    ours = heatmap_overlay(image, heat, alpha=0.4, vmin=0.0, vmax=2.0)
    diff = np.abs(ours.astype(int) - _overlay_by_loop(image, heat, 0.4, 0.0, 2.0))
    assert diff.max() == 0, f"largest difference {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"


def test_overlay_refuses_bad_input_with_a_reason():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match=r"heat has shape \(4, 5\)"):
        heatmap_overlay(image, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="uint8"):
        heatmap_overlay(image.astype(np.float32), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="vmax must exceed vmin"):
        heatmap_overlay(image, np.zeros((4, 4)), vmin=1.0, vmax=1.0)


# --- view sheet --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_view_sheet_of_nine_views_reads_back_with_its_grid_aspect(tmp_path):
    images, heats = _random_views(1)
    path = write_view_sheet(tmp_path / "sheets" / "cookie_003.png", images, heats, "cookie 003", dpi=50)
    assert path == tmp_path / "sheets" / "cookie_003.png"
    _only_file(path.parent, path.name)
    with Image.open(path) as png:
        assert png.format == "PNG"
        sheet = np.asarray(png.convert("RGB"))
    # 3 x 3 panels, each with its title above, plus the margins for the colour bar and the sheet title
    panel, title, margin = figures.PANEL_INCHES, figures.TITLE_INCHES, figures.MARGIN_INCHES
    width, height = 3 * panel + margin, 3 * (panel + title) + margin
    assert sheet.shape == (round(height * 50), round(width * 50), 3)
    assert 0.8 < sheet.shape[0] / sheet.shape[1] < 1.25  # a 3 x 3 grid is close to square
    colours = np.unique(sheet.reshape(-1, 3), axis=0)
    assert len(colours) > 100, f"only {len(colours)} colours: blank sheet?"
    # the colour bar shows saturated jet red and blue, which the random images alone rarely give
    assert (np.abs(sheet.astype(int) - _jet255(1.0)).sum(axis=-1) <= 6).sum() > 20
    assert (np.abs(sheet.astype(int) - _jet255(0.0)).sum(axis=-1) <= 6).sum() > 20


def test_sheet_size_follows_the_grid():
    assert sheet_size(9, 3) == pytest.approx((3 * 2.6 + 0.6, 3 * 2.9 + 0.6))
    assert sheet_size(7, 3) == sheet_size(9, 3)  # two empty cells in the last row
    assert sheet_size(2, 3) == pytest.approx((2 * 2.6 + 0.6, 2.9 + 0.6))
    width, height = sheet_size(9, 1)
    assert height > 3 * width


def test_view_sheet_refuses_mismatched_views(tmp_path):
    images, heats = _random_views(2)
    with pytest.raises(ValueError, match="must be"):
        write_view_sheet(tmp_path / "sheet.png", images, heats[:8], "x")
    assert list(tmp_path.iterdir()) == []


# --- scored PLY --------------------------------------------------------------------------------------------

def test_scored_ply_reads_back_with_the_points_and_the_ramp(tmp_path):
    rng = np.random.default_rng(3)
    points = rng.normal(size=(500, 3))
    scores = rng.uniform(-0.2, 2.2, 500).astype(np.float32)
    path = write_scored_ply(tmp_path / "out" / "scores.ply", points, scores, vmin=0.0, vmax=2.0)
    _only_file(path.parent, "scores.ply")
    cloud = o3d.io.read_point_cloud(str(path))
    np.testing.assert_array_equal(np.asarray(cloud.points), points)
    s = np.clip(scores.astype(np.float64) / 2.0, 0, 1)
    ramp = np.column_stack([s, np.zeros(500), 1 - s])  # blue (vmin) -> red (vmax)
    diff = np.abs(np.asarray(cloud.colors) - ramp)
    worst = np.unravel_index(diff.argmax(), diff.shape)
    assert diff.max() <= 1 / 255 + 1e-9, f"largest difference {diff.max()} at {worst}"
    assert path.read_bytes().startswith(b"ply\nformat binary_little_endian")


_PLY_NUMPY = {"double": "<f8", "float": "<f4", "uchar": "u1", "int": "<i4", "uint": "<u4"}


def _read_ply_by_hand(path):
    """(comments, {property: array}) of a binary little-endian PLY with one vertex element: a tiny parser of
    the format's own rules, independent of the writer."""
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode("ascii").splitlines()
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    comments = [line[len("comment "):] for line in lines if line.startswith("comment ")]
    count = next(int(line.split()[2]) for line in lines if line.startswith("element vertex"))
    fields = [(line.split()[2], _PLY_NUMPY[line.split()[1]]) for line in lines if line.startswith("property")]
    table = np.frombuffer(body, np.dtype(fields), count=count)
    assert len(body) == table.nbytes, "bytes after the last vertex"
    return comments, {name: table[name] for name, _ in fields}


def test_scored_ply_keeps_scores_and_labels_exactly_for_open3d_tensor_api_and_a_plain_parser(tmp_path):
    rng = np.random.default_rng(5)
    points = rng.normal(size=(300, 3))
    scores = rng.normal(0.4, 0.01, 300).astype(np.float32)   # a narrow band, as a weak model gives
    labels = (rng.uniform(size=300) < 0.2).astype(np.uint8)
    path = write_scored_ply(tmp_path / "cloud.ply", points, scores, labels=labels, comments=["run runs/x"])
    cloud = o3d.t.io.read_point_cloud(str(path))
    np.testing.assert_array_equal(cloud.point["score"].numpy().ravel(), scores)
    np.testing.assert_array_equal(cloud.point["label"].numpy().ravel(), labels)
    np.testing.assert_array_equal(cloud.point["positions"].numpy(), points)
    comments, columns = _read_ply_by_hand(path)
    np.testing.assert_array_equal(columns["score"], scores)
    np.testing.assert_array_equal(columns["label"], labels)
    np.testing.assert_array_equal(np.column_stack([columns["x"], columns["y"], columns["z"]]), points)
    # the scale is the data's range, written in the comments; blue at the minimum, red at the maximum
    scale = next(c for c in comments if c.startswith("pointad colour_scale")).split()[2:4]
    assert (float(scale[0]), float(scale[1])) == (float(scores.min()), float(scores.max()))
    rgb = np.column_stack([columns["red"], columns["green"], columns["blue"]]).astype(int)
    assert rgb[scores.argmin()].tolist() == [0, 0, 255] and rgb[scores.argmax()].tolist() == [255, 0, 0]
    s = (scores.astype(np.float64) - scores.min()) / (float(scores.max()) - scores.min())
    assert np.abs(rgb[:, 0] - 255 * s).max() <= 0.5 + 1e-9
    assert "run runs/x" in comments


def test_scored_ply_without_labels_has_no_label_property(tmp_path):
    path = write_scored_ply(tmp_path / "c.ply", np.zeros((4, 3)), np.float32([0, 1, 2, 3]))
    _, columns = _read_ply_by_hand(path)
    assert list(columns) == ["x", "y", "z", "red", "green", "blue", "score"]
    assert "label" not in o3d.t.io.read_point_cloud(str(path)).point


@pytest.mark.parametrize("scores, threshold, expected", [
    ([0.2, 0.3, 0.25], None, (0.2, 0.3)),          # the data's range
    ([0.2, 0.3, 0.25], 0.5, (0.2, 0.8)),           # centred on the threshold, reaching the farthest score
    ([0.45, 0.9], 0.5, (0.1, 0.9)),
    ([0.7, 0.7], None, (0.7, 0.7 + 1e-6)),         # constant: a tiny range, never vmax == vmin
])
def test_colour_scale_from_the_data_or_centred_on_the_threshold(scores, threshold, expected):
    np.testing.assert_allclose(figures.color_scale(np.float64(scores), threshold), expected, rtol=0, atol=1e-12)


def test_scored_ply_with_a_threshold_paints_it_the_middle_colour(tmp_path):
    scores = np.float32([0.1, 0.5, 0.6])
    path = write_scored_ply(tmp_path / "c.ply", np.zeros((3, 3)), scores, threshold=0.5)
    comments, columns = _read_ply_by_hand(path)
    assert "pointad threshold 0.5" in comments
    assert [int(columns["red"][1]), int(columns["blue"][1])] == [128, 128]   # 127.5 rounded half to even
    assert [int(columns["red"][0]), int(columns["blue"][0])] == [0, 255]     # the farthest score: an end


# --- ROC ---------------------------------------------------------------------------------------------------

def _roc_data(seed, n=200):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    return labels.astype(np.uint8), rng.normal(size=n) + labels  # anomalies score higher on average


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_legend_value_is_sklearn_auroc(seed):
    labels, scores = _roc_data(seed)
    fpr, tpr, auroc = roc_points(labels, scores)
    assert auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_roc_plot_reads_back_and_its_legend_names_each_auroc(tmp_path):
    curves = {"cookie": _roc_data(0), "torus": _roc_data(1), "empty": (np.zeros(5), np.arange(5.0))}
    legend = roc_figure(curves, "I-AUROC").axes[0].get_legend()
    expected = [f"{name} (AUROC {roc_auc_score(*curves[name]):.3f})" for name in ("cookie", "torus")]
    assert [t.get_text() for t in legend.get_texts()] == expected + ["empty (AUROC n/a)"]
    path = write_roc_plot(tmp_path / "roc.png", curves, "I-AUROC")
    _only_file(tmp_path, "roc.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (750, 750)


# --- PRO ---------------------------------------------------------------------------------------------------

def _maps(seed, n=4, height=16, width=20):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, height, width), np.uint8)
    for i in range(n):
        r, c = rng.integers(0, height - 5), rng.integers(0, width - 5)
        masks[i, r:r + rng.integers(2, 6), c:c + rng.integers(2, 6)] = 1
    scores = rng.normal(size=masks.shape) + 1.5 * masks
    valid = rng.random(masks.shape) > 0.1
    return masks, scores, valid


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_organized_pro_legend_value_is_the_metrics_aupro(seed, max_fpr):
    masks, scores, valid = _maps(seed)
    curve = organized_pro_curve(masks, scores, valid)
    assert aupro_from_curve(*curve, max_fpr) == pytest.approx(aupro_organized(masks, scores, valid, max_fpr),
                                                               abs=1e-12)
    curve = organized_pro_curve(masks, scores)
    assert aupro_from_curve(*curve, max_fpr) == pytest.approx(aupro_organized(masks, scores, max_fpr=max_fpr),
                                                               abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_graph_pro_legend_value_is_the_metrics_aupro(seed):
    rng = np.random.default_rng(seed)
    points = rng.uniform(size=(3, 300, 3))
    labels = (np.linalg.norm(points - 0.5, axis=-1) < 0.25).astype(np.uint8)  # one ball per cloud
    scores = rng.normal(size=labels.shape) + labels
    knn = np.stack([cKDTree(p).query(p, k=6)[1] for p in points]).astype(np.int32)
    valid = rng.random(labels.shape) > 0.1
    curve = graph_pro_curve(labels, scores, knn, valid)
    assert aupro_from_curve(*curve) == pytest.approx(aupro_graph(labels, scores, knn, valid), abs=1e-12)


def test_organized_component_ids_are_the_8_connected_regions_across_maps():
    masks = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 0]],
                      [[0, 0, 1], [1, 0, 0], [1, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(organized_component_ids(masks),
                                  [[[0, -1, -1], [-1, 0, -1], [-1, -1, -1]],
                                   [[-1, -1, 1], [2, -1, -1], [2, -1, -1]]])
    np.testing.assert_array_equal(organized_component_ids(masks[1]), [[-1, -1, 0], [1, -1, -1], [1, -1, -1]])


def test_undefined_pro_curve_gives_nan():
    masks = np.zeros((1, 4, 4), np.uint8)
    fpr, pro = organized_pro_curve(masks, np.zeros((1, 4, 4)))
    assert fpr.size == pro.size == 0 and math.isnan(aupro_from_curve(fpr, pro))


def test_pro_plot_reads_back_and_its_legend_names_each_aupro(tmp_path):
    curves = {f"seed {s}": organized_pro_curve(*_maps(s)) for s in (0, 1)}
    legend = pro_figure(curves, "AU-PRO", max_fpr=0.3).axes[0].get_legend()
    expected = [f"seed {s} (AU-PRO@0.3 {aupro_organized(*_maps(s)):.3f})" for s in (0, 1)]
    assert [t.get_text() for t in legend.get_texts()] == expected
    path = write_pro_plot(tmp_path / "deep" / "pro.png", curves, "AU-PRO")
    _only_file(path.parent, "pro.png")
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (750, 750)


# --- failed writes -------------------------------------------------------------------------------------------

def _writers(target):
    images, heats = _random_views(4, views=2)
    return [lambda: write_view_sheet(target, images, heats, "x"),
            lambda: write_scored_ply(target, np.zeros((3, 3)), np.zeros(3)),
            lambda: write_roc_plot(target, {"a": _roc_data(0)}, "x"),
            lambda: write_pro_plot(target, {"a": organized_pro_curve(*_maps(0))}, "x")]


@pytest.mark.parametrize("which", range(4))
def test_a_write_onto_a_folder_raises_and_leaves_no_file(tmp_path, which):
    target = tmp_path / "taken.png"
    target.mkdir()
    with pytest.raises((OSError, PointADError)):  # the PointADError names the path
        _writers(target)[which]()
    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"] and list(target.iterdir()) == []


@pytest.mark.parametrize("which", range(4))
def test_a_write_under_a_file_raises_and_leaves_no_file(tmp_path, which):
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises((OSError, PointADError)):  # the PointADError names the path
        _writers(tmp_path / "plain" / "out.png")[which]()
    assert [p.name for p in tmp_path.iterdir()] == ["plain"]


# --- the class figures' PLYs: each block's own scores ---------------------------------------------------------

def _hand_scores(store, row, seed):
    """SampleScores of a store row with hand-made maps: point scores in [0, 1), multimodal in [2, 5), RGB in
    [10, 11): three blocks no one can mistake for each other."""
    from pointad.eval.score_maps import SampleScores
    sample = store.sample(row)
    n = int(sample.n_points)
    rng = np.random.default_rng(seed)
    return SampleScores(identity={**store.identity(row), "row": row},
                        point_scores=rng.uniform(0, 1, n).astype(np.float32), point_labels=sample.label[:n], score=0.5,
                        grid_index=sample.grid_index[:n],
                        grid_hw=tuple(int(x) for x in sample.grid_hw), knn=sample.knn[:n],
                        rgb_point_scores=rng.uniform(10, 11, n).astype(np.float32), rgb_score=0.2,
                        multimodal_point_scores=rng.uniform(2, 5, n).astype(np.float32), multimodal_score=0.7,
                        view_maps=rng.uniform(0, 1, sample.image.shape[:3]).astype(np.float16),
                        rgb_view_map=rng.uniform(0, 1, sample.rgb.shape[:2]).astype(np.float16))


@pytest.mark.slow
def test_class_figures_multimodal_ply_carries_the_multimodal_scores(cookie_splat_48, tmp_path):
    """On the MVTec-format cookie test split (organized, with RGB), 2 views at 48 px (tests/conftest.py)."""
    from pointad.eval.report_figures import file_stem, write_class_figures
    from pointad.shared.store import open_store
    store = open_store(cookie_splat_48)
    rows = [int(r) for r in store.indices()]
    results = [_hand_scores(store, row, seed) for seed, row in enumerate(rows)]
    anomalous = next(r for r in results if r.identity["label"] == 1)
    written = write_class_figures(tmp_path, "cookie", results, store, "hand-made")
    low = min(float(r.multimodal_point_scores.min()) for r in results)
    high = max(float(r.multimodal_point_scores.max()) for r in results)
    stem = file_stem(anomalous.identity["sample_id"])
    path = tmp_path / "cookie" / f"{stem}_multimodal.ply"
    assert path in written
    comments, columns = _read_ply_by_hand(path)
    np.testing.assert_array_equal(columns["score"], anomalous.multimodal_point_scores)
    np.testing.assert_array_equal(columns["label"], anomalous.point_labels)
    sample = store.sample(anomalous.identity["row"])
    np.testing.assert_array_equal(np.column_stack([columns["x"], columns["y"], columns["z"]]),
                                  sample.xyz[sample.valid].astype(np.float64))
    # colours: blue -> red over the class's multimodal range, as Open3D's legacy reader sees them
    assert f"pointad colour_scale {low!r} {high!r} (blue = vmin, red = vmax, clipped)" in comments
    s = (anomalous.multimodal_point_scores.astype(np.float64) - low) / (high - low)
    colours = np.asarray(o3d.io.read_point_cloud(str(path)).colors)
    diff = np.abs(colours - np.column_stack([s, np.zeros_like(s), 1 - s]))
    worst = np.unravel_index(diff.argmax(), diff.shape)
    assert diff.max() <= 0.5 / 255 + 1e-9, f"largest colour difference {diff.max()} at {worst}"
    # and the point cloud's own PLY its point scores
    _, points = _read_ply_by_hand(tmp_path / "cookie" / f"{stem}_point.ply")
    np.testing.assert_array_equal(points["score"], anomalous.point_scores)
