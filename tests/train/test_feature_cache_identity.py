"""A feature cache follows the store's content, not its path (design §6): a store changed in place at the same
path (rows rendered again with other pixels, rows appended) is not served the old features; an identical
re-render, or the same store under another path, still is. Real stores written with the library's own
writers, the tiny model on CPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import zarr

from pointad.shared.errors import CheckpointMismatchError, PointADError
from pointad.shared.h5store import export_h5
from pointad.shared.store import SampleArrays, open_store, store_fingerprint
from pointad.shared.store_schema import BY_FIELD
from pointad.shared.store_write import append_samples, write_sample
from pointad.train.data import training_rows
from pointad.train.features import cache_identity, compute_features, row_content
from pointad.train.loop import Trainer
from pointad.train.model.backbone import encode_views, load_backbone
from pointad.train.model.model_config import model_config_for
from pointad.train.options import TrainConfig


@pytest.fixture
def store(cookie_splat_336, tmp_path):
    """A copy of six cookie test samples, 2 views at CLIP's 336 px (splat; tests/conftest.py): tests change it in
    place."""
    out = tmp_path / "renders.zarr"
    shutil.copytree(cookie_splat_336, out)
    return out


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(model_config_for("tiny", None, None), seed=7)


def _arrays(sample) -> SampleArrays:
    return SampleArrays(**{name: getattr(sample, name) for name in BY_FIELD})


def _cached(path, rows):
    """The cache's global features of `rows`, read from its Zarr group directly."""
    group = zarr.open_group(path, mode="r")
    position = {row: i for i, row in enumerate(group.attrs["rows"])}
    return np.asarray(group["global"][...])[[position[int(r)] for r in rows]]


def _fresh(backbone, store, rows):
    """The vision tower run now on the rows' renderings as stored: what a correct cache must hold."""
    images = open_store(store).read_batch([int(r) for r in rows], ("image",))["image"]
    with torch.no_grad():
        return encode_views(backbone, images, "cpu", False)[0].numpy()


@pytest.mark.slow
def test_rows_rendered_again_with_other_pixels_are_not_served_old_features(store, backbone, tmp_path):
    cache = tmp_path / "features.zarr"
    rows = training_rows(open_store(store), None, "cookie")
    assert compute_features(backbone, store, rows, cache) == "built"
    before = _cached(cache, rows)
    fingerprint = store_fingerprint(store)
    # row 0 rendered again in place: its arrays now hold row 3's renderings (same identity, same path)
    write_sample(store, int(rows[0]), _arrays(open_store(store).sample(int(rows[3]))))
    assert store_fingerprint(store) == fingerprint, "the case needs a re-render the store fingerprint cannot see"
    snapshot = {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}
    with pytest.raises(CheckpointMismatchError, match=f"^{cache}: feature cache made for other store content; pass "
                                                      "--rebuild-features"):
        compute_features(backbone, store, rows, cache)
    assert {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()} == snapshot  # refused untouched
    assert compute_features(backbone, store, rows, cache, rebuild=True) == "rebuilt (store content differed)"
    after, fresh = _cached(cache, rows), _fresh(backbone, store, rows)
    assert np.abs(after - fresh).max() < 1e-5, f"largest difference {np.abs(after - fresh).max()}"
    assert np.abs(after[0] - before[0]).max() > 1e-3 and np.array_equal(after[1:], before[1:])
    np.testing.assert_allclose(after[0], before[3], atol=1e-5)   # row 0 now draws what row 3 draws


@pytest.mark.slow
def test_an_identical_re_render_and_another_path_keep_the_cache(store, backbone, tmp_path):
    cache = tmp_path / "features.zarr"
    rows = training_rows(open_store(store), None, "cookie")
    assert compute_features(backbone, store, rows, cache) == "built"
    write_sample(store, int(rows[2]), _arrays(open_store(store).sample(int(rows[2]))))   # the same pixels again
    assert compute_features(backbone, store, rows, cache) == "reused"
    moved = tmp_path / "elsewhere" / "renders.zarr"
    shutil.copytree(store, moved)
    assert compute_features(backbone, moved, rows, cache) == "reused"
    assert row_content(moved, rows) == row_content(store, rows)
    assert compute_features(backbone, store, rows[:3], cache) == "reused"   # a subset of the cached rows


