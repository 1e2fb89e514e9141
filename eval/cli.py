"""`eval` command group (design §7): `report` scores a store and tabulates the metrics. `detect`, which scores
one new cloud, is defined here and registered once, as `pointad detect` (shared/cli.py).

Installed as `eval`, but `eval` is a shell builtin in bash and zsh: use `pointad eval ...` there.
Defaults come from `ReportConfig` and `MutualOptions` (eval/options.py) and, for --train-missing, `TrainConfig`.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import click
from tqdm import tqdm

from ..render.options import RenderOptions  # detect's render options (defined here, see above)
from ..shared.command import (
    FINITE_FLOAT,
    STORE,
    PointADGroup,
    default_of,
    list_option,
    number_type,
    range_type,
    said,
    verbosity_option,
)
from ..shared.limits import bound
from ..shared.logging import get_logger
from ..train.options import PROMPTS, TrainConfig
from .options import (
    METHODS,
    OFFICIAL,
    PROTOCOL_CHOICES,
    PROTOCOLS,
    REPORT_FORMATS,
    SETTINGS,
    VIEW_MODES,
    MutualOptions,
    ReportConfig,
)

log = get_logger("eval.report")


def _report(name):
    return default_of(ReportConfig, name)


def _mutual(name):
    return default_of(MutualOptions, name)


# --rescore-k takes 0 (no re-scoring) besides MutualOptions.rescore_ks's range
RESCORE_K = number_type(int, replace(bound(MutualOptions, "rescore_ks")[1], lo=0))


class _ScoringBar:
    """A tqdm bar opened once the work is known (`build_report` calls `reset(total)` after its checks), so a
    command that fails early prints its one error line and no bar."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def reset(self, total: int):
        self.bar = tqdm(total=total, desc=self.desc, unit="sample", leave=False)

    def update(self, n: int = 1):
        self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@click.group(name="eval", cls=PointADGroup, epilog="One new cloud: `pointad detect CLOUD --checkpoint RUN`.")
@verbosity_option
def eval_():
    """Score stores with trained prompts and report metrics."""


@eval_.command()
@click.option("--store", default="renders.zarr", show_default=True, type=STORE,
              help="Render store holding the test dataset(s): a path or a URL.")
@list_option("--checkpoints", type=click.Path(path_type=Path),
             help="Run directories (their last checkpoint) or checkpoint files, one per run.")
@click.option("--setting", type=click.Choice(SETTINGS), default=_report("setting"), show_default=True,
              help="one-vs-rest: test the dataset's other classes; cross-dataset: every class.")
@click.option("--dataset", help="Test dataset (its name in the store)  [default: one-vs-rest: the runs' training "
                               "dataset; cross-dataset: every other dataset in the store]")
@list_option("--classes", help="Only these test classes  [default: all]")
@click.option("--report-format", type=click.Choice(REPORT_FORMATS), default=REPORT_FORMATS[0], show_default=True,
              help="Format of the report: markdown tables, CSV rows, or JSON (with every sample's scores).")
@click.option("--out", type=click.Path(path_type=Path), help="Write the report here (atomically) instead of stdout.")
@click.option("--protocol", type=click.Choice([*PROTOCOLS, *PROTOCOL_CHOICES]), default=_report("protocol"),
              show_default=True, help="points: valid points only; pointad-compat: the released code's full grid; "
                                      "mvtec-official: MVTec 3D-AD's script on the --export-maps maps (every pixel); "
                                      "both: the first two; all: the three.")
@click.option("--export-maps", type=click.Path(path_type=Path),
              help="Write every test sample's anomaly map here, per run and block, as MVTec 3D-AD's evaluation script "
                   "reads them (DIR/<dataset>/run-<k>/<block>/<class>/test/<defect>/<stem>.tiff; .npy per point when "
                   "unorganized) with a manifest.json; a new or empty folder.")
@click.option("--root", "dataset_root", type=click.Path(path_type=Path),
              help="--export-maps: the test dataset's folder, whose ground-truth PNGs give each map's size  "
                   "[default: its datasets.yaml root]")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--method", type=click.Choice(METHODS), default=_report("method"),
              show_default=True, help="clip-rendering: untrained baseline prompts, no checkpoints; mutual-scoring: "
                                      "training-free, the test samples of a class score each other (after MuSc).")
@click.option("--mutual-views", type=click.Choice(VIEW_MODES), default=_mutual("views"), show_default=True,
              help="mutual-scoring: a view against the same view of the other samples, or against all their views.")
