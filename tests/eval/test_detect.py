"""`pointad detect` end to end on CPU: a 1-epoch tiny run scores a new PLY and a new organized TIFF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from click.testing import CliRunner

from pointad.eval.detect import to_input_points
from pointad.eval.figures import score_colors
from pointad.render import synthetic
from pointad.render.build import build_store
from pointad.render.options import RenderOptions
from pointad.shared.cli import pointad
from pointad.train.loop import TrainConfig, train


@pytest.fixture(scope="module")
def detect_run(cookie_store, tmp_path_factory):
    """A 1-epoch tiny run on the cookie test samples (three views, 336 px; the store from tests/conftest.py). Its
    training takes seconds, so the tests using it are marked slow."""
    folder = tmp_path_factory.mktemp("detect")
    train(TrainConfig(store=str(cookie_store), class_name="cookie", model="tiny", epochs=1, batch_size=4),
          folder / "run")
    return folder / "run"


def _detect(cloud, run, out, *extra):
    return CliRunner().invoke(pointad, ["detect", str(cloud), "--checkpoint", str(run), "--out", str(out),
                                        "--device", "cpu", "--views", "3", "--point-size", "2", *map(str, extra)])


def _check_outputs(out: Path, n_input: int, threshold=None, stdout: str = ""):
    cloud = o3d.io.read_point_cloud(str(out / "scores.ply"))
    scores = np.load(out / "scores.npy")
    assert len(cloud.points) == n_input == scores.shape[0]
    assert scores.dtype == np.float32 and np.isfinite(scores).all()
    assert scores.min() >= 0 and scores.max() <= 1
    # the PLY carries the scores themselves, and its colours use the scale scores.json states
    np.testing.assert_array_equal(o3d.t.io.read_point_cloud(str(out / "scores.ply")).point["score"].numpy().ravel(),
                                  scores)
    summary = json.loads((out / "scores.json").read_text())
    scale = summary["colour_scale"]
    if threshold is None:
        assert (scale["vmin"], scale["vmax"]) == (float(scores.min()), float(scores.max()))
    else:
        half = max(abs(float(scores.max()) - threshold), abs(threshold - float(scores.min())))
        assert (scale["vmin"], scale["vmax"]) == (threshold - half, threshold + half)
        assert summary["anomalous"] == (summary["sample_score"] >= threshold)
    assert summary["threshold"] == threshold and summary["points"] == n_input
    np.testing.assert_allclose(np.asarray(cloud.colors), score_colors(scores, scale["vmin"], scale["vmax"]),
                               atol=0.5 / 255 + 1e-9)
    if stdout:
        assert f"sample score: {summary['sample_score']:.6f}" in stdout


@pytest.mark.slow
def test_detect_a_ply_scores_every_input_point(detect_run, real3d_dataset, tmp_path):
    spec, _ = real3d_dataset
    planned = next(p for p in synthetic.plan(spec) if p.split == "test" and p.defect != "good")
    points = synthetic.sample_arrays(spec, planned)["points"]
    ply = tmp_path / "cloud.ply"
    o3d.io.write_point_cloud(str(ply), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)))
    result = _detect(ply, detect_run, tmp_path / "out", "--threshold", "0.5")
    assert result.exit_code == 0, result.output
    score = float(next(line for line in result.output.splitlines() if line.startswith("sample score:")).split()[-1])
    assert 0 <= score <= 1
    assert result.output.strip().splitlines()[-1] == ("anomalous" if score >= 0.5 else "normal")
    _check_outputs(tmp_path / "out", len(points), threshold=0.5, stdout=result.output)
    np.testing.assert_allclose(np.asarray(o3d.io.read_point_cloud(str(tmp_path / "out" / "scores.ply")).points),
                               points, atol=1e-6)  # input order kept


@pytest.mark.slow
def test_detect_an_organized_tiff_scores_its_measured_cells(detect_run, mvtec_dataset, tmp_path):
    import tifffile
    _, entry = mvtec_dataset
    tiff = sorted(Path(entry.root).rglob("test/*/xyz/*.tiff"))[-1]
    xyz = tifffile.imread(tiff)
    measured = int((np.nan_to_num(xyz) != 0).any(axis=-1).sum())
    result = _detect(tiff, detect_run, tmp_path / "out")
    assert result.exit_code == 0, result.output
    verdict = [line for line in result.output.splitlines() if "sample score:" in line]
    # no --threshold, no verdict (the options line names "normals", so only the score line is read)
    assert len(verdict) == 1 and "anomalous" not in verdict[0] and "normal" not in verdict[0], result.output
    _check_outputs(tmp_path / "out", measured, stdout=result.output)


def test_unsupported_suffix_is_a_one_line_error_naming_the_file(tmp_path):
    path = tmp_path / "cloud.obj"
    path.write_text("v 0 0 0\n")
    result = CliRunner().invoke(pointad, ["detect", str(path), "--checkpoint", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: {path}: unsupported suffix '.obj' (use one of "
                                                  ".ply, .pcd, .las, .laz, .e57, .xyz, .npy, .tiff, .tif, or a raw "
                                                  "Eyecandies <id>_depth.png)"]


def test_dropped_points_take_their_nearest_kept_score():
    kept = np.array([[0.0, 0, 0], [1, 0, 0]])
    inputs = np.array([[1.0, 0, 0], [0.1, 0, 0], [0.9, 0.1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(to_input_points(inputs, kept, np.array([0.2, 0.8])),
                                  np.float32([0.8, 0.2, 0.8, 0.2]))


def test_colour_ramp_runs_from_blue_to_red():
    np.testing.assert_allclose(score_colors(np.array([0.0, 0.5, 1.0])), [[0, 0, 1], [0.5, 0, 0.5], [1, 0, 0]])


# --- render options: as the training store recorded them (issue 10) -------------------------------------

def _tiff(mvtec_dataset) -> Path:
    return sorted(Path(mvtec_dataset[1].root).rglob("test/*/xyz/*.tiff"))[-1]


@pytest.mark.slow
def test_the_run_records_its_stores_render_options(detect_run):
    from pointad.train.model.checkpoint import latest_checkpoint, load_checkpoint
    recorded = json.loads((detect_run / "config.json").read_text())["render"]
    assert load_checkpoint(latest_checkpoint(detect_run))["render"] == recorded
    assert (recorded["views"], recorded["image_size"], recorded["supersample"], recorded["point_size"]) == (3, 336, 1, 2.0)
    assert "point_sizes" not in recorded


@pytest.mark.slow
def test_the_checkpoint_records_the_options_the_store_says_its_class_was_drawn_with(detect_run, cookie_store,
                                                                                    mvtec_dataset):
    from pointad.shared.store import open_store
    from pointad.train.model.checkpoint import latest_checkpoint, load_checkpoint
    render = open_store(cookie_store).attrs.render  # tests/shared/test_render_record.py
    assert load_checkpoint(latest_checkpoint(detect_run))["render"] == render.drawn(mvtec_dataset[1].name, "cookie")


@pytest.mark.slow
def test_first_lines_say_where_each_render_option_came_from(detect_run, mvtec_dataset, tmp_path):
    result = CliRunner().invoke(pointad, ["detect", str(_tiff(mvtec_dataset)), "--checkpoint", str(detect_run),
                                          "--out", str(tmp_path / "out"), "--device", "cpu", "--point-size", "3"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"detect: render options recorded in checkpoint {detect_run}/checkpoints/epoch_1.pt: "
                               "views 3, view_plan paper, angle_shift 0.0, image_size 336, supersample 1, ")
    assert "point_size" not in lines[0]
    assert lines[1] == "detect: render options from the command line: point_size 3.0"
    render = json.loads((tmp_path / "out" / "scores.json").read_text())["render"]
    assert render["options"]["point_size"] == 3.0 and render["from"]["point_size"] == "command line"
    assert render["options"]["views"] == 3 and render["from"]["views"] == "recorded"


@pytest.mark.slow
def test_a_checkpoint_without_the_record_renders_with_the_defaults_and_says_so(detect_run, mvtec_dataset, tmp_path):
    import torch

    from pointad.train.model.checkpoint import latest_checkpoint, load_checkpoint
    payload = load_checkpoint(latest_checkpoint(detect_run))
    del payload["render"]  # as written before checkpoints recorded the store's render options
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    tiff = _tiff(mvtec_dataset)
    result = CliRunner().invoke(pointad, ["detect", str(tiff), "--checkpoint", str(old), "--out",
                                          str(tmp_path / "old"), "--device", "cpu", "--views", "3", "--supersample",
                                          "1", "--point-size", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert lines[0] == (f"detect: checkpoint {old} records no render options (older, or imported from the released code); "
                        "RenderOptions' defaults apply")
    assert lines[1] == "detect: render options from the command line: views 3, supersample 1, point_size 2.0"
    assert lines[2].startswith("detect: render options by default: view_plan paper, angle_shift 0.0, image_size 336")
    # the defaults plus these three are the store's options but its normals (auto, grid for this tiff; a run that
    # records none draws Open3D's, as before the option): the same scores as the recording run's read as open3d
    payload = load_checkpoint(latest_checkpoint(detect_run))
    payload["render"]["normals"] = "open3d"
    torch.save(payload, tmp_path / "open3d.pt")
    recorded = CliRunner().invoke(pointad, ["detect", str(tiff), "--checkpoint", str(tmp_path / "open3d.pt"), "--out",
                                            str(tmp_path / "new"), "--device", "cpu"])
    assert recorded.exit_code == 0, recorded.output
    np.testing.assert_array_equal(np.load(tmp_path / "old" / "scores.npy"), np.load(tmp_path / "new" / "scores.npy"))


# --- a run trained on a store built with --downsample (issue 21, item 6) -----------------------------------

def _nearest_by_brute_force(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(Q,) index of the nearest of `points` to each query, from every distance (no tree)."""
    from scipy.spatial.distance import cdist
    points, queries = np.asarray(points, np.float64), np.asarray(queries, np.float64)
    return np.concatenate([cdist(queries[start:start + 1024], points, "sqeuclidean").argmin(axis=1)
                           for start in range(0, len(queries), 1024)])


