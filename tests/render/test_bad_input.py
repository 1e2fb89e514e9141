"""Bad input (SPEC 8): one-line errors naming the file and the reason; other samples unaffected."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from render import synthetic
from render.datasets import open_dataset
from render.readers import list_samples, read_sample
from shared.errors import DatasetError, InputFileError
from shared.registry import resolve_dataset

TWO_SAMPLES = dict(classes=("cookie",), defects=("bump",), train=0, validation=0, test_good=1, per_defect=1)


def _dataset(tmp_path, fmt):
    root = synthetic.generate(tmp_path / fmt, synthetic.SyntheticSpec(format=fmt, seed=9, **TWO_SAMPLES))
    entry = open_dataset(format=fmt, root=root)
    refs = list_samples(entry)
    assert [r.defect_type for r in refs] in (["bump", "good"], ["good", "bump"], ["bad", "good"], ["good", "bad"])
    return entry, refs


def _expect_error(entry, refs, broken_index, path, reason):
    """The broken sample fails with `<path>: <reason...>` on one line; the other reads as before."""
    others = {r.sample_id: r for i, r in enumerate(refs) if i != broken_index}
    with pytest.raises(InputFileError) as info:
        read_sample(entry, refs[broken_index])
    message = str(info.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message, message
    for ref in others.values():
        sample = read_sample(entry, ref)
        assert sample.n_points > 1000 and sample.point_labels.sum() == (sample.point_labels > 0).sum()
    return message


def _anomalous(refs):
    return next(i for i, r in enumerate(refs) if r.label)


def _truncate(path, keep=0.4):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def mvtec(tmp_path):
    return _dataset(tmp_path, "mvtec3d")


def test_truncated_tiff(mvtec):
    entry, refs = mvtec
    i = _anomalous(refs)
    _truncate(refs[i].files["xyz"])
    _expect_error(entry, refs, i, refs[i].files["xyz"], "unreadable TIFF")


def test_garbage_tiff(mvtec):
    entry, refs = mvtec
    refs[0].files["xyz"].write_bytes(b"this is not a tiff at all")
    _expect_error(entry, refs, 0, refs[0].files["xyz"], "unreadable TIFF")


def test_tiff_of_wrong_shape(mvtec):
    entry, refs = mvtec
    tifffile.imwrite(refs[0].files["xyz"], np.zeros((50, 50), np.float32))
    _expect_error(entry, refs, 0, refs[0].files["xyz"], "expected an H x W x 3 organized point cloud")


def test_truncated_rgb_png(mvtec):
    entry, refs = mvtec
    _truncate(refs[0].files["rgb"], 0.5)
    _expect_error(entry, refs, 0, refs[0].files["rgb"], "unreadable image")


def test_truncated_gt_png(mvtec):
    entry, refs = mvtec
    i = _anomalous(refs)
    _truncate(refs[i].files["gt"], 0.5)
    _expect_error(entry, refs, i, refs[i].files["gt"], "unreadable image")


def test_gt_shape_differs_from_xyz(mvtec):
    entry, refs = mvtec
    i = _anomalous(refs)
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(refs[i].files["gt"])
    _expect_error(entry, refs, i, refs[i].files["gt"], "shape (300, 400) does not match 000.tiff grid (400, 400)")


def test_missing_gt_of_anomalous_sample(mvtec):
    entry, refs = mvtec
    i = _anomalous(refs)
    refs[i].files["gt"].unlink()
    fresh = list_samples(entry)  # listing no longer finds a gt file
    _expect_error(entry, fresh, i, fresh[i].files["xyz"], "anomalous sample (bump) has no ground-truth mask")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, "partial-nan"])
def test_non_finite_coordinates_in_tiff(mvtec, bad):
    entry, refs = mvtec
    xyz = tifffile.imread(refs[0].files["xyz"])
    if bad == "partial-nan":
        xyz[200, 200, 2] = np.nan
    else:
        xyz[200, 200, 0] = bad
    tifffile.imwrite(refs[0].files["xyz"], xyz, photometric="rgb")
    _expect_error(entry, refs, 0, refs[0].files["xyz"], "non-finite coordinates at 1 pixel(s)")


def test_all_missing_cloud(mvtec):
    entry, refs = mvtec
    tifffile.imwrite(refs[0].files["xyz"], np.zeros((400, 400, 3), np.float32), photometric="rgb")
    _expect_error(entry, refs, 0, refs[0].files["xyz"], "0 valid points (need >= 100)")


def test_all_nan_pixels_count_as_missing_not_corrupt(mvtec):
    entry, refs = mvtec
    xyz = tifffile.imread(refs[0].files["xyz"])
    before = read_sample(entry, refs[0]).n_points
    xyz[100:110, 100:110] = np.nan  # a scanner's "no measurement", on the plane or on the object
    tifffile.imwrite(refs[0].files["xyz"], xyz, photometric="rgb")
    assert read_sample(entry, refs[0]).n_points <= before


@pytest.fixture
def real3d(tmp_path):
    return _dataset(tmp_path, "real3d")


def test_truncated_pcd(real3d):
    entry, refs = real3d
    i = next(i for i, r in enumerate(refs) if not r.label)
    _truncate(refs[i].files["cloud"], 0.5)
    message = _expect_error(entry, refs, i, refs[i].files["cloud"], "")
    assert "truncated" in message or "unreadable" in message


def test_garbage_pcd(real3d):
    entry, refs = real3d
    refs[0].files["cloud"].write_text("not a point cloud\n")
    _expect_error(entry, refs, 0, refs[0].files["cloud"], "unreadable or empty point cloud")


def test_truncated_label_txt(real3d):
    entry, refs = real3d
    i = _anomalous(refs)
    text = refs[i].files["gt"].read_text()
    refs[i].files["gt"].write_text(text[: len(text) // 2].rsplit(" ", 1)[0])  # cut inside a row
    _expect_error(entry, refs, i, refs[i].files["gt"], "unreadable label table")


def test_label_rows_differ_from_cloud(real3d):
    entry, refs = real3d
    i = _anomalous(refs)
    lines = refs[i].files["gt"].read_text().splitlines()
    refs[i].files["gt"].write_text("\n".join(lines[:-10]) + "\n")
    _expect_error(entry, refs, i, refs[i].files["gt"], f"{len(lines) - 10} rows but")


def test_comma_separated_labels_are_accepted(real3d):
    entry, refs = real3d
    i = _anomalous(refs)
    before = read_sample(entry, refs[i])
    text = refs[i].files["gt"].read_text()
    refs[i].files["gt"].write_text(text.replace(" ", ","))
    after = read_sample(entry, refs[i])
    assert np.array_equal(before.point_labels, after.point_labels) and np.array_equal(before.points, after.points)


def test_nan_in_point_cloud(real3d):
    entry, refs = real3d
    i = _anomalous(refs)
    rows = np.loadtxt(refs[i].files["gt"])
    rows[3, 1] = np.nan
    np.savetxt(refs[i].files["gt"], rows, fmt=["%.9g"] * 3 + ["%d"])
    _expect_error(entry, refs, i, refs[i].files["gt"], "non-finite coordinates in 1 point(s)")


def test_eyecandies_depth_and_info(tmp_path):
    entry, refs = _dataset(tmp_path, "eyecandies")
    _truncate(refs[0].files["depth"], 0.5)
    _expect_error(entry, refs, 0, refs[0].files["depth"], "unreadable image")
    refs[1].files["info_depth"].write_text("normalization: {}\n")
    with pytest.raises(InputFileError, match="info_depth.yaml: missing normalization min/max"):
        read_sample(entry, refs[1])


def test_unknown_dataset_class_and_missing_root(tmp_path, mvtec):
    entry, _ = mvtec
    with pytest.raises(DatasetError, match="unknown dataset 'mvtec'; known: .*mvtec3d"):
        resolve_dataset("mvtec")
    with pytest.raises(DatasetError, match=r"unknown class\(es\) bagle in dataset .*present: cookie"):
        list_samples(entry, classes=["bagle"])
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=f"{missing}: dataset root of .* does not exist"):
        list_samples(open_dataset(format="mvtec3d", root=missing))


def test_truncated_ascii_pcd_is_caught_by_the_header_count(real3d):
    import open3d as o3d
    entry, refs = real3d
    i = next(i for i, r in enumerate(refs) if not r.label)
    path = refs[i].files["cloud"]
    cloud = o3d.io.read_point_cloud(str(path))
    o3d.io.write_point_cloud(str(path), cloud, write_ascii=True)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-100]) + "\n")
    n = len(cloud.points)
    _expect_error(entry, refs, i, path, f"truncated: header declares {n} points, file holds {n - 100}")
