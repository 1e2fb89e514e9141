"""`render` command group: datasets in, render store out (design §3). Thin: options -> library call -> print.

Defaults come from `RenderOptions` and `SyntheticSpec`; the rendering code (Open3D, torch) is imported by the
commands that use it, so `render --help` stays light.
"""

from __future__ import annotations

from pathlib import Path

import click
from tqdm import tqdm

from ..shared.command import (
    STORE,
    PointADGroup,
    default_of,
    list_option,
    number_type,
    range_type,
    single_writer_option,
    verbosity_option,
)
from ..shared.errors import PointADError
from ..shared.names import printable
from ..shared.registry import FORMATS, ORGANIZED_FORMATS, load_registry, resolve_dataset
from .options import LIGHTS, MASKS, NORMALS, RENDERERS, THREADS, VISIBILITY, WORKERS, RenderOptions
from .synthetic import SyntheticSpec
from .view_plan import PLANS


def _render(name):
    return default_of(RenderOptions, name)


def _range(name):
    return range_type(RenderOptions, name)


def _synthetic(name):
    return default_of(SyntheticSpec, name)


def _generation_bar(what: str):
    """A `progress(done, total)` callable that opens a tqdm bar at the first sample written (so none appears
    when the data is already there) and closes it at the last."""
    bar = None

    def step(done, total):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=f"generate {what}", unit="sample", leave=False)
        bar.update(1)
        if done == total:
            bar.close()
    return step


def _open_dataset(dataset, fmt, root):
    from .datasets import open_dataset
    return open_dataset(dataset, format=fmt, root=root, progress=_generation_bar(f"{dataset} (first use)"))


