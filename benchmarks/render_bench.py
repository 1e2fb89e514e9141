"""Time the render stage per sample and per build, against the released code's procedure (SPEC 3, SPEC 9).

Run: .venv/bin/python benchmarks/render_bench.py [--quick]
(about 1-2 minutes with --quick, up to ~6 minutes without; prints markdown tables, writes only to a
temporary folder that it removes).

What it measures, all in one run on this machine:
1. Per-sample time split into read (read_sample, preprocessing included), normals (camera fit
   included), render (9 views), masks (anomalous samples only: splatted by default, or 9 mask captures
   with RenderOptions(masks="render"), which is also timed for comparison), projection,
   visibility, proxy + k-NN graph and write (write_sample into a temporary store), by calling the
   functions render/sample_render.py calls, on two clouds: a synthetic MVTec-format "cookie" scan
   at 800 x 800 (read and preprocessed to the 336 x 336 grid), and a dense height field with a point
   in every cell of the 336 x 336 grid (112 896 points, the paper's budget; given directly, so no
   read). Medians of several repetitions; one `render_sample` call is timed as a cross-check.
2. Samples/s of render.build.build_store on a small synthetic dataset with 1 and 2 workers (fresh
   store each; a first "cold" build starts the workers, the second "warm" one is the throughput).
3. Store bytes per sample on disk (du) and the compression ratio against the raw array bytes.
4. The released code's per-sample procedure (benchmarks/released_procedure.py: a new 1024² window per
   view plus a 1036² ground-truth window, Python z-buffer loops) on the same clouds, split into
   rendering and visibility; medians of 2-3 runs.
5. The SPEC 9 goals: baseline / ours >= 10x, visibility of 112 896 points x 9 views < 0.1 s,
   1 -> 2 workers >= 1.8x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper module next to this script

import released_procedure  # noqa: E402
from render.build import build_store, store_attrs  # noqa: E402
from render.camera import fit_camera, project  # noqa: E402
from render.graph import knn_graph, proxy_indices  # noqa: E402
from render.rasterize import DrawStyle, LegacyRasterizer, downsample  # noqa: E402
from render.readers import list_samples, preprocess_options, read_sample  # noqa: E402
from render.masks import splat_masks  # noqa: E402
from render.sample_render import LIGHTS, RenderOptions, estimate_normals, render_masks, render_sample  # noqa: E402
from render.synthetic import SyntheticSpec, generate  # noqa: E402
from render.visibility import nearest_per_pixel  # noqa: E402
from shared.registry import custom_entry  # noqa: E402
from shared.sample import Sample  # noqa: E402
from shared.store import append_samples, create_store, open_store, write_sample  # noqa: E402

STEPS = ("read", "normals", "render", "masks", "projection", "visibility", "proxy + knn", "write")


def dense_sample(side: int = 336, seed: int = 0) -> Sample:
    """A height field with one point in every cell of a side x side grid (metres, 0.1 m across, as MVTec
    scans), two bumps and a dent facing +z (the camera), sensor noise, and an anomalous disc (~2%)."""
    rng = np.random.default_rng(seed)
    g = np.linspace(-0.05, 0.05, side)
    x, y = (a.ravel() + rng.normal(0, 0.02 / side, side * side) for a in np.meshgrid(g, g))
    z = (0.012 * np.exp(-((x - 0.015) ** 2 + y**2) / 0.0004)
         + 0.006 * np.exp(-((x + 0.02) ** 2 + (y - 0.02) ** 2) / 0.0002)
         - 0.003 * np.exp(-((x + 0.01) ** 2 + (y + 0.025) ** 2) / 0.00005) + rng.normal(0, 5e-5, x.size))
    labels = (np.hypot(x - 0.02, y + 0.01) < 0.008).astype(np.uint8)
    return Sample(dataset="bench", class_name="heightfield", split="test", defect_type="bump",
                  sample_id="heightfield/dense", label=1, points=np.stack([x, y, z], axis=1).astype(np.float32),
                  point_labels=labels, grid_hw=(side, side), grid_index=np.arange(side * side, dtype=np.int32))


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def capture_views(rasterizer, camera, extrinsics, style, options) -> np.ndarray:
    """(V, S, S, 3): the rasterizer's current cloud in every view, downsampled (as render_sample does)."""
    near, far = camera.distance * 0.05, camera.distance * 10
    intrinsic = camera.intrinsic(options.supersample)
    return np.stack([downsample(rasterizer.capture(intrinsic, e, style, near, far), options.supersample)
                     for e in extrinsics])