@pytest.fixture(scope="module")
def downsampled_run(mvtec_dataset, tmp_path_factory):
    """(store, run): the cookie test samples rendered with --downsample 0.5, and a 1-epoch tiny run on it."""
    _, entry = mvtec_dataset
    folder = tmp_path_factory.mktemp("downsampled")
    store = folder / "renders.zarr"
    build_store(entry, store, RenderOptions(views=3, image_size=336, supersample=1, point_size=2, downsample=0.5),
                classes=["cookie"], splits=["test"])
    train(TrainConfig(store=str(store), class_name="cookie", model="tiny", epochs=1, batch_size=4), folder / "run")
    return store, folder / "run"


@pytest.mark.slow
def test_a_downsampled_runs_scores_are_its_store_rows_nearest_point_scores(downsampled_run, mvtec_dataset, tmp_path):
    """A store sample given to detect renders as its row (the same half of its points), and each input
    point takes the stored score of its nearest stored point (found here by brute force, in the input frame)."""
    from pointad.eval.runs import BackboneCache, load_run
    from pointad.eval.scoring import score_store
    from pointad.shared.store import open_store
    store_path, run = downsampled_run
    store = open_store(store_path)
    row = next(int(r) for r in store.indices(dataset="synthetic-mvtec3d", class_name="cookie", split="test")
               if store.identity(int(r))["defect_type"] == "crack")
    sample = store.sample(row)
    tiff = Path(mvtec_dataset[1].root) / sample.sample_id
    result = _detect(tiff, run, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "downsample 0.5" in result.stderr.splitlines()[0]  # the recorded option was used
    import tifffile
    grid = tifffile.imread(tiff).astype(np.float64)
    inputs = grid[(np.nan_to_num(grid) != 0).any(axis=-1)]
    _check_outputs(tmp_path / "out", len(inputs), stdout=result.output)
    loaded = load_run(run, BackboneCache(None, "cpu"))
    stored = next(score_store(store_path, [row], loaded.backbone, loaded.text, batch_size=1))
    n = int(sample.n_points)
    assert len(stored.point_scores) == n < 0.6 * len(inputs)  # half the kept points were rendered
    frame = sample.xyz[:n].astype(np.float64) * np.array([1.0, -1.0, -1.0])  # the MVTec flip turned back
    expected = stored.point_scores[_nearest_by_brute_force(frame, inputs)]
    difference = np.abs(np.load(tmp_path / "out" / "scores.npy") - expected)
    worst = int(np.argmax(difference))
    assert difference[worst] <= 1e-6, f"largest difference {difference[worst]:.3g} at input point {worst}"


@pytest.mark.slow
def test_a_downsampled_run_scores_every_point_of_a_new_cloud(downsampled_run, real3d_dataset, tmp_path):
    """An unorganized cloud: half its points are rendered and scored; every input point takes the score of
    its nearest rendered point, and a rendered point keeps its own."""
    from pointad.eval.detect import checkpoint_render, detect, render_cloud
    _, run = downsampled_run
    spec, _ = real3d_dataset
    planned = next(p for p in synthetic.plan(spec) if p.split == "test" and p.defect != "good")
    points = synthetic.sample_arrays(spec, planned)["points"].astype(np.float64)
    ply = tmp_path / "cloud.ply"
    o3d.io.write_point_cloud(str(ply), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)))
    result = _detect(ply, run, tmp_path / "out")
    assert result.exit_code == 0, result.output
    _check_outputs(tmp_path / "out", len(points), stdout=result.output)
    scores = np.load(tmp_path / "out" / "scores.npy")
    np.testing.assert_array_equal(detect(ply, run).point_scores, scores)
    _, _, rendered, arrays = render_cloud(ply, checkpoint_render(run))
    assert int(arrays.n_points) == len(rendered) == round(0.5 * len(points))
    own = _nearest_by_brute_force(points, rendered)  # each rendered point's own input point
    assert np.abs(points[own] - rendered).max() < 1e-5  # (float32 in the row)
    expected = scores[own][_nearest_by_brute_force(rendered, points)]
    np.testing.assert_array_equal(scores, expected)