def dataset_options(func):
    """--dataset / --format / --root / --classes / --splits, shared by every command that reads data."""
    options = [
        click.option("--dataset", "-d", help="Name in datasets.yaml (e.g. mvtec3d, synthetic)."),
        click.option("--format", "fmt", type=click.Choice(FORMATS),
                     help="The dataset's on-disk format, for data with no registry entry (with --root)."),
        click.option("--root", type=click.Path(path_type=Path), help="Dataset folder (overrides the registry's root)."),
        list_option("--classes", help="Only these classes  [default: all]"),
        list_option("--splits", type=click.Choice(["train", "validation", "test"]),
                    help="Only these splits  [default: all]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.group(cls=PointADGroup)
@verbosity_option
def render():
    """Render datasets into a store; generate and inspect datasets."""


@render.command()
def datasets():
    """List the datasets of the registry (datasets.yaml) and whether their data is present."""
    for name, entry in load_registry().items():
        if entry.generate is not None:
            where = "built in (generated on first use)"
        else:
            root = resolve_dataset(name, registry={name: entry}).root
            where = f"{root} ({'present' if root.is_dir() else 'missing'})"
        click.echo(f"{name:<22} {entry.format:<11} {where}")


@render.command()
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to write the dataset into.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=_synthetic("format"), show_default=True,
              help="The dataset's on-disk format to write.")
@click.option("--seed", default=_synthetic("seed"), type=range_type(SyntheticSpec, "seed"), show_default=True,
              help="Seed of the generator (same seed, same data).")
@list_option("--classes", default=_synthetic("classes"), show_default=True, help="Object classes to generate.")
@list_option("--defects", default=_synthetic("defects"), show_default=True, help="Defect types of the test samples.")
@click.option("--train", "n_train", default=_synthetic("train"), type=range_type(SyntheticSpec, "train"), show_default=True,
              help="Good training samples per class.")
@click.option("--validation", "n_validation", default=_synthetic("validation"),
              type=range_type(SyntheticSpec, "validation"), show_default=True,
              help="Good validation samples per class.")
@click.option("--test-good", default=_synthetic("test_good"), type=range_type(SyntheticSpec, "test_good"), show_default=True,
              help="Good test samples per class.")
@click.option("--per-defect", default=_synthetic("per_defect"), type=range_type(SyntheticSpec, "per_defect"),
              show_default=True,
              help="Test samples per class and defect type.")
@click.option("--grid", default=_synthetic("grid"), type=range_type(SyntheticSpec, "grid"), show_default=True,
              help="Scanner grid size in pixels (0 = the format's default).")
@click.option("--overwrite", is_flag=True,
              help="Replace an output folder holding a synthetic dataset this command wrote (never other files).")
def synth(out, fmt, seed, classes, defects, n_train, n_validation, test_good, per_defect, grid, overwrite):
    """Write a deterministic synthetic dataset in a real on-disk format."""
    from . import synthetic
    spec = SyntheticSpec(format=fmt, seed=seed, classes=classes or (), defects=defects or (), train=n_train,
                         validation=n_validation, test_good=test_good, per_defect=per_defect, grid=grid)
    synthetic.generate(out, spec, overwrite=overwrite, progress=_generation_bar(str(out)))
    click.echo(f"wrote {len(synthetic.plan(spec))} {fmt} samples of {len(classes)} classes to {out}")


@render.command()
@dataset_options
@click.option("--out", "-o", type=STORE, default="renders.zarr", show_default=True,
              help="Store to create, resume or append to: a path or a URL (s3://bucket/renders.zarr).")
@click.option("--views", type=_range("views"), default=_render("views"), show_default=True,
              help="Views per sample (any K in range with the paper plan).")
@click.option("--view-plan", type=click.Choice(PLANS), default=_render("view_plan"), show_default=True,
              help="paper: K views on a circle (the paper's); pointad-code: the released code's views.")
@click.option("--angle-shift", type=_range("angle_shift"), default=_render("angle_shift"), show_default=True,
              help="Radians added to every view angle.")
@click.option("--image-size", type=_range("image_size"), default=_render("image_size"), show_default=True,
              help="Side of a view in pixels.")
@click.option("--supersample", type=_range("supersample"), default=_render("supersample"), show_default=True,
              help="Render at this multiple of the image size (image size x supersample at most 8192).")
@click.option("--max-points", type=_range("max_points"), default=_render("max_points"), show_default=True,
              help="Points per sample the store holds (a sample with more is refused).")
@click.option("--point-size", type=_range("point_size"),
              help=f"Point size in supersampled pixels  [default: datasets.yaml's, else {_render('point_size')}]")
@click.option("--light", type=click.Choice(list(LIGHTS)), default=_render("light"), show_default=True,
              help="Shading: on, off, + (stronger) or - (weaker).")
@click.option("--downsample", type=_range("downsample"), default=_render("downsample"), show_default=True,
              help="Fraction of points kept (farthest-point).")
@click.option("--visibility", type=click.Choice(VISIBILITY), default=_render("visibility"), show_default=True,
              help="nearest: the nearest point per pixel is visible (paper); surface: all within a tolerance of it.")
@click.option("--knn", type=_range("knn"), default=_render("knn"), show_default=True,
              help="Neighbours in the smoothing graph.")
@click.option("--masks", type=click.Choice(MASKS), default=_render("masks"),
              help="Ground-truth mask views: splat the anomalous points (no second capture) or render them "
                   "[default: render with filament, else splat].")
@click.option("--renderer", type=click.Choice(RENDERERS), default=_render("renderer"), show_default=True,
              help="legacy: Open3D Visualizer (EGL offscreen; the reference, for exact paper reproduction); "
                   "filament: OffscreenRenderer (GPU driver); splat: legacy's points, depth test and lights "
                   "emulated with torch, no Open3D window (several times faster; see render/splat.py).")
@click.option("--normals", type=click.Choice(NORMALS), default=_render("normals"), show_default=True,
              help="Normals that shade the views: open3d (Open3D's search, the paper's); grid (a plane fitted to "
                   "the grid cells within Open3D's radius: organized clouds only; what the model sees changes by "
                   "under a tenth of a one-pixel shift's); graph (a plane fitted to each point's k-NN graph row; "
                   "its views differ more); auto (grid for a cloud with a grid: mvtec3d, eyecandies; open3d for "
                   "others). Recorded in the store  [default: an existing store's, else auto].")
@click.option("--workers", "-j", type=number_type(int, WORKERS), default=1, show_default=True,
              help="Worker processes.")
@click.option("--threads", type=number_type(int, THREADS), default=None,
              help="Threads of each worker (Mesa, Open3D, BLAS, the KD-tree queries, the k-NN graph beside the draw) "
                   "[default: one per CPU with one local worker, else 1]. The store does not depend on it.")
@click.option("--backend", type=click.Choice(["loky", "dask"]), default="loky", show_default=True,
              help="Where workers run: local processes (joblib/loky) or a dask.distributed cluster.")
@click.option("--scheduler",
              help="dask.distributed scheduler address, e.g. tcp://host:8786, with --backend dask  [default: a local "
                   "cluster]")
@click.option("--keep-going", is_flag=True, help="Exit 0 even if some samples fail.")
@click.option("--repair", is_flag=True,
              help="Also render again the complete rows with a chunk that does not decode (reads every row; "
                   "rows with a missing chunk are rendered again on any run).")
@single_writer_option
def build(dataset, fmt, root, classes, splits, out, views, view_plan, angle_shift, image_size, supersample,
          max_points, point_size, light, downsample, visibility, knn, masks, renderer, normals, workers, threads,
          backend, scheduler, keep_going, repair, single_writer):
    """Render a dataset into a resumable Zarr store (views, masks, projections, visibility)."""
    from ..shared.threads import available
    from .build import build_store
    if scheduler is not None and backend != "dask":
        raise click.UsageError("--scheduler is a dask scheduler's address: give it with --backend dask")
    if threads is not None and backend == "loky" and max(workers, 1) * threads > available():
        click.echo(f"warning: {max(workers, 1)} worker(s) x --threads {threads} is more than the {available()} CPUs "
                   "this process may use; oversubscribed threads render slower", err=True)
    entry = _open_dataset(dataset, fmt, root)
    if normals == "grid" and entry.format not in ORGANIZED_FORMATS:
        raise PointADError(f"--normals grid needs an organized dataset ({', '.join(ORGANIZED_FORMATS)}); "
                           f"{printable(entry.name)} is {entry.format}: use --normals open3d or graph")
    options = RenderOptions(views=views, view_plan=view_plan, angle_shift=angle_shift, image_size=image_size,
                            supersample=supersample, max_points=max_points, light=light, downsample=downsample,
                            visibility=visibility, knn=knn, renderer=renderer, masks=masks, normals=normals)
    with tqdm(desc=f"render {entry.name}", unit="sample") as bar:
        result = build_store(entry, out, options, classes=classes or None, splits=splits or None, point_size=point_size,
                             workers=workers, backend=backend, scheduler=scheduler, progress=bar, repair=repair,
                             threads=threads, single_writer=single_writer)
    click.echo(result.summary())
    if result.failures and not keep_going:
        raise SystemExit(1)


@render.command()
@click.argument("store", type=STORE)
def info(store):
    """Summarise a render store: options, counts per dataset/class/split, failures, size."""
    from ..shared.store import open_store
    from .verify import store_summary
    click.echo(store_summary(open_store(store)))  # names from data printed escaped (printable)


@render.command()
@click.argument("store", type=STORE)
def verify(store):
    """Check a render store: schema, completeness, projections/visibility recomputed from xyz, and the
    images of a few rows against a fresh render with the recorded renderer."""
    from ..shared.store import open_store
    from .verify import verify_store
    opened = open_store(store)
    with tqdm(total=len(opened.indices()), desc="verify", unit="sample", leave=False) as bar:
        problems = verify_store(opened, progress=bar)
    for problem in problems:
        click.echo(f"problem: {printable(problem)}")
    click.echo(f"{store}: {len(opened.indices())} complete samples checked, {len(problems)} problem(s)")
    if problems:
        raise SystemExit(1)


@render.command()
@click.argument("store", type=STORE)
@single_writer_option
def migrate(store, single_writer):
    """Upgrade a schema v1 store to v2 in place: dimension names, array attributes, cameras (design §4)."""
    from .migrate import migrate_store
    click.echo(migrate_store(store, single_writer=single_writer))


@render.command()
@click.argument("store", type=STORE)
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="HDF5 file to write (e.g. renders.h5); replaces only an earlier export.")
def export(store, out):
    """Write the HDF5 twin of a store: same paths, dtypes, attributes and chunks, gzip-compressed."""
    from ..shared.h5store import export_h5
    rows = export_h5(store, out)
    click.echo(f"wrote {out}: {rows} rows of {store}")


