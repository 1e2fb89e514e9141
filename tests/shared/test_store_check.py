"""Store integrity checks (design §8, shared/store_check.py and `render verify`): damage made by hand to one
known row (the first of a store, the last, the first row the chunk record requires) is found at that row and
nowhere else; an undamaged store has no problem."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from pointad.render.options import RenderOptions
from pointad.render.verify import verify_store
from pointad.shared.store import CHECKED_FROM, SampleArrays, open_store
from pointad.shared.store_check import chunk_problems
from pointad.shared.store_schema import BY_FIELD
from pointad.shared.store_write import write_sample

OPTIONS = RenderOptions(views=2, image_size=48, supersample=1, max_points=48 * 48, point_size=3, renderer="splat",
                         normals="auto")  # what the build of tests/conftest.py, choosing none, records
ROWS = 6
MVTEC = "synthetic-mvtec3d"


@pytest.fixture(scope="module")
def pristine(cookie_splat_48):
    """The cookie test split (6 rows) drawn with OPTIONS (tests/conftest.py builds it once): read-only, tests
    damage copies."""
    assert RenderOptions.from_store(open_store(cookie_splat_48).attrs.render, MVTEC, "cookie") == OPTIONS
    assert len(open_store(cookie_splat_48)) == ROWS
    return cookie_splat_48


@pytest.fixture
def store_copy(pristine, tmp_path):
    out = tmp_path / "renders.zarr"
    shutil.copytree(pristine, out)
    return out


def _chunk(path, array, row):
    """The chunk file of `row` of a worker-written array: key c/<row>/0/..., Zarr v3's default encoding."""
    ndim = len(zarr.open_array(path / array, mode="r").shape)
    return path / array / "c" / "/".join([str(row)] + ["0"] * (ndim - 1))


def test_an_undamaged_store_has_no_problem(pristine):
    store = open_store(pristine)
    assert store.chunks_checked_from == 0 and store.indices().tolist() == list(range(ROWS))
    assert chunk_problems(store) == [] and chunk_problems(store, decode=True) == []
    assert verify_store(store, rerender=0) == []


@pytest.mark.parametrize("row", [0, ROWS - 1])
@pytest.mark.parametrize("array", ["views/image", "points/knn", "cameras/extrinsic"])
def test_a_missing_chunk_is_found_at_its_row_first_and_last(store_copy, row, array):
    chunk = _chunk(store_copy, array, row)
    assert chunk.is_file()
    chunk.unlink()
    store = open_store(store_copy)
    key = "/".join(chunk.relative_to(store_copy / array).parts)
    expected = [(row, array, f"chunk {key} is missing (it would read as zeros)")]
    assert chunk_problems(store) == expected
    assert chunk_problems(store, decode=True) == expected  # a missing chunk is not also reported as undecodable
    assert chunk_problems(store, rows=[row]) == expected
    others = [r for r in range(ROWS) if r != row]
    assert chunk_problems(store, rows=others) == []


@pytest.mark.parametrize("row", [0, ROWS - 1])
def test_a_chunk_that_does_not_decode_is_found_at_its_row_with_decode(store_copy, row):
    chunk = _chunk(store_copy, "views/mask", row)
    chunk.write_bytes(np.random.default_rng(row).bytes(chunk.stat().st_size))
    store = open_store(store_copy)
    assert chunk_problems(store) == []  # it exists: only decoding finds it
    found = chunk_problems(store, decode=True)
    assert [(r, a) for r, a, _ in found] == [(row, "views/mask")]
    assert found[0][2].startswith(f"chunk c/{row}/0/0/0 does not decode (")


def test_the_first_row_the_chunk_record_requires_is_checked(store_copy):
    """A store whose chunk record starts at row 2 (rows before were written by a version that skipped chunks
    of zeros): row 2's missing chunk is damage, row 1's is not."""
    zarr.open_array(store_copy / "samples/complete", mode="r+").attrs[CHECKED_FROM] = 2
    for row in (1, 2):
        _chunk(store_copy, "points/visible", row).unlink()
    store = open_store(store_copy)
    assert store.chunks_checked_from == 2
    assert [(r, a) for r, a, _ in chunk_problems(store)] == [(2, "points/visible")]


def test_a_shared_identity_chunk_is_checked_from_the_first_required_row(store_copy):
    (store_copy / "samples" / "defect_type" / "c" / "0").unlink()  # every row's defect type, in one chunk
    found = chunk_problems(open_store(store_copy))
    assert found == [(0, "samples/defect_type", "chunk c/0 is missing (it would read as zeros)")]


@pytest.mark.parametrize("row", [0, ROWS - 1])
def test_verify_checks_the_first_and_the_last_complete_row(store_copy, row):
    store = open_store(store_copy)
    sample = store.sample(row)
    arrays = {name: getattr(sample, name) for name in BY_FIELD}
    arrays["knn_weight"] = np.zeros_like(sample.knn_weight)
    write_sample(store_copy, row, SampleArrays(**arrays))
    problems = verify_store(open_store(store_copy), rerender=0)
    assert problems == [f"{sample.dataset}:{sample.sample_id}: k-NN weights do not sum to 1"]


def test_verify_names_a_missing_chunk_of_the_first_row(store_copy):
    _chunk(store_copy, "views/image", 0).unlink()
    store = open_store(store_copy)
    identity = store.identity(0)
    problems = verify_store(store, rerender=0)
    assert problems == [f"{identity['dataset']}:{identity['sample_id']}: row 0: array views/image: chunk "
                        "c/0/0/0/0/0 is missing (it would read as zeros)",
                        "1 damaged row(s): 'render build --repair' with the same dataset and options renders them "
                        "again"]
