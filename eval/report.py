"""`eval report` (design §7): score a store with trained prompts (or the clip-rendering baseline) and tabulate.

`--method mutual-scoring` (training-free, no prompts) scores each class's samples against each other
with `eval.mutual.score_class` instead, into the same per-sample records; the rest below applies unchanged.
Per run (one checkpoint) and test class: every test sample is scored by `eval.scoring.score_store`, then
I-AUROC and AP (sample level), P-AUROC and AUPRO (point level) are computed per block (point, RGB,
multimodal) and protocol:
- `points`: only valid points count. AUPRO: organized classes -> regions of each sample's mask on its grid
  (`class_metrics.organized_regions`, what `aupro_organized` counts, without dense grids); unorganized ->
  `aupro_graph` on the stored k-NN graph.
- `pointad-compat`: the released code's view: its grid maps and sample scores (`eval.score_maps`, compat:
  missing cells 0 before a plain Gaussian), the whole organized grid (grid_hw, 336 x 336 in the paper's
  stores) with label 0 in missing cells, P-AUROC over every cell and `aupro_pointad_compat`. Classes with
  unorganized samples keep the `points` sample metrics and get nan point metrics (no grid to fill).
- `mvtec-official`: MVTec 3D-AD's evaluation script, on the maps `--export-maps` writes (`eval.export_maps`,
  read back from the files; math in `eval.official_protocol`): every pixel of each ground-truth PNG, the
  sample score each map's maximum. Unorganized classes: I-AUROC and AP from each cloud's maximum, nan point
  metrics.
Per run, the mean row is the mean over its test classes where a value is defined; across runs every
cell is mean ± std (population std) of the runs that tested that class. The scores of one class (for
every run) are held at a time, never the whole store.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..shared.errors import CheckpointMismatchError, PointADError
from ..shared.io import atomic_path
from ..shared.names import printable
from ..shared.store import open_store
from ..shared.threads import submit, worker_pool
from ..train.model.model_config import DEFAULT_SEED, load_model_config
from .class_metrics import BLOCKS, METRICS, class_metrics, require_finite_scores
from .export_maps import MapExport
from .export_maps import class_metrics as official_class_metrics
from .mutual import attach_published, mutual_model_config, score_class
from .options import MUTUAL, OFFICIAL, PROTOCOL_DEFINITIONS, ReportConfig
from .output_paths import check_file_target
from .paper import published, table_number
from .report_figures import pick_rows, write_class_figures
from .runs import BackboneCache, load_run
from .scoring import baseline_text_features, score_store_runs

BASELINE_SEED = DEFAULT_SEED  # the tiny model's random weights for the baseline: those of a default run
MEAN_ROW = "mean"


@dataclass
class Report:
    """header: what was evaluated; values[(protocol, block, class)][metric] = one value per run that tested it;
    paper: with --compare-paper, block -> the paper's table ({class: {metric: fraction}}) or None."""

    header: dict
    blocks: tuple[str, ...]
    classes: list[str]
    values: dict = field(default_factory=dict)
    paper: dict | None = None
    samples: list = field(default_factory=list)  # `sample_records` of every run and scored sample

    def published(self, block: str, name: str, metric: str) -> float | None:
        """The paper's value of one cell (fraction), None if it publishes none."""
        table = (self.paper or {}).get(block) or {}
        return (table.get(name) or {}).get(metric)

    def cell(self, protocol: str, block: str, name: str, metric: str) -> tuple[float, float, int]:
        """(mean, std, runs) of the finite values of one cell; (nan, nan, 0) if none."""
        runs = [v for v in self.values.get((protocol, block, name), {}).get(metric, []) if math.isfinite(v)]
        if not runs:
            return math.nan, math.nan, 0
        return float(np.mean(runs)), float(np.std(runs)), len(runs)

    def rows(self):
        """(protocol, block, class) in table order, the mean row last in each block."""
        for protocol in self.header["protocols"]:
            for block in self.blocks:
                for name in [*self.classes, MEAN_ROW]:
                    yield protocol, block, name


# --- runs: checkpoints, models, text features ------------------------------------------------------------

