"""`eval` command group (SPEC 7): `report` scores a store and tabulates the metrics; `detect` scores one new
cloud (also `pointad detect`).

Installed as `eval`, but `eval` is a shell builtin in bash and zsh: use `pointad eval ...` there.
"""

from __future__ import annotations

from pathlib import Path

import click

from pointad.shared.cli import PointADGroup, verbosity_option


@click.group(name="eval", cls=PointADGroup)
@verbosity_option
def eval_():
    """Score stores with trained prompts and report metrics."""


@eval_.command()
@click.option("--store", default=Path("renders.zarr"), show_default=True, type=click.Path(path_type=Path),
              help="Render store holding the test dataset(s).")
@click.option("--checkpoints", multiple=True, type=click.Path(path_type=Path),
              help="Run directory (its last checkpoint) or checkpoint file; repeat for several runs.")
@click.option("--setting", type=click.Choice(["one-vs-rest", "cross-dataset"]), default="one-vs-rest",
              show_default=True, help="one-vs-rest: test the dataset's other classes; cross-dataset: every class.")
@click.option("--dataset", help="Test dataset (its name in the store)  [default: one-vs-rest: the runs' training "
                               "dataset; cross-dataset: every other dataset in the store]")
@click.option("--classes", multiple=True, help="Only these test classes (repeat the option).")
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "json"]), default="md", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Write the report here (atomically) instead of stdout.")
@click.option("--protocol", type=click.Choice(["points", "pointad-compat", "both"]), default="points",
              show_default=True, help="points: valid points only; pointad-compat: the released code's full grid.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--method", type=click.Choice(["pointad", "clip-rendering", "mutual-scoring"]), default="pointad",
              show_default=True, help="clip-rendering: untrained baseline prompts, no checkpoints; mutual-scoring: "
                                      "training-free, the test samples of a class score each other (after MuSc).")
@click.option("--mutual-views", type=click.Choice(["same", "all"]), default="same", show_default=True,
              help="mutual-scoring: a view against the same view of the other samples, or against all their views.")
@click.option("--mutual-fraction", default=0.3, show_default=True,
              help="mutual-scoring: share of the other samples whose nearest-patch distances are averaged (smallest).")
@click.option("--mutual-radii", multiple=True, type=int,
              help="mutual-scoring: neighbourhood sizes in patches (odd; repeat)  [default: 1 3 5]")
@click.option("--mutual-layers", multiple=True, type=int,
              help="mutual-scoring: tapped vision layers, 1-based (repeat)  [default: the model's taps]")
@click.option("--rescore-k", multiple=True, type=int,
              help="mutual-scoring: sample re-scoring neighbourhood sizes (repeat)  [default: 1 2 3]; 0 = none")
@click.option("--model", default="vit-l-14-336", show_default=True,
              help="Model of the clip-rendering baseline and of runs trained by --train-missing (other runs use "
                   "their checkpoint's); auto = ViT-L if its weights are present, else tiny.")
@click.option("--clip-weights", type=click.Path(path_type=Path), help="OpenAI ViT-L/14@336 weights file.")
@click.option("--batch-size", default=4, show_default=True)
@click.option("--compare-paper", is_flag=True,
              help="Put the paper's published numbers (same method, setting, data) and the difference beside ours.")
@click.option("--figures", type=click.Path(path_type=Path),
              help="Write figures here: per class ROC/PRO curves, view heatmaps and score-coloured PLY (first run).")
@click.option("--figure-samples", default=2, show_default=True,
              help="Anomalous samples per class drawn with --figures (plus one good sample).")
@click.option("--figure-sample", "figure_ids", multiple=True,
              help="Draw this sample instead (its sample id, e.g. cookie/test/hole/xyz/000.tiff); repeat for several.")
@click.option("--runs-dir", type=click.Path(path_type=Path),
              help="Instead of --checkpoints: the sweep's runs <train-dataset>-<class>-<seed> in this folder  "
                   "[default with neither: runs, every trained run in it]")
@click.option("--train-dataset", help="Dataset of the training classes (default: --dataset for one-vs-rest).")
@click.option("--train-classes", multiple=True, help="Training classes (repeat; default: datasets.yaml aux_classes).")
@click.option("--seeds", multiple=True, type=int, help="Seeds of the runs (repeat; default: 111).")
@click.option("--train-missing", is_flag=True,
              help="Train the runs not in --runs-dir first (as `train sweep` with --model, --epochs, --prompt).")
@click.option("--epochs", default=15, show_default=True, help="Epochs of runs trained by --train-missing.")
@click.option("--prompt", type=click.Choice(["agnostic", "coop"]), default="agnostic", show_default=True,
              help="Prompts of runs trained by --train-missing.")
