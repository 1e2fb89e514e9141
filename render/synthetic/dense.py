"""One dense synthetic sample in memory: a point in every cell of the grid, the paper's point budget.

The built-in datasets (`generate`) are scans that preprocessing thins out; this cloud is what a full
336 x 336 budget looks like after preprocessing (112 896 points), given directly as a `Sample`, so no
reader runs. `benchmarks/render_bench.py` times the render stage on it and `tests/render/test_splat.py`
compares the splat renderer with Open3D's on it.
"""

from __future__ import annotations

import numpy as np

from ...shared.sample import Sample


def dense_sample(side: int = 336, seed: int = 0) -> Sample:
    """A height field with one point in every cell of a side x side grid (metres, 0.1 m across, as MVTec
    scans), two bumps and a dent facing +z (the camera), sensor noise, and an anomalous disc (~2%).

    points (side², 3) float32 in grid order (grid_index = arange), point_labels uint8; deterministic per seed.
    """
    rng = np.random.default_rng(seed)
    g = np.linspace(-0.05, 0.05, side)
    x, y = (a.ravel() + rng.normal(0, 0.02 / side, side * side) for a in np.meshgrid(g, g))
    z = (0.012 * np.exp(-((x - 0.015) ** 2 + y**2) / 0.0004)
         + 0.006 * np.exp(-((x + 0.02) ** 2 + (y - 0.02) ** 2) / 0.0002)
         - 0.003 * np.exp(-((x + 0.01) ** 2 + (y + 0.025) ** 2) / 0.00005) + rng.normal(0, 5e-5, x.size))
    labels = (np.hypot(x - 0.02, y + 0.01) < 0.008).astype(np.uint8)
    return Sample(dataset="synthetic-dense", class_name="heightfield", split="test", defect_type="bump",
                  sample_id="heightfield/dense", label=1, points=np.stack([x, y, z], axis=1).astype(np.float32),
                  point_labels=labels, grid_hw=(side, side), grid_index=np.arange(side * side, dtype=np.int32))
