"""Reader contract, checked on synthetic data written in each real on-disk format (design §2)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pointad.render import synthetic
from pointad.render.readers import list_samples, read_sample
from pointad.shared.errors import InputFileError
from pointad.shared.sample import SPLITS

SIZE = 336


def nearest(array: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Nearest-neighbour resize as torch's interpolate does it (source row floor(i * H / size))."""
    rows = np.floor(np.arange(size) * (array.shape[0] / size)).astype(int)
    cols = np.floor(np.arange(size) * (array.shape[1] / size)).astype(int)
    return array[rows][:, cols]


def expected_id(fmt: str, p) -> str:
    """Where each format's documented layout puts a planned sample (the sample id readers must report)."""
    if fmt == "mvtec3d":
        return f"{p.class_name}/{p.split}/{p.defect}/xyz/{p.index:03d}.tiff"
    if fmt == "eyecandies":
        return f"{p.class_name}/{dict(train='train', validation='val', test='test_public')[p.split]}/data/{p.index:03d}"
    return f"{p.class_name}/{p.split}/{p.index}_{'template' if p.split == 'train' else p.defect}.pcd"


def planned_by_id(spec, refs):
    """Map each listed sample id to the generator's plan entry; every planned sample must be listed."""
    plan = {expected_id(spec.format, p): p for p in synthetic.plan(spec)}
    assert sorted(plan) == sorted(r.sample_id for r in refs)
    return plan, list(plan.values())


