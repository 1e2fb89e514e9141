"""`render build` orchestration (design §3): plan rows, render them on workers, record failures.

The coordinator alone creates the store, appends identity rows and writes attributes; each worker
renders one sample and writes only that sample's chunks, completion flag last. Re-running skips
complete rows, so a killed build resumes where it stopped; complete rows with a missing chunk (and with
`repair`, a chunk that does not decode) are rendered again. One build per store at a time: the store's
writer lock is held from creation to the recorded failures. Loky workers end with their coordinator.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import open3d as o3d
import torch
from threadpoolctl import threadpool_limits

from ..shared.environment import set_storage_environment, storage_environment
from ..shared.errors import InputFileError, PointADError, first_line
from ..shared.io import os_error
from ..shared.location import as_location, is_remote
from ..shared.lock import writer_lock
from ..shared.names import printable
from ..shared.registry import ORGANIZED_FORMATS, DatasetEntry
from ..shared.remote import check_location
from ..shared.sample import SampleRef
from ..shared.store import StoreAttrs, open_store
from ..shared.store_check import chunk_problems, rewrite_array_metadata
from ..shared.store_schema import RenderRecord
from ..shared.store_write import (
    append_samples,
    consolidate,
    create_store,
    mark_incomplete,
    require_writable,
    set_failures,
    start_chunk_checks,
    update_attrs,
    write_sample,
)
from .camera import camera_settings
from .datasets import dataset_render_options
from .options import RenderOptions
from .rasterize import worker_rasterizer
from .readers import list_samples, preprocess_options, read_sample
from .sample_render import render_sample


@dataclass
class BuildResult:
    store: Path
    planned: int
    rendered: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    damaged: list[str] = field(default_factory=list)  # one line per damage mended: row rendered again, metadata
    renderer: str = "legacy"  # what drew the store's views (RenderOptions.renderer, recorded in its attributes)

    def summary(self) -> str:
        rate = self.rendered / self.seconds if self.seconds else 0.0
        lines = [f"{self.store}: {self.rendered} rendered, {self.skipped} already complete, "
                 f"{len(self.failures)} failed of {self.planned} planned ({self.seconds:.1f} s, {rate:.2f} samples/s; "
                 f"renderer {self.renderer})"]
        # sample ids and reasons come from data: one printable line each
        lines += [f"repaired: {printable(damage)}" for damage in self.damaged]
        lines += [f"failed: {printable(sample_id)}: {printable(reason)}" for sample_id, reason in self.failures]
        return "\n".join(lines)


def class_point_size(entry: DatasetEntry, class_name: str, options: RenderOptions, explicit: float | None) -> float:
    """--point-size if given, else the registry's per-class value, else the default."""
    if explicit is not None:
        return float(explicit)
    return float(entry.options_for(class_name).get("render", {}).get("point_size", options.point_size))


def _software() -> dict:
    import numpy
    import open3d
    import zarr
    return {"open3d": open3d.__version__, "zarr": zarr.__version__, "numpy": numpy.__version__}


def store_attrs(options: RenderOptions) -> StoreAttrs:
    return StoreAttrs(views=options.views, image_size=options.image_size, view_plan=options.plan.to_dict(),
                      camera=camera_settings(options.fov_degrees, options.margin), max_points=options.max_points,
                      knn=options.knn, software=_software(), failures=[], render=options.to_dict())


def _comparable(render: RenderRecord) -> dict:
    # point size may differ per class and per build (it only changes the pictures' look); an option added
    # after a store was written compares as what its build did (RenderRecord.options)
    return {k: v for k, v in render.options().items() if k != "point_size"}


