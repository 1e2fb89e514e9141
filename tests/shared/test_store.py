"""Render store schema v2 (design §4): attributes, the array table, writes by row, reads back, refusals."""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

import pointad.shared as shared
from pointad.shared.errors import PointADError, StoreSchemaError
from pointad.shared.store import SampleArrays, StoreAttrs, open_store, store_fingerprint
from pointad.shared.store_schema import ARRAYS, BY_FIELD, SAMPLE_FIELDS
from pointad.shared.store_write import _write_row, append_samples, create_store, set_failures, update_attrs, write_sample

V, S, P, K = 2, 8, 16, 3
ATTRS = StoreAttrs(views=V, image_size=S, max_points=P, knn=K,
                   view_plan={"name": "paper", "axes": ["x", "x"], "angles": [-1.0471975511965976, 1.0471975511965976]},
                   camera={"model": "pinhole", "fov_degrees": 30.0, "margin": 1.1},
                   software={"zarr": zarr.__version__}, failures=[], render={"views": V, "light": "on"})


def _identity(dataset, i, label=None):
    label = i % 2 if label is None else label
    return {"dataset": dataset, "class_name": ("cookie", "torus")[i % 2], "split": "test",
            "defect_type": "hole" if label else "good", "sample_id": f"cls/test/{i:03d}.tiff", "label": label}


