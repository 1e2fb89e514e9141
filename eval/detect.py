"""`pointad detect` (design §7): score one new point cloud with a trained checkpoint (PointAD), or against the
samples of a reference store (`--method mutual-scoring`, issue 13).

The cloud is read by its suffix, preprocessed as the render stage does (an organized .tiff as MVTec
3D-AD: resize to the image size, background plane removed, flipped; an unorganized .ply/.pcd/.las/.laz/.e57/
.xyz/.npy as Real3D-AD: farthest-point sampled to max_points, no plane, no flip), rendered in this process with
`render.sample_render.render_sample` and scored with `eval.scoring.score_arrays` (PointAD) or
`eval.mutual.score_against_reference` (mutual scoring).

Rendering: as the store was rendered (issue 10): a checkpoint records its training store's render options
(`RenderRecord.drawn` of the trained class: views, view plan, image size, supersample, the point size that
class was drawn with, lighting, renderer, max points, k, ...), and a reference store records its own; options
given to `detect` replace single ones; a checkpoint that records none (written before they were recorded,
or converted from the released code) renders with `RenderOptions`' defaults (`RenderChoice.lines` says
which came from where). The image size and max points also set the preprocessing, as in `render build`;
the store records no other preprocessing options, so the format's defaults apply, chosen by suffix.

Scores are reported for the INPUT points, in input order: preprocessing and rendering may drop points
(missing or background cells, farthest-point sampling to max_points, the grid resize, the store's
`--downsample`), so every input point takes the score of its nearest scored point, a point of the
rendered row (scipy cKDTree, in the input's frame: the flip is undone first); a scored point is its own
nearest. Outputs, written atomically: `scores.npy` (P,) float32; `scores.ply`, the input
points coloured by score on a linear blue -> red ramp over the scores' range (or centred on --threshold),
with the score itself as a float property (`eval.figures.write_scored_ply`); `scores.json`, the sample
score, the colour scale used and the threshold's verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..render.background import rigid_transform
from ..render.options import RenderOptions
from ..render.preprocess import (
    PreprocessOptions,
    check_finite_grid,
    flip_x180,
    options_for_format,
    preprocess_organized,
)
from ..render.rasterize import worker_rasterizer
from ..render.readers import preprocess_cloud, preprocess_options
from ..render.readers.eyecandies import layout_options, read_pose, read_raw_xyz
from ..render.readers.files import POINT_SUFFIXES, read_point_cloud, read_xyz_tiff
from ..render.sample_render import render_sample
from ..shared.errors import ConfigError, InputFileError, PointADError
from ..shared.io import atomic_path
from ..shared.layouts import eyecandies_raw_files
from ..shared.registry import ORGANIZED_FORMATS, DatasetEntry
from ..shared.sample import Sample
from ..shared.store import open_store
from ..shared.strict import from_dict
from ..train.model.checkpoint import load_checkpoint
from ..train.model.model_config import DEFAULT_MODEL, DEFAULT_SEED, load_model_config
from .class_metrics import require_finite_scores
from .figures import color_scale, write_scored_ply
from .mutual import mutual_model_config, score_against_reference
from .options import MUTUAL, MutualOptions
from .runs import BackboneCache, load_run, resolve_checkpoint
from .scoring import score_arrays

ORGANIZED = (".tiff", ".tif")
RAW_DEPTH = "_depth.png"  # a raw Eyecandies sample: <id>_depth.png with <id>_info_depth.yaml beside it
OUTPUT_FILES = ("scores.npy", "scores.ply", "scores.json")  # written in the --out folder
UNORGANIZED = POINT_SUFFIXES  # .ply .pcd .las .laz .e57 .xyz .npy
CLASS_NAME = "object"  # a new cloud's class is unknown; only coop prompts read it
RENDER_FIELDS = tuple(f.name for f in fields(RenderOptions))
# the frozen model's random weights for mutual scoring: `eval report`'s (eval.report.BASELINE_SEED; a test checks)
MUTUAL_SEED = DEFAULT_SEED


@dataclass(frozen=True)
class RenderChoice:
    """options: what the cloud is rendered with (max_points: the preprocessing's cap, as in the store);
    sources: option -> "recorded", "command line" or "default"; origin: what recorded them ("checkpoint
    runs/x/checkpoints/epoch_15.pt"); recorded: whether it recorded any."""

    options: RenderOptions
    sources: dict
    origin: str
    recorded: bool

    def lines(self) -> list[str]:
        """What `detect` says first: each option's value, grouped by where it came from."""
        def listed(source):
            return ", ".join(f"{k} {getattr(self.options, k)}" for k in RENDER_FIELDS if self.sources[k] == source)
        out = []
        if self.recorded:
            out.append(f"render options recorded in {self.origin}: {listed('recorded')}")
        else:
            out.append(f"{self.origin} records no render options (older, or imported from the released code); "
                       "RenderOptions' defaults apply")
        if listed("command line"):
            out.append(f"render options from the command line: {listed('command line')}")
        if listed("default"):
            out.append(f"render options by default{' (not recorded)' if self.recorded else ''}: {listed('default')}")
        return out


def choose_render(recorded: dict | None, origin: str, **overrides) -> RenderChoice:
    """Render options: each from `overrides` (RenderOptions field names; None = not given), else from the
    `recorded` mapping, else RenderOptions' default. `masks` follows an overridden renderer (a new cloud has
    no labels: its mask views are empty either way). ConfigError for an unknown or invalid option."""
    unknown = sorted(set(overrides) - set(RENDER_FIELDS))
    if unknown:
        raise ConfigError(f"unknown render option(s) {unknown}; known: {', '.join(RENDER_FIELDS)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    recorded = dict(recorded or {})
    if "renderer" in given and "masks" not in given:
        recorded.pop("masks", None)
    values, sources = {}, {}
    for name in RENDER_FIELDS:
        if name in given:
            values[name], sources[name] = given[name], "command line"
        elif name in recorded:
            values[name], sources[name] = recorded[name], "recorded"
        else:
            sources[name] = "default"
    options = from_dict(RenderOptions, values, f"render options ({origin} and the command line)")
    return RenderChoice(options=options, sources=sources, origin=origin, recorded=bool(recorded))


def checkpoint_render(checkpoint, **overrides) -> RenderChoice:
    """`choose_render` with the render options the checkpoint recorded (its training store's)."""
    path = resolve_checkpoint(checkpoint)
    return choose_render(load_checkpoint(path).get("render"), f"checkpoint {path}", **overrides)


@dataclass(frozen=True)
class Reference:
    """The reference samples of `detect --method mutual-scoring`: store, dataset, class, its test rows, and
    the rows left out because they hold the cloud itself (sample ids)."""

    store: str
    dataset: str
    class_name: str
    rows: list
    excluded: list = field(default_factory=list)


def reference_rows(store_path, dataset: str | None = None, class_name: str | None = None) -> Reference:
    """The complete test rows of `class_name` in `dataset` of the store (defaults: its only dataset, the
    dataset's only class); PointADError naming what is present otherwise."""
    store = open_store(store_path)
    dataset = store.choose_dataset(dataset)
    classes = sorted({store.identity(int(i))["class_name"] for i in store.indices(dataset=dataset, split="test")})
    if class_name is None:
        if len(classes) != 1:
            raise PointADError(f"{store_path}: dataset '{dataset}' holds classes {', '.join(classes)}; "
                               "choose one with --class")
        class_name = classes[0]
    if class_name not in classes:
        raise PointADError(f"{store_path}: dataset '{dataset}' has no test samples of class '{class_name}' "
                           f"(classes: {', '.join(classes) or 'none'})")
    rows = [int(r) for r in store.indices(dataset=dataset, class_name=class_name, split="test")]
    return Reference(store=str(store_path), dataset=dataset, class_name=class_name, rows=rows)


def reference_render(reference: Reference, **overrides) -> RenderChoice:
    """`choose_render` with the reference store's render options, at the point size its class was drawn with."""
    record = open_store(reference.store).attrs.render.drawn(reference.dataset, reference.class_name)
    return choose_render(record, f"reference store {reference.store}", **overrides)


@dataclass(frozen=True)
class Detection:
    """score: the sample score A_s; point_scores: (P,) float32 per input point; points: (P, 3) the input;
    cloud, checkpoint: what was scored with what (as given); method: pointad or mutual-scoring; render: how
    the cloud was rendered; reference: the reference samples (mutual scoring); preprocessed_as: how the cloud
    was preprocessed, in words (`Preprocessing.line`, `by_suffix_line`)."""

    score: float
    points: np.ndarray
    point_scores: np.ndarray
    cloud: str = ""
    checkpoint: str = ""
    method: str = "pointad"
    render: RenderChoice | None = None
    reference: Reference | None = None
    preprocessed_as: str = ""


# --- reading and preprocessing ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocessing:
    """`detect --preprocess DATASET`: preprocess the cloud as the samples of this registry entry (its class's
    options where class_name names one of its classes with options of its own)."""

    entry: DatasetEntry
    class_name: str = ""

    def line(self) -> str:
        return f"preprocessed as dataset '{self.entry.name}' ({self.entry.format}) samples" + (
            f" of class '{self.class_name}'" if self.class_name else "")


def _preprocessed_as(cloud, like: Preprocessing | None) -> str:
    return like.line() if like is not None else by_suffix_line(cloud)


def by_suffix_line(cloud) -> str:
    """What `detect` says when no --preprocess is given (a raw Eyecandies depth image always has one)."""
    like = "MVTec 3D-AD's" if Path(cloud).suffix.lower() in ORGANIZED else "Real3D-AD's"
    return f"preprocessed as {like} samples (by suffix; --preprocess DATASET to take a dataset's options)"


def check_cloud_path(path) -> Path:
    """The path, if it names an existing file of a readable suffix (else InputFileError): checked before the
    model or the store is read."""
    path = Path(path)
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, not a point cloud file")
    if path.suffix.lower() not in ORGANIZED + UNORGANIZED and not _is_raw_depth(path):
        raise InputFileError(f"{path}: unsupported suffix '{path.suffix}' (use one of "
                             f"{', '.join(UNORGANIZED + ORGANIZED)}, or a raw Eyecandies <id>{RAW_DEPTH})")
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    return path


def _is_raw_depth(path: Path) -> bool:
    return path.name.lower().endswith(RAW_DEPTH)


def check_preprocessing(path: Path, like: Preprocessing | None) -> None:
    """InputFileError where the cloud and `--preprocess` do not go together (checked before the model is read): a
    raw Eyecandies depth image needs an Eyecandies dataset's options (its belt box and clustering are the
    dataset's); a dataset of organized scans takes only those, one of unorganized clouds only clouds."""
    raw = _is_raw_depth(path)
    if raw and (like is None or like.entry.format != "eyecandies"):
        said = "" if like is None else f"; dataset '{like.entry.name}' is {like.entry.format} format"
        raise InputFileError(f"{path}: a raw Eyecandies depth image is preprocessed as an Eyecandies dataset's samples "
                             f"(belt box, clustering): give --preprocess DATASET, e.g. eyecandies{said}")
    if like is not None and (like.entry.format in ORGANIZED_FORMATS) != (raw or path.suffix.lower() in ORGANIZED):
        kind = "organized scans (.tiff)" if like.entry.format in ORGANIZED_FORMATS else "unorganized clouds"
        raise InputFileError(f"{path}: --preprocess {like.entry.name} is for {kind} ({like.entry.format} format); "
                             "this cloud is not one")


def load_cloud(path: Path, image_size: int = RenderOptions.image_size, max_points: int = RenderOptions.max_points,
               like: Preprocessing | None = None) -> tuple[np.ndarray, Sample, PreprocessOptions]:
    """(input points (P, 3) float64, preprocessed `Sample` with zero labels, the options used).

    The input points of an organized .tiff are its measured cells in row-major order; of a raw Eyecandies depth
    image its measured pixels, back-projected (and moved by its pose where the options apply it). image_size,
    max_points: the store's, as `render build` preprocesses its samples. like: preprocess as that dataset's
    samples (its registry options: background, cleanup, flip, units); None: by suffix, MVTec 3D-AD's for a .tiff,
    Real3D-AD's for the others (a depth image needs one: `check_preprocessing`).
    """
    path = check_cloud_path(path)
    suffix = path.suffix.lower()
    identity = dict(dataset="detect", class_name=CLASS_NAME, split="test", defect_type="unknown",
                    sample_id=path.name, label=0)
    sizes = {"image_size": image_size, "max_points": max_points}
    check_preprocessing(path, like)
    raw = _is_raw_depth(path)
    try:
        if suffix in ORGANIZED or raw:
            options = (options_for_format("mvtec3d", sizes) if like is None
                       else preprocess_options(like.entry, like.class_name, **sizes))
            if like is not None and like.entry.format == "eyecandies":  # a .tiff is of the converted layout
                options = layout_options(options, raw=raw)
            pose = None
            if raw:
                files = eyecandies_raw_files(path.with_name(path.name[:-len(RAW_DEPTH)]))
                xyz = read_raw_xyz(files["depth"], files["info_depth"])
                pose = read_pose(files["pose"]) if options.apply_pose else None
            else:
                xyz = read_xyz_tiff(path)
            measured = check_finite_grid(xyz)
            result = preprocess_organized(xyz, None, None, options, pose)
            sample = Sample(**identity, points=result.points, point_labels=result.point_labels,
                            grid_hw=(image_size, image_size), grid_index=result.grid_index,
                            grid_mask=result.grid_mask)
            points = xyz[measured].astype(np.float64)
            return (points if pose is None else rigid_transform(points, pose)), sample, options
        options = (options_for_format("real3d", sizes) if like is None
                   else preprocess_options(like.entry, like.class_name, **sizes))
        points = read_point_cloud(path)
        kept, labels = preprocess_cloud("real3d" if like is None else like.entry.format, points,
                                        np.zeros(len(points), np.uint8), options)
    except ValueError as exc:
        if isinstance(exc, InputFileError):
            raise
        raise InputFileError(f"{path}: {exc}") from exc
    return points, Sample(**identity, points=kept, point_labels=labels), options


def to_input_points(input_points: np.ndarray, scored_points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(P,) float32: each input point gets the score of its nearest scored point (both in the input frame)."""
    if len(scored_points) != len(scores):  # scores of other points would map wrong, or fail far from here
        raise ValueError(f"{len(scores)} point scores for {len(scored_points)} scored points")
    _, nearest = cKDTree(np.asarray(scored_points, np.float64)).query(np.asarray(input_points, np.float64))
    return np.asarray(scores, np.float32)[nearest]


# --- the command's work ---------------------------------------------------------------------------------

def render_cloud(cloud, choice: RenderChoice, device="cpu", like: Preprocessing | None = None):
    """(input points (P, 3), preprocessed `Sample`, the rendered row's points in the input frame, the rendered
    row `SampleArrays`): the cloud read, preprocessed (`load_cloud`'s `like`) and rendered as `choice` says. The
    row holds fewer points than the sample with a `downsample` below 1; its points are the ones scored."""
    options = choice.options
    input_points, sample, prep = load_cloud(Path(cloud), options.image_size, options.max_points, like)
    options = replace(options, max_points=max(sample.n_points, 1))  # no padding slots: they change no score
    if options.normals == "grid" and sample.grid_index is None:
        raise InputFileError(f"{cloud}: the run was rendered with --normals grid, which needs an organized cloud "
                             "(.tiff); this one has no grid")
    rasterizer = (None if options.renderer == "splat"
                  else worker_rasterizer(options.image_size * options.supersample, options.renderer))
    arrays = render_sample(sample, options, rasterizer, device=device)
    rendered = row_points(arrays)
    return input_points, sample, flip_x180(rendered) if prep.flip else rendered, arrays


def row_points(arrays) -> np.ndarray:
    """(n, 3) float32: the points of a rendered row (`SampleArrays`), those its point scores are for."""
    return np.asarray(arrays.xyz)[np.asarray(arrays.valid)]


def detect(cloud, checkpoint, *, device="cpu", clip_weights=None, render: RenderChoice | None = None,
           like: Preprocessing | None = None, **overrides) -> Detection:
    """Read, preprocess, render and score one cloud with a trained run; see the module docstring.

    render: the options (default: `checkpoint_render(checkpoint, **overrides)`); overrides: RenderOptions
    fields (views=3, point_size=2.0, ...) replacing the recorded ones."""
    choice = render if render is not None else checkpoint_render(checkpoint, **overrides)
    run = load_run(checkpoint, BackboneCache(clip_weights, device))
    input_points, sample, scored_points, arrays = render_cloud(cloud, choice, device, like)
    autocast = str(device).startswith("cuda")
    scored = score_arrays(arrays, {"class_name": CLASS_NAME, "sample_id": sample.sample_id}, run.backbone,
                          run.text, device, autocast=autocast)
    require_finite_scores([scored], f"checkpoint {checkpoint}")
    return Detection(score=float(scored.score), points=input_points,
                     point_scores=to_input_points(input_points, scored_points, scored.point_scores), cloud=str(cloud),
                     checkpoint=str(checkpoint), render=choice, preprocessed_as=_preprocessed_as(cloud, like))


def same_cloud_rows(store_path, rows, points: np.ndarray, chunk: int = 16) -> list[int]:
    """The rows of `rows` whose points are `points` (P, 3) (in the store's frame, to float32 rounding: 1e-5 of
    the cloud's extent): a store sample given as the cloud, which mutual scoring never scores against itself."""
    store = open_store(store_path)
    points = np.asarray(points, np.float64)
    tolerance = 1e-5 * max(float(np.ptp(points, axis=0).max()) if len(points) else 0.0, 1e-12)
    found = []
    for start in range(0, len(rows), chunk):
        part = list(rows[start:start + chunk])
        batch = store.read_batch(part, ("xyz", "valid"))
        for row, xyz, valid in zip(part, batch["xyz"], batch["valid"]):
            stored = xyz[valid].astype(np.float64)
            if stored.shape == points.shape and np.abs(stored - points).max(initial=0.0) <= tolerance:
                found.append(int(row))
    return found


def detect_mutual(cloud, reference: Reference, *, model: str = DEFAULT_MODEL, clip_weights=None, device="cpu",
                  options: MutualOptions = MutualOptions(), batch_size: int = 4, render: RenderChoice | None = None,
                  like: Preprocessing | None = None, **overrides) -> Detection:
    """Score one cloud against the reference samples by mutual scoring (`eval.mutual.score_against_reference`:
    the frozen model's plain path, tapped at options.layers, random weights of `eval report`'s seed for the
    tiny model). A reference row holding the cloud itself is left out (`same_cloud_rows`), as `eval report`
    leaves each sample out of its own reference. render: default `reference_render(reference, **overrides)`."""
    choice = render if render is not None else reference_render(reference, **overrides)
    input_points, sample, scored_points, arrays = render_cloud(cloud, choice, device, like)
    excluded = same_cloud_rows(reference.store, reference.rows, row_points(arrays))  # rows hold rendered points
    rows = [r for r in reference.rows if r not in excluded]
    if not rows:
        raise PointADError(f"{reference.store}: no reference sample of {reference.dataset}/{reference.class_name} "
                           "besides the cloud itself")
    store = open_store(reference.store)
    reference = replace(reference, rows=rows, excluded=[store.identity(r)["sample_id"] for r in excluded])
    config = mutual_model_config(load_model_config(model), options.layers)
    backbone = BackboneCache(clip_weights, device).get(config, MUTUAL_SEED)
    scored = score_against_reference(arrays, {"class_name": reference.class_name, "sample_id": sample.sample_id},
                                     reference.store, rows, backbone, options, device, batch_size,
                                     autocast=str(device).startswith("cuda"))
    require_finite_scores([scored], f"reference store {reference.store}")
    return Detection(score=float(scored.score), points=input_points,
                     point_scores=to_input_points(input_points, scored_points, scored.point_scores), cloud=str(cloud),
                     checkpoint="", method=MUTUAL, render=choice, reference=reference,
                     preprocessed_as=_preprocessed_as(cloud, like))


def detection_summary(result: Detection, vmin: float, vmax: float, threshold: float | None = None) -> dict:
    """What `scores.json` holds: the sample score, the number of points, the colour scale of scores.ply
    (blue = vmin, red = vmax) and, with a threshold, the verdict (anomalous when score >= threshold)."""
    summary = {"cloud": result.cloud, "method": result.method, "checkpoint": result.checkpoint or None,
               "sample_score": float(result.score), "points": int(len(result.point_scores)),
               "colour_scale": {"vmin": float(vmin), "vmax": float(vmax),
                                "from": "threshold" if threshold is not None else "scores"},
               "threshold": None if threshold is None else float(threshold)}
    if threshold is not None:
        summary["anomalous"] = bool(result.score >= threshold)
    if result.preprocessed_as:
        summary["preprocessed_as"] = result.preprocessed_as
    if result.render is not None:
        summary["render"] = {"options": result.render.options.to_dict(), "from": result.render.sources,
                             "recorded_in": result.render.origin if result.render.recorded else None}
    if result.reference is not None:
        ref = result.reference
        summary["reference"] = {"store": ref.store, "dataset": ref.dataset, "class": ref.class_name,
                                "samples": len(ref.rows), "excluded": ref.excluded,
                                "sample_score": "maximum of the point scores, not re-scored"}
    return summary


def write_detection(result: Detection, out: Path, threshold: float | None = None) -> tuple[Path, Path, Path]:
    """Write out/scores.npy, out/scores.ply and out/scores.json atomically; return their paths.

    The PLY's colour scale is `color_scale(point scores, threshold)`: the scores' range, or centred on the
    threshold when one is given, so a model whose scores sit in a narrow band still shows its contrast."""
    out = Path(out)
    npy, ply, summary = (out / name for name in OUTPUT_FILES)
    with atomic_path(npy) as tmp:
        np.save(tmp, result.point_scores.astype(np.float32))
    vmin, vmax = color_scale(result.point_scores, threshold)
    write_scored_ply(ply, result.points, result.point_scores, vmin, vmax, threshold=threshold,
                     comments=[f"pointad sample_score {float(result.score)!r}"])
    with atomic_path(summary) as tmp:
        summary = detection_summary(result, vmin, vmax, threshold)
        Path(tmp).write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return npy, ply, summary
