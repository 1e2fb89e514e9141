"""Time the render stage per sample and per build, against the released code's procedure (design §3, §9).

Run: .venv/bin/python benchmarks/render_bench.py [--quick] [--by-normals [--profile]]
(about 1-2 minutes with --quick, up to ~6 minutes without, ~5 minutes --by-normals; prints markdown tables,
writes only to a temporary folder that it removes).

--by-normals (issue 24 item 4) prints only this, all in one run on the same samples: per sample, read +
render_sample() + write as one worker of `--threads 1` does (render.build.render_row's limits: torch, Open3D,
BLAS/OpenMP, Mesa and the k-NN query on one thread), for each normals option (open3d, grid, graph) and
renderer, on the cookie and the dense cloud, against the released procedure (section 4 below; its own
threads, as released); then `render build` of the synthetic MVTec-format dataset (cookie + dome) with the
splat renderer, normals open3d and auto (the default: grid for these organized clouds), 1 and 2 workers:
wall seconds and rows/s. --profile adds cProfile's top functions of each sample drawn with grid normals (splat, one
thread).

What it measures, all in one run on this machine, for both lit-view renderers: Open3D's legacy
Visualizer (the default, `--renderer legacy`) and the splat renderer (`--renderer splat`,
render/splat.py, torch on the CPU here; GPU rates are not measured by this script):
1. Per-sample time split into read (read_sample, preprocessing included), normals (camera fit
   included), render (9 views), masks (anomalous samples only: splatted by default, or 9 mask captures
   with RenderOptions(masks="render"), which is also timed for comparison), projection,
   visibility, proxy + k-NN graph and write (write_sample into a temporary store: compression and
   files; the compression alone, every array encoded with the store's codec, is timed apart), by
   calling the functions render/sample_render.py calls, on two clouds: a synthetic MVTec-format
   "cookie" scan at 800 x 800 (read and preprocessed to the 336 x 336 grid), and a dense height field
   with a point in every cell of the 336 x 336 grid (render/synthetic/dense.py: 112 896 points, the
   paper's budget; given directly, so no read). Medians of several repetitions. Each step alone sums to
   more than one `render_sample` call, which builds the k-NN graph on a thread beside the drawing: the
   per-sample time is read + render_sample() + write, what a 1-worker build does. Threads as in a 1-worker build
   (render.build.render_row): torch 1 (the splat draw), Open3D, BLAS and the k-NN query all CPUs.
1b. Normals and k-NN on the dense cloud with all CPUs and with a 2-worker build's budget of one thread
   each (render.build.WORKER_RASTER_THREADS), and the candidate that was not taken: one 30-NN query
   shared by the normals (PCA of the neighbours within the radius, as Open3D's hybrid search) and the
   graph (its first 8 columns), timed and compared with Open3D's normals (angle up to sign).
2. Samples/s of render.build.build_store on a small synthetic dataset with 1 and 2 workers, and 1 worker
   held to one thread (--threads 1, each of 2 workers' budget; splat only), per renderer (fresh store each; a first
   "cold" build starts the workers, the later "warm" ones are the throughput).
3. Store bytes per sample on disk (du) and the compression ratio against the raw array bytes.
4. The released code's per-sample procedure (render/released_procedure.py: a new 1024² window per
   view plus a 1036² ground-truth window, Python z-buffer loops) on the same clouds, split into
   rendering and visibility; medians of 2-3 runs.
5. The design §9 goals: baseline / ours >= 10x, visibility of 112 896 points x 9 views < 0.1 s,
   1 -> 2 workers >= 1.8x, for each renderer.
The machine may be shared: ratios are only meaningful between numbers of the same run, and the
1-minute load average before and after the run is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path

import numcodecs
import numpy as np
import open3d as o3d
import scipy.sparse
import torch
from scipy.spatial import cKDTree
from threadpoolctl import threadpool_limits

from pointad.render import released_procedure
from pointad.render.build import WORKER_RASTER_THREADS, build_store, store_attrs
from pointad.render.camera import fit_camera, project
from pointad.render.graph import knn_graph, proxy_indices
from pointad.render.masks import splat_masks
from pointad.render.options import LIGHTS, RenderOptions
from pointad.render.rasterize import DrawStyle, LegacyRasterizer, downsample, worker_rasterizer
from pointad.render.readers import list_samples, preprocess_options, read_sample
from pointad.render.sample_render import estimate_normals, render_masks, render_sample
from pointad.render.splat import Cloud, draw_views
from pointad.render.synthetic import SyntheticSpec, generate
from pointad.render.synthetic.dense import dense_sample
from pointad.render.visibility import nearest_per_pixel
from pointad.shared.registry import custom_entry
from pointad.shared.sample import Sample
from pointad.shared.store import open_store
from pointad.shared.store_write import CLEVEL, append_samples, create_store, write_sample

STEPS = ("read", "normals", "render", "masks", "projection", "visibility", "proxy + knn", "write")
# the per-sample work besides drawing (views and masks) and reading: what compression and neighbours cost
REST = ("normals", "projection", "visibility", "proxy + knn", "write")
RENDERERS = ("legacy", "splat")


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
        if options.renderer == "splat":
            levels = draw_views([Cloud(points, normal, grey, camera)], rotations, options.point_size,
                                options.supersample, light_on)[0]
            return np.repeat(levels[..., None] / np.float32(255), 3, axis=-1)
        rasterizer.set_cloud(points, np.full((len(points), 3), grey), normal)
        style = DrawStyle(options.point_size, (1, 1, 1), light_on)
        return capture_views(rasterizer, camera, extrinsics, style, options)
    seconds["render"], _ = timed(views)

    def masks(how):
        if how == "splat":
            return splat_masks(points, labels, camera, rotations, options.point_size, options.supersample)
        return render_masks(rasterizer, labels, camera, extrinsics, options.point_size, options.supersample)
    seconds["masks"] = timed(lambda: masks(options.masks))[0] if labels.any() else 0.0
    seconds["rendered masks"] = (timed(lambda: masks("render"))[0] if labels.any() and options.renderer != "splat"
                                 else 0.0)

    seconds["projection"], (pixel, depth, inside) = timed(lambda: project(points, camera, rotations))
    valid = np.ones(len(points), bool)
    seconds["visibility"], visible = timed(lambda: nearest_per_pixel(pixel, depth, valid, options.image_size, inside))
    seconds["proxy + knn"], _ = timed(lambda: proxy_indices(points, valid, visible.any(axis=0),
                                                            knn_graph(points, valid, options.knn)[0]))
    seconds["write"], _ = timed(lambda: write_sample(store, 0, arrays))
    seconds["compression"], _ = timed(lambda: compress_row(arrays))
    return seconds


def compress_row(arrays) -> int:
    """Bytes of every array of the row encoded as the store encodes it (Blosc/zstd at CLEVEL, byte
    shuffle, bit shuffle for bool), one thread, as in a worker: the compression part of the write step."""
    total = 0
    for f in fields(arrays):
        value = np.ascontiguousarray(getattr(arrays, f.name))
        shuffle = numcodecs.Blosc.BITSHUFFLE if value.dtype == bool else numcodecs.Blosc.SHUFFLE
        total += len(numcodecs.Blosc(cname="zstd", clevel=CLEVEL, shuffle=shuffle).encode(value))
    return total


def shared_neighbourhood(cloud: np.ndarray, radius: float, k: int, max_nn: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """The candidate not taken: (P, 3) unit normals and the (P, k) graph neighbours from ONE 30-NN query.

    Normals: PCA of the neighbours within `radius` (Open3D's hybrid search keeps d^2 < r^2 of its max_nn
    nearest), covariance from moment sums by a sparse product (coordinates centred first), eigh's
    eigenvector of the smallest eigenvalue. Benchmark only: assumes >= 3 neighbours per point (the dense
    cloud has 30) and skips Open3D's rules for degenerate covariances."""
    distance, neighbour = cKDTree(cloud).query(cloud, k=max_nn, workers=WORKER_RASTER_THREADS)
    keep = distance < radius
    count = keep.sum(axis=1)
    adjacency = scipy.sparse.csr_matrix((np.ones(int(count.sum())), neighbour[keep], np.r_[0, np.cumsum(count)]),
                                        shape=(len(cloud),) * 2)  # rows in order: CSR as it is, no sort
    centred = cloud - cloud.mean(axis=0)
    moments = np.concatenate([centred, (centred[:, :, None] * centred[:, None, :]).reshape(-1, 9)], axis=1)
    sums = adjacency @ moments / count[:, None]
    covariance = sums[:, 3:].reshape(-1, 3, 3) - sums[:, :3, None] * sums[:, None, :3]
    return np.linalg.eigh(covariance)[1][:, :, 0], neighbour[:, :k]


