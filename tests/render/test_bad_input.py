"""Bad input (design §8): one-line errors naming the file and the reason; other samples unaffected."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from pointad.render import synthetic
from pointad.render.datasets import open_dataset
from pointad.render.readers import list_samples, read_sample
from pointad.render.readers.files import read_point_cloud
from pointad.shared.errors import DatasetError, InputFileError
from pointad.shared.registry import resolve_dataset

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
    _expect_error(entry, refs, 0, refs[0].files["cloud"], "not a PCD file (no 'DATA' line ends a header)")


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
    _expect_error(entry, refs, i, path, f"declares {n} points, holds {n - 100}")


# --- point-cloud files checked against their header (issue 9 item 5) ---------------------------------------

POINTS = np.random.default_rng(3).uniform(-1, 1, (300, 3))


def _ply(points, encoding="binary_little_endian", extra_rows=0, faces=False) -> bytes:
    """A PLY written by hand: x y z as float plus a uchar 'quality', optionally a face element after the vertices."""
    header = ["ply", f"format {encoding} 1.0", "comment hand-made", f"element vertex {len(points)}",
              "property float x", "property float y", "property float z", "property uchar quality"]
    if faces:
        header += ["element face 1", "property list uchar int vertex_indices"]
    header = ("\n".join(header + ["end_header"]) + "\n").encode()
    if encoding == "ascii":
        rows = [f"{x:.6f} {y:.6f} {z:.6f} 7" for x, y, z in points] + ["0 0 0 7"] * extra_rows
        body = ("\n".join(rows) + "\n" + ("3 0 1 2\n" if faces else "")).encode()
        return header + body
    order = "<" if encoding == "binary_little_endian" else ">"
    records = np.zeros(len(points) + extra_rows, [("x", order + "f4"), ("y", order + "f4"), ("z", order + "f4"),
                                                  ("q", "u1")])
    for i, axis in enumerate("xyz"):
        records[axis][: len(points)] = points[:, i]
    face = np.array([3], "u1").tobytes() + np.array([0, 1, 2], order + "i4").tobytes() if faces else b""
    return header + records.tobytes() + face


def _pcd(points, data="ascii", declared=None) -> bytes:
    """A PCD written by hand: fields rgb x y z (x not first), float32."""
    n = len(points) if declared is None else declared
    header = (f"# .PCD v0.7\nVERSION 0.7\nFIELDS rgb x y z\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
              f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\nDATA {data}\n").encode()
    table = np.column_stack([np.full(len(points), 4.2e6), points]).astype(np.float32)
    if data == "ascii":
        return header + "".join(f"{r:.7g} {x:.7g} {y:.7g} {z:.7g}\n" for r, x, y, z in table).encode()
    return header + table.tobytes()


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian", "binary_big_endian"])
@pytest.mark.parametrize("faces", [False, True])
def test_hand_made_ply_reads_exactly(tmp_path, encoding, faces):
    path = tmp_path / "cloud.ply"
    path.write_bytes(_ply(POINTS, encoding, faces=faces))
    np.testing.assert_allclose(read_point_cloud(path), POINTS, atol=1e-6)


@pytest.mark.parametrize("data", ["ascii", "binary"])
def test_hand_made_pcd_reads_exactly(tmp_path, data):
    path = tmp_path / "cloud.pcd"
    path.write_bytes(_pcd(POINTS, data))
    np.testing.assert_allclose(read_point_cloud(path), POINTS, atol=1e-6)


@pytest.mark.parametrize("ascii_", [True, False])
@pytest.mark.parametrize("suffix", [".ply", ".pcd"])
def test_open3d_written_clouds_agree_with_open3d(tmp_path, suffix, ascii_):
    """Our header-checked parser is the twin of Open3D's on files Open3D writes (binary_compressed included,
    which we decode ourselves)."""
    import open3d as o3d
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(POINTS))
    cloud.colors = o3d.utility.Vector3dVector(np.abs(POINTS))
    cloud.normals = o3d.utility.Vector3dVector(POINTS[::-1])
    for compressed in ([False, True] if suffix == ".pcd" and not ascii_ else [False]):
        path = tmp_path / f"cloud{suffix}"
        assert o3d.io.write_point_cloud(str(path), cloud, write_ascii=ascii_, compressed=compressed)
        ours = read_point_cloud(path)
        theirs = np.asarray(o3d.io.read_point_cloud(str(path)).points)
        assert ours.shape == theirs.shape == POINTS.shape
        assert np.array_equal(ours, theirs), np.abs(ours - theirs).max()


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_truncated_ply_is_an_error(tmp_path, encoding):
    """Open3D returns the 300 declared points for these, the missing ones at (0, 0, 0)."""
    path = tmp_path / "cloud.ply"
    whole = _ply(POINTS, encoding)
    cut = b"\n".join(whole.split(b"\n")[:-121]) + b"\n" if encoding == "ascii" else whole[: -120 * 13]
    path.write_bytes(cut)  # the last 120 rows / 13-byte records gone
    with pytest.raises(InputFileError, match=f"^{path}: declares 300 points, holds 180$"):
        read_point_cloud(path)
    path.write_bytes(whole[:-5])  # cut inside the last record / row
    with pytest.raises(InputFileError, match=f"^{path}: (declares 300 points, holds 299|line 309: malformed row)"):
        read_point_cloud(path)


@pytest.mark.parametrize("encoding", ["ascii", "binary_little_endian"])
def test_extra_vertex_records_are_a_mismatch(tmp_path, encoding):
    path = tmp_path / "cloud.ply"
    path.write_bytes(_ply(POINTS, encoding, extra_rows=2))
    with pytest.raises(InputFileError, match=f"^{path}: declares 300 points, holds 302$"):
        read_point_cloud(path)


def test_truncated_binary_pcd_is_an_error(tmp_path):
    path = tmp_path / "cloud.pcd"
    path.write_bytes(_pcd(POINTS, "binary")[:-16 * 100 - 3])
    with pytest.raises(InputFileError, match=f"^{path}: declares 300 points, holds 199$"):
        read_point_cloud(path)


def test_truncated_compressed_pcd_is_an_error(tmp_path):
    import open3d as o3d
    path = tmp_path / "cloud.pcd"
    o3d.io.write_point_cloud(str(path), o3d.geometry.PointCloud(o3d.utility.Vector3dVector(POINTS)), compressed=True)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputFileError, match=rf"^{path}: declares 300 points in \d+ compressed bytes, the file holds \d+$"):
        read_point_cloud(path)


@pytest.mark.parametrize("row, reason", [
    ("4.2e6 0.5 0.5", "line 15: malformed row (3 values, the header declares 4)"),
    ("4.2e6 0.5 0.5 0.5 0.5", "line 15: malformed row (5 values, the header declares 4)"),
    ("4.2e6 0.5 zero 0.5", "line 15: malformed row, 'zero' is not a number"),
])
def test_malformed_ascii_pcd_row_is_an_error_naming_the_line(tmp_path, row, reason):
    """Open3D reads these rows as shifted or zero coordinates; the header is 11 lines, so point 3 is line 15."""
    lines = _pcd(POINTS, "ascii").decode().splitlines()
    lines[14] = row
    path = tmp_path / "cloud.pcd"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError) as info:
        read_point_cloud(path)
    assert str(info.value) == f"{path}: {reason}"


def test_ascii_pcd_with_more_rows_than_declared(tmp_path):
    path = tmp_path / "cloud.pcd"
    path.write_bytes(_pcd(POINTS, "ascii", declared=299))
    with pytest.raises(InputFileError, match=f"^{path}: declares 299 points, holds 300$"):
        read_point_cloud(path)


def test_truncated_ply_in_a_real3d_build_and_in_detect(real3d, tmp_path):
    """The reader and detect's loader both refuse a cut PLY; the other sample still reads."""
    from pointad.eval.detect import load_cloud
    entry, refs = real3d
    i = next(i for i, r in enumerate(refs) if not r.label)
    pcd = refs[i].files["cloud"]
    ply = pcd.with_suffix(".ply")
    n = len(read_point_cloud(pcd))
    whole = _ply(read_point_cloud(pcd))
    ply.write_bytes(whole[: len(whole) - 13 * 50])  # 13-byte records: the last 50 points cut off
    pcd.unlink()
    fresh = list_samples(entry)
    index = next(k for k, r in enumerate(fresh) if r.files["cloud"] == ply)
    _expect_error(entry, fresh, index, ply, f"declares {n} points, holds {n - 50}")
    with pytest.raises(InputFileError, match=f"^{ply}: declares {n} points, holds {n - 50}$"):
        load_cloud(ply)