def sample_steps(read, options: RenderOptions, rasterizer: LegacyRasterizer, store: Path, arrays) -> dict:
    """Seconds of each STEPS entry for one pass over one sample; `read` returns the Sample, `arrays` is the
    row `render_sample` makes of it (written to row 0 of `store` in the write step)."""
    seconds = {}
    seconds["read"], sample = timed(read)
    points, labels = sample.points, sample.point_labels

    def normals():
        camera = fit_camera(points, options.image_size, options.fov_degrees, options.margin)
        radius = camera.distance * np.sin(np.radians(options.fov_degrees) / 2) / options.margin
        return camera, estimate_normals(points, 0.05 * radius)
    seconds["normals"], (camera, normal) = timed(normals)
    rotations = options.plan.rotations
    extrinsics = camera.extrinsics(rotations)
    light_on, grey = LIGHTS[options.light]

    def views():
        rasterizer.set_cloud(points, np.full((len(points), 3), grey), normal)
        style = DrawStyle(options.point_size, (1, 1, 1), light_on)
        return capture_views(rasterizer, camera, extrinsics, style, options)
    seconds["render"], _ = timed(views)

    def masks(how):
        if how == "splat":
            return splat_masks(points, labels, camera, rotations, options.point_size, options.supersample)
        return render_masks(rasterizer, labels, camera, extrinsics, options.point_size, options.supersample)
    seconds["masks"] = timed(lambda: masks(options.masks))[0] if labels.any() else 0.0
    seconds["rendered masks"] = timed(lambda: masks("render"))[0] if labels.any() else 0.0

    seconds["projection"], (pixel, depth, inside) = timed(lambda: project(points, camera, rotations))
    valid = np.ones(len(points), bool)
    seconds["visibility"], visible = timed(lambda: nearest_per_pixel(pixel, depth, valid, options.image_size, inside))
    seconds["proxy + knn"], _ = timed(lambda: (proxy_indices(points, valid, visible.any(axis=0)),
                                               knn_graph(points, valid, options.knn)))
    seconds["write"], _ = timed(lambda: write_sample(store, 0, arrays))
    return seconds


def one_row_store(path: Path, options: RenderOptions, sample: Sample) -> Path:
    create_store(path, store_attrs(options))
    append_samples(path, [{"dataset": sample.dataset, "class_name": sample.class_name, "split": sample.split,
                           "defect_type": sample.defect_type, "sample_id": sample.sample_id, "label": sample.label}])
    return path