def report(store, checkpoints, setting, dataset, classes, fmt, out, protocol, device, method, model, clip_weights,
           batch_size, compare_paper, figures, figure_samples, figure_ids, runs_dir, train_dataset, train_classes,
           seeds, train_missing, epochs, prompt, mutual_views, mutual_fraction, mutual_radii, mutual_layers, rescore_k):
    """Evaluate runs (or the clip-rendering baseline) on a store: I-AUROC, AP, P-AUROC, AUPRO per class.

    The runs come from --checkpoints, or from --runs-dir as a sweep (training classes x seeds); with
    --train-missing the runs not there yet are trained first, so one command reproduces a setting.
    """
    from pointad.eval.report import ReportConfig, build_report, write_report
    from pointad.eval.targets import check_file_target, check_folder_target
    from pointad.shared.errors import PointADError
    from pointad.shared.cli import resolve_model
    from pointad.train.model.device import resolve_device
    if out is not None:
        check_file_target(out, "--out takes a file name")
    if figures is not None:
        check_folder_target(figures, "--figures takes a folder")
    if method in ("clip-rendering", "mutual-scoring"):
        model = resolve_model(model, clip_weights)
    mutual = _mutual_options(mutual_views, mutual_fraction, mutual_radii, mutual_layers, rescore_k)
    chosen = []  # the defaults taken, said in the first lines
    trained_on = None
    if method == "pointad" and not checkpoints and runs_dir is None:
        runs_dir = Path("runs")
        if not runs_dir.is_dir():
            raise PointADError("no --checkpoints and no runs folder 'runs' here: train with `train run` "
                               "(or `train sweep`), or pass --checkpoints or --runs-dir")
        chosen.append(f"runs from {runs_dir}")
    if runs_dir is not None:
        if checkpoints:
            raise click.UsageError("give either --checkpoints or --runs-dir, not both")
        if train_dataset is None and dataset is None and not (train_classes or seeds or train_missing):
            checkpoints, trained_on = _all_trained_runs(runs_dir)  # the card's plain `eval report`
            chosen.append(f"{len(checkpoints)} trained run(s) of dataset {trained_on}: "
                          + " ".join(c.name for c in checkpoints))
        else:
            if train_dataset is None and setting == "cross-dataset":
                raise click.UsageError("--setting cross-dataset with --runs-dir needs --train-dataset")
            trained_on = train_dataset or dataset
            checkpoints = _sweep_runs(store, runs_dir, trained_on, train_classes, seeds, train_missing,
                                      model=model, epochs=epochs, prompt=prompt, clip_weights=clip_weights,
                                      device=device)
    datasets = [dataset] if dataset else _test_datasets(store, setting, trained_on, checkpoints)
    if not dataset:
        chosen.append(f"test dataset(s) {', '.join(datasets)}")
    if chosen:
        click.echo(f"eval report: store {store}; " + "; ".join(chosen), err=True)
    target = resolve_device(device)
    results = []
    for name in datasets:
        config = ReportConfig(store=str(store), dataset=name, setting=setting,
                              checkpoints=tuple(str(c) for c in checkpoints), classes=tuple(classes) or None,
                              protocol=protocol, method=method, model=model,
                              clip_weights=None if clip_weights is None else str(clip_weights),
                              batch_size=batch_size, figures=None if figures is None else str(figures),
                              figure_samples=figure_samples, figure_ids=tuple(figure_ids),
                              compare_paper=compare_paper, mutual=mutual)
        results.append(build_report(config, device=target, progress=lambda line: click.echo(line, err=True)))
    text = write_report(results, fmt, out)
    if out is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"{out}: {fmt} report, model {results[0].header['model']}", err=True)
    if figures is not None:
        click.echo(f"{figures}: figures of {sum(len(r.classes) for r in results)} class(es)", err=True)


def _all_trained_runs(runs_dir: Path) -> tuple[list[Path], str]:
    """Every run folder in `runs_dir` holding a checkpoint, and their one training dataset (PointADError if the
    folder holds none, or runs of several datasets)."""
    import json
    from pointad.shared.errors import PointADError
    from pointad.train.model.checkpoint import latest_checkpoint
    runs = sorted(p for p in Path(runs_dir).iterdir() if p.is_dir() and latest_checkpoint(p) is not None)
    if not runs:
        raise PointADError(f"{runs_dir}: holds no trained run")
    datasets = {}
    for run in runs:
        try:
            datasets.setdefault(json.loads((run / "config.json").read_text())["train"]["dataset"], []).append(run)
        except (OSError, ValueError, KeyError, TypeError):
            raise PointADError(f"{run / 'config.json'}: unreadable run config") from None
    if len(datasets) != 1:
        listed = "; ".join(f"{d}: {', '.join(r.name for r in rs)}" for d, rs in sorted(datasets.items(), key=str))
        raise PointADError(f"{runs_dir}: runs of several training datasets ({listed}); choose with --train-dataset")
    return runs, next(iter(datasets))


