"""The built-in synthetic datasets: deterministic, atomic, cached on first use."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from render import synthetic
from render.datasets import open_dataset
from render.readers import list_samples
from shared import config
from shared.errors import ConfigError, PointADError

TINY = dict(classes=("dome",), defects=("crack", "hole"), train=1, validation=0, test_good=1, per_defect=1)


def _digest_tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["mvtec3d", "eyecandies", "real3d"])
def test_same_seed_same_bytes_other_seed_other_data(tmp_path, fmt):
    a = synthetic.generate(tmp_path / "a", synthetic.SyntheticSpec(format=fmt, seed=1, **TINY))
    b = synthetic.generate(tmp_path / "b", synthetic.SyntheticSpec(format=fmt, seed=1, **TINY))
    c = synthetic.generate(tmp_path / "c", synthetic.SyntheticSpec(format=fmt, seed=2, **TINY))
    assert _digest_tree(a) == _digest_tree(b)
    differing = [k for k, v in _digest_tree(a).items() if _digest_tree(c).get(k) != v]
    assert len(differing) > 1  # everything but the manifest's unchanged fields


def test_defects_change_the_geometry_not_only_the_mask():
    spec = synthetic.SyntheticSpec(format="mvtec3d", seed=0, **TINY)
    for planned in synthetic.plan(spec):
        if planned.defect == "good":
            continue
        arrays = synthetic.sample_arrays(spec, planned)
        assert arrays["defect"].sum() > 20
        # compare the defect region with the object surface right around it
        z = arrays["xyz"][..., 2]
        region = arrays["defect"]
        ring = np.zeros_like(region)
        rows, cols = np.nonzero(region)
        ring[max(rows.min() - 6, 0):rows.max() + 7, max(cols.min() - 6, 0):cols.max() + 7] = True
        ring &= ~region & arrays["object"]
        # defects here are depressions: farther from the sensor (larger z) than the surface around them
        assert np.median(z[region]) > np.median(z[ring]) + 5e-4, planned


def test_generate_refuses_a_non_empty_folder_and_leaves_no_temp(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(PointADError, match="folder exists and is not empty"):
        synthetic.generate(out, synthetic.SyntheticSpec(**TINY))
    assert (out / "precious.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_unknown_class_or_defect_is_an_error():
    with pytest.raises(ConfigError, match="unknown synthetic class.*pyramid"):
        synthetic.SyntheticSpec(classes=("pyramid",))
    with pytest.raises(ConfigError, match="unknown synthetic defect.*smudge"):
        synthetic.SyntheticSpec(defects=("smudge",))


def test_registry_synthetic_generates_once_into_the_cache():
    entry = open_dataset("synthetic-real3d")
    assert entry.root.is_relative_to(config.cache_dir())
    manifest = entry.root / synthetic.MANIFEST
    stamp = manifest.stat().st_mtime_ns
    again = open_dataset("synthetic-real3d")
    assert again.root == entry.root and manifest.stat().st_mtime_ns == stamp
    refs = list_samples(again, splits=["test"])
    assert len(refs) == 5 * (2 + 5)  # five classes, two good and one per defect each
