"""Peak memory and time of `train run` and `eval report` against the number of samples N (issue 9, design §9).

Builds (or reuses, from --dir) synthetic render stores of N = 250, 500, 1000, 2000 rows with a small
point budget: half the rows of class cookie (the training class), half of class torus (tested one-vs-rest).
Rendering 2,000 samples would take an hour on two cores, so only a few samples per class are rendered
(`render build`, real Open3D) and each store's rows are copies of them under their own sample ids,
written through the store's writer API (create_store / append_samples / write_sample): every row is a
real rendering, complete and valid (`render verify` passes), only repeated.

Then, each in a child process whose peak resident memory (ru_maxrss of that child, from os.wait4) is
read when it exits: `train features` (the feature cache of the training rows, which both runs below use),
`train run` (tiny model, random weights, 2 epochs) with
`--cache-memory` (default 32MiB, less than the training data of every N here: memory stays flat in N),
the same run with the default budget (8GiB: everything kept, memory grows with N; its epoch 2 is the
baseline of the bounded run's, timed in the same invocation: epoch 1 reads everything either way, epoch 2
is served from memory as far as the budget allows), and `eval report` (the bounded run, one-vs-rest,
protocol points). Prints a markdown table.

    .venv/bin/python benchmarks/scale_bench.py --dir /tmp/scale          # N = 250 500 1000 2000
    .venv/bin/python benchmarks/scale_bench.py --dir /tmp/scale --sizes 250,500 --cache-memory 16MiB

The tiny model needs 336 px views; the point budget (--max-points) and the views (--views) set the size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

DATASET = "synthetic"
CLASSES = ("cookie", "torus")  # cookie is trained on; torus is the one-vs-rest test class


def base_store(folder: Path, views: int, max_points: int) -> Path:
    """A rendered store of a few test samples per class (real `build_store`), made once in `folder`."""
    from pointad.render import synthetic
    from pointad.render.build import build_store
    from pointad.render.datasets import open_dataset
    from pointad.render.options import RenderOptions
    out = folder / "base.zarr"
    if out.exists():
        return out
    data = synthetic.generate(folder / DATASET, synthetic.SyntheticSpec(
        classes=CLASSES, train=0, validation=0, test_good=2, per_defect=1), overwrite=True)
    # farthest-point downsampling brings the synthetic clouds (19k to 35k points) under the point budget
    options = RenderOptions(views=views, image_size=336, supersample=1, max_points=max_points, point_size=2,
                            downsample=0.05)
    result = build_store(open_dataset(format="mvtec3d", root=data), out, options, splits=["test"], workers=2)
    if result.failures:
        raise SystemExit(f"base store: {result.failures}")
    return out


def scaled_store(base: Path, out: Path, n: int) -> Path:
    """A store of n rows, n/2 per class, each a copy of a base row of its class under a new sample id."""
    from pointad.shared.store import SAMPLE_FIELDS, SampleArrays, open_store
    from pointad.shared.store_write import append_samples, create_store, write_sample
    if out.exists():
        store = open_store(out)
        if len(store) == n and store.complete.all():
            return out
        shutil.rmtree(out)  # our own unfinished copy from an interrupted run
    source = open_store(base)
    create_store(out, source.attrs)
    plan = []
    for class_name in CLASSES:
        rows = source.indices(class_name=class_name)
        for k in range(n // len(CLASSES)):
            row = int(rows[k % len(rows)])
            identity = source.identity(row)
            stem = identity["sample_id"].rsplit("/", 1)[0]
            plan.append((row, identity | {"sample_id": f"{stem}/copy-{k:05d}"}))
    targets = append_samples(out, [identity for _, identity in plan])
    arrays = {}
    for target, (row, _) in zip(targets, plan):
        if row not in arrays:
            sample = source.sample(row)
            arrays[row] = SampleArrays(**{name: getattr(sample, name) for name in SAMPLE_FIELDS})
        write_sample(out, target, arrays[row])
    return out


def measure(command: list[str], log: Path) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a child process; exits with its output if it fails."""
    started = time.perf_counter()
    with open(log, "wb") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({child.returncode}):\n{log.read_text()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="Folder for the stores and runs (reused if present; default: "
                                                 "a temporary folder, removed at the end).")
    parser.add_argument("--sizes", default="250,500,1000,2000", help="Comma-separated N (rows per store).")
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--max-points", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cache-memory", default="32MiB", help="`train run --cache-memory` of the bounded run.")
    parser.add_argument("--full-cache-memory", default="8GiB", help="... of the keep-everything baseline.")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    folder = args.dir or Path(__import__("tempfile").mkdtemp(prefix="pointad-scale-"))
    # the bench deletes its own stores and runs in --dir: only in a folder it made (marked) or an empty one
    marker = folder / ".pointad-scale-bench"
    if folder.is_dir() and any(folder.iterdir()) and not marker.exists():
        raise SystemExit(f"{folder}: not empty and not a scale_bench folder; give a new or empty --dir")
    folder.mkdir(parents=True, exist_ok=True)
    marker.touch()
    python = sys.executable
    try:
        started = time.perf_counter()
        base = base_store(folder, args.views, args.max_points)
        print(f"base store {base} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        table = []
        for n in sizes:
            started = time.perf_counter()
            store = scaled_store(base, folder / f"n{n}.zarr", n)
            made = time.perf_counter() - started
            features = folder / f"features-n{n}.zarr"  # built once (`train features`), used by both runs
            shutil.rmtree(features, ignore_errors=True)  # ours, from an earlier invocation
            built = measure([python, "-m", "pointad.train.cli", "features", "--store", str(store), "--class",
                             CLASSES[0], "--model", "tiny", "--batch-size", str(args.batch_size), "--device", "cpu",
                             "--out", str(features)], folder / f"features-n{n}.log")
            runs = {}
            for name, budget in (("bounded", args.cache_memory), ("full", args.full_cache_memory)):
                run = folder / f"run-n{n}-{name}"
                shutil.rmtree(run, ignore_errors=True)  # our run folder from an earlier invocation: train afresh
                seconds, peak = measure([python, "-m", "pointad.train.cli", "run", "--store", str(store), "--class",
                                         CLASSES[0], "--model", "tiny", "--epochs", "2", "--batch-size",
                                         str(args.batch_size), "--device", "cpu", "--cache-memory", budget,
                                         "--features", str(features), "--out", str(run)],
                                        folder / f"train-n{n}-{name}.log")
                from pointad.train.run_record import read_metrics
                epoch_seconds = [row.seconds for row in read_metrics(run)]
                runs[name] = (run, seconds, peak, epoch_seconds)
            report = measure([python, "-m", "pointad.eval.cli", "report", "--store", str(store), "--checkpoints",
                              str(runs["bounded"][0]), "--dataset", DATASET, "--device", "cpu", "--batch-size",
                              str(args.batch_size), "--out", str(folder / f"report-n{n}.md")],
                             folder / f"eval-n{n}.log")
            table.append((n, built, runs["bounded"][1:], runs["full"][1:], report))
            print(f"N={n}: store {made:.0f} s, features {built[0]:.0f} s {built[1]:.0f} MiB, "
                  f"train {runs['bounded'][1]:.0f} s {runs['bounded'][2]:.0f} MiB "
                  f"(keep-all {runs['full'][2]:.0f} MiB), eval {report[0]:.0f} s {report[1]:.0f} MiB",
                  file=sys.stderr, flush=True)
        print(f"\nviews {args.views} x 336 px, max points {args.max_points}, tiny model, CPU; train: 2 epochs on "
              f"the N/2 {CLASSES[0]} rows, --cache-memory {args.cache_memory} (keep-all: {args.full_cache_memory}); "
              f"eval: one-vs-rest on the N/2 {CLASSES[1]} rows. Epoch 2 ratio = bounded / keep-all, same run.\n")
        print("| N | features peak MiB | train peak MiB | epoch 1 s | epoch 2 s | keep-all peak MiB | keep-all epoch 2 s "
              "| epoch 2 ratio | eval s | eval peak MiB |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, (_, features_peak), (_, peak, epochs), (_, full_peak, full_epochs), (eval_s, eval_mib) in table:
            print(f"| {n} | {features_peak:.0f} | {peak:.0f} | {epochs[0]:.1f} | {epochs[1]:.1f} | {full_peak:.0f} "
                  f"| {full_epochs[1]:.1f} | {epochs[1] / full_epochs[1]:.2f} | {eval_s:.1f} | {eval_mib:.0f} |")
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
