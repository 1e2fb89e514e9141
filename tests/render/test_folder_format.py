"""The `folder` format (design §2.5): one's own scans in anomalib's folder layout, read as LAS, LAZ, E57, PLY
and PCD files written by laspy, pye57 and Open3D themselves; its ground truth, options and `render scan`."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from click.testing import CliRunner

from pointad.render import synthetic
from pointad.render.datasets import open_dataset
from pointad.render.readers import list_samples, preprocess_options, read_sample, survey
from pointad.render.readers.files import read_point_cloud
from pointad.render.synthetic.scanner_files import SUFFIXES
from pointad.shared.errors import ConfigError, InputFileError
from pointad.shared.registry import load_registry

SPEC = dict(classes=("cookie", "torus"), defects=("bump", "dent", "hole"), train=2, validation=1, test_good=2,
            per_defect=1, grid=96)
TOLERANCE = {".las": 6e-5, ".laz": 6e-5, ".e57": 1e-4, ".ply": 0.0, ".pcd": 1e-12}  # mm: LAS scale 1e-4, float32


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    spec = synthetic.SyntheticSpec(format="folder", seed=6, **SPEC)
    root = synthetic.generate(tmp_path_factory.mktemp("folder") / "scans", spec)
    return spec, open_dataset(format="folder", root=root)


def _planned(spec, entry):
    """sample id -> the generator's plan entry (the layout puts NNN.<suffix> in <class>/<split>/<defect>/)."""
    by_key = {(p.class_name, p.split, p.defect, p.index): p for p in synthetic.plan(spec)}
    out = {}
    for ref in list_samples(entry):
        class_name, split, defect, name = ref.sample_id.split("/")
        out[ref.sample_id] = by_key[(class_name, split, defect, int(name.split(".")[0]))]
    assert len(out) == len(by_key)
    return out


def _registry(tmp_path, text: str):
    path = tmp_path / "datasets.yaml"
    path.write_text("datasets:\n" + text)
    return load_registry(path)


def test_lists_every_planned_sample_once_in_every_suffix(folder_data):
    spec, entry = folder_data
    refs = list_samples(entry)
    assert Counter((r.class_name, r.split, r.label) for r in refs) == \
        Counter((p.class_name, p.split, int(p.defect != "good")) for p in synthetic.plan(spec))
    assert {Path(r.sample_id).suffix for r in refs} == set(SUFFIXES)
    assert all(not r.sample_id.startswith("/") and (entry.root / r.sample_id).is_file() for r in refs)
    assert {r.split for r in list_samples(entry, classes=["torus"], splits=["test"])} == {"test"}


def test_points_and_labels_are_what_was_written_in_file_order(folder_data):
    """Each suffix reads back the generator's own points (to the format's precision) and its labels exactly."""
    spec, entry = folder_data
    planned = _planned(spec, entry)
    seen = set()
    for ref in list_samples(entry):
        sample = read_sample(entry, ref)
        arrays = synthetic.sample_arrays(spec, planned[ref.sample_id])
        suffix = Path(ref.sample_id).suffix
        seen.add(suffix)
        assert sample.points.dtype == np.float32 and sample.point_labels.dtype == np.uint8
        assert sample.grid_index is None and sample.grid_hw == (0, 0) and sample.rgb is None  # as Real3D-AD
        error = np.abs(sample.points - arrays["points"]).max()
        assert error <= TOLERANCE[suffix] + 1e-5, f"{ref.sample_id}: largest difference {error:.2e}"
        assert np.array_equal(sample.point_labels, arrays["labels"]), ref.sample_id
        assert sample.label == int(ref.defect_type != "good") and sample.point_labels.any() == bool(sample.label)
    assert seen == set(SUFFIXES)


