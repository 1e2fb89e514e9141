"""A render store on object storage (issue 22): the same store, byte for byte, as on disk."""

from __future__ import annotations

import os

import pytest

from pointad.render.build import build_store
from pointad.render.options import RenderOptions
from pointad.shared.store import store_fingerprint

REFERENCE = RenderOptions(views=3, image_size=96, supersample=2, max_points=96 * 96, point_size=3)


def _local_files(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _objects(url) -> dict[str, bytes]:
    from pointad.shared.location import as_location
    location = as_location(url)
    prefix = location.path.rstrip("/") + "/"
    return {key[len(prefix):]: location.fs.cat_file(key) for key in location.fs.find(location.path)}


@pytest.mark.slow
def test_two_worker_processes_write_objects_equal_to_the_local_files(mvtec_dataset, reference_store, s3_env,
                                                                    tmp_path, monkeypatch):
    _, entry = mvtec_dataset
    # first a build whose loky workers start without the S3 settings: loky keeps workers between builds of a
    # process, and the S3 build's workers must still meet the bucket with the coordinator's settings
    settings = {name: value for name, value in os.environ.items() if name.startswith("AWS_")}
    for name in settings:
        monkeypatch.delenv(name)
    build_store(entry, tmp_path / "first.zarr", REFERENCE, classes=["cookie"], splits=["train"], workers=2)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    url = f"s3://{s3_env.make_bucket()}/renders.zarr"
    result = build_store(entry, url, REFERENCE, classes=["cookie"], splits=["test"], workers=2)
    assert result.rendered == 6 and not result.failures
    assert store_fingerprint(url) == store_fingerprint(reference_store)
    remote, local = _objects(url), _local_files(reference_store)
    assert sorted(remote) == sorted(local)
    differing = [key for key in local if remote[key] != local[key]]
    assert differing == []


@pytest.mark.slow
def test_a_protocol_without_conditional_writes_needs_the_single_writer_promise(mvtec_dataset, reference_store):
    from pointad.shared.errors import PointADError
    _, entry = mvtec_dataset
    url = "memory://pointad-test/renders.zarr"
    with pytest.raises(PointADError, match="--single-writer"):
        build_store(entry, url, REFERENCE, classes=["cookie"], splits=["test"])
    from pointad.shared.location import as_location
    assert not as_location(url).exists()  # refused before anything was written
    build_store(entry, url, REFERENCE, classes=["cookie"], splits=["test"], single_writer=True)
    assert store_fingerprint(url) == store_fingerprint(reference_store)
    assert _objects(url) == _local_files(reference_store)