def _arrays(seed: int, n: int | None = None) -> SampleArrays:
    """A random but well-formed row: n valid points, the rest padding holding the fill values."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, P + 1)) if n is None else n
    def pad(values, fill, dtype, axis=0):
        out = np.full(values.shape[:axis] + (P,) + values.shape[axis + 1:], fill, dtype)
        out[(slice(None),) * axis + (slice(0, n),)] = values
        return out
    return SampleArrays(
        n_points=n,
        grid_hw=np.array([S, S], np.int32),
        image=rng.integers(0, 256, (V, S, S, 3), dtype=np.uint8),
        mask=rng.integers(0, 2, (V, S, S), dtype=np.uint8),
        pixel=pad(rng.integers(0, S, (V, n, 2), dtype=np.int16), 0, np.int16, axis=1),
        visible=pad(rng.random((V, n)) < 0.5, False, bool, axis=1),
        xyz=pad(rng.standard_normal((n, 3)).astype(np.float32), 0, np.float32),
        valid=pad(np.ones(n, bool), False, bool),
        label=pad(rng.integers(0, 2, n, dtype=np.uint8), 0, np.uint8),
        grid_index=pad(rng.permutation(S * S)[:n].astype(np.int32), -1, np.int32),
        proxy=pad(rng.integers(0, n, n, dtype=np.int32), -1, np.int32),
        knn=pad(rng.integers(0, n, (n, K), dtype=np.int32), -1, np.int32),
        knn_weight=pad(rng.random((n, K)).astype(np.float16), 0, np.float16),
        rgb=rng.integers(0, 256, (S, S, 3), dtype=np.uint8),
        rgb_mask=rng.integers(0, 2, (S, S), dtype=np.uint8),
        intrinsic=rng.standard_normal((3, 3)),
        extrinsic=rng.standard_normal((V, 4, 4)),
    )


def _assert_row_equal(stored, arrays: SampleArrays):
    for name in SAMPLE_FIELDS:
        got, want = np.asarray(getattr(stored, name)), np.asarray(getattr(arrays, name))
        assert got.dtype == want.dtype or name == "n_points", f"{name}: dtype {got.dtype} != {want.dtype}"
        assert got.shape == want.shape and np.array_equal(got, want), f"{name} differs"


def _all_arrays(path) -> dict[str, np.ndarray]:
    group = zarr.open_group(path, mode="r")
    return {spec.path: group[spec.path][:] for spec in ARRAYS}


@pytest.fixture(scope="module")
def written_store(tmp_path_factory):
    """A store with 4 rows of dataset 'a', rows 0..3 written from seeds 0..3. Read-only: see `store`."""
    path = tmp_path_factory.mktemp("store") / "renders.zarr"
    create_store(path, ATTRS)
    rows = append_samples(path, [_identity("a", i) for i in range(4)])
    for row in rows:
        write_sample(path, row, _arrays(row))
    return path


@pytest.fixture
def store(written_store, tmp_path):
    """A copy of `written_store` for one test to change (a copy takes a tenth of the time of writing it)."""
    path = tmp_path / "renders.zarr"
    shutil.copytree(written_store, path)
    return path


def test_attrs_round_trip_through_dict_and_store(tmp_path):
    data = ATTRS.to_dict()
    assert data["format"] == "pointad-renders" and data["schema_version"] == 2
    assert StoreAttrs.from_dict(data) == ATTRS
    path = tmp_path / "renders.zarr"
    create_store(path, ATTRS)
    assert open_store(path).attrs == ATTRS
    assert dict(zarr.open_group(path, mode="r").attrs) == data


def test_tuples_in_attrs_come_back_equal_after_to_dict():
    attrs = replace(ATTRS, view_plan={"name": "paper", "axes": ("x", "x"), "angles": (0.5, 1.5)})
    assert StoreAttrs.from_dict(attrs.to_dict()).view_plan == {"name": "paper", "axes": ["x", "x"], "angles": [0.5, 1.5]}


def test_other_schema_version_is_refused_with_the_path_first(tmp_path):
    with pytest.raises(StoreSchemaError) as info:
        StoreAttrs.from_dict({**ATTRS.to_dict(), "schema_version": 3}, source="renders.zarr")
    assert str(info.value) == ("renders.zarr: schema_version 3, this version reads 1, 2; open it with the pointad "
                               "version that wrote it, or render into another --out")
    path = tmp_path / "renders.zarr"
    create_store(path, ATTRS)
    zarr.open_group(path, mode="r+").attrs["schema_version"] = 3
    with pytest.raises(StoreSchemaError) as info:
        open_store(path)
    assert str(info.value) == (f"{path}: schema_version 3, this version reads 1, 2; open it with the pointad "
                               "version that wrote it, or render into another --out")


def test_other_format_is_refused_with_the_path_first():
    with pytest.raises(StoreSchemaError) as info:
        StoreAttrs.from_dict({**ATTRS.to_dict(), "format": "other-renders"}, source="renders.zarr")
    assert str(info.value) == ("renders.zarr: format 'other-renders', this version reads 'pointad-renders'; "
                               "not a pointad render store")


def test_unknown_and_missing_attributes_are_errors_naming_them():
    with pytest.raises(StoreSchemaError, match=r"^renders.zarr: unknown key\(s\) \['colour'\]"):
        StoreAttrs.from_dict({**ATTRS.to_dict(), "colour": 1}, source="renders.zarr")
    data = ATTRS.to_dict()
    del data["knn"]
    with pytest.raises(StoreSchemaError, match=r"^renders.zarr: missing key\(s\) \['knn'\]"):
        StoreAttrs.from_dict(data, source="renders.zarr")
    with pytest.raises(StoreSchemaError, match=r"^renders.zarr: 'views' must be int, got '9'$"):
        StoreAttrs.from_dict({**ATTRS.to_dict(), "views": "9"}, source="renders.zarr")
    with pytest.raises(StoreSchemaError, match=r"^renders.zarr: store attribute views must be an integer in 1..64, "
                                               r"got 0$"):
        StoreAttrs.from_dict({**ATTRS.to_dict(), "views": 0}, source="renders.zarr")


def test_folder_that_is_not_a_store_is_refused(tmp_path):
    for path in (tmp_path / "missing.zarr", tmp_path):
        with pytest.raises(StoreSchemaError, match=f"^{path}: not a pointad render store"):
            open_store(path)
    other = tmp_path / "other.zarr"
    zarr.open_group(other, mode="w", zarr_format=3).attrs["title"] = "someone else's"
    with pytest.raises(StoreSchemaError, match=f"^{other}: not a pointad render store"):
        open_store(other)


def test_create_accepts_new_path_or_empty_folder_and_refuses_anything_else(tmp_path):
    (tmp_path / "empty.zarr").mkdir()
    create_store(tmp_path / "empty.zarr", ATTRS)
    create_store(tmp_path / "deep" / "new.zarr", ATTRS)
    assert len(open_store(tmp_path / "empty.zarr")) == len(open_store(tmp_path / "deep" / "new.zarr")) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    with pytest.raises(PointADError, match=f"^{tmp_path / 'empty.zarr'}: already a render store"):
        create_store(tmp_path / "empty.zarr", ATTRS)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    with pytest.raises(PointADError, match=f"^{tmp_path / 'full'}: exists and is not an empty folder"):
        create_store(tmp_path / "full", ATTRS)
    assert (tmp_path / "full" / "notes.txt").read_text() == "keep me"


def test_every_array_starts_empty_with_the_schema_shape_dtype_chunks_and_codec(tmp_path):
    path = tmp_path / "renders.zarr"
    create_store(path, ATTRS)
    group = zarr.open_group(path, mode="r")
    rows = {"samples/grid_hw": (2,), "views/image": (V, S, S, 3), "views/mask": (V, S, S),
            "points/pixel": (V, P, 2), "points/visible": (V, P), "points/xyz": (P, 3), "points/knn": (P, K),
            "points/knn_weight": (P, K), "rgb/image": (S, S, 3), "rgb/mask": (S, S),
            "cameras/intrinsic": (3, 3), "cameras/extrinsic": (V, 4, 4)}
    worker_written = {spec.path for spec in ARRAYS if spec.field} | {"samples/complete"}
    assert len(worker_written) == 18
    for spec in ARRAYS:
        array = group[spec.path]
        row = rows.get(spec.path, (P,) if spec.path.startswith("points/") else ())
        assert array.shape == (0, *row), spec.path
        assert array.metadata.zarr_format == 3
        if spec.dtype != "str":
            assert array.dtype == np.dtype(spec.dtype), spec.path
        if spec.path in worker_written:
            assert array.chunks == (1, *row), f"{spec.path}: chunks {array.chunks}"
        (codec,) = array.compressors
        assert isinstance(codec, BloscCodec) and codec.cname.value == "zstd", f"{spec.path}: {codec}"
        assert codec.shuffle.value == ("bitshuffle" if spec.dtype == "bool" else "shuffle"), spec.path


def test_written_rows_read_back_equal_array_for_array(store):
    opened = open_store(store)
    assert len(opened) == 4 and opened.complete.tolist() == [True] * 4
    for row in range(4):
        sample = opened.sample(row)
        _assert_row_equal(sample, _arrays(row))
        identity = _identity("a", row)
        assert opened.identity(row) == identity
        assert (sample.index, sample.dataset, sample.class_name, sample.split, sample.defect_type,
                sample.sample_id, sample.sample_label) == (row, *(identity[k] for k in
                                                               ("dataset", "class_name", "split", "defect_type",
                                                                "sample_id", "label")))
    assert [s.index for s in opened.iter_samples()] == [0, 1, 2, 3]


def test_read_batch_stacks_rows_in_the_order_asked(store):
    opened = open_store(store)
    for order in ([3, 0, 2], [1, 2, 3], [2, 2, 0], []):
        batch = opened.read_batch(order, fields=SAMPLE_FIELDS)
        for name in SAMPLE_FIELDS:
            spec = BY_FIELD[name]
            want = np.array([getattr(_arrays(i), name) for i in order], dtype=spec.dtype).reshape(
                len(order), *spec.row_shape(ATTRS))
            assert batch[name].dtype == want.dtype and np.array_equal(batch[name], want), name
    assert set(opened.read_batch([0])) == {"image", "pixel", "visible", "valid", "label", "proxy"}
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['colour'\]"):
        opened.read_batch([0], fields=("colour",))


def test_row_appended_but_not_written_is_incomplete_and_refused(store):
    row = append_samples(store, [_identity("a", 7)])[0]
    opened = open_store(store)
    assert opened.complete.tolist() == [True] * 4 + [False]
    assert opened.indices().tolist() == [0, 1, 2, 3]
    assert opened.indices(complete_only=False).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(StoreSchemaError, match=rf"^{store}: row\(s\) 4 \(cls/test/007.tiff\) not completely written"):
        opened.sample(row)
    with pytest.raises(StoreSchemaError, match=r"row\(s\) 4 "):
        opened.read_batch([0, row])
    # unwritten slots hold the schema's fill values
    group = zarr.open_group(store, mode="r")
    fills = {"points/grid_index": -1, "points/proxy": -1, "points/knn": -1, "points/knn_weight": 0,
             "points/pixel": 0, "points/visible": False, "points/valid": False, "points/label": 0}
    for path, fill in fills.items():
        assert (group[path][row] == fill).all(), path


def test_interrupted_write_leaves_the_row_incomplete_until_write_sample_finishes(store):
    row = append_samples(store, [_identity("b", 0)])[0]
    group = zarr.open_group(store, mode="r+")
    _write_row(group, row, _arrays(10))            # every array in, then the process "dies" before the flag
    assert not open_store(store).complete[row]
    with pytest.raises(StoreSchemaError, match="not completely written"):
        open_store(store).sample(row)
    write_sample(store, row, _arrays(11))          # the resumed build rewrites the row
    _assert_row_equal(open_store(store).sample(row), _arrays(11))


def _block_chunk(path, array: str, row: int) -> None:
    """Make the chunk folder of `row` in `array` a plain file, so writing that chunk fails (even as root)."""
    folder = path / array / "c" / str(row)
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.write_text("in the way")


def test_write_failing_half_way_leaves_a_new_row_incomplete(store):
    row = append_samples(store, [_identity("b", 0)])[0]
    _block_chunk(store, "rgb/mask", row)
    with pytest.raises(OSError):
        write_sample(store, row, _arrays(30))
    assert not open_store(store).complete[row]
    assert np.array_equal(zarr.open_group(store, mode="r")["rgb/image"][row], _arrays(30).rgb)  # the others were written


def test_rewrite_of_a_complete_row_failing_half_way_leaves_it_incomplete(store):
    _block_chunk(store, "rgb/mask", 1)
    with pytest.raises(OSError):
        write_sample(store, 1, _arrays(31))
    assert open_store(store).complete.tolist() == [True, False, True, True]


def test_arrays_that_do_not_fit_are_refused_before_anything_is_written(store):
    bad = replace(_arrays(20), rgb_mask=np.zeros((S, S), np.int8))
    with pytest.raises(ValueError, match="^rgb/mask "):
        write_sample(store, 1, bad)
    assert open_store(store).complete[1]
    _assert_row_equal(open_store(store).sample(1), _arrays(1))


def test_second_append_keeps_the_first_rows_intact(store):
    before = _all_arrays(store)
    fingerprint = store_fingerprint(store)
    rows = append_samples(store, [_identity("b", i) for i in range(3)])
    assert rows == range(4, 7)
    for row in rows:
        write_sample(store, row, _arrays(100 + row))
    after = _all_arrays(store)
    for path, values in before.items():
        assert np.array_equal(after[path][:4], values), path
    opened = open_store(store)
    assert opened.indices(dataset="b").tolist() == [4, 5, 6]
    assert opened.indices(dataset=["a", "b"], class_name="torus").tolist() == [1, 3, 5]
    assert opened.indices(split="train").tolist() == []
    for row in range(7):
        _assert_row_equal(opened.sample(row), _arrays(row if row < 4 else 100 + row))
    assert store_fingerprint(store) != fingerprint


def test_append_refuses_duplicates_and_malformed_identities(store):
    with pytest.raises(ValueError, match="sample cls/test/002.tiff of dataset a is already in the store"):
        append_samples(store, [_identity("a", 2)])
    with pytest.raises(ValueError, match="already in the store"):
        append_samples(store, [_identity("c", 0), _identity("c", 0)])
    with pytest.raises(ValueError, match=r"identity 0 has keys \['dataset', 'label'\]"):
        append_samples(store, [{"dataset": "c", "label": 0}])
    with pytest.raises(ValueError, match="identity 0: label must be 0 or 1, got 2"):
        append_samples(store, [_identity("c", 0, label=2)])
    assert len(open_store(store)) == 4


def test_append_failing_half_way_adds_no_rows(store):
    chunk = store / "samples" / "label" / "c" / "0"   # identity arrays: 4096 rows per chunk
    saved = chunk.read_bytes()
    chunk.unlink()
    chunk.mkdir()                                  # unreadable chunk: the append fails at samples/label
    with pytest.raises(OSError):
        append_samples(store, [_identity("b", 1)])  # label 1: a chunk of fill values would be deleted, not written
    chunk.rmdir()
    chunk.write_bytes(saved)
    group = zarr.open_group(store, mode="r")
    assert group["samples/dataset"].shape == (5,)  # grown already: only samples/sample_id makes rows exist
    opened = open_store(store)
    assert len(opened) == 4 and opened.identity(3) == _identity("a", 3)
    assert append_samples(store, [_identity("b", 1)]) == range(4, 5)
    assert {zarr.open_group(store, mode="r")[spec.path].shape[0] for spec in ARRAYS} == {5}
    assert open_store(store).identity(4) == _identity("b", 1)


@pytest.mark.slow
def test_concurrent_writers_on_different_rows_equal_sequential_writes(tmp_path):
    paths = [tmp_path / "sequential.zarr", tmp_path / "parallel.zarr"]
    for path in paths:
        create_store(path, ATTRS)
        append_samples(path, [_identity("a", i) for i in range(12)])
    for row in range(12):
        write_sample(paths[0], row, _arrays(row))
    # separate processes, as loky and dask run them; write_sample opens the store itself
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(write_sample, paths[1], row, _arrays(row)) for row in range(12)]:
            done.result()
    sequential, parallel = _all_arrays(paths[0]), _all_arrays(paths[1])
    for path in sequential:
        assert np.array_equal(sequential[path], parallel[path]), path
    assert open_store(paths[1]).complete.all()
    assert store_fingerprint(paths[0]) == store_fingerprint(paths[1])


def test_wrong_shape_or_dtype_names_the_array(store):
    good = _arrays(0)
    cases = {"points/pixel": replace(good, pixel=good.pixel[:, :-1]),
             "views/image": replace(good, image=good.image.astype(np.float32)),
             "points/knn_weight": replace(good, knn_weight=good.knn_weight.astype(np.float32)),
             "samples/grid_hw": replace(good, grid_hw=(S, S))}
    for name, arrays in cases.items():
        with pytest.raises(ValueError, match=f"^{name} "):
            arrays.validate(ATTRS)
        with pytest.raises(ValueError, match=f"^{name} "):
            write_sample(store, 0, arrays)
    with pytest.raises(ValueError, match=r"n_points must be an integer in \[0, 16\], got 17"):
        replace(good, n_points=17).validate(ATTRS)
    with pytest.raises(ValueError, match="points/valid .* but n_points is 3"):
        replace(good, n_points=3).validate(ATTRS)
    with pytest.raises(IndexError, match=r"row 4 out of range \(the store has 4 rows\)"):
        write_sample(store, 4, good)


def test_failures_and_render_options_are_updated_by_the_coordinator(store):
    fingerprint = store_fingerprint(store)
    failures = [{"dataset": "a", "sample_id": "cls/test/009.tiff", "reason": "0 valid points"}]
    set_failures(store, failures, render={"views": V, "point_sizes": {"a/cookie": 4.0}})
    attrs = open_store(store).attrs
    assert attrs.failures == failures and attrs.render.point_sizes == {"a/cookie": 4.0}
    assert attrs.views == V and attrs.camera == ATTRS.camera
    assert store_fingerprint(store) == store_fingerprint(store) and store_fingerprint(store) != fingerprint
    set_failures(store, [])
    assert open_store(store).attrs.failures == []
    with pytest.raises(ValueError, match="each failure must be"):
        set_failures(store, [{"sample_id": "x"}])
    with pytest.raises(ValueError, match=r"store attribute\(s\) \['views'\] cannot change"):
        update_attrs(store, views=3)


def test_fingerprint_ignores_failures_and_finished_rows_but_not_identities(store):
    fingerprint = store_fingerprint(store)
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    set_failures(store, [{"dataset": "a", "sample_id": "x", "reason": "y"}])
    write_sample(store, 0, _arrays(50))
    assert store_fingerprint(store) == fingerprint
    update_attrs(store, software={"zarr": "0"})
    assert store_fingerprint(store) != fingerprint


def test_out_of_range_rows_are_index_errors(store):
    opened = open_store(store)
    for bad in (4, -1, True):
        with pytest.raises(IndexError, match=f"row {bad!r} out of range"):
            opened.identity(bad)
    with pytest.raises(IndexError):
        opened.read_batch([0, 9])


def test_shared_package_exports_the_store_reader():
    assert shared.open_store is open_store
    assert {"open_store", "load_registry", "Sample"} <= set(dir(shared))
    with pytest.raises(AttributeError):
        _ = shared.not_there


def test_rows_written_at_another_compression_level_read_back_and_resume(tmp_path, monkeypatch):
    # stores of older versions were written at zstd level 5: their rows must read back equal, a build
    # resuming them must write into them, and their metadata rewritten from today's schema (repair) must
    # still decode the old chunks
    import pointad.shared.store_write as store_module
    from pointad.shared.store_check import rewrite_array_metadata
    assert store_module.CLEVEL != 9
    path = tmp_path / "old.zarr"
    monkeypatch.setattr(store_module, "CLEVEL", 9)
    create_store(path, ATTRS)
    append_samples(path, [_identity("a", i) for i in range(2)])
    write_sample(path, 0, _arrays(0))
    monkeypatch.undo()
    assert zarr.open_group(path, mode="r")["views/image"].compressors[0].clevel == 9
    write_sample(path, 1, _arrays(1))
    (path / "views/image/zarr.json").write_text("{")
    assert rewrite_array_metadata(path) == ["views/image"]
    assert zarr.open_group(path, mode="r")["views/image"].compressors[0].clevel == store_module.CLEVEL
    opened = open_store(path)
    for row in range(2):
        _assert_row_equal(opened.sample(row), _arrays(row))


@pytest.mark.parametrize("change, message", [
    ({"views": 65}, "store attribute views must be an integer in 1..64, got 65"),
    ({"image_size": 10**9}, "store attribute image_size must be an integer in 1..2048, got 1000000000"),
    ({"knn": True}, "'knn' must be int, got True"),
    ({"camera": {"fov_degrees": 180}}, "store attribute camera.fov_degrees must be a finite number in (0, 180), got 180"),
    ({"camera": {"fov_degrees": float("nan")}}, "store attribute camera.fov_degrees must be a finite number in (0, 180), "
                                                "got nan"),
    ({"camera": {"margin": "1.1"}}, "store attribute camera.margin must be a finite number > 0, got '1.1'"),
    ({"render": {"point_sizes": "a/b"}}, "store attribute render.point_sizes must be a mapping, got 'a/b'"),
    ({"render": {"point_sizes": {"a/b": 0}}}, "store attribute render.point_sizes.a/b must be a finite number > 0, got 0"),
    ({"failures": [{"reason": "x" * 10**6}]}, "each failure must be {'dataset', 'sample_id', 'reason'} strings, got "
                                              "{'reason': '" + "x" * 22 + "..." + "x" * 23 + "'}"),
])
def test_sizes_and_camera_numbers_of_the_attributes_are_bounded(change, message):
    """The sizes a row is allocated from are at most what `render build` makes; the camera numbers and per-class
    point sizes (which free-form `camera` and `render` hold) are typed; a long value is shown shortened."""
    data = ATTRS.to_dict()
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    with pytest.raises(StoreSchemaError) as info:
        StoreAttrs.from_dict(data, source="renders.zarr")
    assert str(info.value) == f"renders.zarr: {message}"


def test_every_size_render_build_makes_is_one_a_store_may_declare():
    """MAX_SIZES (shared, which imports no stage) against RenderOptions' declared ranges: a store that
    `render build` wrote is never refused as too large."""
    from pointad.render.options import RenderOptions
    from pointad.shared.limits import bound
    from pointad.shared.store_schema import MAX_SIZES
    for name, most in MAX_SIZES.items():
        assert bound(RenderOptions, name)[1].hi <= most, name


def test_a_kept_opening_follows_a_store_replaced_at_the_same_path(store, tmp_path):
    # a worker keeps the arrays it opened (shared/store_write.py); a store put in the old one's place must
    # still get its rows, checked against its own attributes and row count
    write_sample(store, 1, _arrays(11))  # opened and kept
    shutil.rmtree(store)
    create_store(store, ATTRS)  # the same attributes: the same root zarr.json bytes, but 2 rows, not 4
    append_samples(store, [_identity("b", i) for i in range(2)])
    with pytest.raises(IndexError, match="row 3 out of range"):
        write_sample(store, 3, _arrays(3))
    write_sample(store, 1, _arrays(21))
    _assert_row_equal(open_store(store).sample(1), _arrays(21))

    shutil.rmtree(store)
    create_store(store, replace(ATTRS, image_size=2 * S, render={"views": V, "light": "on"}))  # rows no longer fit
    append_samples(store, [_identity("c", 0)])
    with pytest.raises(ValueError):
        write_sample(store, 0, _arrays(0))


def test_a_kept_opening_sees_rows_appended_since(store):
    write_sample(store, 0, _arrays(10))
    (row,) = append_samples(store, [_identity("a", 9)])
    write_sample(store, row, _arrays(19))
    _assert_row_equal(open_store(store).sample(row), _arrays(19))


def test_a_relative_store_path_names_the_same_store_after_a_change_of_directory(store, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(store, other / "renders.zarr")  # byte-equal metadata: only the path tells them apart
    monkeypatch.chdir(tmp_path)
    write_sample("renders.zarr", 0, _arrays(30))
    monkeypatch.chdir(other)
    write_sample("renders.zarr", 0, _arrays(31))
    write_sample(tmp_path / "renders.zarr", 1, _arrays(32))
    _assert_row_equal(open_store(tmp_path / "renders.zarr").sample(0), _arrays(30))
    _assert_row_equal(open_store(tmp_path / "renders.zarr").sample(1), _arrays(32))
    _assert_row_equal(open_store(other / "renders.zarr").sample(0), _arrays(31))