def dataset_classes(store, dataset: str) -> list[str]:
    """Classes of the dataset's complete test rows, sorted; PointADError if the dataset has none."""
    datasets = sorted({store.identity(int(i))["dataset"] for i in store.indices()})
    if dataset not in datasets:
        raise PointADError(f"{store.path}: no dataset '{dataset}' (present: {', '.join(datasets) or 'none'})")
    rows = store.indices(dataset=dataset, split="test")
    if rows.size == 0:
        raise PointADError(f"{store.path}: dataset '{dataset}' has no complete test samples")
    return sorted({store.identity(int(i))["class_name"] for i in rows})


class Scorer(NamedTuple):
    """One run as the report scores it: label (checkpoint path or method), train (its TrainConfig dict, None
    for the baseline), the frozen backbone and the text features."""

    label: str
    train: dict | None
    backbone: object
    text: object


def _runs(config: ReportConfig, backbones: BackboneCache):
    """Yield a `Scorer` per run."""
    if config.method == "clip-rendering":
        backbone = backbones.get(load_model_config(config.model), BASELINE_SEED)
        yield Scorer("clip-rendering", None, backbone, baseline_text_features(backbone))
        return
    if config.method == MUTUAL:  # no prompts: the plain attention path, samples scored by each other
        model = mutual_model_config(load_model_config(config.model), config.mutual.layers)
        yield Scorer(MUTUAL, None, backbones.get(model, BASELINE_SEED), None)
        return
    model = None
    for given in config.checkpoints:
        run = load_run(given, backbones)
        if model is not None and run.model != model:
            raise CheckpointMismatchError(f"{run.path}: made for model {run.model.get('label')}, the other runs "
                                          f"for {model.get('label')}; evaluate one model per report")
        model = run.model
        if config.setting == "one-vs-rest" and run.train.get("dataset") not in (None, config.dataset):
            raise PointADError(f"{run.path}: trained on dataset '{run.train['dataset']}'; one-vs-rest tests that "
                               f"dataset (--dataset {run.train['dataset']}) or use --setting cross-dataset")
        yield Scorer(str(run.path), run.train, run.backbone, run.text)


