"""`train sweep`: the runs of a setting (auxiliary classes x seeds), training only the ones not done yet.

A sweep is the paper's protocol (design §6-7): one run per auxiliary class and seed, averaged by `eval
report`. Run directories are named as `train run` names them, `<runs_dir>/<dataset>-<class>-<seed>`, so a
sweep, a report and hand-made runs meet in the same folder. A run is
- done: its last checkpoint reached the sweep's epochs and its config.json holds the sweep's settings;
- partial: checkpoints below that epoch (an interrupted run): resumed;
- missing: no checkpoint: trained.
A run directory holding a run with other settings is an error, never silently reused or overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..shared.errors import ConfigError, PointADError
from ..shared.names import unique_component
from ..shared.registry import load_registry
from ..shared.store import open_store, store_fingerprint
from .loop import train
from .model.checkpoint import EPOCH_FILE, latest_checkpoint
from .options import TrainConfig
from .run_record import read_run_record

DEFAULT_SEEDS = (TrainConfig.seed,)
DEFAULT_RUNS_DIR = Path("runs")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its config (class and seed set) and directory."""

    config: TrainConfig
    run_dir: Path


def aux_classes(dataset: str) -> tuple[str, ...]:
    """The paper's auxiliary training classes of a dataset, from datasets.yaml (`aux_classes`)."""
    entry = load_registry().get(dataset)
    if entry is None or not entry.aux_classes:
        raise ConfigError(f"datasets.yaml lists no aux_classes for dataset '{dataset}'; name the classes "
                          f"with --classes")
    return entry.aux_classes


def store_dataset(store_path, dataset: str | None = None) -> str:
    """`dataset`, checked to be in the store, or the store's only dataset; PointADError listing them otherwise."""
    return open_store(store_path).choose_dataset(dataset)


def run_dir_for(runs_dir, dataset: str, class_name: str, seed: int) -> Path:
    """A run's directory: `<runs_dir>/<dataset>-<class>-<seed>` (also `train run`'s default --out), always one
    folder inside runs_dir: dataset and class names come from data (a store, datasets.yaml), so the name goes
    through `shared.names.unique_component` ('../x' or '/abs' never leave runs_dir)."""
    return Path(runs_dir) / unique_component(f"{dataset}-{class_name}-{seed}", fallback="run")


def _pairs(dataset: str, classes, seeds) -> list[tuple[str, int]]:
    """(class, seed) of a sweep, classes outer, each pair once (`--seeds 1,1` is one run, not the same folder
    trained twice); no classes -> the dataset's aux_classes, no seeds -> DEFAULT_SEEDS."""
    return list(dict.fromkeys((c, int(s)) for c in (tuple(classes or ()) or aux_classes(dataset))
                              for s in (tuple(seeds or ()) or DEFAULT_SEEDS)))


def plan_sweep(base: TrainConfig, classes, seeds, runs_dir) -> list[PlannedRun]:
    """One `PlannedRun` per (class, seed) (`_pairs` defaults); base gives every other setting (dataset required)."""
    if not base.dataset:
        raise ConfigError("a sweep needs --dataset (the dataset of the training classes)")
    return [PlannedRun(replace(base, class_name=c, seed=s), run_dir_for(runs_dir, base.dataset, c, s))
            for c, s in _pairs(base.dataset, classes, seeds)]


def trained_runs(runs_dir, dataset: str, classes=None, seeds=None) -> list[Path]:
    """The run directories of a sweep (`_pairs` defaults) when every one holds a checkpoint; PointADError
    naming the missing ones otherwise. Settings are not compared: the runs are used as trained."""
    dirs = [run_dir_for(runs_dir, dataset, c, s) for c, s in _pairs(dataset, classes, seeds)]
    missing = [d.name for d in dirs if latest_checkpoint(d) is None]
    if missing:
        raise PointADError(f"{runs_dir}: no trained run {', '.join(missing)}; add --train-missing or run "
                           f"`train sweep`")
    return dirs


def run_state(run: PlannedRun) -> str:
    """"done", "partial" or "missing" (module docstring); PointADError if the directory holds other settings."""
    latest = latest_checkpoint(run.run_dir)
    if latest is None:
        return "missing"
    recorded = read_run_record(run.run_dir)
    # The store is compared by content (its fingerprint), not by how its path was spelled.
    wanted, saved = run.config.identity(), recorded.train.identity()
    differ = sorted(k for k in wanted if saved[k] != wanted[k])
    if recorded.store_fingerprint != store_fingerprint(run.config.store):
        differ.append("store contents")
    if differ:
        raise PointADError(f"{run.run_dir}: holds a run with other settings (differs in: {', '.join(differ)}); "
                           f"choose another --runs-dir or move it away")
    epoch = int(EPOCH_FILE.search(latest.name).group(1))
    return "done" if epoch >= run.config.epochs else "partial"


def sweep(runs: list[PlannedRun], *, device="cpu", clip_weights=None, log=None, progress_factory=None,
          loader_workers: int = 0, rebuild_features: bool = False) -> list[Path]:
    """Train the missing runs and resume the partial ones, in order; return every run directory.

    Each run holds its directory's writer lock while it trains (`train`): a second sweep or `train run`
    on the same run is refused in one line.
    The states are checked for all runs before any training, so a conflicting directory fails fast.
    """
    say = log or (lambda line: None)
    states = [run_state(run) for run in runs]
    for run, state in zip(runs, states):
        if state == "done":
            say(f"{run.run_dir}: done, skipped")
            continue
        say(f"{run.run_dir}: {'resuming' if state == 'partial' else 'training'} "
            f"(class {run.config.class_name}, seed {run.config.seed})")
        train(run.config, run.run_dir, device=device, clip_weights=clip_weights, resume=state == "partial",
              log=log, progress_factory=progress_factory, loader_workers=loader_workers,
              rebuild_features=rebuild_features)
    return [run.run_dir for run in runs]
