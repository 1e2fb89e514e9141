"""Time the k-NN query of the render graph (design §3.7): scipy's cKDTree against pykdtree, same run (issue 24.3).

Run: .venv/bin/pip install pykdtree; .venv/bin/python benchmarks/knn_bench.py [--repeats 7]  (about 20 s)

The query is `render.graph.knn_graph`'s: build a tree on a row's valid points and ask each point for its
k + 1 nearest (self and `RenderOptions().knn` neighbours), float64 coordinates. Timed per cloud, tree
build included, median of --repeats: cKDTree with workers=1 and workers=-1 (every CPU), pykdtree with
1 thread and with every CPU. pykdtree's threads are OpenMP's (it ships its own libgomp, whose default
follows OMP_NUM_THREADS); here they are set at run time with threadpoolctl's
`threadpool_limits(n, user_api="openmp")`, the same control render/build.py applies to a worker.

Clouds: the synthetic MVTec-format "cookie" (800 x 800 scan, read and preprocessed as a build does) and
the dense 112 896-point height field (render/synthetic/dense.py), plus two tie cases: the dense cloud
with every point doubled (exact duplicates) and points on an integer grid (many equal distances).
"Same graph" compares neighbour indices in order, raw from the query and after `knn_graph`'s self-first
step; pykdtree is also run on float32 input (it keeps float32, so near-equal distances may swap).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

from pointad.render.graph import _self_first
from pointad.render.options import RenderOptions
from pointad.render.readers import list_samples, preprocess_options, read_sample
from pointad.render.synthetic import SyntheticSpec, generate
from pointad.render.synthetic.dense import dense_sample
from pointad.shared.registry import custom_entry

try:  # not a dependency (README, performance): the smoke test imports this script without it
    from pykdtree.kdtree import KDTree
except ImportError:
    KDTree = None


def median_time(fn, repeats: int) -> float:
    fn()  # warm: first-touch allocations, OpenMP pool start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ckdtree_query(cloud, k: int, workers: int):
    distance, neighbour = cKDTree(cloud).query(cloud, k=k, workers=workers)
    return distance, neighbour


def pykdtree_query(cloud, k: int, threads: int | None):
    with threadpool_limits(threads, user_api="openmp"):
        distance, neighbour = KDTree(cloud).query(cloud, k=k)
    return distance, neighbour.astype(np.int64)


def cookie_points() -> np.ndarray:
    """The synthetic cookie scan as a build reads it (render_bench.py's first cloud)."""
    tmp = Path(tempfile.mkdtemp(prefix="knn-bench-"))
    generate(tmp / "cookie", SyntheticSpec(format="mvtec3d", classes=("cookie",), defects=("bump",), train=0,
                                           validation=0, test_good=0, per_defect=1, grid=800))
    entry = custom_entry("mvtec3d", tmp / "cookie")
    (ref,) = list_samples(entry)
    options = RenderOptions()
    prep = preprocess_options(entry, ref.class_name, image_size=options.image_size, max_points=options.max_points)
    return read_sample(entry, ref, prep).points


def compare(reference, other) -> str:
    """'identical', or how many rows differ (raw query order / after self-first) and whether distances agree."""
    (d0, n0), (d1, n1) = reference, other
    raw = int((n0 != n1).any(axis=1).sum())
    s0, s1 = _self_first(d0, n0)[1], _self_first(d1, n1)[1]
    graph = int((s0 != s1).any(axis=1).sum())
    if raw == 0 and graph == 0:
        return "identical"
    gap = float(np.abs(d0 - d1).max())
    return f"{raw} raw / {graph} graph rows differ (max distance gap {gap:.1e})"


def ties_out_of_index_order(distance, neighbour) -> int:
    """Rows where two equally distant neighbours are listed with the larger index first."""
    return int(((distance[:, 1:] == distance[:, :-1]) & (neighbour[:, 1:] < neighbour[:, :-1])).any(axis=1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if KDTree is None:
        raise SystemExit("knn_bench.py compares with pykdtree, which is not a dependency: .venv/bin/pip install pykdtree")
    k = RenderOptions().knn
    cpus = len(os.sched_getaffinity(0))
    dense = dense_sample(RenderOptions().image_size).points
    rng = np.random.default_rng(0)
    clouds = {"cookie": cookie_points(), "dense": dense, "dense doubled": np.concatenate([dense, dense]),
              "integer grid": rng.integers(0, 12, (20000, 3)).astype(np.float32)}
    print(f"k = {k} neighbours + self; {cpus} CPUs; median of {args.repeats}; float64 input unless said")
    print(f"{'cloud':<14} {'points':>7}  {'library':<22} {'seconds':>8} {'vs cKDTree 1':>12}  graph vs cKDTree 1 thread")
    for name, points in clouds.items():
        cloud = np.asarray(points, dtype=np.float64)
        cloud32 = np.asarray(points, dtype=np.float32)
        runs = {"cKDTree 1 thread": lambda: ckdtree_query(cloud, k + 1, 1),
                f"cKDTree {cpus} threads": lambda: ckdtree_query(cloud, k + 1, -1),
                "pykdtree 1 thread": lambda: pykdtree_query(cloud, k + 1, 1),
                f"pykdtree {cpus} threads": lambda: pykdtree_query(cloud, k + 1, None),
                "pykdtree 1 thr float32": lambda: pykdtree_query(cloud32, k + 1, 1)}
        reference = ckdtree_query(cloud, k + 1, 1)
        base = None
        for label, fn in runs.items():
            seconds = median_time(fn, args.repeats)
            base = base or seconds
            print(f"{name:<14} {len(cloud):>7}  {label:<22} {seconds:8.4f} {base / seconds:11.2f}x  "
                  f"{compare(reference, fn())}")
        # sorting each row by (distance, index) would make pykdtree's order deterministic, but it equals
        # the current graph only if cKDTree already lists ties that way
        print(f"{name:<14} rows listing exact ties out of index order: cKDTree {ties_out_of_index_order(*reference)}, "
              f"pykdtree {ties_out_of_index_order(*pykdtree_query(cloud, k + 1, 1))}")


if __name__ == "__main__":
    main()