def build_report(config: ReportConfig, device="cpu", progress=None, bar=None) -> Report:
    """Score every run on its test classes and collect the metric values (see the module docstring).

    Runs of the same frozen model share its vision pass: per class and batch the renderings are encoded
    once and scored with each run's text features. progress: optional callable taking one line per
    (class, model). bar: optional tqdm-like bar; its total is set to the test samples, advanced per class.
    """
    store = open_store(config.store)
    classes = dataset_classes(store, config.dataset)
    if config.classes:
        unknown = sorted(set(config.classes) - set(classes))
        if unknown:
            raise PointADError(f"{config.store}: dataset '{config.dataset}' has no test class(es) {unknown} "
                               f"(classes: {', '.join(classes)})")
        classes = [c for c in classes if c in config.classes]
    if config.figure_ids:
        present = {store.identity(int(i))["sample_id"] for i in store.indices(dataset=config.dataset, split="test")}
        unknown = sorted(set(config.figure_ids) - present)
        if unknown:
            raise PointADError(f"{config.store}: dataset '{config.dataset}' has no test sample {', '.join(unknown)} "
                               f"(--figure-sample)")
    runs = list(_runs(config, BackboneCache(config.clip_weights, device)))
    trainings = [run.train for run in runs if run.train is not None]
    autocast = torch.device(device).type == "cuda"
    per_run: list[dict] = [{} for _ in runs]   # run number -> {(protocol, block, class): metrics}
    samples: list[dict] = []                   # per run and sample: its scores (`sample_records`)
    has_rgb = False
    class_rows = {name: store.indices(dataset=config.dataset, class_name=name, split="test") for name in classes}
    export = None if config.export_maps is None else MapExport(config.export_maps, config.dataset, config.dataset_root)
    if export is not None:  # every map's ground truth on disk before any scoring
        export.check_ground_truth(store, np.concatenate([class_rows[name] for name in classes]))
    if bar is not None:
        bar.reset(total=sum(len(rows) for rows in class_rows.values()))
    # a class's metrics are computed on other threads while the next class is scored (numpy's sorts release the GIL)
    pending = {}  # (run number, protocol, block, class) -> Future of its metrics
    with worker_pool() as metrics_pool:
        for name in classes:
            rows = class_rows[name]
            if export is not None:
                export.start_class()
            testing = [n for n, run in enumerate(runs)
                       if not (config.setting == "one-vs-rest" and run.train and run.train["class_name"] == name)]
            for group in _by_backbone(runs, testing):
                drawn = config.figures is not None and group[0] == 0
                keep = pick_rows(store, rows, config.figure_samples, config.figure_ids) if drawn else None
                backbone = runs[group[0]].backbone
                if config.method == MUTUAL:  # the class's samples score each other: one call per class
                    scored = [[r] for r in score_class(config.store, rows, backbone, config.mutual, device,
                                                       config.batch_size, autocast=autocast, keep_view_maps=keep,
                                                       compat="pointad-compat" in config.protocols)]
                else:
                    scored = list(score_store_runs(config.store, rows, backbone, [runs[n].text for n in group],
                                                   device, config.batch_size, autocast=autocast,
                                                   compat="pointad-compat" in config.protocols, keep_view_maps=keep))
                for k, number in enumerate(group):
                    results = [per_row[k] for per_row in scored]
                    require_finite_scores(results, f"{runs[number].label}: class {name}")  # before any metric
                    has_rgb |= any(r.has_rgb for r in results)
                    samples += sample_records(runs[number].label, results)
                    written = None if export is None else export.write(number, runs[number].label, name, results)
                    for protocol in config.protocols:
                        for block in BLOCKS:
                            if protocol == OFFICIAL:  # from the files just written, read back
                                pending[number, protocol, block, name] = submit(metrics_pool, official_class_metrics,
                                                                                written[block])
                            else:
                                pending[number, protocol, block, name] = submit(metrics_pool, class_metrics, results,
                                                                                block, protocol)
                    if drawn and k == 0:
                        write_class_figures(config.figures, name, results, store, backbone.label)
                if progress is not None:
                    progress(f"{name}: {len(rows)} samples, {len(group)} run(s) of {backbone.label}")
            if bar is not None:
                bar.update(len(rows))
    for (number, protocol, block, name), metrics in pending.items():
        per_run[number][protocol, block, name] = metrics.result()
    values = _collect(per_run, config.protocols)
    tested = [c for c in classes if any((config.protocols[0], "point", c) in metrics for metrics in per_run)]
    training_classes = sorted({t["class_name"] for t in trainings})
    if not tested:
        raise PointADError(f"no test class left: dataset '{config.dataset}' classes {classes}, training "
                           f"class(es) {training_classes} (one-vs-rest leaves out each run's class)")
    header = {"model": runs[0].backbone.label, "method": config.method, "setting": config.setting,
              "dataset": config.dataset, "training_classes": training_classes,
              "training_datasets": sorted({t.get("dataset") or "" for t in trainings} - {""}),
              "prompts": sorted({t.get("prompt", "agnostic") for t in trainings}),
              "protocols": list(config.protocols), "runs": len(runs), "store": str(config.store)}
    if config.figures is not None:
        header["figures"] = str(config.figures)
    header["protocol_definitions"] = {p: PROTOCOL_DEFINITIONS[p] for p in config.protocols}
    if export is not None:
        header["export_maps"] = str(export.base)
        header["export_manifest"] = str(export.finish(header))
    blocks = BLOCKS if has_rgb else ("point",)
    report = Report(header=header, blocks=blocks, classes=tested, values=values, samples=samples)
    return attach_paper(report) if config.compare_paper else report


def sample_records(run: str, results) -> list[dict]:
    """One dict per scored sample of a run: run (its label), dataset, class, sample_id, row, label (0/1), the
    sample score per block ("point", "rgb", "multimodal"; None without RGB) and, when scored for the
    pointad-compat protocol, "pointad-compat": {block: the released code's sample score}. What the tables'
    sample metrics (I-AUROC, AP) are computed from, so they can be recomputed or re-thresholded."""
    def number(value):
        return None if value is None or not math.isfinite(float(value)) else float(value)
    records = []
    for r in results:
        record = {"run": run, "dataset": r.identity["dataset"], "class": r.identity["class_name"],
                  "sample_id": r.identity["sample_id"], "row": int(r.identity.get("row", -1)),
                  "label": int(r.identity["label"]), "point": number(r.score), "rgb": number(r.rgb_score),
                  "multimodal": number(r.multimodal_score)}
        if r.compat is not None:
            record["pointad-compat"] = {block: number(score) for block, (_, score) in r.compat.items()}
        records.append(record)
    return records