@click.option("--mutual-fraction", type=range_type(MutualOptions, "fraction"), default=_mutual("fraction"),
              show_default=True,
              help="mutual-scoring: share of the other samples whose nearest-patch distances are averaged (smallest).")
@list_option("--mutual-radii", type=range_type(MutualOptions, "radii"), default=_mutual("radii"), show_default=True,
             help="mutual-scoring: neighbourhood sizes in patches (odd).")
@list_option("--mutual-layers", type=range_type(MutualOptions, "layers"), default=_mutual("layers"),
             help="mutual-scoring: tapped vision layers, 1-based  [default: the model's taps]")
@list_option("--rescore-k", type=RESCORE_K, default=_mutual("rescore_ks"), show_default=True,
             help="mutual-scoring: sample re-scoring neighbourhood sizes; 0 = no re-scoring.")
@click.option("--model", default=_report("model"), show_default=True,
              help="Model of the clip-rendering baseline, of mutual-scoring and of runs trained by --train-missing "
                   "(other runs use their checkpoint's); auto = ViT-L if its weights are present, else tiny.")
@click.option("--clip-weights", type=click.Path(path_type=Path),
              help="OpenAI ViT-L/14@336 weights file  [default: found in the weights cache]")
@click.option("--batch-size", type=range_type(ReportConfig, "batch_size"), default=_report("batch_size"),
              show_default=True, help="Samples scored per batch.")
@click.option("--compare-paper", is_flag=True,
              help="Put the paper's published numbers (same method, setting, data) and the difference beside ours.")
@click.option("--figures", type=click.Path(path_type=Path),
              help="Write figures here: per class ROC/PRO curves, view heatmaps and score-coloured PLY (first run).")
@click.option("--figure-samples", type=range_type(ReportConfig, "figure_samples"), default=_report("figure_samples"),
              show_default=True,
              help="Anomalous samples per class drawn with --figures (plus one good sample).")
@list_option("--figure-sample", "figure_ids",
             help="Draw these samples instead (sample ids, e.g. cookie/test/hole/xyz/000.tiff).")
@click.option("--html", type=click.Path(path_type=Path),
              help="Write DIR/report.html: one self-contained page (tables, ROC/PRO, views, 3D viewers) that opens "
                   "offline; its figures go to DIR/figures unless --figures is given. Needs pip install "
                   "'pointad-toolkit[html]' (plotly).")
@click.option("--runs-dir", type=click.Path(path_type=Path),
              help="Instead of --checkpoints: the sweep's runs <train-dataset>-<class>-<seed> in this folder  "
                   "[default with neither: runs, every trained run in it]")
@click.option("--train-dataset", help="Dataset of the training classes (default: --dataset for one-vs-rest).")
@list_option("--train-classes", help="Training classes of the runs  [default: datasets.yaml aux_classes]")
@list_option("--seeds", type=range_type(TrainConfig, "seed"),
             help=f"Seeds of the runs  [default: {default_of(TrainConfig, 'seed')}]")
@click.option("--train-missing", is_flag=True,
              help="Train the runs not in --runs-dir first (as `train sweep`, with --model, --train-epochs and "
                   "--train-prompt).")
@click.option("--train-epochs", type=range_type(TrainConfig, "epochs"), default=default_of(TrainConfig, "epochs"),
              show_default=True,
              help="--train-missing only: epochs of the runs it trains.")
@click.option("--train-prompt", type=click.Choice(PROMPTS), default=default_of(TrainConfig, "prompt"),
              show_default=True, help="--train-missing only: prompts of the runs it trains.")