def _test_datasets(store: Path, setting: str, trained_on: str | None, checkpoints) -> list[str]:
    """The default test datasets: one-vs-rest the runs' training dataset, cross-dataset every other one in the
    store (without runs: the store's only dataset)."""
    from pointad.shared.errors import PointADError
    from pointad.shared.store import open_store
    present = sorted(set(open_store(store).table()["dataset"].tolist()))
    if trained_on is None and checkpoints:
        trained_on = _checkpoint_dataset(checkpoints)
    if trained_on is None:
        if len(present) != 1:
            raise PointADError(f"{store}: holds datasets {', '.join(present)}; choose the test one with --dataset")
        return present
    if setting == "one-vs-rest":
        return [trained_on]
    others = [d for d in present if d != trained_on]
    if not others:
        raise PointADError(f"{store}: holds no dataset but the runs' training dataset {trained_on}; render another "
                           "one into it for --setting cross-dataset")
    return others


def _checkpoint_dataset(checkpoints) -> str | None:
    """The one training dataset recorded by the given runs (None if they record none or several)."""
    from pointad.eval.runs import resolve_checkpoint
    from pointad.train.model.checkpoint import load_checkpoint
    found = {load_checkpoint(resolve_checkpoint(given))["config"].get("dataset") for given in checkpoints}
    return found.pop() if len(found) == 1 else None


def _mutual_options(views, fraction, radii, layers, rescore_k):
    """The --mutual-* and --rescore-k options as `eval.mutual.MutualOptions` (defaults where not given)."""
    from pointad.eval.mutual import MutualOptions
    given = {"views": views, "fraction": fraction}
    if radii:
        given["radii"] = tuple(radii)
    if layers:
        given["layers"] = tuple(layers)
    if rescore_k:
        given["rescore_ks"] = () if tuple(rescore_k) == (0,) else tuple(rescore_k)
    return MutualOptions(**given)


def _sweep_runs(store, runs_dir, dataset, classes, seeds, train_missing, *, model, epochs, prompt, clip_weights,
                device) -> list[Path]:
    """The run directories of a sweep; missing ones trained (--train-missing) or reported as an error."""
    from pointad.train.cli import base_config
    from pointad.train.model.device import resolve_device
    from pointad.train.sweep import plan_sweep, sweep, trained_runs
    if not train_missing:
        return trained_runs(runs_dir, dataset, classes, seeds)
    base = base_config(store=store, model=model, clip_weights=clip_weights, epochs=epochs, prompt=prompt,
                       dataset=dataset)
    runs = plan_sweep(base, classes, seeds, runs_dir)
    return sweep(runs, device=resolve_device(device), clip_weights=clip_weights,
                 log=lambda line: click.echo(line, err=True))


@click.command()
@click.argument("cloud", type=click.Path(path_type=Path))
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="Run directory (its last checkpoint) or checkpoint file.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for scores.npy, scores.ply and scores.json  [default: <cloud>_scores beside the cloud]")
@click.option("--threshold", type=float, help="Also print 'anomalous' (sample score >= T) or 'normal'; the PLY's "
                                               "colours are then centred on T (else the scores' range).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--clip-weights", type=click.Path(path_type=Path), help="OpenAI ViT-L/14@336 weights file.")
@click.option("--point-size", default=6.0, show_default=True, help="Rendered point size (supersampled pixels).")
@click.option("--views", default=9, show_default=True, help="Number of rendered views.")
@verbosity_option
def detect(cloud, checkpoint, out, threshold, device, clip_weights, point_size, views):
    """Score one .ply/.pcd/.tiff/.xyz/.npy cloud: per-point scores (NPY + coloured PLY) and the sample score."""
    from pointad.eval.detect import OUTPUT_FILES, write_detection
    from pointad.eval.detect import detect as run_detect
    from pointad.eval.targets import check_folder_target
    from pointad.train.model.device import resolve_device
    out = out if out is not None else cloud.parent / f"{cloud.stem}_scores"
    check_folder_target(out, "--out takes a folder: scores.npy and scores.ply are written in it", OUTPUT_FILES)
    result = run_detect(cloud, checkpoint, device=resolve_device(device), clip_weights=clip_weights,
                        views=views, point_size=point_size)
    npy, ply, summary = write_detection(result, out, threshold)
    click.echo(f"{npy}, {ply}, {summary}: {len(result.point_scores)} points", err=True)
    click.echo(f"sample score: {result.score:.6f}")
    if threshold is not None:
        click.echo("anomalous" if result.score >= threshold else "normal")


eval_.add_command(detect)


def main():
    eval_()


if __name__ == "__main__":
    main()
