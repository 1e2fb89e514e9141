"""The built-in synthetic datasets: deterministic, atomic, cached on first use."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pointad.render import synthetic
from pointad.render.datasets import open_dataset
from pointad.render.readers import list_samples
from pointad.shared import environment
from pointad.shared.errors import ConfigError, PointADError

TINY = dict(classes=("dome",), defects=("crack", "hole"), train=1, validation=0, test_good=1, per_defect=1)


def _digest_tree(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["mvtec3d", pytest.param("eyecandies", marks=pytest.mark.slow), "real3d"])
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


def test_read_manifest_recognises_only_what_generate_writes(tmp_path):
    spec = synthetic.SyntheticSpec(seed=7, **TINY)
    ours = synthetic.generate(tmp_path / "ours", spec)
    assert synthetic.read_manifest(ours) == spec
    for name, text in [("garbage", "not json"), ("list", "[1, 2]"), ("no version", '{"seed": 1}'),
                       ("unknown key", '{"seed": 1, "version": 2, "owner": "me"}'),
                       ("bad class", '{"classes": ["pyramid"], "version": 2}')]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / synthetic.MANIFEST).write_text(text)
        assert synthetic.read_manifest(folder) is None, name
    linked = tmp_path / "linked manifest"
    linked.mkdir()
    (linked / synthetic.MANIFEST).symlink_to(ours / synthetic.MANIFEST)
    assert synthetic.read_manifest(linked) is None
    assert synthetic.read_manifest(tmp_path / "missing") is None


def test_overwrite_leaves_a_folder_put_in_place_while_generating(tmp_path):
    """The dataset at `out` is swapped for a user's folder while the new one is generated (at the first
    sample written): the swap is refused, both folders keep their files, no temp folder is left."""
    out = synthetic.generate(tmp_path / "out", synthetic.SyntheticSpec(seed=1, **TINY))
    before = _digest_tree(out)

    def swap(done, total):
        if done == 1:
            out.rename(tmp_path / "moved")
            out.mkdir()
            (out / "precious.txt").write_text("keep me")
    with pytest.raises(PointADError, match="is not a synthetic dataset of ours"):
        synthetic.generate(out, synthetic.SyntheticSpec(seed=2, **TINY), overwrite=True, progress=swap)
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert _digest_tree(tmp_path / "moved") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved", "out"]


def test_unknown_class_or_defect_is_an_error():
    with pytest.raises(ConfigError, match="unknown synthetic class.*pyramid"):
        synthetic.SyntheticSpec(classes=("pyramid",))
    with pytest.raises(ConfigError, match="unknown synthetic defect.*smudge"):
        synthetic.SyntheticSpec(defects=("smudge",))


@pytest.mark.slow
def test_registry_synthetic_generates_once_into_the_cache():
    entry = open_dataset("synthetic-real3d")
    assert entry.root.is_relative_to(environment.cache_dir())
    manifest = entry.root / synthetic.MANIFEST
    stamp = manifest.stat().st_mtime_ns
    again = open_dataset("synthetic-real3d")
    assert again.root == entry.root and manifest.stat().st_mtime_ns == stamp
    refs = list_samples(again, splits=["test"])
    assert len(refs) == 5 * (2 + 5)  # five classes, two good and one per defect each


def test_eyecandies_scene_has_walls_and_a_posed_camera(tmp_path):
    """Blender units: the pose.txt written is the camera that saw the depth (world = R cam + t), the belt
    at world Z = 0 with walls standing beyond it, and the candy about one unit across."""
    from pointad.render.readers.eyecandies import depth_to_xyz
    from pointad.render.readers.files import read_image
    spec = synthetic.SyntheticSpec(format="eyecandies", seed=3, **{**TINY, "defects": ()})
    root = synthetic.generate(tmp_path / "e", spec)
    data = root / "dome" / "train" / "data"
    pose = np.loadtxt(data / "000_pose.txt")
    assert not np.allclose(pose, np.eye(4)) and np.allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3))
    info = __import__("yaml").safe_load((data / "000_info_depth.yaml").read_text())["normalization"]
    xyz = depth_to_xyz(read_image(data / "000_depth.png", "I"), info["min"], info["max"]).reshape(-1, 3)
    world = xyz @ pose[:3, :3].T + pose[:3, 3]
    arrays = synthetic.sample_arrays(spec, synthetic.plan(spec)[0])
    belt = arrays["background"].reshape(-1) & (np.abs(world[:, 0]) < 1.0)
    walls = np.abs(world[:, 0]) > 1.12
    assert np.abs(world[belt, 2]).max() < 5e-3                     # the belt plane, through the depth's 16 bits
    assert walls.mean() > 0.01 and world[walls, 2].min() > 0.09     # the walls rise at the image's sides
    assert world[walls, 2].max() > 0.3
    candy = arrays["object"].reshape(-1)
    assert 0.4 < np.ptp(world[candy, :2], axis=0).max() < 1.2
    assert 0.04 < world[candy, 2].min() and world[candy, 2].max() < 0.5  # well above the 0.02 belt threshold


def test_real3d_is_in_millimetres_with_a_train_template(tmp_path):
    spec = synthetic.SyntheticSpec(format="real3d", seed=3, **TINY)
    root = synthetic.generate(tmp_path / "r", spec)
    assert [p.name for p in sorted((root / "dome" / "train").iterdir())] == ["0_template.pcd"]
    arrays = synthetic.sample_arrays(spec, synthetic.plan(spec)[0])
    assert len(arrays["points"]) > 10_000
    assert 30 < np.ptp(arrays["points"], axis=0).max() < 120       # a dome some 60 mm across


TINY_BUILD = ["--views", "2", "--image-size", "64", "--supersample", "1", "--max-points", "4096", "--point-size", "2"]


@pytest.mark.parametrize("fixture,fmt,select", [
    pytest.param("eyecandies_dataset", "eyecandies", ["--splits", "test"], marks=pytest.mark.slow),
    ("real3d_dataset", "real3d", ["--splits", "train"])])
def test_scan_and_build_run_on_the_synthetic_formats(fixture, fmt, select, request, tmp_path):
    """`render scan` reads every sample with the registry's lengths for the format; `render build` renders some."""
    from click.testing import CliRunner

    from pointad.render.cli import render
    from pointad.shared.store import open_store
    spec, entry = request.getfixturevalue(fixture)
    where = ["--format", fmt, "--root", str(entry.root)]
    result = CliRunner().invoke(render, ["scan", *where])
    assert result.exit_code == 0 and "failed:" not in result.output, result.output
    assert f"{len(synthetic.plan(spec))} samples" in result.output
    out = tmp_path / "s.zarr"
    result = CliRunner().invoke(render, ["build", *where, "--classes", "cookie", *select, "--out", str(out), *TINY_BUILD])
    assert result.exit_code == 0 and "0 failed" in result.output, result.output
    store = open_store(out)
    assert len(store) == len(list_samples(entry, ["cookie"], [select[1]])) and store.complete.all()