@pytest.mark.slow
def test_a_crafted_compressed_pcd_is_one_line_in_a_detect_process(detect_run, tmp_path):
    """Issue 21, item 5: POINTS promising 10^8 points over a 200-point binary_compressed payload (Open3D's
    reader crashes on it) is our one-line error from a real `pointad detect` process, and nothing is written."""
    import os
    import re
    import subprocess
    import sys
    path = tmp_path / "crafted.pcd"
    points = np.random.default_rng(0).random((200, 3))
    assert o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)),
                                    compressed=True)
    path.write_bytes(re.sub(rb"\n(POINTS|WIDTH) 200\n", rb"\n\1 100000000\n", path.read_bytes()))
    result = subprocess.run([sys.executable, "-c", "from pointad.shared.cli import main; main()", "detect", str(path),
                             "--checkpoint", str(detect_run), "--out", str(tmp_path / "out"), "--device", "cpu"],
                            cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error: ")] == [
        f"Error: {path}: declares 100000000 points (1200000000 bytes), its compressed data unpacks to 2400 bytes"]
    assert not (tmp_path / "out" / "scores.npy").exists()


def test_a_grid_normals_choice_refuses_an_unorganized_cloud_in_one_line(tmp_path):
    """A run rendered with --normals grid cannot shade a cloud that has no grid: one line naming the file."""
    from pointad.eval.detect import RenderChoice, render_cloud
    from pointad.render.options import RenderOptions
    from pointad.shared.errors import InputFileError
    ply = tmp_path / "cloud.ply"
    points = np.random.default_rng(0).uniform(-1, 1, (500, 3))
    o3d.io.write_point_cloud(str(ply), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points)))
    choice = RenderChoice(RenderOptions(views=2, image_size=48, renderer="splat", normals="grid"), {}, "test", True)
    with pytest.raises(InputFileError, match=r"cloud\.ply: the run was rendered with --normals grid"):
        render_cloud(ply, choice)