def test_directory_where_a_cloud_file_is_expected(tmp_path):
    folder = tmp_path / "scan.ply"
    folder.mkdir()
    with pytest.raises(InputFileError, match=f"^{folder}: is a directory, expected a file$"):
        read_point_cloud(folder)


# --- raw Eyecandies masks (issue 9): a bad mask fails its sample, not the listing or the build --------------

@pytest.mark.parametrize("damage", ["missing", "truncated", "directory"])
def test_bad_raw_eyecandies_mask_fails_only_its_sample(tmp_path, damage):
    entry, refs = _dataset(tmp_path, "eyecandies")
    i = _anomalous(refs)
    mask = refs[i].files["gt"]
    if damage == "missing":
        mask.unlink()
    elif damage == "truncated":
        _truncate(mask, 0.5)
    else:
        mask.unlink()
        mask.mkdir()
    fresh = list_samples(entry)  # listing reads the masks of raw test samples; it must not fail
    assert [r.sample_id for r in fresh] == [r.sample_id for r in refs]
    reason = {"missing": "file not found", "truncated": "unreadable image", "directory": "is a directory"}[damage]
    _expect_error(entry, fresh, i, mask, reason)


@pytest.mark.slow
def test_build_records_a_bad_raw_eyecandies_mask_and_renders_the_rest(tmp_path):
    from pointad.render.build import build_store
    from pointad.render.options import RenderOptions
    from pointad.shared.store import open_store
    entry, refs = _dataset(tmp_path, "eyecandies")
    i = _anomalous(refs)
    refs[i].files["gt"].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    options = RenderOptions(views=3, image_size=64, supersample=1, max_points=64 * 64, point_size=3)
    result = build_store(entry, tmp_path / "renders.zarr", options)
    assert result.rendered == 1 and len(result.failures) == 1, result.summary()
    sample_id, reason = result.failures[0]
    assert sample_id == refs[i].sample_id and reason.startswith(f"{refs[i].files['gt']}: unreadable image")
    store = open_store(tmp_path / "renders.zarr")
    done = [store.identity(r)["sample_id"] for r in range(len(store)) if store.complete[r]]
    assert done == [refs[1 - i].sample_id]