@render.command()
@click.argument("store", type=STORE)
@click.option("--sample", "sample_id", required=True, help="Sample id (as in 'render info') or row number.")
@click.option("--dataset", help="Dataset of the sample, when several datasets share a store.")
@click.option("--out", type=click.Path(path_type=Path), help="PNG to write (default: <sample>.png here).")
def show(store, sample_id, dataset, out):
    """Write a PNG contact sheet of one sample: views, rendered masks, visible points overlaid."""
    from ..shared.io import write_png
    from ..shared.store import open_store
    from .contact_sheet import contact_sheet
    opened = open_store(store)
    row = _find_row(opened, sample_id, dataset)
    out = out or Path(sample_id.replace("/", "_") + ".png")
    write_png(out, contact_sheet(opened.sample(row)))
    click.echo(f"wrote {out}")


def _find_row(store, sample_id: str, dataset: str | None) -> int:
    if sample_id.isdigit() and int(sample_id) < len(store):
        return int(sample_id)
    rows = [i for i in range(len(store)) if store.identity(i)["sample_id"] == sample_id
            and (dataset is None or store.identity(i)["dataset"] == dataset)]
    if len(rows) != 1:
        raise PointADError(f"{store.path}: {'no' if not rows else 'several'} sample(s) with id {sample_id!r}"
                           + ("" if rows else "; see 'render info'") + (" (pass --dataset)" if rows else ""))
    return rows[0]