class ReaderContract:
    """Every format: counts, dtypes and shapes, labels, ids, ground truth that matches what was written."""

    fixture = ""

    @pytest.fixture
    def data(self, request):
        return request.getfixturevalue(self.fixture)

    def test_lists_the_planned_samples(self, data):
        spec, entry = data
        refs = list_samples(entry)
        expected = Counter((p.class_name, p.split, p.defect != "good") for p in synthetic.plan(spec))
        listed = Counter((r.class_name, r.split, r.label == 1) for r in refs)
        assert listed == expected
        assert {r.split for r in refs} <= set(SPLITS)

    def test_selection_by_class_and_split(self, data):
        _, entry = data
        refs = list_samples(entry, classes=["torus"], splits=["test"])
        assert refs and {(r.class_name, r.split) for r in refs} == {("torus", "test")}

    def test_samples_have_documented_types(self, data):
        _, entry = data
        for ref in list_samples(entry, classes=["cookie"]):
            sample = read_sample(entry, ref)
            assert sample.points.dtype == np.float32 and sample.points.shape[1] == 3
            assert np.isfinite(sample.points).all()
            assert sample.point_labels.dtype == np.uint8 and set(np.unique(sample.point_labels)) <= {0, 1}
            assert sample.label == int(ref.defect_type != "good")
            assert sample.sample_id == ref.sample_id and not sample.sample_id.startswith("/")
            assert (entry.root / sample.sample_id).exists() or (entry.root / sample.sample_id).parent.exists()
            if sample.label:
                assert sample.point_labels.any(), f"{ref.sample_id}: anomalous sample without anomalous points"
            else:
                assert not sample.point_labels.any()

    def test_truncated_main_file_is_an_error_naming_it(self, data, tmp_path):
        _, entry = data
        ref = list_samples(entry, classes=["cookie"], splits=["test"])[0]
        role = next(r for r in ("xyz", "depth", "cloud") if r in ref.files)
        original = ref.files[role]
        copy = tmp_path / original.name
        copy.write_bytes(original.read_bytes()[: original.stat().st_size // 3])
        broken = type(ref)(**{**ref.__dict__, "files": {**ref.files, role: copy}})
        with pytest.raises(ValueError, match=str(copy)):
            read_sample(entry, broken)


class OrganizedChecks:
    """Organized formats: exact per-point ground truth, background plane removed, object kept."""

    def truth(self, spec, planned):
        """(object mask, background mask, defect mask) on the 336 grid, from the generator's own arrays.

        Background is everything off the object unless the generator says otherwise (raw Eyecandies: pixels
        low on the candy's near edge, seen by the tilted camera, are neither)."""
        arrays = synthetic.sample_arrays(spec, planned)
        written = arrays["gt"] if "gt" in arrays else arrays["mask"]
        background = arrays.get("background", ~arrays["object"])
        return nearest(arrays["object"]), nearest(background), nearest(written > 0)

    @pytest.mark.slow
    def test_point_labels_match_written_masks_exactly(self, data):
        spec, entry = data
        refs = list_samples(entry, splits=["test"])
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        for ref in refs:
            sample = read_sample(entry, ref)
            _, _, defect = self.truth(spec, plan_of[ref.sample_id])
            expected = defect.reshape(-1)[sample.grid_index].astype(np.uint8)
            assert np.array_equal(sample.point_labels, expected), ref.sample_id
            assert np.array_equal(sample.grid_mask, defect.astype(np.uint8)), ref.sample_id

    @pytest.mark.slow
    def test_plane_removed_and_object_kept(self, data):
        spec, entry = data
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        for ref in list_samples(entry):
            sample = read_sample(entry, ref)
            obj, background, _ = self.truth(spec, plan_of[ref.sample_id])
            kept = np.zeros(SIZE * SIZE, bool)
            kept[sample.grid_index] = True
            plane_kept = int((kept & background.reshape(-1)).sum())
            object_fraction = (kept & obj.reshape(-1)).sum() / obj.sum()
            assert plane_kept == 0, f"{ref.sample_id}: {plane_kept} plane points kept"
            assert object_fraction >= 0.99, f"{ref.sample_id}: kept {object_fraction:.4f} of object points"

    def test_grid_and_rgb_alignment(self, data):
        _, entry = data
        ref = list_samples(entry, splits=["test"])[0]
        sample = read_sample(entry, ref)
        assert sample.grid_hw == (SIZE, SIZE) and sample.rgb.shape == (SIZE, SIZE, 3) and sample.rgb.dtype == np.uint8
        assert sample.grid_index.dtype == np.int32 and len(np.unique(sample.grid_index)) == sample.n_points
        assert sample.grid_index.min() >= 0 and sample.grid_index.max() < SIZE * SIZE


class TestMVTec3D(ReaderContract, OrganizedChecks):
    fixture = "mvtec_dataset"

    def test_points_are_the_resized_grid_flipped(self, data):
        spec, entry = data
        ref = list_samples(entry, classes=["torus"], splits=["test"])[-1]
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        xyz = nearest(synthetic.sample_arrays(spec, plan_of[ref.sample_id])["xyz"]).reshape(-1, 3)
        sample = read_sample(entry, ref)
        expected = xyz[sample.grid_index] * np.array([1, -1, -1], np.float32)
        assert np.array_equal(sample.points, expected)


class TestEyecandiesRaw(ReaderContract, OrganizedChecks):
    fixture = "eyecandies_dataset"

    def test_rgb_is_image_0_and_xyz_follows_the_camera(self, data):
        spec, entry = data
        ref = list_samples(entry, classes=["cookie"], splits=["train"])[0]
        sample = read_sample(entry, ref)
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        arrays = synthetic.sample_arrays(spec, plan_of[ref.sample_id])
        errors = [np.abs(sample.rgb.astype(int) - nearest(image).astype(int)).mean() for image in arrays["images"]]
        assert int(np.argmin(errors)) == 0 and errors[0] < 8, errors  # all spotlights, not the left spot (image_4)
        # back-projection through the release camera: x / z = (u - W/2) / f for every point
        width = arrays["depth16"].shape[1]
        cols = np.floor(np.arange(SIZE) * (width / SIZE)).astype(int)[sample.grid_index % SIZE]
        x, z = sample.points[:, 0], -sample.points[:, 2]  # undo the 180 degree flip (z -> -z)
        np.testing.assert_allclose(x / z, (cols - width / 2) / 711.11, atol=1e-5)

    def test_scene_is_in_blender_units(self, data):
        """A candy is about one unit across and stands on a belt several units from the camera."""
        _, entry = data
        for ref in list_samples(entry, splits=["train"]):
            points = read_sample(entry, ref).points
            extent = np.ptp(points[:, :2], axis=0).max()
            assert 0.4 < extent < 1.2, f"{ref.sample_id}: candy {extent:.3f} units across"

    def test_pose_moves_points_onto_the_belt_frame(self, data):
        """apply_pose: points move by the camera's pose (camera -> world), onto the scene's own hit points."""
        from pointad.render.readers import preprocess_options
        spec, entry = data
        ref = list_samples(entry, classes=["torus"], splits=["test"])[1]
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        arrays = synthetic.sample_arrays(spec, plan_of[ref.sample_id])
        plain = read_sample(entry, ref)
        posed = read_sample(entry, ref, preprocess_options(entry, "torus", apply_pose=True, flip=False))
        assert np.array_equal(plain.grid_index, posed.grid_index)
        hit = nearest(arrays["hit"]).reshape(-1, 3)[posed.grid_index]
        error = np.abs(posed.points - hit).max(axis=1)
        assert error.max() < 5e-3, f"largest difference {error.max():.2e} at point {error.argmax()}"
        # rigid: the same distances as the camera-frame points
        rng = np.random.default_rng(0)
        a, b = rng.integers(0, plain.n_points, (2, 500))
        np.testing.assert_allclose(np.linalg.norm(posed.points[a] - posed.points[b], axis=1),
                                   np.linalg.norm(plain.points[a] - plain.points[b], axis=1), atol=1e-4)

    def test_lengths_in_another_unit_lose_the_candy(self, data):
        """The registry's belt box is in Blender units: the same numbers read as tenths (the converted
        layout's scale) cut the candy, and MVTec's 5 mm plane keeps the belt walls."""
        from pointad.render.readers import preprocess_options
        spec, entry = data
        ref = list_samples(entry, classes=["cookie"], splits=["train"])[0]
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        obj, background, _ = self.truth(spec, plan_of[ref.sample_id])
        assert read_sample(entry, ref).n_points > 1000
        with pytest.raises(InputFileError, match=r"\d+ valid points after background removal \(need >= 100\)"):
            read_sample(entry, ref, preprocess_options(entry, "cookie", belt_length=0.18, belt_half_width=0.1))
        plane = read_sample(entry, ref, preprocess_options(entry, "cookie", background="plane"))
        kept = np.zeros(SIZE * SIZE, bool)
        kept[plane.grid_index] = True
        assert (kept & background.reshape(-1)).sum() > 100  # walls and belt survive a single plane


class TestReal3D(ReaderContract):
    fixture = "real3d_dataset"

    def test_point_labels_match_written_labels_exactly(self, data):
        spec, entry = data
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        for ref in list_samples(entry, splits=["test"]):
            sample = read_sample(entry, ref)
            arrays = synthetic.sample_arrays(spec, plan_of[ref.sample_id])
            assert np.array_equal(sample.point_labels, arrays["labels"]), ref.sample_id
            np.testing.assert_allclose(sample.points, arrays["points"], atol=1e-6)
            assert sample.grid_index is None and sample.rgb is None and sample.grid_hw == (0, 0)

    def test_clouds_over_budget_are_farthest_point_sampled_keeping_labels(self, data):
        spec, entry = data
        ref = [r for r in list_samples(entry, splits=["test"]) if r.label][0]
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        arrays = synthetic.sample_arrays(spec, plan_of[ref.sample_id])
        from pointad.render.readers import preprocess_options
        sample = read_sample(entry, ref, preprocess_options(entry, ref.class_name, max_points=2000))
        assert sample.n_points == 2000
        # each kept point is one of the originals (distinct ones), with that original's label
        distance, nearest = cKDTree(arrays["points"]).query(sample.points)
        assert distance.max() < 1e-4 and len(np.unique(nearest)) == sample.n_points  # mm, float32
        assert np.array_equal(arrays["labels"][nearest], sample.point_labels)

    def test_scans_are_in_millimetres_with_tens_of_thousands_of_points(self, data):
        _, entry = data
        refs = list_samples(entry)
        assert any("template" in r.sample_id for r in refs if r.split == "train")
        for ref in refs:
            sample = read_sample(entry, ref)
            extent = np.ptp(sample.points, axis=0).max()
            assert 30 < extent < 120, f"{ref.sample_id}: {extent:.4f} across (expected tens of millimetres)"
        counts = [len(synthetic.sample_arrays(*_spec_and_plan(data, r))["points"]) for r in refs[:2]]
        assert min(counts) > 10_000, counts


def _spec_and_plan(data, ref):
    spec, entry = data
    plan_of, _ = planned_by_id(spec, list_samples(entry))
    return spec, plan_of[ref.sample_id]


# --- Eyecandies in the community's MVTec-style conversion ------------------------------------------------

CONVERTED_BACKGROUND = (0.0, 0.1875, -0.4375)  # the conversion's constant (0, a, b): the belt origin rotated back


def _converted_grid(size=200, seed=0):
    """(xyz, object mask): a dome 0.1 x Blender units (the conversion's scale) where the background is the
    conversion's constant point, never zeros."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:size, 0:size]
    x, y = (u - size / 2) * 1e-3, (v - size / 2) * 1e-3
    r = np.hypot(x, y)
    dome = r < 0.05
    z = 0.4 - np.where(dome, 0.01 + 0.02 * np.sqrt(np.clip(1 - (r / 0.05) ** 2, 0, None)), 0) \
        + 1e-5 * rng.standard_normal(x.shape)
    xyz = np.stack([x, y, z], -1).astype(np.float32)
    xyz[~dome] = CONVERTED_BACKGROUND
    return xyz, dome


def _write_converted(root, cls="Confetto"):
    import tifffile
    from PIL import Image
    xyz, dome = _converted_grid()
    for split, defect in (("train", "good"), ("test", "bad")):
        folder = root / cls / split / defect
        for sub in ("xyz", "rgb", "gt"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / "xyz" / "000.tiff", xyz, photometric="rgb")
        Image.fromarray(np.full(xyz.shape, 90, np.uint8)).save(folder / "rgb" / "000.png")
        gt = np.zeros(dome.shape, np.uint8)
        gt[95:105, 95:105] = 255 if defect == "bad" else 0
        Image.fromarray(gt).save(folder / "gt" / "000.png")
    return xyz, dome


def test_converted_eyecandies_background_point_is_missing_not_a_plane(tmp_path):
    """Every sample of the community conversion used to crash (an IndexError from the plane fit on a
    border of one repeated point); now its constant background is recognised and nothing else is dropped."""
    from pointad.render.datasets import open_dataset
    xyz, dome = _converted_grid()
    _write_converted(tmp_path / "eye")
    entry = open_dataset(format="eyecandies", root=tmp_path / "eye")
    refs = list_samples(entry)
    assert [(r.split, r.label) for r in refs] == [("train", 0), ("test", 1)]
    for ref in refs:
        sample = read_sample(entry, ref)
        expected = nearest(dome).reshape(-1)
        assert np.array_equal(np.sort(sample.grid_index), np.flatnonzero(expected)), ref.sample_id
        grid = nearest(xyz).reshape(-1, 3)[sample.grid_index] * np.array([1, -1, -1], np.float32)
        assert np.array_equal(sample.points, grid)
    assert read_sample(entry, refs[1]).point_labels.sum() > 0


def test_degenerate_plane_fit_is_one_line_under_scan_keep_going(tmp_path):
    """A border of one repeated point (not at x = 0, so no converter's placeholder) is a sample error naming
    the file, and `render scan --keep-going` reports it on one line and goes on."""
    import tifffile
    from click.testing import CliRunner

    from pointad.render.cli import render
    xyz, _ = _converted_grid()
    xyz[np.all(xyz == CONVERTED_BACKGROUND, axis=-1)] = (0.25, 0.1875, -0.4375)
    root = tmp_path / "mv"
    _write_converted(root, cls="cookie")
    bad = root / "cookie" / "train" / "good" / "xyz" / "000.tiff"
    tifffile.imwrite(bad, xyz, photometric="rgb")
    result = CliRunner().invoke(render, ["scan", "--format", "mvtec3d", "--root", str(root), "--keep-going"])
    assert result.exit_code == 0 and result.exception is None and "Traceback" not in result.output, result.output
    failed = sorted(line for line in result.output.splitlines() if line.startswith("failed:"))
    converted = root / "cookie" / "test" / "bad" / "xyz" / "000.tiff"  # read as MVTec: its placeholder is missing
    assert len(failed) == 2, result.output
    assert failed[0] == f"failed: {converted}: cannot fit the background plane: only 0 valid border point(s)"
    assert re.fullmatch(rf"failed: {re.escape(str(bad))}: cannot fit the background plane: the \d+ border points "
                        r"span no plane \(1 distinct point\(s\)\); is the background a constant placeholder\?",
                        failed[1]), failed[1]


# --- Real3D-AD names as the official loader reads them -----------------------------------------------------

def test_real3d_test_templates_skipped_and_cut_copy_keep_their_defect(real3d_dataset, tmp_path):
    import shutil

    from pointad.render.datasets import open_dataset
    from pointad.render.readers.real3d import defect_from_name
    _, entry = real3d_dataset
    root = tmp_path / "r3d"
    shutil.copytree(entry.root / "cookie", root / "cookie")
    test_dir, gt_dir = root / "cookie" / "test", root / "cookie" / "gt"
    shutil.copy(root / "cookie" / "train" / "0_template.pcd", test_dir / "0_template.pcd")
    shutil.copy(test_dir / "1_bump.pcd", test_dir / "1_bump_cut.pcd")
    shutil.copy(gt_dir / "1_bump.txt", gt_dir / "1_bump_cut.txt")
    shutil.copy(test_dir / "2_dent.pcd", test_dir / "copy_2_dent.pcd")
    shutil.copy(gt_dir / "2_dent.txt", gt_dir / "copy_2_dent.txt")
    refs = {r.sample_id: r for r in list_samples(open_dataset(format="real3d", root=root))}
    assert "cookie/test/0_template.pcd" not in refs and "cookie/train/0_template.pcd" in refs
    assert refs["cookie/test/1_bump_cut.pcd"].defect_type == "bump"
    assert refs["cookie/test/copy_2_dent.pcd"].defect_type == "dent"
    assert [defect_from_name(s) for s in ("12_bulge", "95_sink_cut", "31_bulge_copy", "4_good", "7_good_cut")] == \
        ["bulge", "sink", "bulge", "good", "good"]


def test_real3d_gt_row_count_mismatch_names_both_counts(real3d_dataset, tmp_path):
    import shutil

    from pointad.render.datasets import open_dataset
    _, entry = real3d_dataset
    root = tmp_path / "r3d"
    shutil.copytree(entry.root / "torus", root / "torus")
    table = root / "torus" / "gt" / "1_bump.txt"
    rows = table.read_text().splitlines()
    table.write_text("\n".join(rows[:-3]) + "\n")
    dataset = open_dataset(format="real3d", root=root)
    ref = next(r for r in list_samples(dataset) if r.sample_id.endswith("1_bump.pcd"))
    with pytest.raises(InputFileError) as caught:
        read_sample(dataset, ref)
    assert str(caught.value) == (f"{table}: {len(rows) - 3} rows but 1_bump.pcd has {len(rows)} points "
                                 "(one label row per point; labels are never guessed)")
