"""`render` command group: datasets in, render store out (SPEC 3). Thin: options -> library call -> print."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from render import synthetic
from render.datasets import open_dataset
from render.readers import list_samples, read_sample
from render.synthetic.scene import CLASSES, DEFECTS
from shared.cli import PointADGroup, verbosity_option
from shared.errors import InputFileError
from shared.registry import FORMATS, load_registry, resolve_dataset


def _csv(value):
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def dataset_options(func):
    """--dataset / --format / --root / --classes / --splits, shared by every command that reads data."""
    options = [
        click.option("--dataset", "-d", help="Name in datasets.yaml (e.g. mvtec3d, synthetic)."),
        click.option("--format", "fmt", type=click.Choice(FORMATS), help="On-disk format, for data with no registry entry."),
        click.option("--root", type=click.Path(path_type=Path), help="Dataset folder (overrides the registry's root)."),
        click.option("--classes", callback=lambda c, p, v: _csv(v), help="Comma-separated classes (default: all)."),
        click.option("--splits", callback=lambda c, p, v: _csv(v), help="Comma-separated splits: train,validation,test."),
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
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="mvtec3d", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--classes", default=",".join(CLASSES), show_default=True, callback=lambda c, p, v: _csv(v))
@click.option("--defects", default=",".join(DEFECTS), show_default=True, callback=lambda c, p, v: _csv(v))
@click.option("--train", "n_train", default=2, show_default=True, help="Good training samples per class.")
@click.option("--validation", "n_validation", default=1, show_default=True, help="Good validation samples per class.")
@click.option("--test-good", default=2, show_default=True, help="Good test samples per class.")
@click.option("--per-defect", default=1, show_default=True, help="Test samples per class and defect type.")
@click.option("--grid", default=0, show_default=True, help="Scanner grid size in pixels (0 = the format's default).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
def synth(out, fmt, seed, classes, defects, n_train, n_validation, test_good, per_defect, grid, overwrite):
    """Write a deterministic synthetic dataset in a real on-disk format."""
    spec = synthetic.SyntheticSpec(format=fmt, seed=seed, classes=tuple(classes), defects=tuple(defects),
                                   train=n_train, validation=n_validation, test_good=test_good,
                                   per_defect=per_defect, grid=grid)
    synthetic.generate(out, spec, overwrite=overwrite)
    click.echo(f"wrote {len(synthetic.plan(spec))} {fmt} samples of {len(classes)} classes to {out}")


@render.command()
@dataset_options
@click.option("--keep-going", is_flag=True, help="Exit 0 even if some samples fail.")
def scan(dataset, fmt, root, classes, splits, keep_going):
    """Read and preprocess every sample of a dataset; print counts and any unreadable samples."""
    entry = open_dataset(dataset, format=fmt, root=root)
    refs = list_samples(entry, classes, splits)
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
    click.echo(f"{'class':<20} {'split':<11} {'samples':>7} {'anomalous':>9} {'mean points':>11} {'anom. pts %':>11}")
    for (class_name, split), counts in stats.items():
        total = sum(points[(class_name, split)])
        click.echo(f"{class_name:<20} {split:<11} {counts['samples']:>7} {counts['anomalous']:>9} "
                   f"{np.mean(points[(class_name, split)]):>11.0f} {100 * counts['anomalous_points'] / total:>11.2f}")
    for failure in failures:
        click.echo(f"failed: {failure}", err=True)
    if failures and not keep_going:
        raise SystemExit(1)


def main():
    render()