def _by_backbone(runs: list[Scorer], numbers: list[int]) -> list[list[int]]:
    """The run numbers grouped by the frozen model object they use, in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for number in numbers:
        groups.setdefault(id(runs[number].backbone), []).append(number)
    return list(groups.values())


def _collect(per_run: list[dict], protocols) -> dict:
    """values[(protocol, block, class)][metric] = one value per run that tested the class; the mean row
    holds each run's mean over its tested classes (finite values only)."""
    values: dict = {}
    for metrics_of in per_run:
        for key, metrics in metrics_of.items():
            for metric, value in metrics.items():
                values.setdefault(key, {}).setdefault(metric, []).append(value)
        tested = sorted({name for (_, _, name) in metrics_of})
        for protocol in protocols:
            for block in BLOCKS:
                for metric in METRICS:
                    column = [metrics_of[protocol, block, name][metric] for name in tested]
                    finite = [v for v in column if math.isfinite(v)]
                    values.setdefault((protocol, block, MEAN_ROW), {}).setdefault(metric, []).append(
                        float(np.mean(finite)) if finite else math.nan)
    return values


# --- the paper's numbers ------------------------------------------------------------------------------------

def paper_method(header: dict) -> str | None:
    """The paper's row for this report: clip-rendering, pointad (agnostic prompts) or pointad-coop; None if
    the runs mix prompt kinds."""
    if header["method"] == "clip-rendering":
        return "clip-rendering"
    prompts = header.get("prompts") or ["agnostic"]
    if len(prompts) != 1:
        return None
    return "pointad-coop" if prompts[0] == "coop" else "pointad"


def attach_paper(report: Report) -> Report:
    """Fill `report.paper` with the paper's tables of the same method, setting and datasets (eval/paper.py)
    and say in the header which tables, or why none."""
    h = report.header
    if h["method"] == MUTUAL:  # not in the PointAD paper: MuSc-V2's published means (eval/mutual.py)
        attach_published(report)
        return report
    method = paper_method(h)
    trained_on = h["training_datasets"][0] if len(h.get("training_datasets", [])) == 1 else None
    report.paper, tables = {}, []
    if method is not None:
        for block in report.blocks:
            report.paper[block] = published(method, h["setting"], h["dataset"], block, trained_on)
            number = table_number(method, h["setting"], h["dataset"], block, trained_on)
            if number is not None:
                tables.append(f"Table {number} ({block})")
    if tables:
        h["paper"] = (f"PointAD paper, {', '.join(tables)}, method {method}; the paper's numbers come from the "
                      f"released code: compare with protocol pointad-compat")
    else:
        h["paper"] = (f"the paper publishes no table for method {method or 'mixed prompts'}, setting "
                      f"{h['setting']}, test dataset {h['dataset']}")
    return report


# --- output formats -----------------------------------------------------------------------------------------

def header_line(report: Report) -> str:
    """One line naming the model label, method, setting, data, training class(es) and protocol."""
    h = report.header
    trained = ", ".join(map(_md, h["training_classes"])) or "none (no training)"
    return (f"model: {_md(h['model'])} | method: {h['method']} | setting: {h['setting']} | test dataset: "
            f"{_md(h['dataset'])} | training class(es): {trained} | protocol: {', '.join(h['protocols'])} | "
            f"runs: {h['runs']}")


def _md(name) -> str:
    """A name from data as markdown text on one line: controls and bidi overrides escaped (`printable`), and
    '|' escaped so a class called 'a|b' cannot add a table column."""
    return printable(name).replace("|", "\\|")


def _percent(mean: float, std: float, runs: int) -> str:
    if runs == 0:
        return "n/a"
    return f"{100 * mean:.1f}" if runs == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _paper_cells(report: Report, protocol: str, block: str, name: str, metric: str) -> list[str]:
    """[paper value, ours - paper] in percent points, "-" where either is missing."""
    ours, _, runs = report.cell(protocol, block, name, metric)
    theirs = report.published(block, name, metric)
    if theirs is None:
        return ["-", "-"]
    return [f"{100 * theirs:.1f}", "-" if runs == 0 else f"{100 * (ours - theirs):+.1f}"]


