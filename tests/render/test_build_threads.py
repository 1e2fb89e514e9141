"""render_row's torch thread count for the splat renderer: one thread while drawing, the caller's afterwards."""

from __future__ import annotations

import numpy as np
import torch

from pointad.render import synthetic
from pointad.render.build import build_store, render_row
from pointad.render.readers import list_samples
from pointad.render.sample_render import RenderOptions
from pointad.shared.registry import custom_entry
from pointad.shared.store import open_store


def test_splat_row_leaves_the_callers_torch_threads_and_draws_the_same_bytes(tmp_path):
    synthetic.generate(tmp_path / "data", synthetic.SyntheticSpec(
        classes=("cookie",), defects=("bump",), train=0, validation=0, test_good=0, per_defect=1, grid=96))
    entry = custom_entry("mvtec3d", tmp_path / "data")
    options = RenderOptions(renderer="splat")
    out = tmp_path / "renders.zarr"
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = build_store(entry, out, options, workers=1)
        assert result.rendered == 1 and not result.failures
        assert torch.get_num_threads() == 2
        first = open_store(out).sample(0).image
        # a loky worker's call (raster_threads=1) must not leave its count behind either
        (ref,) = list_samples(entry)
        assert render_row(out, 0, entry, ref, options, 1) is None
        assert torch.get_num_threads() == 2
        assert np.array_equal(open_store(out).sample(0).image, first)
    finally:
        torch.set_num_threads(before)