@render.command()
@dataset_options
@click.option("--keep-going", is_flag=True, help="Exit 0 even if some samples fail.")
def scan(dataset, fmt, root, classes, splits, keep_going):
    """Read and preprocess every sample of a dataset; print counts and any unreadable samples (a folder
    dataset also says which files it found per suffix, and which it left out and why)."""
    from collections import Counter, defaultdict

    import numpy as np

    from ..shared.errors import InputFileError
    from .readers import list_samples, read_sample, survey
    entry = _open_dataset(dataset, fmt, root)
    refs = list_samples(entry, classes or None, splits or None)
    found, skipped = survey(entry, classes or None)
    stats = defaultdict(Counter)
    points = defaultdict(list)
    failures = []
    for ref in tqdm(refs, desc=f"scan {entry.name}", unit="sample", leave=False):
        try:
            sample = read_sample(entry, ref)
        except InputFileError as exc:
            failures.append(str(exc))
            continue
        key = (sample.class_name, sample.split)
        stats[key]["samples"] += 1
        stats[key]["anomalous"] += sample.label
        stats[key]["anomalous_points"] += int(sample.point_labels.sum())
        points[key].append(sample.n_points)
    click.echo(f"dataset {entry.name} ({entry.format}) at {entry.root}: {len(refs)} samples")
    for line in found:
        click.echo(f"found: {printable(line)}")
    click.echo(f"{'class':<20} {'split':<11} {'samples':>7} {'anomalous':>9} {'mean points':>11} {'anom. pts %':>11}")
    for (class_name, split), counts in stats.items():
        total = sum(points[(class_name, split)])
        click.echo(f"{printable(class_name):<20} {split:<11} {counts['samples']:>7} {counts['anomalous']:>9} "
                   f"{np.mean(points[(class_name, split)]):>11.0f} {100 * counts['anomalous_points'] / total:>11.2f}")
    for line in skipped:
        click.echo(f"skipped: {printable(line)}", err=True)
    for failure in failures:
        click.echo(f"failed: {printable(failure)}", err=True)
    click.echo(f"{len(refs) - len(failures)} of {len(refs)} samples read, {len(failures)} failed"
               + (f", {len(skipped)} file(s) or folder(s) skipped" if skipped else ""))
    if failures and not keep_going:
        raise SystemExit(1)


def main():
    render()


if __name__ == "__main__":
    main()