def report(store, checkpoints, setting, dataset, classes, report_format, out, protocol, device, method, model,
           clip_weights, batch_size, compare_paper, figures, figure_samples, figure_ids, html, runs_dir, train_dataset,
           train_classes, seeds, train_missing, train_epochs, train_prompt, mutual_views, mutual_fraction, mutual_radii,
           mutual_layers, rescore_k, export_maps, dataset_root):
    """Evaluate runs (or the clip-rendering baseline) on a store: I-AUROC, AP, P-AUROC, AUPRO per class.

    The runs come from --checkpoints, or from --runs-dir as a sweep (training classes x seeds); with
    --train-missing the runs not there yet are trained first, so one command reproduces a setting.
    """
    from ..shared.errors import PointADError
    from ..train.model.device import resolve_device
    from .output_paths import check_file_target, check_folder_target
    from .report import build_report, write_report
    source = click.get_current_context().get_parameter_source
    given = [f"--{n.replace('_', '-')}" for n in ("train_epochs", "train_prompt")
             if source(n) is not click.core.ParameterSource.DEFAULT]
    if given and not train_missing:
        raise click.UsageError(f"{' and '.join(given)} apply to --train-missing only")
    target = resolve_device(device)  # an unknown or absent device: refused before any work
    if out is not None:
        check_file_target(out, "--out takes a file name")
    if html is not None:
        from .html_report import PAGE_NAME, require_plotly
        require_plotly()
        check_folder_target(html, f"--html takes a folder: {PAGE_NAME} is written in it", [PAGE_NAME])
        figures = html / "figures" if figures is None else figures
        started = time.time()  # the page shows only figure files written from here on
    if figures is not None:
        check_folder_target(figures, "--figures takes a folder")
    if export_maps is not None:
        from .export_maps import check_export_target
        check_export_target(export_maps)
    elif protocol in (OFFICIAL, "all"):
        raise click.UsageError(f"--protocol {protocol} scores the exported maps: give --export-maps DIR")
    if dataset_root is not None and export_maps is None:
        raise click.UsageError("--root applies to --export-maps only")
    if method in ("clip-rendering", "mutual-scoring"):
        from ..train.model.weights import resolve_auto_model  # torch: only when a model is resolved
        model = said(resolve_auto_model(model, clip_weights))
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
            from .runs import trained_runs_in
            checkpoints, trained_on = trained_runs_in(runs_dir)  # the card's plain `eval report`
            chosen.append(f"{len(checkpoints)} trained run(s) of dataset {trained_on}: "
                          + " ".join(c.name for c in checkpoints))
        else:
            if train_dataset is None and setting == "cross-dataset":
                raise click.UsageError("--setting cross-dataset with --runs-dir needs --train-dataset")
            trained_on = train_dataset or dataset
            checkpoints = _sweep_runs(store, runs_dir, trained_on, train_classes, seeds, train_missing,
                                      model=model, epochs=train_epochs, prompt=train_prompt, clip_weights=clip_weights,
                                      device=device)
    datasets = [dataset] if dataset else _test_datasets(store, setting, trained_on, checkpoints)
    if not dataset:
        chosen.append(f"test dataset(s) {', '.join(datasets)}")
    if dataset_root is not None and len(datasets) > 1:
        raise click.UsageError(f"--root names one dataset's folder; this report tests {', '.join(datasets)}: "
                               "choose one with --dataset")
    if chosen:
        click.echo(f"eval report: store {store}; " + "; ".join(chosen), err=True)
    results = []
    for name in datasets:
        config = ReportConfig(store=str(store), dataset=name, setting=setting,
                              checkpoints=tuple(str(c) for c in checkpoints), classes=classes or None,
                              protocol=protocol, method=method, model=model,
                              clip_weights=None if clip_weights is None else str(clip_weights),
                              batch_size=batch_size, figures=None if figures is None else str(figures),
                              figure_samples=figure_samples, figure_ids=figure_ids,
                              compare_paper=compare_paper, mutual=mutual,
                              export_maps=None if export_maps is None else str(export_maps),
                              dataset_root=_dataset_root(name, dataset_root) if export_maps is not None else None)
        with closing(_ScoringBar(f"eval {name}")) as bar:
            results.append(build_report(config, device=target, progress=log.info, bar=bar))
    text = write_report(results, report_format, out)
    if out is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"{out}: {report_format} report, model {results[0].header['model']}", err=True)
    if figures is not None:
        click.echo(f"{figures}: figures of {sum(len(r.classes) for r in results)} class(es)", err=True)
    if html is not None:
        from .html_report import write_html_report
        page = write_html_report(results, html, figures, since=started)
        click.echo(f"{page}: HTML report ({page.stat().st_size / 1e6:.1f} MB), opens offline", err=True)


def _dataset_root(name: str, given: Path | None) -> str | None:
    """The folder of test dataset `name` for --export-maps: --root, else its registry entry's (built-in data
    generated there on first use); None when the registry does not know it (the export then asks for --root)."""
    if given is not None:
        return str(given)
    from ..shared.errors import ConfigError, DatasetError
    from ..shared.registry import resolve_dataset
    try:
        entry = resolve_dataset(name)
    except (ConfigError, DatasetError):
        return None
    if entry.generate is not None and entry.format in ("mvtec3d", "eyecandies"):  # organized: PNGs to read
        from ..render.datasets import open_dataset
        entry = open_dataset(name)
    return None if entry.root is None else str(entry.root)


