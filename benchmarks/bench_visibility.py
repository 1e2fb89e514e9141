"""Time visibility, proxy and k-NN graph at the store's default size (design §3.6-3.7), against the naive twin.

Run: .venv/bin/python benchmarks/bench_visibility.py [--repeats 5] [--loop-budget 60]

The cloud is a noisy height field (an organized scan: 336 x 336 = 112 896 points) seen through the
paper's 9-view plan at 336 x 336, projected with render.camera; the loop is
`render.visibility.nearest_per_pixel_naive` (the twin the tests compare the fast version with), run on
every view if it is expected to take under --loop-budget seconds, otherwise on one view and extrapolated.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from pointad.render.camera import fit_camera, project
from pointad.render.graph import knn_graph, proxy_indices
from pointad.render.view_plan import make_view_plan
from pointad.render.visibility import nearest_per_pixel, nearest_per_pixel_naive, surface_visible


def height_field(side: int = 336, seed: int = 0) -> np.ndarray:
    """(side^2, 3) float32: a jittered grid over [-1, 1]^2 with two bumps, a dent and sensor noise."""
    rng = np.random.default_rng(seed)
    g = np.linspace(-1, 1, side)
    x, y = (a.ravel() + rng.normal(0, 0.5 / side, side * side) for a in np.meshgrid(g, g))
    z = (0.35 * np.exp(-4 * ((x - 0.3) ** 2 + y**2)) + 0.2 * np.exp(-8 * ((x + 0.5) ** 2 + (y - 0.4) ** 2))
         - 0.1 * np.exp(-30 * ((x + 0.2) ** 2 + (y + 0.5) ** 2)) + rng.normal(0, 0.003, x.size))
    return np.stack([x, y, z], axis=1).astype(np.float32)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-budget", type=float, default=60.0, help="seconds the full loop may take")
    args = parser.parse_args()

    size, views = 336, 9
    points = height_field(size)
    valid = np.ones(len(points), dtype=bool)
    camera = fit_camera(points, size)
    rotations = make_view_plan("paper", views).rotations
    project_s = median_time(lambda: project(points, camera, rotations), args.repeats)
    pixel, depth, inside = project(points, camera, rotations)
    radius = camera.distance * np.sin(np.radians(15.0)) / 1.1  # fit_camera's bounding radius
    tolerance = 0.01 * radius

    nearest_s = median_time(lambda: nearest_per_pixel(pixel, depth, valid, size, inside=inside), args.repeats)
    visible = nearest_per_pixel(pixel, depth, valid, size, inside=inside)
    surface_s = median_time(lambda: surface_visible(pixel, depth, valid, size, tolerance, inside=inside),
                            args.repeats)
    surface = surface_visible(pixel, depth, valid, size, tolerance, inside=inside)
    visible_any = visible.any(axis=0)
    proxy_s = median_time(lambda: proxy_indices(points, valid, visible_any), args.repeats)
    knn_s = median_time(lambda: knn_graph(points, valid, k=8), args.repeats)

    # the loop: one view first, then all of them if that fits the budget
    loop = nearest_per_pixel_naive
    start = time.perf_counter()
    one = loop(pixel[:1], depth[:1], valid, size, inside[:1])
    one_view_s = time.perf_counter() - start
    assert np.array_equal(one, visible[:1]), "fast and naive disagree on view 0"
    if one_view_s * views <= args.loop_budget:
        start = time.perf_counter()
        full = loop(pixel, depth, valid, size, inside)
        loop_s, loop_note = time.perf_counter() - start, f"measured, all {views} views"
        assert np.array_equal(full, visible), "fast and naive disagree"
    else:
        loop_s, loop_note = one_view_s * views, f"1 view measured x {views}"

    considered = (inside & valid).sum()
    print(f"cloud: height field, P = {len(points)} points, V = {views} views ('paper' plan), S = {size}; "
          f"median of {args.repeats} runs")
    print(f"nearest: {visible.sum() / considered:.1%} of in-image (view, point) pairs visible, "
          f"{visible_any.mean():.1%} of points seen in some view; surface (tolerance {tolerance:.4f} = 1% "
          f"radius): {surface.sum() / considered:.1%}")
    print()
    print(f"{'nearest_per_pixel vs naive':<34}{'seconds':>10}  note")
    print(f"{'  nearest_per_pixel_naive':<34}{loop_s:>10.3f}  {loop_note}")
    print(f"{'  nearest_per_pixel':<34}{nearest_s:>10.4f}  identical result")
    print(f"{'  ratio naive / fast':<34}{loop_s / nearest_s:>10.0f}x")
    print()
    print(f"{'function':<34}{'seconds':>10}")
    for name, seconds in [("project (render.camera, context)", project_s), ("nearest_per_pixel", nearest_s),
                          ("surface_visible", surface_s), ("proxy_indices", proxy_s), ("knn_graph (k=8)", knn_s)]:
        print(f"{'  ' + name:<34}{seconds:>10.4f}")


if __name__ == "__main__":
    main()
