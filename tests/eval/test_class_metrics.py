"""Class metrics from the points alone equal the dense-grid computation they replace."""

from types import SimpleNamespace

import numpy as np
import pytest

from pointad.eval.class_metrics import grid_maps, organized_regions
from pointad.eval.metrics import aupro_components, aupro_organized


def _sample(rng, height, width, fill):
    """A sample on an (height, width) grid with a random share `fill` of its cells present and blob defects."""
    cells = np.flatnonzero(rng.random(height * width) < fill)
    mask = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(0, 4)):  # 0..3 rectangles, some touching diagonally
        r, c = rng.integers(0, height - 3), rng.integers(0, width - 3)
        mask[r:r + rng.integers(1, 4), c:c + rng.integers(1, 4)] = 1
    return SimpleNamespace(grid_hw=(height, width), grid_index=cells, point_labels=mask.ravel()[cells])


@pytest.mark.parametrize("seed", range(5))
def test_point_regions_give_the_dense_grid_aupro(seed):
    rng = np.random.default_rng(seed)
    samples = [_sample(rng, int(rng.integers(8, 20)), int(rng.integers(8, 20)), 0.7) for _ in range(6)]
    samples[0].point_labels[:3] = 1  # at least one region somewhere
    scores = [rng.random(len(s.point_labels)) + s.point_labels * rng.random() for s in samples]
    dense = aupro_organized(*grid_maps(samples, scores))
    sparse = aupro_components(organized_regions(samples), np.concatenate(scores))
    assert abs(dense - sparse) < 1e-12, (dense, sparse)


def test_regions_are_numbered_apart_across_samples_and_connected_diagonally():
    first = SimpleNamespace(grid_hw=(3, 3), grid_index=np.array([0, 4, 8, 2]), point_labels=np.array([1, 1, 1, 0]))
    second = SimpleNamespace(grid_hw=(2, 2), grid_index=np.array([0, 3]), point_labels=np.array([1, 1]))
    # first: one diagonal region (0, 4, 8); second: cells 0 and 3 touch diagonally: one region, not the first's
    assert organized_regions([first, second]).tolist() == [0, 0, 0, -1, 1, 1]


def test_mean_row_averages_the_defined_classes_only():
    """A class whose metric is undefined (nan: e.g. only good samples) stays nan and leaves the mean alone."""
    import math

    from pointad.eval.class_metrics import BLOCKS, METRICS
    from pointad.eval.report import MEAN_ROW, _collect
    by_class = {"a": 0.2, "b": math.nan, "c": 0.8}
    per_run = [{("points", block, name): {metric: value for metric in METRICS}
                for block in BLOCKS for name, value in by_class.items()}]
    values = _collect(per_run, ["points"])
    for block in BLOCKS:
        for metric in METRICS:
            assert values["points", block, MEAN_ROW][metric] == [pytest.approx((0.2 + 0.8) / 2)]
            assert math.isnan(values["points", block, "b"][metric][0])