def _test_datasets(store: Path, setting: str, trained_on: str | None, checkpoints) -> list[str]:
    """The default test datasets: one-vs-rest the runs' training dataset, cross-dataset every other one in the
    store (without runs: the store's only dataset)."""
    from ..shared.errors import PointADError
    from ..shared.store import open_store
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
    from ..train.model.checkpoint import load_checkpoint
    from .runs import resolve_checkpoint
    found = {load_checkpoint(resolve_checkpoint(given))["config"].get("dataset") for given in checkpoints}
    return found.pop() if len(found) == 1 else None


def _mutual_options(views, fraction, radii, layers, rescore_k):
    """The --mutual-* and --rescore-k options as `MutualOptions` (its defaults where not given)."""
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
    from ..train.model.device import resolve_device
    from ..train.options import config_from_options
    from ..train.sweep import plan_sweep, sweep, trained_runs
    if not train_missing:
        return trained_runs(runs_dir, dataset, classes, seeds)
    from ..train.model.weights import resolve_auto_model  # torch: only when a model is resolved
    base = config_from_options(store=store, model=said(resolve_auto_model(model, clip_weights)), clip_weights=clip_weights,
                               epochs=epochs, prompt=prompt, dataset=dataset)
    runs = plan_sweep(base, classes, seeds, runs_dir)
    return sweep(runs, device=resolve_device(device), clip_weights=clip_weights,
                 log=lambda line: click.echo(line, err=True))


@click.command()
@click.argument("cloud", type=click.Path(path_type=Path))
@click.option("--method", type=click.Choice(["pointad", "mutual-scoring"]), default="pointad", show_default=True,
              help="pointad: a trained run (--checkpoint); mutual-scoring: training-free, against the test samples "
                   "of a class in a reference store (--reference).")
@click.option("--checkpoint", type=click.Path(path_type=Path),
              help="pointad: run directory (its last checkpoint) or checkpoint file.")
@click.option("--reference", type=STORE,
              help="mutual-scoring: render store (path or URL) whose test samples of --class the cloud is scored against.")
@click.option("--class", "class_name", help="mutual-scoring: the reference class  [default: the dataset's only one]")
@click.option("--dataset", help="mutual-scoring: the reference dataset  [default: the store's only one]")
@click.option("--model", default=_report("model"), show_default=True,
              help="mutual-scoring: frozen model, as in eval report (auto = ViT-L if its weights are present, else "
                   "tiny).")
@click.option("--mutual-views", type=click.Choice(["same", "all"]),
              help="mutual-scoring: a view against the same view of the references, or all their views  "
                   "[default: as eval report]")
@click.option("--mutual-fraction", type=range_type(MutualOptions, "fraction"),
              help="mutual-scoring: share of the references whose nearest-patch distances are averaged  "
                   "[default: as eval report]")
@list_option("--mutual-radii", type=range_type(MutualOptions, "radii"),
             help="mutual-scoring: neighbourhood sizes in patches (odd; repeat)  [default: as eval report]")
@list_option("--mutual-layers", type=range_type(MutualOptions, "layers"),
             help="mutual-scoring: tapped vision layers, 1-based (repeat)  [default: the model's taps]")
@click.option("--preprocess", "preprocess_like", metavar="DATASET",
              help="Preprocess the cloud as DATASET's samples are (its datasets.yaml options: background, cleanup, "
                   "flip, units; `folder` for a --format folder store; an Eyecandies dataset for a raw <id>_depth.png)  "
                   "[default: by suffix: MVTec 3D-AD's for .tiff, Real3D-AD's for the others]")
@click.option("--out", type=click.Path(path_type=Path),
              help="Folder for scores.npy, scores.ply and scores.json  [default: <cloud>_scores beside the cloud]")
@click.option("--threshold", type=FINITE_FLOAT, help="Also print 'anomalous' (sample score >= T) or 'normal'; the PLY's "
                                               "colours are then centred on T (else the scores' range).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--clip-weights", type=click.Path(path_type=Path), help="OpenAI ViT-L/14@336 weights file.")
@click.option("--views", type=range_type(RenderOptions, "views"),
              help="Number of rendered views  [default: as the store was rendered]")
@click.option("--view-plan", help="View plan (paper, pointad-code, ...)  [default: as the store was rendered]")
@click.option("--point-size", type=range_type(RenderOptions, "point_size"),
              help="Rendered point size (supersampled pixels)  [default: as the store drew the class]")
@click.option("--supersample", type=range_type(RenderOptions, "supersample"),
              help="Render at image size x this, then average down  [default: as the store was rendered]")