def neighbour_steps(sample: Sample, options: RenderOptions, repeats: int) -> dict:
    """Median seconds of the normals (camera fit excluded) and the k-NN graph on `sample`, with all CPUs and
    with one thread (Open3D's pool and the KD-tree query), and of the shared-neighbourhood candidate at
    one thread; plus how far the candidate's normals are from Open3D's (degrees, up to sign)."""
    points = sample.points
    camera = fit_camera(points, options.image_size, options.fov_degrees, options.margin)
    radius = 0.05 * camera.distance * np.sin(np.radians(options.fov_degrees) / 2) / options.margin
    valid = np.ones(len(points), bool)
    before = o3d.utility.get_max_threads()
    out = {}

    def median(fn):
        return statistics.median(timed(fn)[0] for _ in range(repeats))
    try:
        for threads in (0, WORKER_RASTER_THREADS):  # 0: Open3D's default, all CPUs
            o3d.utility.set_max_threads(threads)
            out["normals", threads] = median(lambda: estimate_normals(points, radius))
            out["knn", threads] = median(lambda: knn_graph(points, valid, options.knn, workers=threads or -1))
        reference = estimate_normals(points, radius)
        cloud = points.astype(np.float64)
        out["shared", WORKER_RASTER_THREADS] = median(lambda: shared_neighbourhood(cloud, radius, options.knn))
        normals, graph = shared_neighbourhood(cloud, radius, options.knn)
    finally:
        o3d.utility.set_max_threads(before)
    cosine = np.abs(np.sum(normals * reference, axis=1)).clip(0, 1)
    out["angle p99.9"], out["angle max"] = np.degrees(np.arccos(np.quantile(cosine, [0.001, 0.0])))
    out["graph same"] = float(np.mean(graph == knn_graph(points, valid, options.knn)[0]))
    return out