def test_truncated_cloud_of_each_suffix_is_one_line_naming_it(folder_data, tmp_path):
    _, entry = folder_data
    for suffix in SUFFIXES:
        ref = next(r for r in list_samples(entry) if r.sample_id.endswith(suffix))
        copy = tmp_path / f"cut{suffix}"
        data = ref.files["cloud"].read_bytes()
        copy.write_bytes(data[: len(data) // 3])
        broken = type(ref)(**{**ref.__dict__, "files": {**ref.files, "cloud": copy}})
        with pytest.raises(InputFileError) as caught:
            read_sample(entry, broken)
        assert str(caught.value).startswith(f"{copy}: ") and "\n" not in str(caught.value), str(caught.value)


def _copy(entry, tmp_path) -> Path:
    root = tmp_path / "scans"
    shutil.copytree(entry.root, root, ignore=shutil.ignore_patterns("synthetic.json"))
    return root


def test_ground_truth_length_must_equal_the_point_count(folder_data, tmp_path):
    _, entry = folder_data
    root = _copy(entry, tmp_path)
    dataset = open_dataset(format="folder", root=root)
    ref = next(r for r in list_samples(dataset) if "gt" in r.files and r.files["gt"].suffix == ".npy")
    labels = np.load(ref.files["gt"])
    np.save(ref.files["gt"], labels[:-2])
    with pytest.raises(InputFileError) as caught:
        read_sample(dataset, ref)
    assert str(caught.value) == (f"{ref.files['gt']}: {len(labels) - 2} labels but {ref.files['cloud']} has "
                                 f"{len(labels)} points (one 0/1 per point, in file order; labels are never guessed)")
    np.save(ref.files["gt"], np.where(labels == 1, 2, 0))
    with pytest.raises(InputFileError, match=r": labels must be 0 or 1$"):
        read_sample(dataset, ref)


def test_text_ground_truth_reads_as_the_npy_would(folder_data, tmp_path):
    _, entry = folder_data
    root = _copy(entry, tmp_path)
    dataset = open_dataset(format="folder", root=root)
    ref = next(r for r in list_samples(dataset) if "gt" in r.files and r.files["gt"].suffix == ".npy")
    expected = read_sample(dataset, ref).point_labels
    text = ref.files["gt"].with_suffix(".txt")
    text.write_text(", ".join(map(str, np.load(ref.files["gt"]))))  # comma separated, one line
    ref.files["gt"].unlink()
    again = next(r for r in list_samples(dataset) if r.sample_id == ref.sample_id)
    assert again.files["gt"] == text and np.array_equal(read_sample(dataset, again).point_labels, expected)


def test_ply_vertex_property_is_the_ground_truth_when_named(folder_data, tmp_path):
    """Without a ground-truth file an anomalous sample is an error saying where to put one, unless the folder
    option label_property names the PLY vertex property holding the labels."""
    spec, entry = folder_data
    root = _copy(entry, tmp_path)
    ref = next(r for r in list_samples(open_dataset(format="folder", root=root))
               if r.label and r.sample_id.endswith(".ply"))
    expected = np.load(ref.files["gt"]) if ref.files["gt"].suffix == ".npy" else np.loadtxt(ref.files["gt"])
    ref.files["gt"].unlink()
    plain = open_dataset(format="folder", root=root)
    bare = next(r for r in list_samples(plain) if r.sample_id == ref.sample_id)
    with pytest.raises(InputFileError) as caught:
        read_sample(plain, bare)
    assert str(caught.value).startswith(f"{ref.files['cloud']}: anomalous sample ({ref.defect_type}) has no ground "
                                        f"truth (put ground_truth/{ref.defect_type}/{ref.files['cloud'].stem}.npy")
    named = _registry(tmp_path, f"  mine: {{format: folder, root: {root}, options: "
                                "{folder: {label_property: label}}}\n")
    sample = read_sample(named["mine"], bare)
    assert np.array_equal(sample.point_labels, expected.astype(np.uint8)) and sample.point_labels.any()
    missing = _registry(tmp_path, f"  mine: {{format: folder, root: {root}, options: {{folder: {{label_property: q}}}}}}\n")
    with pytest.raises(InputFileError, match=r"PLY vertex element has no property 'q' \(it has x, y, z, label\)$"):
        read_sample(missing["mine"], bare)


def test_las_dimension_as_ground_truth(tmp_path):
    """A LAS file's classification (0/1) as the per-point labels, checked against what laspy wrote."""
    import laspy
    rng = np.random.default_rng(3)
    points, labels = rng.random((500, 3)) * 50, (rng.random(500) < 0.1).astype(np.uint8)
    header = laspy.LasHeader(point_format=0, version="1.2")
    header.scales = [1e-4] * 3
    las = laspy.LasData(header)
    las.x, las.y, las.z = points.T
    las.classification = labels
    for split, defect in (("train", "good"), ("test", "bump")):
        (tmp_path / "part" / split / defect).mkdir(parents=True)
        las.write(str(tmp_path / "part" / split / defect / "000.las"))
    registry = _registry(tmp_path, f"  mine: {{format: folder, root: {tmp_path}, options: {{preprocess: "
                                   "{min_points: 10}, folder: {label_property: classification}}}\n")
    ref = next(r for r in list_samples(registry["mine"]) if r.label)
    sample = read_sample(registry["mine"], ref)
    assert np.array_equal(sample.point_labels, labels) and np.abs(sample.points - points).max() < 6e-5


def test_units_convert_the_millimetre_defaults_and_lengths_given_stay(tmp_path):
    registry = _registry(tmp_path, f"  mm: {{format: folder, root: {tmp_path}}}\n"
                                   f"  m: {{format: folder, root: {tmp_path}, options: {{folder: {{units: m}}}}}}\n"
                                   f"  given: {{format: folder, root: {tmp_path}, options: {{folder: {{units: m}}, "
                                   "preprocess: {plane_distance: 0.003}}}\n")
    mm, m, given = (preprocess_options(registry[n], "x") for n in ("mm", "m", "given"))
    assert (mm.plane_distance, mm.cluster_eps, mm.background, mm.flip) == (0.5, 2.0, "none", False)
    assert (m.plane_distance, m.cluster_eps) == (0.0005, 0.002)
    assert given.plane_distance == 0.003 and given.cluster_eps == 0.002
    with pytest.raises(ConfigError, match=r"dataset 'bad': 'options.folder': units 'km'; known: mm, cm, m, um, in$"):
        _registry(tmp_path, f"  bad: {{format: folder, root: {tmp_path}, options: {{folder: {{units: km}}}}}}\n")
    with pytest.raises(ConfigError, match=r"'options.folder' holds options of the folder format, not of real3d$"):
        _registry(tmp_path, f"  bad: {{format: real3d, root: {tmp_path}, options: {{folder: {{units: m}}}}}}\n")


def test_background_plane_drops_the_table_and_keeps_the_part(tmp_path):
    """A box standing on a table, in metres: `background: plane` with units m drops exactly the table points
    (those within 0.5 mm of z = 0, found by brute force here), and their labels with them."""
    rng = np.random.default_rng(0)
    table = np.column_stack([rng.uniform(-0.2, 0.2, (4000, 2)), rng.normal(0, 5e-5, 4000)])
    box = np.column_stack([rng.uniform(-0.03, 0.03, (1500, 2)), rng.uniform(0.005, 0.04, 1500)])
    points = np.concatenate([table, box])
    labels = np.zeros(len(points), np.uint8)
    labels[-100:] = 1
    for split, defect in (("train", "good"), ("test", "bump")):
        (tmp_path / "part" / split / defect).mkdir(parents=True)
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
        assert o3d.io.write_point_cloud(str(tmp_path / "part" / split / defect / "000.pcd"), cloud)
    (tmp_path / "part" / "ground_truth" / "bump").mkdir(parents=True)
    np.save(tmp_path / "part" / "ground_truth" / "bump" / "000.npy", labels)
    registry = _registry(tmp_path, f"  mine: {{format: folder, root: {tmp_path}, options: {{folder: {{units: m}}, "
                                   "preprocess: {background: plane}}}\n")
    ref = next(r for r in list_samples(registry["mine"]) if r.label)
    sample = read_sample(registry["mine"], ref)
    kept = np.abs(points[:, 2]) > 0.0005
    assert kept[:4000].sum() == 0 and kept[4000:].all()
    assert np.array_equal(sample.points, points[kept].astype(np.float32))
    assert np.array_equal(sample.point_labels, labels[kept])
    with pytest.raises(InputFileError, match=r"000\.pcd: background 'belt-box' is for organized scans"):
        read_sample(registry["mine"], ref, preprocess_options(registry["mine"], "part", background="belt-box"))


def test_e57_scans_take_their_pose_and_drop_invalid_records(tmp_path):
    """Two scans, one posed (quaternion and translation, applied here with pyquaternion, independently) and
    one with records flagged invalid: the reader returns both scans' valid points in world coordinates."""
    import pye57
    from pyquaternion import Quaternion
    rng = np.random.default_rng(1)
    first, second = rng.random((300, 3)), rng.random((200, 3))
    invalid = (rng.random(200) < 0.25).astype(np.int8)
    rotation = Quaternion(axis=[1, 2, 3], angle=0.7)
    path = tmp_path / "two.e57"
    with pye57.E57(str(path), mode="w") as e57:
        e57.write_scan_raw({"cartesianX": first[:, 0], "cartesianY": first[:, 1], "cartesianZ": first[:, 2]},
                           rotation=rotation.elements, translation=np.array([10.0, -5.0, 2.0]))
        e57.write_scan_raw({"cartesianX": second[:, 0], "cartesianY": second[:, 1], "cartesianZ": second[:, 2],
                            "cartesianInvalidState": invalid})
    expected = np.concatenate([first @ rotation.rotation_matrix.T + [10.0, -5.0, 2.0], second[invalid == 0]])
    read = read_point_cloud(path)
    assert read.shape == expected.shape and np.abs(read - expected).max() < 1e-5, np.abs(read - expected).max()


@pytest.mark.slow
def test_detect_reads_the_scanner_suffixes(folder_data):
    from pointad.eval.detect import load_cloud
    _, entry = folder_data
    for suffix in (".las", ".laz", ".e57"):
        ref = next(r for r in list_samples(entry) if r.sample_id.endswith(suffix))
        points, sample, _ = load_cloud(ref.files["cloud"], image_size=64)
        assert np.array_equal(points, read_point_cloud(ref.files["cloud"])) and sample.n_points == len(points)


def test_survey_and_scan_say_what_was_found_and_what_was_left_out(folder_data, tmp_path):
    from pointad.render.cli import render
    _, entry = folder_data
    root = _copy(entry, tmp_path)
    (root / "cookie" / "test" / "good" / "notes.txt").write_text("scanned on Monday")
    (root / "cookie" / "train" / "rejects").mkdir()
    (root / "cookie" / "photos").mkdir()
    gt = next((root / "cookie" / "ground_truth" / "bump").iterdir())
    shutil.copy(gt, gt.with_name("999" + gt.suffix))
    dataset = open_dataset(format="folder", root=root)
    found, skipped = survey(dataset)
    counts = Counter((Path(r.sample_id).parts[0], Path(r.sample_id).suffix) for r in list_samples(dataset))
    for line, class_name in zip(found, ("cookie", "torus")):
        by_suffix = ", ".join(f"{s} {n}" for (c, s), n in sorted(counts.items()) if c == class_name)
        assert line.startswith(f"{class_name}: {sum(n for (c, _), n in counts.items() if c == class_name)} clouds (")
        assert line.endswith(f"; {by_suffix})"), line
    assert sorted(skipped) == sorted([
        f"{root / 'cookie' / 'train' / 'rejects'}: a folder other than good/ in a training split",
        f"{root / 'cookie' / 'test' / 'good' / 'notes.txt'}: not a cloud we read (we read .ply, .pcd, .las, .laz, "
        ".e57, .xyz, .npy)",
        f"{root / 'cookie' / 'photos'}: not part of the layout (train/, validation/, test/, ground_truth/)",
        f"{gt.with_name('999' + gt.suffix)}: ground truth with no test cloud test/bump/999.*"])
    result = CliRunner().invoke(render, ["scan", "--format", "folder", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert [line[len("found: "):] for line in result.output.splitlines() if line.startswith("found: ")] == found
    assert sorted(line for line in result.output.splitlines() if line.startswith("skipped: ")) == \
        sorted(f"skipped: {line}" for line in skipped)
    n = len(list_samples(dataset))
    assert f"{n} of {n} samples read, 0 failed, 4 file(s) or folder(s) skipped" in result.output


def test_e57_spherical_coordinates_read_as_pye57_converts_them(tmp_path):
    """A scan stored as range, azimuth and elevation (written through libE57Format's own node API): our points
    equal pye57's own conversion (`E57.read_scan`), an independent implementation of the same formula."""
    import pye57
    from pye57 import libe57
    rng = np.random.default_rng(0)
    values = {"sphericalRange": rng.uniform(1, 5, 300), "sphericalAzimuth": rng.uniform(-3, 3, 300),
              "sphericalElevation": rng.uniform(-1.2, 1.2, 300)}
    path = tmp_path / "spherical.e57"
    e57 = pye57.E57(str(path), mode="w")
    image = e57.image_file
    scan, prototype = libe57.StructureNode(image), libe57.StructureNode(image)
    scan.set("guid", libe57.StringNode(image, "{spherical}"))
    for name, v in values.items():
        prototype.set(name, libe57.FloatNode(image, float(v.min()), libe57.E57_DOUBLE, float(v.min()), float(v.max())))
    points = libe57.CompressedVectorNode(image, prototype, libe57.VectorNode(image, True))
    scan.set("points", points)
    e57.data3d.append(scan)
    buffers = libe57.VectorSourceDestBuffer()
    for name, v in values.items():
        buffers.append(libe57.SourceDestBuffer(image, name, v, len(v), True, True))
    writer = points.writer(buffers)
    writer.write(300)
    writer.close()
    e57.close()
    theirs = pye57.E57(str(path)).read_scan(0, ignore_missing_fields=True)
    expected = np.stack([theirs["cartesianX"], theirs["cartesianY"], theirs["cartesianZ"]], axis=1)
    ours = read_point_cloud(path)
    assert ours.shape == (300, 3) and np.abs(ours - expected).max() < 1e-12, np.abs(ours - expected).max()
    r, azimuth, elevation = (values[k][0] for k in values)  # one point by hand
    np.testing.assert_allclose(ours[0], r * np.array([np.cos(elevation) * np.cos(azimuth),
                                                      np.cos(elevation) * np.sin(azimuth), np.sin(elevation)]))


def test_without_the_scanners_extra_a_scanner_file_is_one_line_naming_it(folder_data, monkeypatch, tmp_path):
    """laspy or pye57 not installed (None in sys.modules: their import fails): the sample's one-line error names
    the file and the install extra; writing synthetic scans likewise names the extra."""
    import sys

    from pointad.shared.errors import PointADError
    _, entry = folder_data
    for suffix, package in ((".las", "laspy"), (".laz", "laspy"), (".e57", "pye57")):
        ref = next(r for r in list_samples(entry) if r.sample_id.endswith(suffix))
        monkeypatch.setitem(sys.modules, package, None)
        if package == "pye57":
            monkeypatch.setitem(sys.modules, "pye57.libe57", None)
        with pytest.raises(InputFileError) as caught:
            read_sample(entry, ref)
        assert str(caught.value) == (f"{ref.files['cloud']}: reading this file needs the '{package}' package: "
                                     "pip install 'pointad-toolkit[scanners]'")
    with pytest.raises(PointADError, match=r"^writing a synthetic folder dataset needs the '(laspy|pye57)' package"):
        synthetic.generate(tmp_path / "out", synthetic.SyntheticSpec(format="folder", **SPEC))
    assert not (tmp_path / "out").exists()
