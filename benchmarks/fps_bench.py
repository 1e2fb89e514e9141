"""Time farthest-point sampling of large clouds: the current sampler (fpsample's exact bucket method) against
the one it replaced (Open3D's `farthest_point_down_sample`, a plain O(N x M) loop).

Run: .venv/bin/python benchmarks/fps_bench.py [--small 300000] [--big 2700000] [--count 112896] [--old-budget 120]

The clouds are closed surfaces in millimetres, like Real3D-AD's scans: an ellipsoid shell some 80 mm
long with scanner noise, N points, reduced to --count (the store's 336 x 336 budget). The old sampler
runs on the small cloud only when its expected time (from a timed run on a tenth of the work) is under
--old-budget seconds; on the big cloud its time is extrapolated from the small one (the loop is linear
in N for a fixed count), not run. Goal (issue 14): 2.7M -> 112 896 in under 5 s on the 2-core machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import open3d as o3d

from pointad.render.preprocess import farthest_point_indices


def shell(points: int, seed: int = 0) -> np.ndarray:
    """(points, 3) float64 millimetres: a noisy ellipsoid surface (40 x 30 x 10 mm semi-axes)."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal((points, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * np.array([40.0, 30.0, 10.0]) + rng.normal(0, 0.05, (points, 3))


def old_sampler(points: np.ndarray, count: int) -> np.ndarray:
    """The replaced implementation: Open3D's loop, each point's index carried in its colour."""
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.colors = o3d.utility.Vector3dVector(np.repeat(np.arange(len(points), dtype=np.float64)[:, None], 3, axis=1))
    return np.sort(np.asarray(cloud.farthest_point_down_sample(count).colors)[:, 0].astype(np.int64))


def timed(function, *args) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = function(*args)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=300_000)
    parser.add_argument("--big", type=int, default=2_700_000)
    parser.add_argument("--count", type=int, default=336 * 336)
    parser.add_argument("--old-budget", type=float, default=120.0, help="seconds the old sampler may take")
    args = parser.parse_args()

    small, big = shell(args.small, 0), shell(args.big, 1)
    print(f"farthest-point sampling to {args.count} points (closed shells in mm)")
    new_small, chosen = timed(farthest_point_indices, small, args.count)
    assert len(np.unique(chosen)) == args.count
    probe, _ = timed(old_sampler, small, args.count // 10)  # a tenth of the picks: a tenth of the loop's work
    expected_old = probe * 10
    if expected_old <= args.old_budget:
        old_small, _ = timed(old_sampler, small, args.count)
        old_note = "measured"
    else:
        old_small, old_note = expected_old, f"extrapolated from {args.count // 10} picks (over --old-budget)"
    print(f"{args.small:>9,} points: new {new_small:7.2f} s | old (Open3D) {old_small:8.2f} s {old_note} | "
          f"{old_small / new_small:6.1f}x")
    new_big, chosen = timed(farthest_point_indices, big, args.count)
    assert len(np.unique(chosen)) == args.count
    old_big = old_small * args.big / args.small
    print(f"{args.big:>9,} points: new {new_big:7.2f} s | old (Open3D) {old_big:8.2f} s extrapolated, not run | "
          f"{old_big / new_big:6.1f}x   goal < 5 s: {'met' if new_big < 5 else 'NOT met'}")


if __name__ == "__main__":
    main()
