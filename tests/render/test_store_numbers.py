"""A built store's per-point arrays against computations written apart from render/ (design §3.3, §3.4, §3.7).

The evaluation store (conftest: both synthetic datasets, 3 views, 336 px) is read back and checked
against plain float64 numpy written from the design alone: the pinhole projection of every point in
every view (not `render.camera`), and the proxy of the points no view sees from the stored
visibility: every seen point is its own proxy, and (for up to 96 unseen points per row) the proxy is
the nearest seen point by brute force (not a KD-tree).
"""

from __future__ import annotations

import numpy as np
import pytest

from pointad.shared.store import open_store

# Stored pixels are the float32 projection rounded to the nearest pixel, so they lie within 0.5 px of the
# exact float64 position plus float32 rounding. Measured on this store: 0.5 + 9.4e-5 px at worst. A
# principal point off by 0.17 px gives 0.67 px.
PIXEL_TOLERANCE = 0.5 + 2e-4


@pytest.fixture(scope="module")
def store(eval_store):
    return open_store(eval_store)


def _paper_rotations(views):
    """design §3.3: K rotations about X, theta_k = (k - (K - 1) / 2) * 2 pi / (K + 1)."""
    out = []
    for k in range(views):
        theta = (k - (views - 1) / 2) * 2 * np.pi / (views + 1)
        c, s = np.cos(theta), np.sin(theta)
        out.append(np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]]))
    return out


def _pinhole(points, size, fov_degrees, margin, rotation):
    """(P, 2) exact (u, v) in float64, design §3.4: centre c = bounding-box centre, radius = farthest point from
    c, camera distance D = margin * radius / sin(fov / 2), focal (S / 2) / tan(fov / 2), principal point
    S / 2 - 0.5, X_cam = diag(1, -1, -1) R (X - c) + (0, 0, D)."""
    centre = (points.min(axis=0) + points.max(axis=0)) / 2
    radius = np.sqrt(((points - centre) ** 2).sum(axis=1)).max()
    half = np.radians(fov_degrees) / 2
    distance = margin * radius / np.sin(half)
    focal = size / 2 / np.tan(half)
    camera = (points - centre) @ rotation.T * [1.0, -1.0, -1.0] + [0.0, 0.0, distance]
    return focal * camera[:, :2] / camera[:, 2:] + (size / 2 - 0.5)


def test_stored_pixels_are_the_float64_pinhole_projection(store):
    attrs = store.attrs
    assert attrs.view_plan["name"] == "paper"
    rotations = _paper_rotations(attrs.views)
    np.testing.assert_allclose(attrs.view_plan["angles"], [np.arctan2(r[2, 1], r[1, 1]) for r in rotations],
                               atol=1e-12)
    worst, where = 0.0, None
    for row in store.indices():
        sample = store.sample(int(row))
        points = sample.xyz[:sample.n_points].astype(np.float64)
        for view, rotation in enumerate(rotations):
            exact = _pinhole(points, attrs.image_size, attrs.camera["fov_degrees"], attrs.camera["margin"], rotation)
            assert ((exact > -0.5) & (exact < attrs.image_size - 0.5)).all()  # the margin keeps every point inside
            offset = np.abs(sample.pixel[view, :sample.n_points] - exact).max()
            if offset > worst:
                worst, where = offset, (sample.sample_id, view)
    assert worst <= PIXEL_TOLERANCE, f"a stored pixel lies {worst:.5f} px from the exact projection ({where})"


@pytest.mark.slow
def test_stored_proxy_is_the_nearest_point_seen_in_any_view(store):
    checked_unseen = 0
    for row in store.indices():
        sample = store.sample(int(row))
        n = sample.n_points
        points = sample.xyz[:n].astype(np.float64)
        proxy = sample.proxy[:n]
        seen = np.zeros(n, bool)
        for view in range(sample.visible.shape[0]):
            seen |= sample.visible[view, :n]
        assert (proxy[seen] == np.flatnonzero(seen)).all(), f"{sample.sample_id}: a seen point is not its own proxy"
        assert (sample.proxy[n:] == -1).all()
        unseen = np.flatnonzero(~seen)
        assert seen[proxy[unseen]].all(), f"{sample.sample_id}: a proxy seen in no view"
        block = np.unique(unseen[np.linspace(0, len(unseen) - 1, min(len(unseen), 96)).astype(int)])
        nearest = np.sqrt(((points[block, None] - points[seen][None]) ** 2).sum(-1)).min(axis=1)
        taken = np.sqrt(((points[block] - points[proxy[block]]) ** 2).sum(-1))
        assert np.abs(taken - nearest).max(initial=0) <= 1e-9, f"{sample.sample_id}: a proxy is not the nearest"
        checked_unseen += len(block)
    assert checked_unseen > 1000  # both datasets have points no view sees (96 checked per row at most)
