"""`train` command group (design §6): `train run` learns the prompts; `train features` fills the cache;
`train import-released` turns the authors' released prompt checkpoints into runs."""

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
    said,
    verbosity_option,
)
from .options import LOADER_WORKERS, PROMPTS, TrainConfig


def _default(name):
    return default_of(TrainConfig, name)


def _range(name):
    return range_type(TrainConfig, name)


def layers_option(help="Tapped layers, 1-based, e.g. 6,12,18,24  [default: the model's]"):
    return list_option("--layers", type=_range("layers"), default=_default("layers"), help=help)


def dpam_option(command):
    return click.option("--dpam-start", type=_range("dpam_start"), default=_default("dpam_start"),
                        help="DPAM dual path in blocks N..last, 0 = off  [default: the model's]")(command)


def seed_option(help):
    return click.option("--seed", type=_range("seed"), default=_default("seed"), show_default=True, help=help)


def model_option(help="vit-l-14-336, tiny (random weights), or auto (ViT-L if its weights are present, else tiny)."):
    return click.option("--model", default=_default("model"), show_default=True, help=help)


def clip_weights_option(command):
    return click.option("--clip-weights", type=click.Path(path_type=Path),
                        help="OpenAI ViT-L/14@336 weights file  [default: found in the weights cache]")(command)


SIZE_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def _bytes(ctx, param, value):
    """'8GiB', '512MiB', '0' or a plain number of bytes -> int, within TrainConfig.cache_memory's range."""
    import re
    from fractions import Fraction

    from ..shared.limits import bound
    found = re.fullmatch(r"\s*(\d{1,30}(?:\.\d{0,30})?)\s*([a-z]*)\s*", str(value).lower())
    if found is None or found.group(2) not in SIZE_UNITS:
        raise click.BadParameter(f"{value!r}: give a size such as 8GiB, 512MiB or 0 (units B, KiB, MiB, GiB, TiB)")
    size = int(Fraction(found.group(1)) * SIZE_UNITS[found.group(2)])  # exact: no float overflow or rounding
    limit = bound(TrainConfig, "cache_memory")[1].hi
    if size > limit:
        raise click.BadParameter(f"{value!r}: at most {limit // SIZE_UNITS['tib']}TiB")
    return size


def _bar(total, desc):
    return tqdm(total=total, desc=desc, unit="sample", leave=False)


@click.group(cls=PointADGroup)
@verbosity_option
def train():
    """Learn PointAD prompts from a render store (frozen CLIP)."""