def per_sample(read, options, rasterizer, store, repeats: int) -> tuple[dict, object]:
    """(median seconds per step over `repeats` passes, plus `render_sample` timed as a cross-check; its row)."""
    sample = read()
    checks = [timed(lambda: render_sample(sample, options, rasterizer)) for _ in range(max(1, repeats // 2))]
    arrays = checks[-1][1]
    runs = [sample_steps(read, options, rasterizer, store, arrays) for _ in range(repeats)]
    result = {step: statistics.median(run[step] for run in runs) for step in STEPS}
    result["rendered masks"] = statistics.median(run["rendered masks"] for run in runs)
    result["render_sample()"] = statistics.median(seconds for seconds, _ in checks)
    return result, arrays


def build_rates(entry, options, warm_runs: int, tmp: Path) -> tuple[dict, dict, float, Path]:
    """({workers: cold samples/s}, {workers: median warm samples/s}, CPUs kept busy by one worker, a 1-worker store).

    Workers 1 and 2, a fresh store each run; the two alternate so drifting load on a shared machine hits both.
    The cold runs start the worker processes (loky keeps them for the next runs) and their windows. One worker
    runs in this process, so its CPU time (all threads: Mesa's llvmpipe rasterizes on several) over wall time
    says how many CPUs a single worker already uses."""
    rates = {1: [], 2: []}
    store, busy = None, []
    for attempt in range(1 + warm_runs):
        for workers in (1, 2):
            out = tmp / f"build-{workers}w-{attempt}.zarr"
            cpu = time.process_time()
            result = build_store(entry, out, options, workers=workers)
            if result.failures:
                raise SystemExit(f"build failed: {result.failures}")
            rates[workers].append(result.rendered / result.seconds)
            if workers == 1:
                store = out
                busy.append((time.process_time() - cpu) / result.seconds)
    return ({w: r[0] for w, r in rates.items()}, {w: statistics.median(r[1:]) for w, r in rates.items()},
            statistics.median(busy[1:]), store)


def disk_bytes(path: Path) -> tuple[int, int]:
    """(allocated bytes as du counts them, apparent bytes) of every file under `path`."""
    allocated = apparent = 0
    for folder, _, files in os.walk(path):
        for name in files:
            stat = os.stat(Path(folder) / name)
            allocated += stat.st_blocks * 512
            apparent += stat.st_size
    return allocated, apparent


def raw_row_bytes(arrays) -> int:
    return sum(np.asarray(getattr(arrays, f.name)).nbytes for f in fields(arrays))


def baseline(sample: Sample, point_size: float, repeats: int) -> dict:
    runs = [released_procedure.run_sample(sample.points, sample.point_labels, point_size) for _ in range(repeats)]
    return {key: statistics.median(run[key] for run in runs) for key in ("render", "visibility", "total")}


def fmt(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds >= 0.01 else f"{seconds:.4f}"


def goal_row(goal: str, target: str, value: str, met: bool) -> str:
    return f"| {goal} | {target} | {value} | {'yes' if met else 'NO'} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller build (~1-2 min)")
    args = parser.parse_args()
    repeats, base_repeats, dense_base_repeats, warm_runs = (2, 1, 1, 1) if args.quick else (5, 3, 2, 2)
    build_spec = (dict(train=1, validation=0, test_good=1, defects=("bump",)) if args.quick
                  else dict(train=2, validation=0, test_good=2, defects=("bump", "hole")))

    tmp = Path(tempfile.mkdtemp(prefix="render-bench-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))  # Mesa's EGL wants one; workers inherit it
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    try:
        options = RenderOptions()
        rasterizer = LegacyRasterizer(options.image_size * options.supersample)

        # 1. one realistic scan and the dense 112 896-point cloud, step by step
        generate(tmp / "cookie", SyntheticSpec(format="mvtec3d", classes=("cookie",), defects=("bump",), train=0,
                                               validation=0, test_good=0, per_defect=1, grid=800))
        entry = custom_entry("mvtec3d", tmp / "cookie")
        (ref,) = list_samples(entry)
        prep = preprocess_options(entry, ref.class_name, image_size=options.image_size, max_points=options.max_points)
        cookie = read_sample(entry, ref, prep)
        dense = dense_sample(options.image_size)
        cookie_store = one_row_store(tmp / "cookie.zarr", options, cookie)
        dense_store = one_row_store(tmp / "dense.zarr", options, dense)
        ours = {}
        ours["cookie"], cookie_row = per_sample(lambda: read_sample(entry, ref, prep), options, rasterizer,
                                                cookie_store, repeats)
        ours["dense"], _ = per_sample(lambda: dense, options, rasterizer, dense_store, repeats)
        for case in ours.values():
            case["total"] = sum(case[s] for s in STEPS)

        # 4. the released procedure on the same clouds
        base = {"cookie": baseline(cookie, options.point_size, base_repeats),
                "dense": baseline(dense, options.point_size, dense_base_repeats)}

        # 2. build throughput, 1 and 2 workers
        generate(tmp / "build-data", SyntheticSpec(format="mvtec3d", classes=("cookie", "dome"), per_defect=1,
                                                   grid=800, **build_spec))
        build_entry = custom_entry("mvtec3d", tmp / "build-data")
        refs = list_samples(build_entry)
        mean_points = np.mean([read_sample(build_entry, r, prep).n_points for r in refs])
        cold, warm, busy, store1 = build_rates(build_entry, options, warm_runs, tmp)
        (cold1, cold2), (warm1, warm2) = (cold[1], cold[2]), (warm[1], warm[2])

        # 3. store size
        rows = len(open_store(store1))
        allocated, apparent = disk_bytes(store1)
        raw = raw_row_bytes(cookie_row)  # every row has the same array shapes, so the same raw bytes
        one_row = {name: disk_bytes(path)[0] for name, path in (("cookie", cookie_store), ("dense", dense_store))}
        total_s = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # ---- report ----
    c, d = ours["cookie"], ours["dense"]
    print(f"# Render benchmark ({'--quick' if args.quick else 'full'}; {os.cpu_count()} CPUs; "
          f"{options.views} views at {options.image_size}², supersample {options.supersample}, point size "
          f"{options.point_size:g}; run took {total_s:.0f} s; 1-min load average before the run {load_before:.1f}: "
          "other processes on this machine skew every number)\n")
    print(f"## 1. Our per-sample steps (median of {repeats} runs, seconds)\n")
    print(f"| step | cookie scan 800² -> {cookie.n_points} pts | share "
          f"| dense height field {dense.n_points} pts | share |")
    print("|---|---:|---:|---:|---:|")
    for step in STEPS:
        dense_value, dense_share = (("n/a (given)", "") if step == "read"
                                    else (fmt(d[step]), f"{d[step] / d['total']:.0%}"))
        print(f"| {step} | {fmt(c[step])} | {c[step] / c['total']:.0%} | {dense_value} | {dense_share} |")
    print(f"| **total (sum of steps)** | **{fmt(c['total'])}** | | **{fmt(d['total'])}** | |")
    inner = ("normals", "render", "masks", "projection", "visibility", "proxy + knn")
    print(f"| check: one render_sample() call (vs. its steps normals ... proxy + knn) | {fmt(c['render_sample()'])} "
          f"({fmt(sum(c[s] for s in inner))}) | | {fmt(d['render_sample()'])} ({fmt(sum(d[s] for s in inner))}) | |")
    print(f"\nAnomalous points: cookie {int(cookie.point_labels.sum())}, dense {int(dense.point_labels.sum())} "
          f"(both anomalous, so masks are made: --masks {options.masks}). For comparison, not in the totals: "
          f"masks rendered by Open3D (--masks render) take {fmt(c['rendered masks'])} s (cookie) and "
          f"{fmt(d['rendered masks'])} s (dense).\n")

    print(f"## 2. Released procedure re-enacted (median of {base_repeats} / {dense_base_repeats} runs, seconds)\n")
    print("| | cookie | dense |")
    print("|---|---:|---:|")
    print(f"| rendering (normals, 9 x (1024² + 1036² windows), resizes) | {fmt(base['cookie']['render'])} | "
          f"{fmt(base['dense']['render'])} |")
    print(f"| visibility (projection + 2 Python z-buffer loops x 9 views) | {fmt(base['cookie']['visibility'])} | "
          f"{fmt(base['dense']['visibility'])} |")
    print(f"| **baseline total** | **{fmt(base['cookie']['total'])}** | **{fmt(base['dense']['total'])}** |")
    print(f"| our total (section 1) | {fmt(c['total'])} | {fmt(d['total'])} |")
    ratio_c, ratio_d = base["cookie"]["total"] / c["total"], base["dense"]["total"] / d["total"]
    print(f"| **baseline / ours** | **{ratio_c:.1f}x** | **{ratio_d:.1f}x** |")
    print(f"| rendering: baseline / ours (normals + render + masks) | "
          f"{base['cookie']['render'] / (c['normals'] + c['render'] + c['masks']):.1f}x | "
          f"{base['dense']['render'] / (d['normals'] + d['render'] + d['masks']):.1f}x |")
    print(f"| visibility: baseline loop / ours (projection + visibility) | "
          f"{base['cookie']['visibility'] / (c['projection'] + c['visibility']):.0f}x | "
          f"{base['dense']['visibility'] / (d['projection'] + d['visibility']):.0f}x |")
    print("\nThe baseline excludes reading (the same read would be added to both); ours includes it for the cookie.\n")

    print(f"## 3. build_store throughput ({len(refs)} samples: cookie + dome at 800², mean {mean_points:.0f} points, "
          f"{sum(r.label for r in refs)} anomalous)\n")
    print(f"| workers | cold samples/s (incl. worker start) | warm samples/s (median of {warm_runs}) | warm s/sample |")
    print("|---:|---:|---:|---:|")
    print(f"| 1 | {cold1:.2f} | {warm1:.2f} | {1 / warm1:.3f} |")
    print(f"| 2 | {cold2:.2f} | {warm2:.2f} | {1 / warm2:.3f} |")
    cpus = os.cpu_count() or 1
    print(f"\nScaling 1 -> 2 workers: warm {warm2 / warm1:.2f}x, cold {cold2 / cold1:.2f}x. One worker already keeps "
          f"{busy:.2f} CPUs busy (CPU time / wall, warm runs), so {cpus} CPUs allow at most about "
          f"{min(2.0, cpus / busy):.2f}x.\n")

    print("## 4. Store size\n")
    print("| store | rows | bytes/sample on disk (du) | raw array bytes/sample | compression |")
    print("|---|---:|---:|---:|---:|")
    print(f"| build store (1 worker) | {rows} | {allocated / rows / 1e6:.2f} MB (apparent "
          f"{apparent / rows / 1e6:.2f} MB) | {raw / 1e6:.2f} MB | {raw / (allocated / rows):.1f}x |")
    for name, size in one_row.items():
        print(f"| one-row store, {name} | 1 | {size / 1e6:.2f} MB | {raw / 1e6:.2f} MB | {raw / size:.1f}x |")

    print("\n## 5. Goals (SPEC 9)\n")
    build_per_sample = 1 / warm1
    print("| goal | target | measured | met |")
    print("|---|---|---|---|")
    print(goal_row("per-sample: baseline / ours, cookie scan", ">= 10x", f"{ratio_c:.1f}x", ratio_c >= 10))
    print(goal_row("per-sample: baseline / ours, dense 112 896 pts", ">= 10x", f"{ratio_d:.1f}x", ratio_d >= 10))
    ratio_b = base["cookie"]["total"] / build_per_sample
    print(goal_row("per-sample: baseline (cookie) / build_store 1-worker wall per sample", ">= 10x",
                   f"{ratio_b:.1f}x ({fmt(build_per_sample)} s/sample)", ratio_b >= 10))
    print(goal_row("visibility, 112 896 pts x 9 views (nearest_per_pixel)", "< 0.1 s",
                   f"{fmt(d['visibility'])} s (+ projection {fmt(d['projection'])} s)", d["visibility"] < 0.1))
    print(goal_row("workers 1 -> 2 (warm)", ">= 1.8x", f"{warm2 / warm1:.2f}x", warm2 / warm1 >= 1.8))


if __name__ == "__main__":
    main()
