"""The in-memory caches of training (features, store samples) hold at most their budget, whatever the
number of rows, and give the same values whether a row is held or re-read (issue 9)."""

from __future__ import annotations

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pointad.shared.store import open_store
from pointad.train.cli import _bytes
from pointad.train.cli import train as train_cli
from pointad.train.data import POINT_FIELDS, StoreSamples, training_rows
from pointad.train.features import FeatureCache, cache_identity, compute_features
from pointad.train.loop import Trainer
from pointad.train.model.backbone import load_backbone
from pointad.train.model.model_config import model_config_for
from pointad.train.options import TrainConfig

VIEWS = 3


@pytest.fixture(scope="module")
def store(cookie_store):
    """Six cookie test samples (one good, five defects), VIEWS views at CLIP's 336 px (tests/conftest.py). Building
    it and the backbone takes seconds: the tests using them are marked slow."""
    assert open_store(cookie_store).attrs.render.views == VIEWS
    return cookie_store


@pytest.fixture(scope="module")
def backbone():
    return load_backbone(model_config_for("tiny", None, None), seed=111)


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`: what they really keep alive."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@pytest.mark.parametrize("dtype, itemsize", [("float32", 4), ("float16", 2)])
@pytest.mark.slow
def test_feature_cache_keeps_the_rows_that_fit_and_reads_the_rest(store, backbone, tmp_path, dtype, itemsize):
    rows = training_rows(open_store(store), None, "cookie")
    identity = cache_identity(backbone, store)
    compute_features(backbone, store, rows, tmp_path / "f.zarr", identity=identity, dtype=dtype)
    # tiny model: taps L = 3, G = 336 / 14 = 24, D = 32; a row is its patches (L, V, G*G, D) and global (V, D)
    row_bytes = (3 * VIEWS * 24 * 24 * 32 + VIEWS * 32) * itemsize
    budgets = {"none": 0, "two and a half rows": int(2.5 * row_bytes), "all": 8 * 2**30}
    caches = {name: FeatureCache(tmp_path / "f.zarr", identity, memory_limit=limit) for name, limit in budgets.items()}
    assert [caches[name].kept for name in budgets] == [0, 2, len(rows)]
    for name, cache in caches.items():
        held = _storage_bytes(cache.loaded) if cache.loaded else 0
        assert held == cache.nbytes == cache.kept * row_bytes <= budgets[name], (name, held, cache.nbytes)
    # the same values whether a row comes from memory or from disk, in any mix within a batch
    group_global = np.asarray(caches["none"].global_array[...], dtype=np.float32)
    for batch in ([rows[0], rows[3]], [rows[4], rows[1], rows[2]], rows[::-1].tolist()):
        where = [caches["all"].position[int(r)] for r in batch]
        expected = [c.get(batch) for c in caches.values()]
        for got in expected[1:]:
            assert torch.equal(got[0], expected[0][0]) and torch.equal(got[1], expected[0][1])
        assert np.array_equal(expected[0][0].numpy(), group_global[where])


def _item_bytes(store, row: int) -> int:
    """Hand count of one StoreSamples item: the mask views plus the point fields cut to the sample's n points,
    and the three int64 scalars (row, sample label, n_points as stored)."""
    arrays = open_store(store).read_batch([row], POINT_FIELDS + ("mask", "n_points"))
    n = int(arrays["n_points"][0])
    per_point = {"pixel": VIEWS * 2, "visible": VIEWS, "valid": 1, "label": 1, "proxy": 1}
    return (arrays["mask"][0].nbytes + arrays["n_points"].itemsize + 8 + 8
            + sum(n * count * arrays[name].itemsize for name, count in per_point.items()))


@pytest.mark.slow
def test_store_samples_never_hold_more_than_their_budget(store):
    rows = training_rows(open_store(store), None, "cookie")
    sizes = [_item_bytes(store, int(r)) for r in rows]
    order = [2, 0, 5, 1, 4, 3, 2, 5, 0, 1, 3, 4]  # two epochs, each item once per epoch
    budget = sizes[2] + sizes[0] + sizes[5] // 2  # the first two read fit, the third does not
    expected_kept, total = [], 0
    for i in order[:6]:  # what the rule "keep an item if it still fits" keeps, counted by hand
        if i not in expected_kept and total + sizes[i] <= budget:
            expected_kept.append(i)
            total += sizes[i]
    bounded, everything, nothing = (StoreSamples(store, rows, memory_limit=m) for m in (budget, 2**40, 0))
    for i in order:
        items = [bounded[i], everything[i], nothing[i]]
        kept = [t for item in bounded._kept.values() for t in item.values()]
        assert bounded.kept_bytes == _storage_bytes(kept) <= budget
        for item in items[1:]:
            assert item.keys() == items[0].keys()
            assert all(torch.equal(item[k], items[0][k]) for k in item), i
    assert sorted(bounded._kept) == sorted(expected_kept) and bounded.kept_bytes == total
    assert everything.kept_bytes == sum(sizes) and nothing.kept_bytes == 0
    assert total < budget < sum(sizes)


@pytest.mark.slow
def test_small_budgets_train_exactly_like_a_large_one(store, backbone, tmp_path):
    rows = training_rows(open_store(store), None, "cookie")
    row_bytes = (3 * VIEWS * 24 * 24 * 32 + VIEWS * 32) * 4  # float32 on the CPU
    smallest = min(_item_bytes(store, int(r)) for r in rows)
    # features are kept first: (all of them + the smallest sample), (two and a half rows: two rows, no sample)
    budgets = {"large": 8 * 2**30, "all features": len(rows) * row_bytes + smallest, "2.5 rows": int(2.5 * row_bytes)}
    features = tmp_path / "features.zarr"  # built once, shared: the runs differ only in what they keep in memory
    trainers = {name: Trainer(TrainConfig(store=str(store), class_name="cookie", model="tiny", epochs=2,
                                          cache_memory=budget), tmp_path / name, backbone=backbone,
                              feature_path=features) for name, budget in budgets.items()}
    for epoch in (1, 2):
        metrics = {name: trainer.run_epoch(epoch) for name, trainer in trainers.items()}
        for name in budgets:
            for term, value in metrics["large"].items():
                if term != "seconds":
                    assert metrics[name][term] == value, (epoch, name, term, metrics[name][term], value)
    kept = {name: (t.features.kept, len(t.samples._kept)) for name, t in trainers.items()}
    assert kept == {"large": (len(rows), len(rows)), "all features": (len(rows), 1), "2.5 rows": (2, 0)}
    for name, trainer in trainers.items():
        held = _storage_bytes(trainer.features.loaded) + trainer.samples.kept_bytes
        assert held <= budgets[name], (name, held, budgets[name])
    assert trainers["all features"].samples.kept_bytes == smallest


def test_cache_memory_is_a_size_and_no_part_of_a_run():
    assert _bytes(None, None, "1GiB") == 2**30 and _bytes(None, None, "1.5 mib") == 3 * 2**19
    assert _bytes(None, None, "0") == 0 and _bytes(None, None, "4096") == 4096
    for bad in ("lots", "1GB", "-1GiB", "1 2"):
        with pytest.raises(click.BadParameter, match="such as 8GiB"):
            _bytes(None, None, bad)
    one = TrainConfig(store="a", class_name="cookie", cache_memory=0)
    assert one.identity() == TrainConfig(store="a", class_name="cookie").identity()
    assert TrainConfig(store="a", class_name="cookie").cache_memory == 8 * 2**30
    result = CliRunner().invoke(train_cli, ["run", "--store", "x", "--model", "tiny", "--cache-memory", "lots"])
    assert result.exit_code == 2 and "--cache-memory" in result.output and "such as 8GiB" in result.output
