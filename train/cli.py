"""`train` command group (SPEC 6): `train run` learns the prompts; `train features` fills the cache."""

from __future__ import annotations

import os
from pathlib import Path

import click
from tqdm import tqdm

from shared.cli import PointADGroup, verbosity_option
from shared.store import open_store


def _layers(ctx, param, value):
    if not value:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("comma-separated layer numbers, e.g. 6,12,18,24") from None


def _bar(total, desc):
    return tqdm(total=total, desc=desc, unit="sample", leave=False)


@click.group(cls=PointADGroup)
@verbosity_option
def train():
    """Learn PointAD prompts from a render store (frozen CLIP)."""


@train.command()
@click.option("--store", required=True, type=click.Path(path_type=Path), help="Render store from 'render build'.")
@click.option("--class", "class_name", required=True, help="Auxiliary class to train on (its test split).")
@click.option("--dataset", help="Dataset in the store (needed when it holds several).")
@click.option("--epochs", default=15, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--seed", default=111, show_default=True)
@click.option("--model", default="vit-l-14-336", show_default=True,
              help="vit-l-14-336, tiny (random weights), or auto (ViT-L if its weights are present, else tiny).")
@click.option("--clip-weights", type=click.Path(path_type=Path), help="OpenAI ViT-L/14@336 weights file.")
@click.option("--layers", callback=_layers, help="Tapped layers, e.g. 6,12,18,24 (default: the model's).")
@click.option("--dpam-start", type=int, help="DPAM dual path in blocks N..last, 0 = off (default: the model's).")
@click.option("--prompt", type=click.Choice(["agnostic", "coop"]), default="agnostic", show_default=True)
@click.option("--loss-terms", default="all", show_default=True,
              help="all, or a comma list of 3d_global, 3d_local, 2d_global, 2d_local.")
@click.option("--no-feature-cache", is_flag=True, help="Re-run the vision tower every epoch.")
@click.option("--features", type=click.Path(path_type=Path), help="Feature cache to use (default: OUT/features.zarr).")
@click.option("--out", type=click.Path(path_type=Path), help="Run directory (default: runs/<dataset>-<class>-<seed>).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--resume", is_flag=True, help="Continue from the last finished epoch in --out.")
@click.option("--loader-workers", default=0, show_default=True, help="DataLoader worker processes reading the store.")
def run(store, class_name, dataset, epochs, batch_size, lr, seed, model, clip_weights, layers, dpam_start, prompt,
        loss_terms, no_feature_cache, features, out, device, resume, loader_workers):
    """Train the prompts on one class of a render store."""
    from train.distributed import distributed_session
    from train.loop import TrainConfig, resolve_device, train as train_loop
    from train.model_config import load_model_config
    from train.weights import locate_weights
    model = resolve_model(model, clip_weights)
    locate_weights(load_model_config(model), clip_weights)  # missing weights: fail before any work
    config = TrainConfig(store=str(store), class_name=class_name, dataset=dataset, epochs=epochs,
                         batch_size=batch_size, lr=lr, seed=seed, model=model, layers=layers,
                         dpam_start=dpam_start, prompt=prompt,
                         loss_terms=loss_terms, feature_cache=not no_feature_cache)
    out = out or Path("runs") / f"{dataset or Path(store).stem}-{class_name}-{seed}"
    with distributed_session(device) as (rank, device_name):
        target = resolve_device(device_name)
        say = click.echo if rank == 0 else (lambda line: None)
        result = train_loop(config, out, device=target, clip_weights=clip_weights, resume=resume, log=say,
                            progress_factory=_bar if rank == 0 else None, feature_path=features,
                            loader_workers=loader_workers)
        say(f"{out}: {len(result.epochs_run)} epoch(s) run on {target}, model {_model_label(out)}")


def resolve_model(model: str, clip_weights) -> str:
    """`auto`: the real model when its weights are found, else the tiny one, said loudly on stderr."""
    if model != "auto":
        return model
    from shared.errors import WeightsNotFoundError
    from train.model_config import load_model_config
    from train.weights import locate_weights
    try:
        locate_weights(load_model_config("vit-l-14-336"), clip_weights)
        return "vit-l-14-336"
    except WeightsNotFoundError as exc:
        click.echo(f"WARNING: {exc}", err=True)
        click.echo("WARNING: using the tiny model with RANDOM weights: a smoke run of the pipeline, "
                   "not PointAD results", err=True)
        return "tiny"


def _model_label(run_dir: Path) -> str:
    import json
    return json.loads((Path(run_dir) / "config.json").read_text())["model"].get("label", "?")


@train.command()
@click.option("--store", required=True, type=click.Path(path_type=Path))
@click.option("--model", default="vit-l-14-336", show_default=True)
@click.option("--clip-weights", type=click.Path(path_type=Path))
@click.option("--layers", callback=_layers)
@click.option("--dataset", help="Only this dataset's rows (default: all).")
@click.option("--class", "class_name", help="Only this class's rows (default: all).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Feature cache to write (a Zarr group).")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--device", default="auto", show_default=True)
def features(store, model, clip_weights, layers, dataset, class_name, out, batch_size, device):
    """Precompute the frozen vision features of a store's renderings (the training cache)."""
    from train.backbone import load_backbone
    from train.features import compute_features
    from train.loop import resolve_device
    from train.model_config import load_model_config
    config = load_model_config(model)
    if layers:
        config = config.with_taps(layers)
    target = resolve_device(device)
    backbone = load_backbone(config, clip_weights).to(target)
    rows = open_store(store).indices(dataset=dataset, class_name=class_name)
    with _bar(len(rows), "features") as bar:
        compute_features(backbone, store, rows, out, device=target, batch_size=batch_size,
                         autocast=target.type == "cuda", dtype="float16" if target.type == "cuda" else "float32",
                         progress=bar)
    click.echo(f"{out}: features of {len(rows)} samples, model {backbone.label}")


def main():
    train()


if __name__ == "__main__":
    main()
