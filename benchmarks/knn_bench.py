"""Time the k-NN query of the render graph (design §3.7): `render.graph.nearest` against cKDTree alone, same run.

Run: .venv/bin/python benchmarks/knn_bench.py [--repeats 7]  (about 30 s)

The query is `render.graph.knn_graph`'s: each valid point's `RenderOptions().knn` nearest, itself included,
float64 coordinates, tree build included, median of --repeats. Rows:
- cKDTree: `nearest_naive`, scipy's cKDTree alone (what every graph was built with before issue 24);
- nearest: pykdtree for the rows whose k + 1 distances are all distinct, cKDTree for the rest (the graph
  since issue 24); its answer must be cKDTree's bit for bit, which the last column checks, and "tied rows"
  counts the rows it asked of cKDTree;
- pykdtree alone (k + 1 neighbours, as `nearest` asks), and with float32 input, for reference.
Each on one thread (cKDTree's workers=1; OpenMP limited to 1 by threadpoolctl, as render/build.py limits a
worker) and on every CPU.

Clouds: the synthetic MVTec-format "cookie" (800 x 800 scan, read and preprocessed as a build does), the
dense 112 896-point height field (render/synthetic/dense.py), and two where nearly every row is tied: the
dense cloud with every point doubled, and points on an integer grid (the worst case of `nearest`: both
trees answer).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from pykdtree.kdtree import KDTree
from threadpoolctl import threadpool_limits

from pointad.render.graph import TIED, nearest, nearest_naive
from pointad.render.options import RenderOptions
from pointad.render.readers import list_samples, preprocess_options, read_sample
from pointad.render.synthetic import SyntheticSpec, generate
from pointad.render.synthetic.dense import dense_sample
from pointad.shared.registry import custom_entry


def median_time(fn, repeats: int) -> float:
    fn()  # warm: first-touch allocations, OpenMP pool start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pykdtree_query(cloud, k: int):
    distance, neighbour = KDTree(cloud).query(cloud, k=k)
    return distance, neighbour.astype(np.int64)


def tied_rows(cloud, k: int) -> int:
    """Rows `nearest` asks of cKDTree: not all of their k + 1 distances are distinct (render/graph.py TIED)."""
    distance, _ = pykdtree_query(cloud, min(k + 1, len(cloud)))
    return int((~(distance[:, 1:] > distance[:, :-1] * (1 + TIED)).all(axis=1)).sum())


def cookie_points() -> np.ndarray:
    """The synthetic cookie scan as a build reads it (render_bench.py's first cloud)."""
    with tempfile.TemporaryDirectory(prefix="knn-bench-") as folder:
        tmp = Path(folder)
        generate(tmp / "cookie", SyntheticSpec(format="mvtec3d", classes=("cookie",), defects=("bump",), train=0,
                                               validation=0, test_good=0, per_defect=1, grid=800))
        entry = custom_entry("mvtec3d", tmp / "cookie")
        (ref,) = list_samples(entry)
        options = RenderOptions()
        prep = preprocess_options(entry, ref.class_name, image_size=options.image_size, max_points=options.max_points)
        return read_sample(entry, ref, prep).points


def same_bits(reference, other) -> str:
    (d0, n0), (d1, n1) = reference, other
    if np.array_equal(n0, n1) and np.array_equal(d0.view(np.int64), np.asarray(d1, np.float64).view(np.int64)):
        return "identical"
    return f"{int((n0 != n1).any(axis=1).sum())} rows differ"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    k = RenderOptions().knn
    cpus = len(os.sched_getaffinity(0))
    dense = dense_sample(RenderOptions().image_size).points
    rng = np.random.default_rng(0)
    clouds = {"cookie": cookie_points(), "dense": dense, "dense doubled": np.concatenate([dense, dense]),
              "integer grid": rng.integers(0, 12, (20000, 3)).astype(np.float32)}
    print(f"# k-NN query of the render graph: k = {k} (self included); {cpus} CPUs; median of {args.repeats}; "
          f"1-min load average {os.getloadavg()[0]:.1f}\n")
    print("| cloud | points | tied rows | query | threads | seconds | cKDTree / this | answer vs cKDTree |")
    print("|---|---:|---:|---|---:|---:|---:|---|")
    for name, points in clouds.items():
        cloud = np.asarray(points, dtype=np.float64)
        cloud32 = np.asarray(points, dtype=np.float32)
        reference = nearest_naive(cloud, k, 1)
        tied = tied_rows(cloud, k)
        for threads in (1, cpus):
            runs = {"cKDTree": lambda: nearest_naive(cloud, k, threads),
                    "nearest": lambda: nearest(cloud, k, threads),
                    "pykdtree (k + 1)": lambda: pykdtree_query(cloud, k + 1),
                    "pykdtree float32 (k + 1)": lambda: pykdtree_query(cloud32, k + 1)}
            base = None
            with threadpool_limits(threads, user_api="openmp"):
                for label, fn in runs.items():
                    seconds = median_time(fn, args.repeats)
                    base = base or seconds
                    answer = same_bits(reference, fn()) if label in ("cKDTree", "nearest") else "(k + 1 columns)"
                    print(f"| {name} | {len(cloud)} | {tied} | {label} | {threads} | {seconds:.4f} | "
                          f"{base / seconds:.2f}x | {answer} |")


if __name__ == "__main__":
    main()