@click.option("--light", help="Lighting: on, off, + or -  [default: as the store was rendered]")
@click.option("--renderer", help="legacy, filament or splat  [default: as the store was rendered]")
@verbosity_option
def detect(cloud, method, checkpoint, reference, class_name, dataset, model, mutual_views, mutual_fraction,
           mutual_radii, mutual_layers, preprocess_like, out, threshold, device, clip_weights, views, view_plan,
           point_size, supersample, light, renderer):
    """Score one .ply/.pcd/.tiff/.xyz/.npy cloud (or a raw Eyecandies <id>_depth.png, with --preprocess): per-point
    scores (NPY + coloured PLY) and the sample score.

    The cloud is rendered as the checkpoint's training store (or the reference store) was rendered; the
    render options given here replace single ones. The first lines say which option came from where.
    """
    from ..train.model.device import resolve_device
    from .detect import OUTPUT_FILES, Preprocessing, by_suffix_line, check_cloud_path, check_preprocessing, write_detection
    from .output_paths import check_folder_target
    check_cloud_path(cloud)

    def _given(name):
        return click.get_current_context().get_parameter_source(name) != click.core.ParameterSource.DEFAULT
    overrides = dict(views=views, view_plan=view_plan, point_size=point_size, supersample=supersample, light=light,
                     renderer=renderer)
    if method == "pointad":
        if checkpoint is None:
            raise click.UsageError("--method pointad needs --checkpoint (a run directory or checkpoint file)")
        given = [name for name, value in (("--reference", reference), ("--class", class_name), ("--dataset", dataset),
                                          ("--model", _given("model") and model), ("--mutual-views", mutual_views),
                                          ("--mutual-fraction", mutual_fraction), ("--mutual-radii", mutual_radii),
                                          ("--mutual-layers", mutual_layers)) if value]
        if given:
            raise click.UsageError(f"{', '.join(given)}: for --method mutual-scoring only")
    elif reference is None or checkpoint is not None:
        raise click.UsageError("--method mutual-scoring needs --reference (a render store) and no --checkpoint")
    out = out if out is not None else cloud.parent / f"{cloud.stem}_scores"
    check_folder_target(out, "--out takes a folder: scores.npy and scores.ply are written in it", OUTPUT_FILES)
    like = None
    if preprocess_like is not None:
        from ..shared.registry import resolve_dataset
        like = Preprocessing(resolve_dataset(preprocess_like))
    check_preprocessing(cloud, like)
    target = resolve_device(device)
    if method == "pointad":
        from .detect import checkpoint_render
        from .detect import detect as run_detect
        choice = checkpoint_render(checkpoint, **overrides)
        for line in (*choice.lines(), like.line() if like else by_suffix_line(cloud)):
            click.echo(f"detect: {line}", err=True)
        result = run_detect(cloud, checkpoint, device=target, clip_weights=clip_weights, render=choice, like=like)
    else:
        from .detect import detect_mutual, reference_render, reference_rows
        from .options import MutualOptions
        given = {"views": mutual_views, "fraction": mutual_fraction, "radii": tuple(mutual_radii) or None,
                 "layers": tuple(mutual_layers) or None}
        options = MutualOptions(**{k: v for k, v in given.items() if v is not None}, rescore_ks=())
        from ..train.model.weights import resolve_auto_model  # torch: only when a model is resolved
        model = said(resolve_auto_model(model, clip_weights))
        ref = reference_rows(reference, dataset, class_name)
        choice = reference_render(ref, **overrides)
        like = like and Preprocessing(like.entry, ref.class_name)  # the reference class's options, if it has any
        click.echo(f"detect: mutual-scoring against {len(ref.rows)} test sample(s) of {ref.dataset}/{ref.class_name} "
                   f"in {reference}; model {model}; views {options.views}, fraction {options.fraction}, radii "
                   f"{' '.join(map(str, options.radii))}, layers "
                   f"{' '.join(map(str, options.layers)) if options.layers else 'the model taps'}", err=True)
        for line in (*choice.lines(), like.line() if like else by_suffix_line(cloud)):
            click.echo(f"detect: {line}", err=True)
        result = detect_mutual(cloud, ref, model=model, clip_weights=clip_weights, device=target, options=options,
                               render=choice, like=like)
        if result.reference.excluded:
            click.echo(f"detect: left out of the reference, being the cloud itself: "
                       f"{', '.join(result.reference.excluded)}", err=True)
    npy, ply, summary = write_detection(result, out, threshold)
    click.echo(f"{npy}, {ply}, {summary}: {len(result.point_scores)} points", err=True)
    click.echo(f"sample score: {result.score:.6f}")
    if threshold is not None:
        click.echo("anomalous" if result.score >= threshold else "normal")


def main():
    eval_()


if __name__ == "__main__":
    main()
