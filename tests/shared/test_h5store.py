"""The HDF5 twin (`render export`, design §4): every array and attribute as in the Zarr store, read by
`open_store`, and train and eval on it give what they give on the Zarr store."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
import zarr
from click.testing import CliRunner

from pointad.eval.cli import eval_
from pointad.render.cli import render
from pointad.shared.errors import PointADError
from pointad.shared.h5store import GZIP_LEVEL, export_h5
from pointad.shared.store import open_store, store_fingerprint
from pointad.shared.store_schema import ARRAYS, SAMPLE_FIELDS
from pointad.train.loop import TrainConfig, train
from pointad.train.model.checkpoint import load_checkpoint

MVTEC = "synthetic-mvtec3d"


@pytest.fixture(scope="module")
def twin(cookie_splat_336, tmp_path_factory):
    """(Zarr store, its HDF5 twin): the cookie test split at CLIP's 336 px, 2 views, splat renderer (the store
    from tests/conftest.py, read-only; the twin made here)."""
    h5 = tmp_path_factory.mktemp("twin") / "renders.h5"
    result = CliRunner().invoke(render, ["export", str(cookie_splat_336), "--out", str(h5)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {h5}: 6 rows of {cookie_splat_336}"
    return cookie_splat_336, h5


def test_every_array_and_attribute_round_trips_equal(twin):
    zarr_path, h5_path = twin
    group = zarr.open_group(zarr_path, mode="r")
    with h5py.File(h5_path, "r") as file:
        assert {key: json.loads(value) for key, value in file.attrs.items()} == dict(group.attrs)
        for spec in ARRAYS:
            source, copy = group[spec.path], file[spec.path]
            if spec.dtype == "str":
                assert copy.asstr()[:].tolist() == source[:].tolist(), spec.path
            else:
                assert copy.dtype == source.dtype and np.array_equal(copy[:], source[:], equal_nan=True), spec.path
            assert copy.shape == source.shape and copy.chunks == source.chunks, spec.path
            assert copy.compression == "gzip" and copy.compression_opts == GZIP_LEVEL, spec.path
            attrs = {key: json.loads(value) for key, value in copy.attrs.items()}
            assert attrs == {**source.attrs, "dimension_names": list(source.metadata.dimension_names)}, spec.path


@pytest.mark.slow
def test_open_store_reads_the_twin_as_the_zarr_store(twin):
    a, b = (open_store(path) for path in twin)
    assert type(b).__name__ == "H5RenderStore" and a.attrs == b.attrs and len(a) == len(b) == 6
    assert store_fingerprint(twin[0]) == store_fingerprint(twin[1])
    for key, values in a.table().items():
        assert values.dtype == b.table()[key].dtype and np.array_equal(values, b.table()[key]), key
    for row in range(6):
        x, y = a.sample(row), b.sample(row)
        for name in SAMPLE_FIELDS:
            assert np.array_equal(getattr(x, name), getattr(y, name)), (row, name)
    for order in ([5, 0, 2], [1, 2, 3], [4, 4]):
        batch_a, batch_b = a.read_batch(order, SAMPLE_FIELDS), b.read_batch(order, SAMPLE_FIELDS)
        assert all(np.array_equal(batch_a[f], batch_b[f]) for f in SAMPLE_FIELDS), order
    assert b.indices(split="test").tolist() == a.indices(split="test").tolist()


@pytest.mark.slow
def test_export_replaces_only_an_earlier_twin(twin, tmp_path):
    zarr_path, _ = twin
    other = tmp_path / "notes.h5"
    other.write_text("keep me")
    with pytest.raises(PointADError, match=f"^{other}: exists and is not an HDF5 render store"):
        export_h5(zarr_path, other)
    assert other.read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["notes.h5"]
    out = tmp_path / "renders.h5"
    assert export_h5(zarr_path, out) == 6 and export_h5(zarr_path, out) == 6  # an earlier twin is replaced


def _foreign_h5(path, format_value):
    """An HDF5 file another tool wrote (h5py, as netCDF-4 or an instrument would): a root attribute `format`
    that is not ours, a dataset of its own."""
    with h5py.File(path, "w") as file:
        file.attrs["format"] = format_value
        file.create_dataset("scan/depth", data=np.arange(12, dtype=np.float32).reshape(3, 4))
    return path.read_bytes()


@pytest.mark.parametrize("format_value", ["NETCDF4", '"someone-elses-renders"', np.int64(3), b"pointad-renders",
                                          '{"format": "pointad-renders"}'])
def test_export_never_replaces_another_tools_hdf5_file_with_a_format_attribute(twin, tmp_path, format_value):
    zarr_path, _ = twin
    other = tmp_path / "scan.h5"
    before = _foreign_h5(other, format_value)
    with pytest.raises(PointADError, match=f"^{other}: exists and is not an HDF5 render store"):
        export_h5(zarr_path, other)
    assert other.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["scan.h5"]
    with h5py.File(other, "r") as file:   # still the other tool's file, readable by it
        assert np.array_equal(file["scan/depth"][:], np.arange(12, dtype=np.float32).reshape(3, 4))


@pytest.mark.slow
def test_export_replaces_a_twin_whose_format_is_ours(twin, tmp_path):
    """The one file export may replace: its root `format` is the JSON text of our format, as export writes it."""
    zarr_path, h5_path = twin
    out = tmp_path / "renders.h5"
    _foreign_h5(out, '"pointad-renders"')
    assert export_h5(zarr_path, out) == 6
    with h5py.File(out, "r") as file, h5py.File(h5_path, "r") as reference:
        assert "scan" not in file and json.loads(file.attrs["format"]) == "pointad-renders"
        assert set(file) == set(reference)


@pytest.mark.slow
def test_training_on_the_twin_gives_the_same_checkpoint_and_eval_report_reads_it(twin, tmp_path):
    states = []
    for name, store in zip(("zarr", "h5"), twin):
        config = TrainConfig(store=str(store), class_name="cookie", dataset=MVTEC, model="tiny", epochs=1,
                             batch_size=4)
        train(config, tmp_path / name)
        states.append(load_checkpoint(tmp_path / name / "checkpoints" / "epoch_1.pt")["prompts"])
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        a, b = states[0][key], states[1][key]
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, key
    assert any(isinstance(v, torch.Tensor) and v.abs().sum() > 0 for v in states[0].values())
    reports = []
    for name, store in zip(("zarr", "h5"), twin):
        out = tmp_path / f"{name}.json"
        result = CliRunner().invoke(eval_, ["report", "--store", str(store), "--checkpoints", str(tmp_path / name),
                                            "--dataset", MVTEC, "--setting", "cross-dataset", "--device", "cpu",
                                            "--report-format", "json", "--out", str(out)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text()))
    assert _without_paths(reports[0], twin[0]) == _without_paths(reports[1], twin[1])


def _without_paths(report, store):
    """The report with the store's path and the run folder's name taken out (they differ by design)."""
    text = json.dumps(report).replace(str(store), "STORE").replace("zarr", "X").replace("h5", "X")
    return json.loads(text)


def test_a_file_already_at_the_temp_name_is_never_truncated_or_removed(twin, tmp_path):
    """The export writes under `temp_sibling(out)`; a file someone left at that exact name is not ours."""
    from pointad.shared.io import temp_sibling
    store, _ = twin
    out = tmp_path / "renders.h5"
    squatter = temp_sibling(out)
    squatter.write_text("someone else's notes\n")
    with pytest.raises(PointADError, match="File exists|exists"):
        export_h5(store, out)
    assert squatter.read_text() == "someone else's notes\n" and not out.exists()



def test_a_refused_twin_leaves_h5py_usable_from_other_threads(twin, tmp_path):
    """A root attribute that is not JSON is refused half-way through the attributes; the refusal must not keep
    h5py's global lock held (a half-read items() generator held it in this thread until collected, and zarr's
    I/O thread deadlocked on it as soon as it touched h5py)."""
    import shutil
    import threading

    from pointad.shared.errors import StoreSchemaError
    from pointad.shared.h5store import open_h5_store
    _, h5 = twin
    bad = tmp_path / "bad.h5"
    shutil.copy(h5, bad)
    with h5py.File(bad, "r+") as file:
        names = list(file.attrs)
        file.attrs[names[len(names) // 2]] = "{not json"  # parsed after some attributes, before others
    with pytest.raises(StoreSchemaError) as refused:
        open_h5_store(bad)
    done = threading.Event()

    def use_h5py():
        with h5py.File(h5, "r") as file:
            list(file.attrs)
        done.set()

    other = threading.Thread(target=use_h5py, daemon=True)
    other.start()
    other.join(timeout=30)
    assert done.is_set(), "h5py's lock is still held by the refused open"
    assert "not JSON" in str(refused.value)
