"""Reader contract, checked on synthetic data written in each real on-disk format (SPEC 2)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy.spatial import cKDTree

from render import synthetic
from render.readers import list_samples, read_sample
from shared.sample import SPLITS

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
        """(object mask, defect mask) on the 336 grid, from the generator's own arrays."""
        arrays = synthetic.sample_arrays(spec, planned)
        written = arrays["gt"] if "gt" in arrays else arrays["mask"]
        return nearest(arrays["object"]), nearest(written > 0)

    def test_point_labels_match_written_masks_exactly(self, data):
        spec, entry = data
        refs = list_samples(entry, splits=["test"])
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        for ref in refs:
            sample = read_sample(entry, ref)
            _, defect = self.truth(spec, plan_of[ref.sample_id])
            expected = defect.reshape(-1)[sample.grid_index].astype(np.uint8)
            assert np.array_equal(sample.point_labels, expected), ref.sample_id
            assert np.array_equal(sample.grid_mask, defect.astype(np.uint8)), ref.sample_id

    def test_plane_removed_and_object_kept(self, data):
        spec, entry = data
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        for ref in list_samples(entry):
            sample = read_sample(entry, ref)
            obj, _ = self.truth(spec, plan_of[ref.sample_id])
            kept = np.zeros(SIZE * SIZE, bool)
            kept[sample.grid_index] = True
            plane_kept = int((kept & ~obj.reshape(-1)).sum())
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

    def test_rgb_is_image_4_and_xyz_follows_the_camera(self, data):
        spec, entry = data
        ref = list_samples(entry, classes=["cookie"], splits=["train"])[0]
        sample = read_sample(entry, ref)
        plan_of, _ = planned_by_id(spec, list_samples(entry))
        arrays = synthetic.sample_arrays(spec, plan_of[ref.sample_id])
        image4 = arrays["images"][4]
        assert np.abs(sample.rgb.astype(int) - nearest(image4).astype(int)).mean() < 8
        # back-projection through the release camera: x / z = (u - W/2) / f for every point
        width = arrays["depth16"].shape[1]
        cols = np.floor(np.arange(SIZE) * (width / SIZE)).astype(int)[sample.grid_index % SIZE]
        x, z = sample.points[:, 0], -sample.points[:, 2]  # undo the 180 degree flip (z -> -z)
        np.testing.assert_allclose(x / z, (cols - width / 2) / 711.11, atol=1e-5)


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
        from render.readers import preprocess_options
        sample = read_sample(entry, ref, preprocess_options(entry, ref.class_name, max_points=2000))
        assert sample.n_points == 2000
        # each kept point is one of the originals (distinct ones), with that original's label
        distance, nearest = cKDTree(arrays["points"]).query(sample.points)
        assert distance.max() < 1e-6 and len(np.unique(nearest)) == sample.n_points
        assert np.array_equal(arrays["labels"][nearest], sample.point_labels)