def _is_new(out) -> bool:
    """True where a store is still to be created: nothing there, an empty folder, or on object storage no
    root zarr.json yet (what a killed creation leaves; create_store refuses anything else found there)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return True
    return is_remote(out) and not (out / "zarr.json").exists()


def _open_or_create(out: Path, options: RenderOptions) -> StoreAttrs:
    attrs = store_attrs(options)
    if _is_new(out):
        create_store(out, attrs)
        return attrs
    require_writable(out)  # a schema v1 store: one line naming 'render migrate'
    existing = open_store(out).attrs
    if _comparable(existing.render) != _comparable(attrs.render):
        differing = sorted(k for k, v in _comparable(attrs.render).items() if _comparable(existing.render).get(k) != v)
        raise PointADError(f"{out}: store was built with other render options ({', '.join(differing)}); "
                           "use another --out or the same options")
    return existing


def plan_rows(out: Path, entry: DatasetEntry, refs: list[SampleRef], *, decode: bool = False,
              damaged: list[str] | None = None) -> tuple[list[tuple[int, SampleRef]], int]:
    """(rows still to render with their samples, number already complete); appends unseen samples.

    A complete row of `refs` with a missing chunk (with `decode`, also one that does not decode) is marked
    incomplete and planned again; each such damage is appended to `damaged` as one line.
    """
    store = open_store(out)
    known = {(store.identity(i)["dataset"], store.identity(i)["sample_id"]): i for i in range(len(store))}
    new = [r for r in refs if (entry.name, r.sample_id) not in known]
    if new:
        rows = append_samples(out, [{"dataset": entry.name, "class_name": r.class_name, "split": r.split,
                                     "defect_type": r.defect_type, "sample_id": r.sample_id, "label": r.label}
                                    for r in new])
        known.update({(entry.name, r.sample_id): row for r, row in zip(new, rows)})
    store = open_store(out)
    complete = store.complete
    todo = [(known[(entry.name, r.sample_id)], r) for r in refs]
    problems = chunk_problems(store, [row for row, _ in todo if complete[row]], decode=decode)
    if problems:
        mark_incomplete(out, {row for row, _, _ in problems})
        complete[[row for row, _, _ in problems]] = False
        if damaged is not None:
            damaged += [f"row {row} ({store.identity(row)['sample_id']}): {array}: {reason}"
                        for row, array, reason in problems]
    return [(row, r) for row, r in todo if not complete[row]], sum(bool(complete[row]) for row, _ in todo)


# Threads of each worker process when several run at once: the workers are the parallelism. Mesa's llvmpipe,
# torch, Open3D (TBB: the normals), BLAS/OpenMP and the k-NN query would otherwise each start a thread per CPU
# in every worker, and the workers would contend (benchmarks/render_bench.py measures 1 -> 2 workers).
# `render build --threads` sets another budget.
WORKER_RASTER_THREADS = 1


def render_row(out: Path, row: int, entry: DatasetEntry, ref: SampleRef, options: RenderOptions,
               raster_threads: int | None = None) -> str | None:
    """Worker task: read, render and write one row. Returns None, or the reason the sample failed.

    raster_threads: this worker's thread budget: Mesa's rasterizer (`worker_rasterizer`), Open3D, BLAS and
    OpenMP pools, and `render_sample`'s threads (KD-tree queries, the graph beside the draw); None = all CPUs.
    Torch runs one thread per caller for the splat renderer (below). Torch's and Open3D's counts are
    restored afterwards. The row does not depend on it.
    """
    torch_threads, open3d_threads = torch.get_num_threads(), o3d.utility.get_max_threads()
    if options.renderer == "splat":
        rasterizer = None  # draws with torch on the CPU
        # one torch thread, whatever the budget (the caller's count is restored): the draw's many small
        # element-wise passes ran 4x longer on 2 torch threads than on 1, for 5x the CPU time, on a shared
        # 2-CPU machine (benchmarks/render_bench.py). Same bytes either way.
        torch.set_num_threads(1)
    else:
        rasterizer = worker_rasterizer(options.image_size * options.supersample, options.renderer, raster_threads)
    if raster_threads:
        o3d.utility.set_max_threads(raster_threads)  # the normals (estimate_normals) run on Open3D's TBB pool
    try:
        with threadpool_limits(raster_threads):  # None: no limit
            prep = preprocess_options(entry, ref.class_name, image_size=options.image_size,
                                      max_points=options.max_points)
            sample = read_sample(entry, ref, prep)
            write_sample(out, row, render_sample(sample, options, rasterizer, threads=raster_threads))
    except InputFileError as exc:
        return str(exc)
    except ValueError as exc:
        return f"{ref.sample_id}: {exc}"
    finally:
        if raster_threads:
            o3d.utility.set_max_threads(open3d_threads)
        torch.set_num_threads(torch_threads)  # after threadpool_limits restored OpenMP's count, which torch shares
    return None


SCHEDULER_TIMEOUT = 30.0  # seconds to reach a --scheduler, and for it to have a worker
DASK_PORT = 8786  # a scheduler address without a port means dask's default


def check_scheduler(address: str, timeout: float | None = None) -> None:
    """PointADError in one line unless `address` is a dask scheduler address that answers as one within
    `timeout` seconds (SCHEDULER_TIMEOUT): a malformed address, a closed port, a silent service and a
    service of another kind (which dask's client would read as a message of any length: an allocation of
    exabytes, or a hang) are refused before a store is touched. Schemes other than tcp are only parsed."""
    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port
    timeout = SCHEDULER_TIMEOUT if timeout is None else timeout
    where = f"--scheduler {address}"
    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls", "inproc", "ucx", "ws", "wss"):
            raise ValueError(f"unknown scheme '{scheme}'")
        host, port = parse_host_port(location, default_port=DASK_PORT) if scheme == "tcp" else (None, None)
        if scheme == "tcp" and not host:
            raise ValueError("no host")
    except (ValueError, TypeError) as exc:
        raise PointADError(f"{where}: not a dask scheduler address ({exc}); give tcp://host:port") from None
    if scheme != "tcp":
        return
    try:
        with socket.create_connection((host, port), timeout=timeout) as probe:
            probe.settimeout(timeout)
            header = probe.recv(8, socket.MSG_WAITALL)  # a scheduler greets first: its handshake's byte count
    except TimeoutError:
        raise PointADError(f"{where}: nothing answered within {timeout:g} s (is a dask scheduler running "
                           "there?)") from None
    except OSError as exc:
        raise PointADError(f"{where}: cannot connect ({exc.strerror or exc}); start `dask scheduler` there "
                           "or leave --scheduler out for a local cluster") from None
    size = struct.unpack("<Q", header)[0] if len(header) == 8 else 0
    if not 0 < size < 2**20:
        raise PointADError(f"{where}: the service there is not a dask scheduler (it does not answer as one)")


SCALE_EXTRA = "pip install 'pointad-toolkit[scale]'"  # the optional dependencies of --backend dask


def require_dask() -> None:
    """PointADError in one line naming the extra to install when dask.distributed is missing."""
    try:
        import dask.distributed  # noqa: F401
    except ImportError as exc:
        raise PointADError(f"--backend dask needs dask and distributed ({first_line(exc, limit=120)}): "
                           f"{SCALE_EXTRA}") from None


def _connect(scheduler: str):
    """A dask Client of `scheduler` holding at least one worker; PointADError in one line otherwise."""
    from dask.distributed import Client
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
    except (OSError, ValueError, TimeoutError, MemoryError) as exc:
        raise PointADError(f"--scheduler {scheduler}: cannot connect ({first_line(exc, limit=200)})") from None
    try:
        client.wait_for_workers(1, timeout=SCHEDULER_TIMEOUT)
    except (OSError, TimeoutError):
        client.close()
        raise PointADError(f"--scheduler {scheduler}: no worker joined within {SCHEDULER_TIMEOUT:g} s; start "
                           f"`dask worker {scheduler}`") from None
    return client


def _run(tasks: list[tuple], workers: int, backend: str, scheduler: str | None, threads: int | None = None):
    """Yield (task, failure reason or None) as tasks finish, on the chosen executor; threads: each worker's
    budget (None: all CPUs for one local worker, WORKER_RASTER_THREADS for several or on dask)."""
    budget = threads or WORKER_RASTER_THREADS
    if backend == "dask":
        from dask.distributed import Client, LocalCluster, as_completed
        cluster = None if scheduler else LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                      dashboard_address=None)
        with (_connect(scheduler) if scheduler else Client(cluster)) as client:
            # a cluster's workers run in folders of their own: give them absolute store and dataset paths
            def absolute(out, row, entry, ref, options):
                root = None if entry.root is None else Path(entry.root).absolute()
                files = {role: Path(path).absolute() for role, path in ref.files.items()}
                store = out if is_remote(out) else Path(out).absolute()
                return store, row, replace(entry, root=root), replace(ref, files=files), options
            futures = {client.submit(render_row, *absolute(*task), budget, pure=False): task
                       for task in tasks}
            for future in as_completed(futures):
                yield futures[future], future.result()
        if cluster is not None:
            cluster.close()
    elif workers <= 1:
        for task in tasks:
            yield task, render_row(*task, threads)
    else:
        from joblib import Parallel, delayed, parallel_config
        # the coordinator's object-storage settings as they are now: loky keeps its workers between builds of
        # one process, and a worker started before they were set would meet the bucket without credentials
        # (new settings are new initargs, so loky starts new workers)
        with parallel_config(backend="loky", initializer=_end_with, initargs=(os.getpid(), storage_environment())):
            runner = Parallel(n_jobs=workers, return_as="generator_unordered")
            yield from runner(delayed(_task)(task, budget) for task in tasks)


def _end_with(coordinator: int, storage: dict[str, str] | None = None) -> None:
    """Loky worker initializer: take the coordinator's object-storage settings (`storage`, AWS_* variables,
    passed in memory as an inherited environment would be), and exit as soon as the coordinator process is gone.

    Loky workers outlive a coordinator killed alone (kill -9): they would finish the tasks already sent
    and then idle for loky's timeout (300 s). A watcher thread polls the parent pid instead (portable, and
    unlike PR_SET_PDEATHSIG not tied to the thread that started the worker). A row cut short this way
    stays incomplete, as after any kill, and the next build renders it.
    """
    set_storage_environment(storage or {})

    def watch():
        while os.getppid() == coordinator:
            time.sleep(0.2)
        os._exit(1)
    threading.Thread(target=watch, name="pointad-coordinator-watch", daemon=True).start()


def _task(task: tuple, threads: int) -> tuple[tuple, str | None]:
    return task, render_row(*task, threads)


def chosen_normals(options: RenderOptions, entry: DatasetEntry, out) -> RenderOptions:
    """`options` with its normals chosen where they are None: an existing store's recorded ones (a store made
    before the option reads open3d), so resuming or appending draws as the store did; else auto (grid for a
    cloud with a grid, open3d for the rest: `options.drawn_normals`). Grid for a dataset that is not organized
    is refused before any work."""
    normals = options.normals  # the user's: the store's own options check refuses one it was not drawn with
    if normals is None:
        try:
            normals = open_store(out).attrs.render.normals or "auto"
        except (PointADError, OSError):  # no store yet, or one that _open_or_create refuses in its own words
            normals = "auto"
    if normals == "grid" and entry.format not in ORGANIZED_FORMATS:
        raise PointADError(f"{out}: normals 'grid' need an organized dataset ({', '.join(ORGANIZED_FORMATS)}); "
                           f"{printable(entry.name)} is {entry.format}: use another --out or --normals")
    return replace(options, normals=normals)


def build_store(entry: DatasetEntry, out: Path, options: RenderOptions, *, classes=None, splits=None,
                point_size: float | None = None, workers: int = 1, backend: str = "loky",
                scheduler: str | None = None, progress=None, repair: bool = False,
                threads: int | None = None, single_writer: bool = False) -> BuildResult:
    """Render every selected sample of `entry` into the store at `out` (created or resumed).

    Holds the store's writer lock throughout (LockedError at once if another build holds it). Complete
    rows with a missing chunk are rendered again; with `repair`, also those with a chunk that does not
    decode (this reads every selected complete row). An OSError (disk full, permissions) is a one-line
    PointADError naming the path.
    progress: optional tqdm-like bar; its total is set once the rows to render are known.
    threads: each worker's thread budget (`render_row`; None: all CPUs for a single local worker, one each for
    several or on dask). The rows do not depend on it.
    out: a path or a URL on object storage (`shared/location.py`), where the workers write their rows
    directly; single_writer: the user's promise that no other writer runs, for a service without
    conditional writes (`shared/lease.py`).
    """
    out = as_location(out)
    if is_remote(out):  # the endpoint, bucket and credentials, said naming the store before any other request
        check_location(str(out))
    if backend == "dask":
        require_dask()
    if backend == "dask" and scheduler:
        check_scheduler(scheduler)  # before the store is created or locked
    options = chosen_normals(dataset_render_options(options, entry), entry, out)
    refs = list_samples(entry, classes, splits)
    if not refs:
        raise PointADError(f"{entry.root}: no samples for the selected classes and splits")
    try:
        with writer_lock(out, "render build", single_writer=single_writer):
            return _build_locked(entry, out, options, refs, point_size=point_size, workers=workers, backend=backend,
                                 scheduler=scheduler, progress=progress, repair=repair, threads=threads)
    except OSError as exc:
        raise os_error(exc, out) from None


def _build_locked(entry: DatasetEntry, out: Path, options: RenderOptions, refs: list[SampleRef], *, point_size,
                  workers, backend, scheduler, progress, repair, threads) -> BuildResult:
    damaged = []
    if not _is_new(out):
        require_writable(out)  # before --repair rewrites anything: v1 metadata is not v2's
    if repair and out.exists():
        damaged += [f"{array}: zarr.json unreadable, rewritten from the schema"
                    for array in rewrite_array_metadata(out)]
    _open_or_create(out, options)
    start_chunk_checks(out)
    todo, skipped = plan_rows(out, entry, refs, decode=repair, damaged=damaged)
    result = BuildResult(store=out, planned=len(refs), skipped=skipped, damaged=damaged, renderer=options.renderer)
    sizes = {}
    tasks = []
    for row, ref in todo:
        size = sizes.setdefault(ref.class_name, class_point_size(entry, ref.class_name, options, point_size))
        tasks.append((out, row, entry, ref, replace(options, point_size=size)))
    _record_point_sizes(out, entry, sizes)
    if progress is not None:
        progress.total = len(tasks)
        progress.refresh()
    started = time.perf_counter()
    for task, failure in _run(tasks, workers, backend, scheduler, threads):
        if failure is None:
            result.rendered += 1
        else:
            result.failures.append((task[3].sample_id, failure))
        if progress is not None:
            progress.update(1)
    result.seconds = time.perf_counter() - started
    _record(out, entry, result)
    consolidate(out)  # last, still under the lock: the copy of the arrays' metadata xarray opens the store by
    return result


def _record_point_sizes(out: Path, entry: DatasetEntry, sizes: dict) -> None:
    """Record the point size of each class about to be drawn (class -> size) in `render.point_sizes`, before
    any of its rows is drawn: every row in the store has its class's size recorded, even if the build is
    killed (RenderRecord.drawn reads it; design §4.1)."""
    if not sizes:
        return
    render = open_store(out).attrs.render
    point_sizes = {**render.point_sizes, **{f"{entry.name}/{c}": v for c, v in sizes.items()}}
    if point_sizes != render.point_sizes:
        update_attrs(out, render={**render.to_dict(), "point_sizes": point_sizes})


def _record(out: Path, entry: DatasetEntry, result: BuildResult) -> None:
    """Failures of this dataset replaced by this run's."""
    others = [f for f in open_store(out).attrs.failures if f["dataset"] != entry.name]
    mine = [{"dataset": entry.name, "sample_id": s, "reason": r} for s, r in result.failures]
    set_failures(out, others + mine)