# --- --preprocess DATASET: the cloud preprocessed as that dataset's samples are ------------------------------

def _part_on_a_table(path: Path) -> tuple[int, int]:
    """A .ply of a lumpy part (its points 5-15 mm above z = 0) on a larger flat table (z = 0): (part, table) counts."""
    rng = np.random.default_rng(4)
    direction = rng.normal(size=(1500, 3))
    part = direction / np.linalg.norm(direction, axis=1, keepdims=True) * 5 + [0, 0, 10]
    table = np.column_stack([rng.uniform(-40, 40, (4000, 2)), np.zeros(4000)])
    o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.vstack([part, table]))))
    return len(part), len(table)


def _registry(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "my_datasets.yaml"
    path.write_text("datasets:\n  brackets:\n    format: folder\n    root: " + str(root) + "\n    options:\n"
                    "      preprocess: {background: plane}\n")
    return path


def test_preprocess_like_a_folder_dataset_is_what_render_build_does_to_its_samples(tmp_path):
    from pointad.eval.detect import Preprocessing, load_cloud
    from pointad.render.readers import list_samples, preprocess_options, read_sample
    from pointad.shared.registry import load_registry
    root = tmp_path / "scans"
    (root / "bracket" / "test" / "good").mkdir(parents=True)
    cloud = root / "bracket" / "test" / "good" / "one.ply"
    part, table = _part_on_a_table(cloud)
    entry = load_registry(_registry(tmp_path, root))["brackets"]
    (ref,) = list_samples(entry)
    built = read_sample(entry, ref, preprocess_options(entry, "bracket", image_size=336, max_points=112896))
    _, sample, options = load_cloud(cloud, 336, 112896, like=Preprocessing(entry, "bracket"))
    assert options.background == "plane"
    assert sample.n_points == part  # the table is gone, every point of the part kept
    np.testing.assert_array_equal(sample.points, built.points)
    _, by_suffix, _ = load_cloud(cloud, 336, 112896)  # Real3D-AD's options: the table stays
    assert by_suffix.n_points == part + table


def test_preprocess_like_a_dataset_of_the_other_kind_is_one_line(mvtec_dataset, tmp_path):
    from pointad.eval.detect import Preprocessing, load_cloud
    from pointad.shared.errors import InputFileError
    from pointad.shared.registry import resolve_dataset
    _part_on_a_table(tmp_path / "cloud.ply")
    with pytest.raises(InputFileError, match=r"cloud.ply: --preprocess mvtec3d is for organized scans"):
        load_cloud(tmp_path / "cloud.ply", like=Preprocessing(resolve_dataset("mvtec3d")))
    with pytest.raises(InputFileError, match=r"000.tiff: --preprocess folder is for unorganized clouds"):
        load_cloud(_tiff(mvtec_dataset), like=Preprocessing(resolve_dataset("folder")))
    result = CliRunner().invoke(pointad, ["detect", str(tmp_path / "cloud.ply"), "--checkpoint", str(tmp_path),
                                          "--preprocess", "no-such-dataset"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith(
        "Error: unknown dataset 'no-such-dataset'"), result.output


@pytest.mark.slow
def test_detect_says_and_records_how_the_cloud_was_preprocessed(detect_run, tmp_path, monkeypatch):
    monkeypatch.setenv("POINTAD_REGISTRY", str(_registry(tmp_path, tmp_path)))
    part, table = _part_on_a_table(tmp_path / "cloud.ply")
    for extra, said in (((), "preprocessed as Real3D-AD's samples (by suffix"),
                        (("--preprocess", "brackets"), "preprocessed as dataset 'brackets' (folder) samples")):
        out = tmp_path / f"out{len(extra)}"
        result = _detect(tmp_path / "cloud.ply", detect_run, out, *extra)
        assert result.exit_code == 0, result.output
        assert f"detect: {said}" in result.output
        assert json.loads((out / "scores.json").read_text())["preprocessed_as"].startswith(said)
        _check_outputs(out, part + table)  # every input point scored, the table's by their nearest kept point


# --- a raw Eyecandies depth image (<id>_depth.png beside <id>_info_depth.yaml), as the dataset is downloaded -----

def _depth_image(eyecandies_dataset) -> Path:
    return sorted(Path(eyecandies_dataset[1].root).glob("cookie/test_public/data/*_depth.png"))[-1]


def _measured_pixels(depth_png: Path) -> int:
    """Pixels whose back-projected depth is not 0, from the PNG and the yaml's min/max (written apart from the
    reader: a missing pixel is (0, 0, 0) and x, y scale with z)."""
    import yaml
    from PIL import Image
    info = yaml.safe_load(depth_png.with_name(depth_png.name.replace("_depth.png", "_info_depth.yaml")).read_text())
    lo, hi = info["normalization"]["min"], info["normalization"]["max"]
    z = np.asarray(Image.open(depth_png), np.float64) / 65535.0 * (hi - lo) + lo
    return int(np.count_nonzero(z))


def test_a_raw_depth_image_is_preprocessed_as_render_build_preprocesses_its_sample(eyecandies_dataset):
    from pointad.eval.detect import Preprocessing, load_cloud
    from pointad.render.readers import list_samples, preprocess_options, read_sample
    entry = eyecandies_dataset[1]
    depth = _depth_image(eyecandies_dataset)
    ref, = (r for r in list_samples(entry, ["cookie"], ["test"]) if depth.name.startswith(Path(r.sample_id).name))
    built = read_sample(entry, ref, preprocess_options(entry, "cookie", image_size=336, max_points=112896))
    points, sample, options = load_cloud(depth, 336, 112896, like=Preprocessing(entry, "cookie"))
    assert options.background == "belt-box"
    np.testing.assert_array_equal(sample.points, built.points)
    np.testing.assert_array_equal(sample.grid_index, built.grid_index)
    assert len(points) == _measured_pixels(depth)


def test_a_converted_eyecandies_scan_keeps_its_background_as_render_build_does(mvtec_dataset):
    """Eyecandies converted to MVTec 3D-AD's layout comes with its background removed: `--preprocess` with an
    Eyecandies dataset removes none again from a .tiff (the reader's rule), where the raw release's belt box would
    cut into it."""
    from pointad.eval.detect import Preprocessing, load_cloud
    from pointad.render.datasets import open_dataset
    from pointad.render.readers import list_samples, preprocess_options, read_sample
    entry = open_dataset(format="eyecandies", root=mvtec_dataset[1].root)  # MVTec's layout: Eyecandies converted
    tiff = _tiff(mvtec_dataset)
    class_name = tiff.relative_to(entry.root).parts[0]
    ref, = (r for r in list_samples(entry, [class_name], ["test"]) if r.files["xyz"] == tiff)
    built = read_sample(entry, ref, preprocess_options(entry, class_name, image_size=336, max_points=112896))
    _, sample, options = load_cloud(tiff, 336, 112896, like=Preprocessing(entry, class_name))
    assert options.background == "none"
    np.testing.assert_array_equal(sample.points, built.points)


def test_a_raw_depth_image_without_an_eyecandies_dataset_is_one_line(eyecandies_dataset, tmp_path):
    depth = _depth_image(eyecandies_dataset)
    for extra, tail in (((), "give --preprocess DATASET, e.g. eyecandies"),
                        (("--preprocess", "mvtec3d"), "dataset 'mvtec3d' is mvtec3d format")):
        result = CliRunner().invoke(pointad, ["detect", str(depth), "--checkpoint", str(tmp_path), *extra])
        assert result.exit_code == 1
        line, = result.output.strip().splitlines()  # before the run is looked at: no run there
        assert line.startswith(f"Error: {depth}: a raw Eyecandies depth image is preprocessed as an Eyecandies "
                               "dataset's samples") and line.endswith(tail), line


@pytest.mark.slow
def test_detect_scores_every_measured_pixel_of_a_raw_depth_image(detect_run, eyecandies_dataset, tmp_path,
                                                                  monkeypatch):
    registry = tmp_path / "my_datasets.yaml"
    registry.write_text(f"datasets:\n  candies:\n    format: eyecandies\n    root: {eyecandies_dataset[1].root}\n")
    monkeypatch.setenv("POINTAD_REGISTRY", str(registry))
    depth = _depth_image(eyecandies_dataset)
    result = _detect(depth, detect_run, tmp_path / "out", "--preprocess", "candies")
    assert result.exit_code == 0, result.output
    assert "detect: preprocessed as dataset 'candies' (eyecandies) samples" in result.output
    _check_outputs(tmp_path / "out", _measured_pixels(depth))