# --- escapes the reader fuzzing (tests/faults/test_fuzz_readers.py) found, each now a one-line error --------

def test_double_coordinates_beyond_float32_are_an_error(tmp_path):
    """A binary PLY of doubles holding 1e300: cast to the store's float32 it would be inf."""
    points = POINTS.copy()
    points[7, 1] = 1e300
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(points)}\n"
              "property double x\nproperty double y\nproperty double z\nend_header\n").encode()
    path = tmp_path / "huge.ply"
    path.write_bytes(header + points.astype("<f8").tobytes())
    from pointad.eval.detect import load_cloud
    with pytest.raises(InputFileError, match=f"^{path}: coordinates beyond the float32 range in 1 point\\(s\\)$"):
        load_cloud(path)


@pytest.mark.parametrize("content, reason", [
    (b"", "unreadable .npy (No data left in file)"),
    (b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order'( False, 'shape': (300, 3), }" + b" " * 56 + b"\n",
     "unreadable .npy"),  # one byte overwritten: numpy's header parser raises tokenize.TokenError
    (b"PK\x05\x06" + b"\x00" * 18, "expected one .npy array, got an .npz archive"),
])
def test_broken_npy_given_to_detect(tmp_path, content, reason):
    from pointad.eval.detect import load_cloud
    path = tmp_path / "cloud.npy"
    path.write_bytes(content)
    with pytest.raises(InputFileError) as info:
        load_cloud(path)
    assert str(info.value).startswith(f"{path}: {reason}") and "\n" not in str(info.value), str(info.value)


def test_eyecandies_normalization_beyond_float32_names_the_yaml(tmp_path):
    entry, refs = _dataset(tmp_path, "eyecandies")
    info = refs[0].files["info_depth"]
    info.write_text("normalization: {min: 0.1, max: 1.0e+300}\n")
    _expect_error(entry, refs, 0, info, "normalization min/max must be finite depths")


@pytest.mark.parametrize("text, reason", [
    # nine levels of ten aliases each: 10^9 nodes once expanded, a few hundred bytes on disk
    ("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
     + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
     + "normalization: {min: 0.1, max: 1.0}\n", "expands its aliases to more than"),
    ("normalization: {min: 0.1, max: 1.0}\n" + "#" * 300_000 + "\n", "is larger than 256 KiB"),
])
def test_eyecandies_hostile_yaml_is_refused_like_a_registry(tmp_path, text, reason):
    entry, refs = _dataset(tmp_path, "eyecandies")
    info = refs[0].files["info_depth"]
    info.write_text(text)
    _expect_error(entry, refs, 0, info, reason)