def one_row_store(path: Path, options: RenderOptions, sample: Sample) -> Path:
    create_store(path, store_attrs(options))
    append_samples(path, [{"dataset": sample.dataset, "class_name": sample.class_name, "split": sample.split,
                           "defect_type": sample.defect_type, "sample_id": sample.sample_id, "label": sample.label}])
    return path


def per_sample(read, options, rasterizer, store, repeats: int) -> tuple[dict, object]:
    """(median seconds per step over `repeats` passes, plus `render_sample` timed as a cross-check; its row)."""
    sample = read()
    checks = [timed(lambda: render_sample(sample, options, rasterizer)) for _ in range(repeats)]
    arrays = checks[-1][1]
    runs = [sample_steps(read, options, rasterizer, store, arrays) for _ in range(repeats)]
    result = {step: statistics.median(run[step] for run in runs) for step in (*STEPS, "rendered masks", "compression")}
    result["render_sample()"] = statistics.median(seconds for seconds, _ in checks)
    return result, arrays


def children_cpu_seconds() -> float | None:
    """CPU seconds (user + system) so far of this process's live child processes (the loky workers), read from
    /proc (Linux); None where that fails."""
    try:
        kids = [pid for task in os.listdir("/proc/self/task")
                for pid in Path(f"/proc/self/task/{task}/children").read_text().split()]
        ticks = sum(sum(map(int, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]))
                    for pid in kids)
    except (OSError, ValueError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def build_rates(entry, options, warm_runs: int, tmp: Path) -> tuple[dict, dict, float, Path, dict]:
    """({workers: cold samples/s}, {workers: median warm samples/s}, CPUs kept busy by one worker, a 1-worker
    store, {workers: median warm CPU seconds per sample, None if unknown}).

    Workers 1 and 2, a fresh store each run; the two alternate so drifting load on a shared machine hits both.
    The cold runs start the worker processes (loky keeps them for the next runs) and their windows. One worker
    runs in this process, so its CPU time (all threads: Mesa's llvmpipe rasterizes on several) over wall time
    says how many CPUs a single worker already uses. Two workers' CPU time is theirs (children_cpu_seconds):
    the same CPU seconds per sample as one worker means they waste none on contending threads, and then only
    CPUs taken by other processes keep 1 -> 2 workers below 2x."""
    tmp.mkdir(parents=True, exist_ok=True)
    # "1t": one worker held to one thread (--threads 1), the budget each of two workers has; splat only, as
    # Mesa's threads cannot be limited in this process once its window is open (rasterize.worker_rasterizer)
    configs = (1, "1t", 2) if options.renderer == "splat" else (1, 2)
    rates, cpu_per_sample = {w: [] for w in configs}, {w: [] for w in configs}
    store, busy = None, []
    for attempt in range(1 + warm_runs):
        for workers in configs:
            out = tmp / f"build-{workers}w-{attempt}.zarr"
            cpu, children = time.process_time(), children_cpu_seconds()
            result = build_store(entry, out, options, workers=1 if workers == "1t" else workers,
                                 threads=1 if workers == "1t" else None)
            if result.failures:
                raise SystemExit(f"build failed: {result.failures}")
            rates[workers].append(result.rendered / result.seconds)
            if workers == "1t":
                cpu_per_sample["1t"].append((time.process_time() - cpu) / result.rendered)
            elif workers == 1:
                store = out
                busy.append((time.process_time() - cpu) / result.seconds)
                cpu_per_sample[1].append((time.process_time() - cpu) / result.rendered)
            elif children is not None and children_cpu_seconds() is not None:
                cpu_per_sample[2].append((children_cpu_seconds() - children) / result.rendered)
    warm_cpu = {w: statistics.median(c[1:]) if len(c) > 1 else None for w, c in cpu_per_sample.items()}
    return ({w: r[0] for w, r in rates.items()}, {w: statistics.median(r[1:]) for w, r in rates.items()},
            statistics.median(busy[1:]), store, warm_cpu)


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


def one_thread_seconds(read, options: RenderOptions, rasterizer, store: Path, repeats: int) -> float:
    """Median seconds of read + render_sample + write_sample of row 0 of `store`, under a `--threads 1`
    worker's limits (render_row: torch, Open3D and BLAS/OpenMP at one thread, render_sample's threads=1)."""
    torch_threads, open3d_threads = torch.get_num_threads(), o3d.utility.get_max_threads()
    torch.set_num_threads(1)
    o3d.utility.set_max_threads(1)
    try:
        with threadpool_limits(1):
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                write_sample(store, 0, render_sample(read(), options, rasterizer, threads=1))
                times.append(time.perf_counter() - start)
    finally:
        o3d.utility.set_max_threads(open3d_threads)
        torch.set_num_threads(torch_threads)
    return statistics.median(times)


def by_normals(args) -> None:
    """Issue 24 item 4: the module docstring's --by-normals tables."""
    repeats, base_repeats, warm_runs = (2, 1, 1) if args.quick else (5, 2, 2)
    tmp = Path(tempfile.mkdtemp(prefix="render-bench-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    options = RenderOptions()
    rasterizer = worker_rasterizer(options.image_size * options.supersample, "legacy", 1)  # Mesa: one thread
    try:
        generate(tmp / "cookie", SyntheticSpec(format="mvtec3d", classes=("cookie",), defects=("bump",), train=0,
                                               validation=0, test_good=0, per_defect=1, grid=800))
        entry = custom_entry("mvtec3d", tmp / "cookie")
        (ref,) = list_samples(entry)
        prep = preprocess_options(entry, ref.class_name, image_size=options.image_size, max_points=options.max_points)
        dense = dense_sample(options.image_size)
        reads = {"cookie": lambda: read_sample(entry, ref, prep), "dense": lambda: dense}
        clouds = {name: read() for name, read in reads.items()}
        seconds = {}
        for renderer in RENDERERS:
            for normals in ("open3d", "grid", "graph"):
                opts = replace(options, renderer=renderer, normals=normals)
                for name, read in reads.items():
                    store = one_row_store(tmp / f"{name}-{renderer}-{normals}.zarr", opts, clouds[name])
                    seconds[renderer, normals, name] = one_thread_seconds(read, opts, rasterizer, store, repeats)
        base = {name: baseline(cloud, options.point_size, base_repeats)["total"] for name, cloud in clouds.items()}
        generate(tmp / "build-data", SyntheticSpec(format="mvtec3d", classes=("cookie", "dome"), per_defect=1,
                                                   grid=800, train=2, validation=0, test_good=2,
                                                   defects=("bump", "hole")))
        build_entry = custom_entry("mvtec3d", tmp / "build-data")
        rows = len(list_samples(build_entry))
        builds = {normals: build_rates(build_entry, replace(options, renderer="splat", normals=normals), warm_runs,
                                       tmp / f"build-{normals}")
                  for normals in ("open3d", "auto")}
        profile = ({name: profiled(read, clouds[name], replace(options, renderer="splat", normals="grid"))
                    for name, read in reads.items()} if args.profile else {})
        total_s = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"# Render per normals option ({'--quick' if args.quick else 'full'}; {os.cpu_count()} CPUs; "
          f"{options.views} views at {options.image_size}², supersample {options.supersample}; run took {total_s:.0f} s; "
          f"1-min load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after)\n")
    print(f"## Per sample, one worker at one thread: read + render_sample() + write (median of {repeats}, seconds), "
          f"against the released procedure (median of {base_repeats}, its own threads)\n")
    print(f"| renderer | normals | cookie ({len(clouds['cookie'].points)} pts) | released / ours | "
          f"dense ({len(dense.points)} pts, no read) | released / ours |")
    print("|---|---|---:|---:|---:|---:|")
    print(f"| released procedure | Open3D (r 0.1, 50) | {fmt(base['cookie'])} | 1.0x | {fmt(base['dense'])} | 1.0x |")
    for (renderer, normals, name), value in seconds.items():
        if name == "cookie":
            dense_s = seconds[renderer, normals, "dense"]
            print(f"| {renderer} | {normals} | {fmt(value)} | {base['cookie'] / value:.1f}x | {fmt(dense_s)} | "
                  f"{base['dense'] / dense_s:.1f}x |")
    print(f"\n## render build, splat, {rows} synthetic samples (cookie + dome at 800²), fresh store each "
          f"(cold: workers started; warm: median of {warm_runs})\n")
    print("| normals | workers | cold wall s | cold rows/s | warm wall s | warm rows/s | warm s/row |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for normals, (cold, warm, _, _, _) in builds.items():
        for w in cold:
            label = "1, --threads 1" if w == "1t" else str(w)
            print(f"| {normals} | {label} | {rows / cold[w]:.2f} | {cold[w]:.2f} | {rows / warm[w]:.2f} | "
                  f"{warm[w]:.2f} | {1 / warm[w]:.3f} |")
    for name, text in profile.items():
        print(f"\n## cProfile: the {name} sample, splat, grid normals, one thread (read + render_sample + write)\n")
        print("```\n" + text + "```")


def profiled(read, sample: Sample, options: RenderOptions) -> str:
    """cProfile's top 30 functions by cumulative time of one read + render_sample (one thread) + write."""
    import cProfile
    import io
    import pstats
    with tempfile.TemporaryDirectory() as folder:
        store = one_row_store(Path(folder) / "p.zarr", options, sample)
        one_thread_seconds(read, options, None, store, 1)  # warm: first calls import and allocate
        profiler = cProfile.Profile()
        profiler.enable()
        one_thread_seconds(read, options, None, store, 1)
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller build (~2-3 min)")
    parser.add_argument("--by-normals", action="store_true", help="only the per-normals-option tables (issue 24)")
    parser.add_argument("--profile", action="store_true", help="with --by-normals: cProfile of a dense grid sample")
    args = parser.parse_args()
    if args.by_normals:
        by_normals(args)
        return
    repeats, base_repeats, dense_base_repeats, warm_runs = (2, 1, 1, 1) if args.quick else (5, 3, 2, 2)
    build_spec = (dict(train=1, validation=0, test_good=1, defects=("bump",)) if args.quick
                  else dict(train=2, validation=0, test_good=2, defects=("bump", "hole")))

    tmp = Path(tempfile.mkdtemp(prefix="render-bench-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))  # Mesa's EGL wants one; workers inherit it
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    torch.set_num_threads(1)  # as render_row draws splats: the per-sample steps are a 1-worker build's
    try:
        options = RenderOptions(normals="open3d")  # the per-sample steps time Open3D's normals; builds draw with them too
        by_renderer = {name: replace(options, renderer=name) for name in RENDERERS}
        rasterizer = LegacyRasterizer(options.image_size * options.supersample)

        # 1. one realistic scan and the dense 112 896-point cloud, step by step, each renderer
        generate(tmp / "cookie", SyntheticSpec(format="mvtec3d", classes=("cookie",), defects=("bump",), train=0,
                                               validation=0, test_good=0, per_defect=1, grid=800))
        entry = custom_entry("mvtec3d", tmp / "cookie")
        (ref,) = list_samples(entry)
        prep = preprocess_options(entry, ref.class_name, image_size=options.image_size, max_points=options.max_points)
        cookie = read_sample(entry, ref, prep)
        dense = dense_sample(options.image_size)
        reads = {"cookie": lambda: read_sample(entry, ref, prep), "dense": lambda: dense}
        ours, rows, one_row = {}, {}, {}
        for renderer, opts in by_renderer.items():
            for name, read in reads.items():
                store = one_row_store(tmp / f"{name}-{renderer}.zarr", opts, read())
                ours[renderer, name], rows[renderer, name] = per_sample(read, opts, rasterizer, store, repeats)
                one_row[renderer, name] = disk_bytes(store)[0]
        for (_, name), case in ours.items():
            case["total"] = sum(case[s] for s in STEPS)
            case["rest"] = sum(case[s] for s in REST)
            # what a 1-worker build does per sample: render_sample overlaps the graph with the draw
            case["pipeline"] = (case["read"] if name == "cookie" else 0.0) + case["render_sample()"] + case["write"]
        neighbours = neighbour_steps(dense, options, repeats)

        # 4. the released procedure on the same clouds
        base = {"cookie": baseline(cookie, options.point_size, base_repeats),
                "dense": baseline(dense, options.point_size, dense_base_repeats)}

        # 2. build throughput, 1 and 2 workers, each renderer
        generate(tmp / "build-data", SyntheticSpec(format="mvtec3d", classes=("cookie", "dome"), per_defect=1,
                                                   grid=800, **build_spec))
        build_entry = custom_entry("mvtec3d", tmp / "build-data")
        refs = list_samples(build_entry)
        mean_points = np.mean([read_sample(build_entry, r, prep).n_points for r in refs])
        builds = {renderer: build_rates(build_entry, opts, warm_runs, tmp / renderer)
                  for renderer, opts in by_renderer.items()}

        # 3. store size (the 1-worker build store of the default renderer)
        store1 = builds["legacy"][3]
        n_rows = len(open_store(store1))
        allocated, apparent = disk_bytes(store1)
        raw = raw_row_bytes(rows["legacy", "cookie"])  # every row has the same array shapes, so the same raw bytes
        total_s = time.perf_counter() - started
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, options, ours, base, builds, refs, mean_points, warm_runs, (n_rows, allocated, apparent, raw),
           one_row, (cookie, dense), (repeats, base_repeats, dense_base_repeats), total_s, load_before, neighbours)


def report(args, options, ours, base, builds, refs, mean_points, warm_runs, sizes, one_row, clouds, runs, total_s,
           load_before, neighbours) -> None:
    """Print the markdown tables (module docstring's sections)."""
    cookie, dense = clouds
    repeats, base_repeats, dense_base_repeats = runs
    cases = [(r, n) for r in RENDERERS for n in ("cookie", "dense")]
    label = {"cookie": f"cookie {cookie.n_points} pts", "dense": f"dense {dense.n_points} pts"}
    print(f"# Render benchmark ({'--quick' if args.quick else 'full'}; {os.cpu_count()} CPUs; "
          f"{options.views} views at {options.image_size}², supersample {options.supersample}, point size "
          f"{options.point_size:g}; store compression Blosc/zstd level {CLEVEL}; run took {total_s:.0f} s; 1-min load "
          f"average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run: other processes on this "
          "machine skew every number, ratios within this run are the comparable ones; CPU only, GPU rates not "
          "measured)\n")
    print(f"## 1. Our per-sample steps (median of {repeats} runs, seconds; cookie: the 800² synthetic scan read "
          "and preprocessed; dense: given, no read)\n")
    print("| step | " + " | ".join(f"{r}: {label[n]}" for r, n in cases) + " |")
    print("|---|" + "---:|" * len(cases))
    for step in STEPS:
        cells = ["n/a (given)" if step == "read" and n == "dense" else
                 f"{fmt(ours[r, n][step])} ({ours[r, n][step] / ours[r, n]['total']:.0%})" for r, n in cases]
        print(f"| {'draw (9 views)' if step == 'render' else 'compression + write' if step == 'write' else step} | "
              + " | ".join(cells) + " |")
    print("| of which compression (every array, one thread) | "
          + " | ".join(fmt(ours[c]["compression"]) for c in cases) + " |")
    print("| **total (sum of steps)** | " + " | ".join(f"**{fmt(ours[c]['total'])}**" for c in cases) + " |")
    print("| rest: normals + projection + visibility + proxy/k-NN + write | "
          + " | ".join(fmt(ours[c]["rest"]) for c in cases) + " |")
    inner = ("normals", "render", "masks", "projection", "visibility", "proxy + knn")
    print("| one render_sample() call (its steps normals ... proxy + knn, summed) | "
          + " | ".join(f"{fmt(ours[c]['render_sample()'])} ({fmt(sum(ours[c][s] for s in inner))})" for c in cases)
          + " |")
    print("| **per sample: read + render_sample() + write** | "
          + " | ".join(f"**{fmt(ours[c]['pipeline'])}**" for c in cases) + " |")
    print(f"\nBoth clouds are anomalous (cookie {int(cookie.point_labels.sum())}, dense "
          f"{int(dense.point_labels.sum())} points), so masks are made (splatted, the default). For comparison, not in "
          f"the totals: legacy masks drawn by Open3D (--masks render) take {fmt(ours['legacy', 'cookie']['rendered masks'])}"
          f" s (cookie) and {fmt(ours['legacy', 'dense']['rendered masks'])} s (dense).\n")

    one = WORKER_RASTER_THREADS
    n = neighbours
    print(f"## 1b. Normals and k-NN graph, dense {dense.n_points} pts (median of {repeats} runs, seconds): all "
          f"CPUs (a 1-worker build) and {one} thread (each worker of a 2-worker build)\n")
    print(f"| step | all {os.cpu_count()} CPUs | {one} thread |")
    print("|---|---:|---:|")
    print(f"| normals: Open3D estimate_normals (hybrid, r, 30) | {fmt(n['normals', 0])} | {fmt(n['normals', one])} |")
    print(f"| k-NN graph: cKDTree query, k = {options.knn} | {fmt(n['knn', 0])} | {fmt(n['knn', one])} |")
    print(f"| normals + k-NN graph | {fmt(n['normals', 0] + n['knn', 0])} | "
          f"{fmt(n['normals', one] + n['knn', one])} |")
    print(f"| candidate: one 30-NN query (cKDTree) for both + PCA normals (sparse moments, eigh) | | "
          f"{fmt(n['shared', one])} |")
    print(f"\nThe candidate's normals vs Open3D's: 99.9% within {n['angle p99.9']:.2g} deg, at most "
          f"{n['angle max']:.2g} deg (up to sign: both renderers turn normals toward the eye); its graph columns "
          f"equal knn_graph's for {n['graph same']:.2%} of entries; it takes "
          f"{n['shared', one] / (n['normals', one] + n['knn', one]):.2f}x the time of normals + k-NN graph at "
          f"{one} thread (not taken: Open3D's C++ search for 30 neighbours costs less than cKDTree's).\n")

    print(f"## 2. Released procedure re-enacted (median of {base_repeats} / {dense_base_repeats} runs, seconds), "
          "against ours\n")
    print("| | cookie | dense |")
    print("|---|---:|---:|")
    print(f"| rendering (normals, 9 x (1024² + 1036² windows), resizes) | {fmt(base['cookie']['render'])} | "
          f"{fmt(base['dense']['render'])} |")
    print(f"| visibility (projection + 2 Python z-buffer loops x 9 views) | {fmt(base['cookie']['visibility'])} | "
          f"{fmt(base['dense']['visibility'])} |")
    print(f"| **baseline total** | **{fmt(base['cookie']['total'])}** | **{fmt(base['dense']['total'])}** |")
    ratio = {c: base[c[1]]["total"] / ours[c]["pipeline"] for c in cases}
    for r in RENDERERS:
        print(f"| ours, {r} (section 1 per sample) | {fmt(ours[r, 'cookie']['pipeline'])} | "
              f"{fmt(ours[r, 'dense']['pipeline'])} |")
        print(f"| **baseline / ours, {r}** | **{ratio[r, 'cookie']:.1f}x** | **{ratio[r, 'dense']:.1f}x** |")
        draw = {n: ours[r, n]["normals"] + ours[r, n]["render"] + ours[r, n]["masks"] for n in ("cookie", "dense")}
        print(f"| rendering: baseline / ours (normals + draw + masks), {r} | "
              f"{base['cookie']['render'] / draw['cookie']:.1f}x | {base['dense']['render'] / draw['dense']:.1f}x |")
    seen = {n: ours["splat", n]["projection"] + ours["splat", n]["visibility"] for n in ("cookie", "dense")}
    print(f"| visibility: baseline loop / ours (projection + visibility) | "
          f"{base['cookie']['visibility'] / seen['cookie']:.0f}x | {base['dense']['visibility'] / seen['dense']:.0f}x |")
    print("\nThe baseline excludes reading (the same read would be added to both); ours includes it for the cookie.\n")

    print(f"## 3. build_store throughput ({len(refs)} samples: cookie + dome at 800², mean {mean_points:.0f} points, "
          f"{sum(r.label for r in refs)} anomalous)\n")
    print(f"| renderer | workers | cold samples/s (incl. worker start) | warm samples/s (median of {warm_runs}) "
          "| warm s/sample | warm CPU s/sample (all workers) |")
    print("|---|---:|---:|---:|---:|---:|")
    cpus = os.cpu_count() or 1
    notes = []
    for r in RENDERERS:
        cold, warm, busy, _, cpu = builds[r]
        for w in cold:
            print(f"| {r} | {'1, --threads 1' if w == '1t' else w} | {cold[w]:.2f} | {warm[w]:.2f} | "
                  f"{1 / warm[w]:.3f} | {'n/a' if cpu[w] is None else fmt(cpu[w])} |")
        notes.append(f"{r}: 1 -> 2 workers warm {warm[2] / warm[1]:.2f}x, cold {cold[2] / cold[1]:.2f}x; "
                     + (f"at one thread per worker (1 worker --threads 1 -> 2 workers) {warm[2] / warm['1t']:.2f}x; "
                        if "1t" in warm else "") + "one worker "
                     f"keeps {busy:.2f} CPUs busy (CPU time / wall), so {cpus} CPUs allow at most about "
                     f"{min(2.0, cpus / busy):.2f}x" + ("" if None in cpu.values() else
                     f"; CPU s per sample 2 workers / 1 worker {cpu[2] / cpu[1]:.2f} (1.00: no time lost to "
                     "contending threads)"))
    print("\n" + ".\n".join(notes) + ".\n")

    n_rows, allocated, apparent, raw = sizes
    print("## 4. Store size\n")
    print("| store | rows | bytes/sample on disk (du) | raw array bytes/sample | compression |")
    print("|---|---:|---:|---:|---:|")
    print(f"| build store (legacy, 1 worker) | {n_rows} | {allocated / n_rows / 1e6:.2f} MB (apparent "
          f"{apparent / n_rows / 1e6:.2f} MB) | {raw / 1e6:.2f} MB | {raw / (allocated / n_rows):.1f}x |")
    for (r, n), size in one_row.items():
        print(f"| one-row store, {n}, {r} | 1 | {size / 1e6:.2f} MB | {raw / 1e6:.2f} MB | {raw / size:.1f}x |")

    print("\n## 5. Goals (design §9)\n")
    print("| goal | target | measured | met |")
    print("|---|---|---|---|")
    for r in RENDERERS:
        for n in ("cookie", "dense"):
            print(goal_row(f"per-sample: baseline / ours, {label[n]}, {r}", ">= 10x", f"{ratio[r, n]:.1f}x",
                           ratio[r, n] >= 10))
        warm = builds[r][1]
        ratio_b = base["cookie"]["total"] * warm[1]
        print(goal_row(f"per-sample: baseline (cookie) / build_store 1-worker wall per sample, {r}", ">= 10x",
                       f"{ratio_b:.1f}x ({fmt(1 / warm[1])} s/sample)", ratio_b >= 10))
        print(goal_row(f"workers 1 -> 2 (warm), {r}", ">= 1.8x", f"{warm[2] / warm[1]:.2f}x", warm[2] / warm[1] >= 1.8))
        if "1t" in warm:
            print(goal_row(f"workers 1 -> 2 (warm) at one thread each (1 worker --threads 1), {r}", ">= 1.8x",
                           f"{warm[2] / warm['1t']:.2f}x", warm[2] / warm["1t"] >= 1.8))
    d = ours["splat", "dense"]
    print(goal_row("visibility, 112 896 pts x 9 views (nearest_per_pixel)", "< 0.1 s",
                   f"{fmt(d['visibility'])} s (+ projection {fmt(d['projection'])} s)", d["visibility"] < 0.1))
    print("| samples/s of the splat renderer on a GPU | | not measured (no GPU here) | |")


if __name__ == "__main__":
    main()