@pytest.mark.slow
def test_rows_appended_in_place_are_not_served_an_old_cache(store, backbone, tmp_path):
    cache = tmp_path / "features.zarr"
    rows = training_rows(open_store(store), None, "cookie")
    assert compute_features(backbone, store, rows, cache) == "built"
    old = open_store(store)
    new = append_samples(store, [{**old.identity(1), "sample_id": "cookie/test/extra/000.tiff"}])
    write_sample(store, new[0], _arrays(old.sample(1)))
    grown = training_rows(open_store(store), None, "cookie")
    assert grown.tolist() == [*rows.tolist(), new[0]]
    with pytest.raises(CheckpointMismatchError, match="feature cache made for other store, rows;"):
        compute_features(backbone, store, grown, cache)
    assert compute_features(backbone, store, grown, cache, rebuild=True).startswith("rebuilt (store")
    after = _cached(cache, grown)
    np.testing.assert_allclose(after, _fresh(backbone, store, grown), atol=1e-5)
    np.testing.assert_allclose(after[-1], after[1], atol=1e-5)


@pytest.mark.slow
def test_a_training_run_on_a_store_re_rendered_in_place_refuses_its_cache_then_rebuilds_it(store, tmp_path):
    config = TrainConfig(store=str(store), class_name="cookie", model="tiny", epochs=1, batch_size=4, seed=3)
    cache = tmp_path / "features.zarr"
    Trainer(config, tmp_path / "a", feature_path=cache)
    rows = training_rows(open_store(store), None, "cookie")
    write_sample(store, int(rows[-1]), _arrays(open_store(store).sample(int(rows[0]))))
    with pytest.raises(CheckpointMismatchError, match="other store content"):
        Trainer(config, tmp_path / "b", feature_path=cache)
    lines = []
    trainer = Trainer(config, tmp_path / "c", feature_path=cache, rebuild_features=True, log=lines.append)
    assert lines == [f"{cache}: feature cache rebuilt (store content differed)"]
    global_feature, _ = trainer.features.get(rows)
    fresh = _fresh(trainer.backbone, store, rows)
    assert np.abs(global_feature.numpy() - fresh).max() < 1e-5


@pytest.mark.slow
def test_row_content_is_one_digest_a_row_for_the_hdf5_twin_too(store, tmp_path):
    rows = open_store(store).indices().tolist()
    zarr_digests = row_content(store, rows)
    assert list(zarr_digests) == [str(r) for r in rows] and len(set(zarr_digests.values())) == len(rows)
    twin = tmp_path / "renders.h5"
    export_h5(store, twin)
    twin_digests = row_content(twin, rows)
    assert list(twin_digests) == list(zarr_digests) and len(set(twin_digests.values())) == len(rows)
    identity = cache_identity(load_backbone(model_config_for("tiny", None, None), seed=7), twin)
    assert identity["store_fingerprint"] == store_fingerprint(store)


def test_a_damaged_chunk_mid_build_leaves_no_cache_and_no_temp_group(store, backbone, tmp_path):
    # row 3's renderings no longer decode: the build stops there, after rows 0-1 were written to the temp group
    (chunk,) = [p for p in (store / "views" / "image" / "c" / "3").rglob("*") if p.is_file()]
    chunk.write_bytes(b"not a blosc frame")
    out = tmp_path / "features.zarr"
    with pytest.raises(PointADError, match="views/image"):
        compute_features(backbone, store, np.arange(6), out, batch_size=2)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if "features" in p.name) == [".features.zarr.pointad-lock"]