def to_markdown(report: Report) -> str:
    """The paper's shape: one table per protocol and block, rows = classes + mean, values in percent.

    With the paper attached, each metric of a block the paper publishes has three columns: ours, the
    paper's value and the difference (ours - paper, in percent points).
    """
    lines = [f"# PointAD evaluation: {_md(report.header['dataset'])}", "", header_line(report), ""]
    if "paper" in report.header:
        lines += [f"paper: {report.header['paper']}", ""]
    for protocol in report.header["protocols"]:
        for block in report.blocks:
            compare = bool((report.paper or {}).get(block))
            names = [f"{t} | paper | Δ" if compare else t for t in METRICS.values()]
            columns = 3 * len(METRICS) if compare else len(METRICS)
            lines += [f"## {block} ({protocol})", "", f"protocol {protocol}: {_protocol_note(report, protocol)}", "",
                      "| class | " + " | ".join(names) + " |", "|---|" + "---:|" * columns]
            for name in [*report.classes, MEAN_ROW]:
                cells = []
                for metric in METRICS:
                    cells.append(_percent(*report.cell(protocol, block, name, metric)))
                    if compare:
                        cells += _paper_cells(report, protocol, block, name, metric)
                shown = f"**{name}**" if name == MEAN_ROW else _md(name)
                lines.append(f"| {shown} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _protocol_note(report: Report, protocol: str) -> str:
    """What the numbers of a table follow (PROTOCOL_DEFINITIONS); for mvtec-official, also where the maps are."""
    note = report.header.get("protocol_definitions", PROTOCOL_DEFINITIONS).get(protocol, PROTOCOL_DEFINITIONS[protocol])
    if protocol == OFFICIAL and "export_maps" in report.header:
        note += f" (maps: {_md(report.header['export_maps'])}/run-<k>/<block>)"
    return note


def to_records(report: Report) -> list[dict]:
    """One dict per table row: protocol, block, class, then per metric its mean, std and runs (fractions);
    with the paper attached also "<metric> paper" and "<metric> diff" (ours - paper), None where missing."""
    records = []
    for protocol, block, name in report.rows():
        record = {"protocol": protocol, "block": block, "class": name}
        for metric, title in METRICS.items():
            mean, std, runs = report.cell(protocol, block, name, metric)
            record |= {title: None if runs == 0 else mean, f"{title} std": None if runs == 0 else std,
                       f"{title} runs": runs}
            if report.paper is not None:
                theirs = report.published(block, name, metric)
                record |= {f"{title} paper": theirs,
                           f"{title} diff": None if theirs is None or runs == 0 else mean - theirs}
        records.append(record)
    return records


def to_csv(report: Report) -> str:
    """CSV with the header fields repeated on every row (model, method, setting, dataset, training classes)."""
    h = report.header
    fixed = {"model": h["model"], "method": h["method"], "setting": h["setting"], "dataset": h["dataset"],
             "training_classes": " ".join(h["training_classes"])}
    records = [fixed | r for r in to_records(report)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if v is None else f"{v:.6g}" if isinstance(v, float) else v
                         for k, v in record.items()})
    return buffer.getvalue()


def to_json(report: Report) -> str:
    """{"header": ..., "blocks": ..., "rows": [...], "samples": [...]}, undefined values as null; samples: the
    per-sample scores of every run (`sample_records`), from which the sample metrics of the rows follow."""
    return json.dumps({"header": report.header | {"line": header_line(report)}, "blocks": list(report.blocks),
                       "rows": to_records(report), "samples": report.samples}, indent=2, allow_nan=False) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json}


def write_report(report: Report | list[Report], fmt: str, out=None) -> str:
    """Return the report as text in `fmt`; also written atomically to `out` when given.

    Several reports (one per test dataset) make one text: markdown sections one after the other, one CSV
    table (every row names its dataset), or a JSON list.
    """
    reports = report if isinstance(report, list) else [report]
    texts = [FORMATS[fmt](r) for r in reports]
    if fmt == "json" and len(texts) > 1:
        text = "[\n" + ",\n".join(t.rstrip("\n") for t in texts) + "\n]\n"
    elif fmt == "csv" and len({t.split("\n", 1)[0] for t in texts}) == 1:  # same columns: one table
        text = texts[0] + "".join(t.split("\n", 1)[1] for t in texts[1:])
    else:
        text = "\n".join(texts)
    if out is not None:
        check_file_target(out, "give a file name for the report")
        try:
            with atomic_path(Path(out)) as tmp:
                Path(tmp).write_text(text)
        except OSError as exc:  # disk full, permission denied: one line naming the file
            raise PointADError(f"{out}: cannot write the report ({exc.strerror or exc})") from None
    return text
