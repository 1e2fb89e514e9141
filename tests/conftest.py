"""Fixtures shared by the suite: small synthetic datasets in every format, built once per run."""

from __future__ import annotations

import pytest

# Loaded before any test renders: Mesa's llvmpipe and triton (pulled in by torchvision) each bring an LLVM,
# and importing triton after Mesa has loaded its own crashes the process (seen: segfault in triton/knobs.py).
import torchvision  # noqa: F401  (imported for its side effect)

from pointad.render import synthetic
from pointad.render.datasets import open_dataset

SMALL = dict(classes=("cookie", "torus"), train=1, validation=1, test_good=1, per_defect=1)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Generated data and caches of the run go to a temporary folder, never the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("POINTAD_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("POINTAD_DATA", raising=False)
    mp.delenv("POINTAD_REGISTRY", raising=False)
    yield
    mp.undo()


def _make(tmp_path_factory, fmt: str, seed: int):
    spec = synthetic.SyntheticSpec(format=fmt, seed=seed, **SMALL)
    root = synthetic.generate(tmp_path_factory.mktemp(fmt) / f"synthetic-{fmt}", spec)
    return spec, open_dataset(format=fmt, root=root)


@pytest.fixture(scope="session")
def mvtec_dataset(tmp_path_factory):
    """(spec, entry) of a small synthetic dataset in the MVTec 3D-AD format."""
    return _make(tmp_path_factory, "mvtec3d", 3)


@pytest.fixture(scope="session")
def eyecandies_dataset(tmp_path_factory):
    """(spec, entry) of a small synthetic dataset in the raw Eyecandies format."""
    return _make(tmp_path_factory, "eyecandies", 4)


@pytest.fixture(scope="session")
def real3d_dataset(tmp_path_factory):
    """(spec, entry) of a small synthetic dataset in the Real3D-AD format."""
    return _make(tmp_path_factory, "real3d", 5)


@pytest.fixture(scope="session")
def eval_store(mvtec_dataset, real3d_dataset, tmp_path_factory):
    """Test splits of two synthetic datasets in one store: synthetic-mvtec3d (organized, RGB) and
    synthetic-real3d (unorganized), classes cookie and torus, one good and five defects each, 3 views."""
    from pointad.render.build import build_store
    from pointad.render.options import RenderOptions
    from pointad.shared.store import open_store
    out = tmp_path_factory.mktemp("eval") / "renders.zarr"
    options = RenderOptions(views=3, image_size=336, supersample=1, point_size=2)
    for _, entry in (mvtec_dataset, real3d_dataset):
        build_store(entry, out, options, splits=["test"])
    assert len(open_store(out)) == 24
    return out


@pytest.fixture(scope="session")
def reference_store(mvtec_dataset, tmp_path_factory):
    """One-worker build of the MVTec-format cookie test split (6 samples; 3 views at 96 px, supersample 2,
    point size 3): the store other builds must equal. Read-only: tests copy it before changing it."""
    from pointad.render.build import build_store
    from pointad.render.options import RenderOptions
    _, entry = mvtec_dataset
    out = tmp_path_factory.mktemp("ref") / "renders.zarr"
    options = RenderOptions(views=3, image_size=96, supersample=2, max_points=96 * 96, point_size=3)
    result = build_store(entry, out, options, classes=["cookie"], splits=["test"])
    assert result.rendered == 6 and not result.failures
    return out


def _cookie_store(mvtec_dataset, tmp_path_factory, name, options):
    """The MVTec-format cookie test split (6 rows: one good, five defects) drawn with `options`."""
    from pointad.render.build import build_store
    _, entry = mvtec_dataset
    out = tmp_path_factory.mktemp(name) / "renders.zarr"
    result = build_store(entry, out, options, classes=["cookie"], splits=["test"])
    assert result.rendered == 6 and not result.failures
    return out


# The cookie stores below are each built once per run for every module that needs the same rows drawn the
# same way (before, each module built its own copy). Read-only: tests copy one before changing it.

@pytest.fixture(scope="session")
def cookie_store(mvtec_dataset, tmp_path_factory):
    """The cookie test split, three views at CLIP's 336 px (legacy renderer): what training, the feature caches
    and detect's runs are made of (tests/train/test_loop.py, test_cache_memory.py, eval/test_detect.py,
    faults/test_train_faults.py)."""
    from pointad.render.options import RenderOptions
    options = RenderOptions(views=3, image_size=336, supersample=1, point_size=2)
    return _cookie_store(mvtec_dataset, tmp_path_factory, "cookie-336", options)


@pytest.fixture(scope="session")
def cookie_splat_336(mvtec_dataset, tmp_path_factory):
    """The cookie test split, two views at CLIP's 336 px, splat renderer (tests/shared/test_h5store.py,
    tests/train/test_feature_cache_identity.py)."""
    from pointad.render.options import RenderOptions
    options = RenderOptions(views=2, image_size=336, supersample=1, point_size=2, renderer="splat")
    return _cookie_store(mvtec_dataset, tmp_path_factory, "cookie-splat-336", options)


@pytest.fixture(scope="session")
def cookie_splat_48(mvtec_dataset, tmp_path_factory):
    """The cookie test split, two views at 48 px, splat renderer: the smallest real store (tests/shared/
    test_store_check.py, test_store_v2.py, tests/eval/test_figures.py)."""
    from pointad.render.options import RenderOptions
    options = RenderOptions(views=2, image_size=48, supersample=1, max_points=48 * 48, point_size=3, renderer="splat")
    return _cookie_store(mvtec_dataset, tmp_path_factory, "cookie-splat-48", options)
