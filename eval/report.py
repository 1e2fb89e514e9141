"""`eval report` (SPEC 7): score a store with trained prompts (or the clip-rendering baseline) and tabulate.

Per run (one checkpoint) and test class: every test sample is scored by `eval.scoring.score_store`, then
I-AUROC and AP (sample level), P-AUROC and AUPRO (point level) are computed per block (point, RGB,
multimodal) and protocol:
- `points`: only valid points count. AUPRO: organized classes -> `aupro_organized` on the grid built
  from grid_index (valid = cells holding a point); unorganized -> `aupro_graph` on the stored k-NN graph.
- `pointad-compat`: the released code's view: its grid maps and sample scores (`eval.scoring`, compat:
  missing cells 0 before a plain Gaussian), the whole organized grid (grid_hw, 336 x 336 in the paper's
  stores) with label 0 in missing cells, P-AUROC over every cell and `aupro_pointad_compat`. Classes with
  unorganized samples keep the `points` sample metrics and get nan point metrics (no grid to fill).
Per run, the mean row is the mean over its test classes where a value is defined; across runs every
cell is mean ± std (population std) of the runs that tested that class. The point scores of one class are held at a time, never the whole store.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eval.metrics import aupro_graph, aupro_organized, aupro_pointad_compat, image_metrics, point_auroc
from eval.runs import BackboneCache, load_run
from eval.scoring import SampleScores, baseline_text_features, score_store
from shared.errors import CheckpointMismatchError, ConfigError, PointADError
from shared.io import atomic_path
from shared.store import open_store
from train.model_config import load_model_config

BLOCKS = ("point", "rgb", "multimodal")
METRICS = {"i_auroc": "I-AUROC", "ap": "AP", "p_auroc": "P-AUROC", "aupro": "AUPRO"}
PROTOCOLS = ("points", "pointad-compat")
SETTINGS = ("one-vs-rest", "cross-dataset")
METHODS = ("pointad", "clip-rendering")
BASELINE_SEED = 111  # TrainConfig's default seed: the tiny model's random weights for the baseline
MEAN_ROW = "mean"


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    """One `eval report`. checkpoints: run directories (their last checkpoint) or checkpoint files;
    model: only for the clip-rendering baseline (a run's model comes from its checkpoint)."""

    store: str
    dataset: str
    setting: str = "one-vs-rest"
    checkpoints: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None
    protocol: str = "points"
    method: str = "pointad"
    model: str = "vit-l-14-336"
    clip_weights: str | None = None
    batch_size: int = 4

    def __post_init__(self):
        for name, allowed in (("setting", SETTINGS), ("method", METHODS), ("protocol", (*PROTOCOLS, "both"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.method == "pointad" and not self.checkpoints:
            raise ConfigError("--method pointad needs --checkpoints (run directories or checkpoint files)")
        if self.method == "clip-rendering" and self.checkpoints:
            raise ConfigError("--method clip-rendering uses no training; drop --checkpoints")

    @property
    def protocols(self) -> tuple[str, ...]:
        return PROTOCOLS if self.protocol == "both" else (self.protocol,)


@dataclass
class Report:
    """header: what was evaluated; values[(protocol, block, class)][metric] = one value per run that tested it."""

    header: dict
    blocks: tuple[str, ...]
    classes: list[str]
    values: dict = field(default_factory=dict)

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


# --- metrics of one class ------------------------------------------------------------------------------

def _block_arrays(results: list[SampleScores], block: str):
    """(samples, sample scores, point scores per sample) of one block; RGB blocks keep samples with RGB."""
    if block == "point":
        return results, [r.score for r in results], [r.point_scores for r in results]
    kept = [r for r in results if r.has_rgb]
    return (kept, [getattr(r, f"{block}_score") for r in kept], [getattr(r, f"{block}_point_scores") for r in kept])


def _grid_maps(samples, point_scores):
    """(labels, scores, valid) (N, H, W) on the organized grids, padded to the largest grid (valid False)."""
    height = max(s.grid_hw[0] for s in samples)
    width = max(s.grid_hw[1] for s in samples)
    labels = np.zeros((len(samples), height, width), np.uint8)
    scores = np.zeros((len(samples), height, width), np.float64)
    valid = np.zeros((len(samples), height, width), bool)
    for i, (sample, values) in enumerate(zip(samples, point_scores)):
        rows, cols = np.divmod(sample.grid_index, sample.grid_hw[1])
        labels[i, rows, cols], scores[i, rows, cols], valid[i, rows, cols] = sample.point_labels, values, True
    return labels, scores, valid


def _graph_arrays(samples, point_scores):
    """(labels, scores, knn, valid) (N, n_max[, k]) of unorganized samples, padded (valid False, knn -1)."""
    n_max = max(len(s.point_labels) for s in samples)
    k = samples[0].knn.shape[1]
    labels = np.zeros((len(samples), n_max), np.uint8)
    scores = np.zeros((len(samples), n_max), np.float64)
    knn = np.full((len(samples), n_max, k), -1, np.int32)
    valid = np.zeros((len(samples), n_max), bool)
    for i, (sample, values) in enumerate(zip(samples, point_scores)):
        n = len(sample.point_labels)
        labels[i, :n], scores[i, :n], knn[i, :n], valid[i, :n] = sample.point_labels, values, sample.knn, True
    return labels, scores, knn, valid


def _compat_arrays(samples, block):
    """(labels, scores (N, H, W), sample scores) of the released code's grid maps (`SampleScores.compat`)."""
    if any(s.compat is None for s in samples):
        raise ValueError("pointad-compat needs samples scored with compat=True")
    labels, _, _ = _grid_maps(samples, [s.point_labels for s in samples])  # missing cells: label 0
    scores = np.zeros(labels.shape, np.float64)
    for i, sample in enumerate(samples):
        grid = sample.compat[block][0]
        scores[i, :grid.shape[0], :grid.shape[1]] = grid
    return labels, scores, [s.compat[block][1] for s in samples]


def class_metrics(results: list[SampleScores], block: str, protocol: str) -> dict[str, float]:
    """{i_auroc, ap, p_auroc, aupro} of one class's scored samples in one block and protocol (nan if undefined)."""
    samples, sample_scores, point_scores = _block_arrays(results, block)
    if not samples:
        return {name: math.nan for name in METRICS}
    sample_labels = np.array([s.identity["label"] for s in samples])
    organized = all(s.organized for s in samples)
    if protocol == "points":
        out = image_metrics(sample_labels, np.array(sample_scores))
        out["p_auroc"] = point_auroc(np.concatenate([s.point_labels for s in samples]), np.concatenate(point_scores))
        if organized:
            out["aupro"] = aupro_organized(*_grid_maps(samples, point_scores))
        else:
            labels, scores, knn, valid = _graph_arrays(samples, point_scores)
            out["aupro"] = aupro_graph(labels, scores, knn, valid)
    elif organized:
        labels, scores, compat_scores = _compat_arrays(samples, block)
        out = image_metrics(sample_labels, np.array(compat_scores))
        out["p_auroc"] = point_auroc(labels.ravel(), scores.ravel())
        out["aupro"] = aupro_pointad_compat(labels, scores)
    else:  # no grid to fill: sample metrics as in `points`, no point metrics
        out = image_metrics(sample_labels, np.array(sample_scores)) | {"p_auroc": math.nan, "aupro": math.nan}
    return out


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


def _runs(config: ReportConfig, backbones: BackboneCache):
    """Yield (label, training class or None, backbone, text features) per run."""
    if config.method == "clip-rendering":
        backbone = backbones.get(load_model_config(config.model), BASELINE_SEED)
        yield "clip-rendering", None, backbone, baseline_text_features(backbone)
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
        yield str(run.path), run.train["class_name"], run.backbone, run.text


def build_report(config: ReportConfig, device="cpu", progress=None) -> Report:
    """Score every run on its test classes and collect the metric values (see the module docstring).

    progress: optional callable taking one line per (run, class).
    """
    store = open_store(config.store)
    classes = dataset_classes(store, config.dataset)
    if config.classes:
        unknown = sorted(set(config.classes) - set(classes))
        if unknown:
            raise PointADError(f"{config.store}: dataset '{config.dataset}' has no test class(es) {unknown} "
                               f"(classes: {', '.join(classes)})")
        classes = [c for c in classes if c in config.classes]
    has_rgb = False
    values: dict = {}
    tested: set[str] = set()
    training, label = [], None
    backbones = BackboneCache(config.clip_weights, device)
    autocast = torch.device(device).type == "cuda"
    for run, train_class, backbone, text in _runs(config, backbones):
        label = backbone.label
        if train_class is not None:
            training.append(train_class)
        test = [c for c in classes if not (config.setting == "one-vs-rest" and c == train_class)]
        per_class = {}
        for name in test:
            rows = store.indices(dataset=config.dataset, class_name=name, split="test")
            results = list(score_store(config.store, rows, backbone, text, device, config.batch_size,
                                       autocast=autocast, compat="pointad-compat" in config.protocols))
            has_rgb |= any(r.has_rgb for r in results)
            for protocol in config.protocols:
                for block in BLOCKS:
                    per_class[protocol, block, name] = class_metrics(results, block, protocol)
            tested.add(name)
            if progress is not None:
                progress(f"{run}: {name} ({len(rows)} samples)")
        for (protocol, block, name), metrics in per_class.items():
            for metric, value in metrics.items():
                values.setdefault((protocol, block, name), {}).setdefault(metric, []).append(value)
        for protocol in config.protocols:
            for block in BLOCKS:
                for metric in METRICS:
                    column = [per_class[protocol, block, n][metric] for n in test]
                    finite = [v for v in column if math.isfinite(v)]
                    values.setdefault((protocol, block, MEAN_ROW), {}).setdefault(metric, []).append(
                        float(np.mean(finite)) if finite else math.nan)
    if not tested:
        raise PointADError(f"no test class left: dataset '{config.dataset}' classes {classes}, training "
                           f"class(es) {sorted(set(training))} (one-vs-rest leaves out each run's class)")
    header = {"model": label, "method": config.method, "setting": config.setting, "dataset": config.dataset,
              "training_classes": sorted(set(training)), "protocols": list(config.protocols),
              "runs": len(config.checkpoints) if config.method == "pointad" else 1, "store": str(config.store)}
    blocks = BLOCKS if has_rgb else ("point",)
    return Report(header=header, blocks=blocks, classes=[c for c in classes if c in tested], values=values)


# --- output formats -----------------------------------------------------------------------------------------

def header_line(report: Report) -> str:
    """One line naming the model label, method, setting, data, training class(es) and protocol."""
    h = report.header
    trained = ", ".join(h["training_classes"]) or "none (no training)"
    return (f"model: {h['model']} | method: {h['method']} | setting: {h['setting']} | test dataset: "
            f"{h['dataset']} | training class(es): {trained} | protocol: {', '.join(h['protocols'])} | "
            f"runs: {h['runs']}")


def _percent(mean: float, std: float, runs: int) -> str:
    if runs == 0:
        return "n/a"
    return f"{100 * mean:.1f}" if runs == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def to_markdown(report: Report) -> str:
    """The paper's shape: one table per protocol and block, rows = classes + mean, values in percent."""
    lines = [f"# PointAD evaluation: {report.header['dataset']}", "", header_line(report), ""]
    names = list(METRICS.values())
    for protocol in report.header["protocols"]:
        for block in report.blocks:
            lines += [f"## {block} ({protocol})", "", "| class | " + " | ".join(names) + " |",
                      "|---|" + "---:|" * len(names)]
            for name in [*report.classes, MEAN_ROW]:
                cells = [_percent(*report.cell(protocol, block, name, m)) for m in METRICS]
                shown = f"**{name}**" if name == MEAN_ROW else name
                lines.append(f"| {shown} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def to_records(report: Report) -> list[dict]:
    """One dict per table row: protocol, block, class, then per metric its mean, std and runs (fractions)."""
    records = []
    for protocol, block, name in report.rows():
        record = {"protocol": protocol, "block": block, "class": name}
        for metric, title in METRICS.items():
            mean, std, runs = report.cell(protocol, block, name, metric)
            record |= {title: None if runs == 0 else mean, f"{title} std": None if runs == 0 else std,
                       f"{title} runs": runs}
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
    """{"header": ..., "blocks": ..., "rows": [...]}, undefined values as null."""
    return json.dumps({"header": report.header | {"line": header_line(report)}, "blocks": list(report.blocks),
                       "rows": to_records(report)}, indent=2, allow_nan=False) + "\n"


FORMATS = {"md": to_markdown, "csv": to_csv, "json": to_json}


def write_report(report: Report, fmt: str, out=None) -> str:
    """Return the report as text in `fmt`; also written atomically to `out` when given."""
    text = FORMATS[fmt](report)
    if out is not None:
        with atomic_path(Path(out)) as tmp:
            Path(tmp).write_text(text)
    return text