def training_options(command):
    """The options every training command shares (the `TrainConfig` fields but class, seed, dataset)."""
    options = [
        click.option("--store", required=True, type=STORE,
                     help="Render store from 'render build' (a path or a URL)."),
        click.option("--epochs", type=_range("epochs"), default=_default("epochs"), show_default=True,
                     help="Training epochs."),
        click.option("--batch-size", type=_range("batch_size"), default=_default("batch_size"), show_default=True,
                     help="Samples per batch."),
        click.option("--lr", type=_range("lr"), default=_default("lr"), show_default=True,
                     help="Adam learning rate (a run whose loss turns NaN or infinite stops with an error)."),
        model_option(),
        clip_weights_option,
        layers_option(),
        dpam_option,
        click.option("--prompt", type=click.Choice(PROMPTS), default=_default("prompt"), show_default=True,
                     help="agnostic: object-agnostic prompts (PointAD); coop: the class name in them (PointAD-CoOp)."),
        list_option("--loss-terms", default=tuple(_default("loss_terms").split(",")), show_default=True,
                    help="Loss terms: all, or some of 3d_global, 3d_local, 2d_global, 2d_local."),
        click.option("--no-feature-cache", is_flag=True, help="Re-run the vision tower every epoch."),
        click.option("--rebuild-features", is_flag=True,
                     help="Replace a feature cache made for another model, weights, taps or store (else refused)."),
        click.option("--cache-memory", default=f"{_default('cache_memory') / 2**30:g}GiB", show_default=True,
                     callback=_bytes,
                     help="Features and samples kept in memory between epochs (both together, e.g. 1GiB; 0 = "
                          "none; at most 1024TiB); the rest is re-read each epoch, so memory stays bounded whatever "
                          "the store's size."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
        click.option("--loader-workers", type=number_type(int, LOADER_WORKERS), default=0, show_default=True,
                     help="DataLoader worker processes reading the store (0 = read in the training process)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def base_config(**options):
    """`TrainConfig` from command options, `--model auto` resolved (said loudly when it falls back to tiny)."""
    from .model.weights import resolve_auto_model  # torch: only when a model is resolved
    from .options import config_from_options
    model = said(resolve_auto_model(options["model"], options.get("clip_weights")))
    return config_from_options(**{**options, "model": model})


@train.command()
@training_options
@click.option("--class", "class_name",
              help="Auxiliary class to train on (its test split)  [default: the dataset's first aux_classes entry "
                   "in datasets.yaml]")
@click.option("--dataset", help="Dataset in the store  [default: the store's only dataset]")
@seed_option("Seed of the prompt initialisation, the data order and a random-weights model.")
@click.option("--features", type=click.Path(path_type=Path), help="Feature cache to use (default: OUT/features.zarr).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Run directory: new, empty, or a run to --resume  [default: runs/<dataset>-<class>-<seed>, "
                   "characters other than letters, digits, '.', '_' and '-' replaced]")
@click.option("--resume", is_flag=True, help="Continue from the last finished epoch in --out.")
def run(features, out, resume, **options):
    """Train the prompts on one class of a render store."""
    from dataclasses import replace

    from .distributed import distributed_session, process_rank
    from .loop import train as train_loop
    from .model.device import resolve_device
    from .sweep import DEFAULT_RUNS_DIR, aux_classes, run_dir_for, store_dataset
    rank = process_rank()  # a half-set torchrun environment, or an unknown device: refused before any work
    resolve_device(options["device"])
    config = base_config(**options)  # missing weights stop the run before anything else
    chosen = []  # the defaults taken, said in the first lines
    if config.dataset is None:
        config = replace(config, dataset=store_dataset(config.store))
        chosen.append(f"dataset {config.dataset} (the store's only dataset)")
    if not config.class_name:
        config = replace(config, class_name=aux_classes(config.dataset)[0])
        chosen.append(f"class {config.class_name} (first aux_classes entry of {config.dataset} in datasets.yaml)")
    if out is None:
        out = run_dir_for(DEFAULT_RUNS_DIR, config.dataset, config.class_name, config.seed)
        chosen.append(f"out {out}")
    if chosen and rank == 0:
        click.echo("train run: " + "; ".join(chosen), err=True)
    with distributed_session(options["device"]) as (rank, device_name):
        target = resolve_device(device_name)
        say = click.echo if rank == 0 else (lambda line: None)
        result = train_loop(config, out, device=target, clip_weights=options["clip_weights"], resume=resume,
                            log=say, progress_factory=_bar if rank == 0 else None, feature_path=features,
                            loader_workers=options["loader_workers"], rebuild_features=options["rebuild_features"])
        say(f"{out}: {len(result.epochs_run)} epoch(s) run on {target}, model {_model_label(out)}")


@train.command()
@training_options
@click.option("--dataset", required=True, help="Dataset of the training classes (its name in the store).")
@list_option("--classes", help="Training classes  [default: the dataset's aux_classes in datasets.yaml, the "
                               "paper's]")
@list_option("--seeds", type=_range("seed"), help=f"Seeds of the runs  [default: {_default('seed')}]")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(path_type=Path),
              help="Run directories go here as <dataset>-<class>-<seed>.")
def sweep(classes, seeds, runs_dir, **options):
    """Train every (class, seed) run of a setting that is not done yet; finished runs are skipped."""
    from .model.device import resolve_device
    from .sweep import plan_sweep
    from .sweep import sweep as run_sweep
    target = resolve_device(options["device"])
    runs = plan_sweep(base_config(**options), classes, seeds, runs_dir)
    done = run_sweep(runs, device=target, clip_weights=options["clip_weights"], log=click.echo,
                     progress_factory=_bar, loader_workers=options["loader_workers"],
                     rebuild_features=options["rebuild_features"])
    click.echo(f"{len(done)} run(s) ready in {runs_dir}: " + " ".join(p.name for p in done))


def _model_label(run_dir: Path) -> str:
    from .run_record import read_run_record
    return read_run_record(run_dir).model.label


@train.command()
@click.option("--store", required=True, type=STORE, help="Render store from 'render build' (a path or a URL).")
@model_option()
@clip_weights_option
@layers_option()
@dpam_option
@click.option("--dataset", help="Only this dataset's rows (default: all).")
@click.option("--class", "class_name", help="Only this class's rows (default: all).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Feature cache to write (a Zarr group).")
@click.option("--batch-size", type=_range("batch_size"), default=_default("batch_size"), show_default=True,
              help="Samples per batch.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@seed_option("Seed of a random-weights model (tiny): the --seed of the runs that will use the cache.")
@click.option("--rebuild-features", is_flag=True,
              help="Replace a cache at --out made for another model, weights, taps, store or rows (else refused).")
def features(store, model, clip_weights, layers, dpam_start, dataset, class_name, out, batch_size, device, seed,
             rebuild_features):
    """Precompute the frozen vision features of a store's renderings (the training cache).

    An up-to-date cache at --out is kept as it is; anything at --out that is not a feature cache is refused."""
    from ..shared.store import open_store
    from .features import compute_features, recorded_identity
    from .model.backbone import load_backbone
    from .model.device import resolve_device
    from .model.model_config import check_image_size, model_config_for
    from .model.weights import resolve_auto_model  # torch: only when a model is resolved
    config = model_config_for(said(resolve_auto_model(model, clip_weights)), layers or None, dpam_start)
    target = resolve_device(device)
    recorded_identity(out)  # anything but a cache at --out: refused before the model is loaded
    opened = open_store(store)
    check_image_size(config, opened.attrs.image_size, store)  # likewise
    backbone = load_backbone(config, clip_weights, seed=seed).to(target)
    rows = opened.indices(dataset=dataset, class_name=class_name)
    with _bar(len(rows), "features") as bar:
        done = compute_features(backbone, store, rows, out, rebuild=rebuild_features, device=target,
                                batch_size=batch_size, autocast=target.type == "cuda",
                                dtype="float16" if target.type == "cuda" else "float32", progress=bar)
    click.echo(f"{out}: features of {len(rows)} samples {done}, model {backbone.label}")


@train.command("import-released")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New run directory, e.g. runs/released-cookie.")
@click.option("--class", "class_name", help="Training class  [default: read from exps_*/<class>/epoch_N.pth]")
@click.option("--dataset", help="Training dataset, as named in datasets.yaml  [default: read from the path]")
@model_option(help="Model the prompts were trained for.")
@layers_option(help="Tapped layers  [default: the released script's for the path's data (24, or 6,12,18,24 for "
                    "Real3D-AD), else the model's]")
@seed_option("Seed recorded in the run (random-weights models only).")
def import_released(checkpoint, out, class_name, dataset, model, layers, seed):
    """Turn a released PointAD prompt checkpoint (zqhang/PointAD epoch_N.pth) into a run of ours."""
    from .released import import_released as run_import
    done = run_import(checkpoint, out, class_name=class_name, dataset=dataset, model=model, layers=layers or None,
                      seed=seed)
    s = done.prompts.settings
    click.echo(f"{done.checkpoint}: released prompts of {done.train['dataset']}/{done.train['class_name']}, "
               f"n_ctx {s['n_ctx']}, depth {s['depth']}, t_n_ctx {s['n_pos']}, model {model}; "
               f"use --checkpoints {done.run_dir}")


def main():
    train()


if __name__ == "__main__":
    main()
