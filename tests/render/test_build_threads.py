"""render_row's thread budget: torch (one thread for the splat renderer) and Open3D limited while a worker renders,
the caller's counts afterwards, and the same row whatever the budget or the number of workers, for each normals
option."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
import torch

from pointad.render import synthetic
from pointad.render.build import build_store, render_row
from pointad.render.options import RenderOptions
from pointad.render.readers import list_samples
from pointad.shared.registry import custom_entry
from pointad.shared.store import open_store


@pytest.mark.slow
def test_splat_row_leaves_the_callers_torch_threads_and_draws_the_same_bytes(tmp_path):
    synthetic.generate(tmp_path / "data", synthetic.SyntheticSpec(
        classes=("cookie",), defects=("bump",), train=0, validation=0, test_good=0, per_defect=1, grid=96))
    entry = custom_entry("mvtec3d", tmp_path / "data")
    options = RenderOptions(renderer="splat", normals="open3d")
    out = tmp_path / "renders.zarr"
    before, open3d_before = torch.get_num_threads(), o3d.utility.get_max_threads()
    torch.set_num_threads(2)
    o3d.utility.set_max_threads(2)
    try:
        result = build_store(entry, out, options, workers=1)
        assert result.rendered == 1 and not result.failures
        assert torch.get_num_threads() == 2
        first = open_store(out).sample(0)
        # a loky worker's call (raster_threads=1) must not leave its counts behind either
        (ref,) = list_samples(entry)
        assert render_row(out, 0, entry, ref, options, 1) is None
        assert torch.get_num_threads() == 2 and o3d.utility.get_max_threads() == 2
        again = open_store(out).sample(0)
        # one thread for Open3D's normals (they shade the image) and the k-NN query: the same bytes
        for name in ("image", "mask", "visible", "proxy", "knn", "knn_weight"):
            assert np.array_equal(getattr(again, name), getattr(first, name)), name
    finally:
        torch.set_num_threads(before)
        o3d.utility.set_max_threads(open3d_before)


def test_render_sample_gives_the_same_row_sequential_or_with_the_graph_beside_the_draw(mvtec_dataset):
    """threads=1 runs every step in turn; with more, the k-NN graph is built on a thread beside the drawing; the
    proxy comes from that graph either way: every array must be the same bytes."""
    from dataclasses import fields

    from pointad.render.rasterize import worker_rasterizer
    from pointad.render.readers import preprocess_options, read_sample
    from pointad.render.sample_render import render_sample

    _, entry = mvtec_dataset
    ref = next(r for r in list_samples(entry, ["cookie"], ["test"]) if r.label)
    sample = read_sample(entry, ref, preprocess_options(entry, "cookie", image_size=96, max_points=96 * 96))
    for renderer, normals in (("splat", "open3d"), ("splat", "grid"), ("splat", "graph"), ("legacy", "grid")):
        # two views leave some points unseen, so the proxy comes from the graph
        options = RenderOptions(views=2, image_size=96, supersample=2, max_points=96 * 96, point_size=3,
                                renderer=renderer, normals=normals)
        rasterizer = None if renderer == "splat" else worker_rasterizer(96 * 2)
        alone = render_sample(sample, options, rasterizer, threads=1)
        beside = render_sample(sample, options, rasterizer, threads=3)
        assert (alone.proxy[: alone.n_points] != np.arange(alone.n_points)).any()  # some points have a proxy
        for f in fields(alone):
            assert np.array_equal(getattr(alone, f.name), getattr(beside, f.name)), (renderer, normals, f.name)


@pytest.mark.slow
@pytest.mark.parametrize("normals", ["grid", "graph"])
def test_one_worker_and_two_workers_write_the_same_rows(mvtec_dataset, tmp_path, normals):
    """The cookie test split built by one worker with all CPUs and by two workers of one thread each: every array
    of every row the same bytes (open3d's normals: test_splat_row_leaves_the_callers_torch_threads_... above)."""
    from dataclasses import fields

    _, entry = mvtec_dataset
    options = RenderOptions(views=2, image_size=96, supersample=2, max_points=96 * 96, point_size=3,
                            renderer="splat", normals=normals)
    stores = {}
    for workers in (1, 2):
        stores[workers] = tmp_path / f"{workers}.zarr"
        result = build_store(entry, stores[workers], options, classes=["cookie"], splits=["test"], workers=workers)
        assert result.rendered == 6 and not result.failures
    one, two = open_store(stores[1]), open_store(stores[2])
    assert one.attrs.render.normals == two.attrs.render.normals == normals
    for row in range(6):
        a, b = one.sample(row), two.sample(row)
        assert a.sample_id == b.sample_id
        for f in fields(a):
            assert np.array_equal(getattr(a, f.name), getattr(b, f.name)), (row, f.name)
