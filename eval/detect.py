"""`pointad detect` (SPEC 7): score one new point cloud with a trained checkpoint, no store involved.

The cloud is read by its suffix, preprocessed as the render stage does (an organized .tiff as MVTec
3D-AD: resize to the image size, background plane removed, flipped; an unorganized .ply/.pcd/.xyz/.npy
as Real3D-AD: farthest-point sampled to max_points, no plane, no flip), rendered in this process with
`render.sample_render.render_sample` (legacy renderer) and scored with `eval.scoring.score_arrays`.

Scores are reported for the INPUT points, in input order: preprocessing may drop points (missing
or background cells, farthest-point sampling, the grid resize), so every input point takes the score
of its nearest scored point (scipy cKDTree, in the input's frame: the flip is undone first); a kept
point is its own nearest. Outputs, written atomically: `scores.npy` (P,) float32; `scores.ply`, the input
points coloured by score on a linear blue -> red ramp over the scores' range (or centred on --threshold),
with the score itself as a float property (`eval.figures.write_scored_ply`); `scores.json`, the sample
score, the colour scale used and the threshold's verdict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from pointad.eval.figures import color_scale, write_scored_ply
from pointad.eval.runs import BackboneCache, load_run
from pointad.eval.scoring import score_arrays
from pointad.render.preprocess import (PreprocessOptions, check_finite_grid, flip_x180, options_for_format,
                               preprocess_organized, preprocess_unorganized)
from pointad.render.rasterize import worker_rasterizer
from pointad.render.readers.files import read_point_cloud, read_xyz_tiff
from pointad.render.sample_render import RenderOptions, render_sample
from pointad.shared.errors import InputFileError
from pointad.shared.io import atomic_path
from pointad.shared.sample import Sample

ORGANIZED = (".tiff", ".tif")
OUTPUT_FILES = ("scores.npy", "scores.ply", "scores.json")  # written in the --out folder
UNORGANIZED = (".ply", ".pcd", ".xyz", ".npy")
CLASS_NAME = "object"  # a new cloud's class is unknown; only coop prompts read it


@dataclass(frozen=True)
class Detection:
    """score: the sample score A_s; point_scores: (P,) float32 per input point; points: (P, 3) the input;
    cloud, checkpoint: what was scored with what (as given)."""

    score: float
    points: np.ndarray
    point_scores: np.ndarray
    cloud: str = ""
    checkpoint: str = ""


# --- reading and preprocessing ---------------------------------------------------------------------------

def _read_text_points(path: Path) -> np.ndarray:
    try:
        array = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: unreadable .xyz text ({str(exc).strip().splitlines()[0]})") from exc
    if array.shape[1] < 3:
        raise InputFileError(f"{path}: expected at least 3 columns (x y z), got {array.shape[1]}")
    return array[:, :3]


def _read_npy_points(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises many types for a corrupt file (EOFError, tokenize errors, ...)
        raise InputFileError(f"{path}: unreadable .npy ({(str(exc).strip() or type(exc).__name__).splitlines()[0]})") from exc
    if not isinstance(array, np.ndarray):  # a zip (.npz) archive under a .npy name
        array.close()
        raise InputFileError(f"{path}: expected one .npy array, got an .npz archive")
    if array.ndim != 2 or array.shape[1] != 3 or not np.issubdtype(array.dtype, np.number):
        raise InputFileError(f"{path}: expected a (P, 3) numeric array, got {array.shape} {array.dtype}")
    return array.astype(np.float64)


def load_cloud(path: Path, image_size: int = 336) -> tuple[np.ndarray, Sample, PreprocessOptions]:
    """(input points (P, 3) float64, preprocessed `Sample` with zero labels, the options used).

    The input points of an organized .tiff are its measured cells in row-major order.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise InputFileError(f"{path}: is a directory, not a point cloud file")
    if suffix not in ORGANIZED + UNORGANIZED:
        raise InputFileError(f"{path}: unsupported suffix '{path.suffix}' (use one of "
                             f"{', '.join(UNORGANIZED + ORGANIZED)})")
    if not path.is_file():
        raise InputFileError(f"{path}: file not found")
    identity = dict(dataset="detect", class_name=CLASS_NAME, split="test", defect_type="unknown",
                    sample_id=path.name, label=0)
    try:
        if suffix in ORGANIZED:
            options = options_for_format("mvtec3d", {"image_size": image_size})
            xyz = read_xyz_tiff(path)
            measured = check_finite_grid(xyz)
            result = preprocess_organized(xyz, None, None, options)
            sample = Sample(**identity, points=result.points, point_labels=result.point_labels,
                            grid_hw=(image_size, image_size), grid_index=result.grid_index,
                            grid_mask=result.grid_mask)
            return xyz[measured].astype(np.float64), sample, options
        options = options_for_format("real3d", {"image_size": image_size})
        if suffix in (".ply", ".pcd"):
            points = read_point_cloud(path)
        elif suffix == ".xyz":
            points = _read_text_points(path)
        else:
            points = _read_npy_points(path)
        kept, labels = preprocess_unorganized(points, np.zeros(len(points), np.uint8), options)
    except ValueError as exc:
        if isinstance(exc, InputFileError):
            raise
        raise InputFileError(f"{path}: {exc}") from exc
    return points, Sample(**identity, points=kept, point_labels=labels), options


def to_input_points(input_points: np.ndarray, scored_points: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(P,) float32: each input point gets the score of its nearest scored point (both in the input frame)."""
    _, nearest = cKDTree(np.asarray(scored_points, np.float64)).query(np.asarray(input_points, np.float64))
    return np.asarray(scores, np.float32)[nearest]


# --- the command's work ---------------------------------------------------------------------------------

def detect(cloud, checkpoint, *, device="cpu", clip_weights=None, views: int = 9, point_size: float = 6.0,
           supersample: int = 3, image_size: int = 336) -> Detection:
    """Read, preprocess, render and score one cloud; see the module docstring."""
    input_points, sample, prep = load_cloud(Path(cloud), image_size)
    options = RenderOptions(views=views, image_size=image_size, supersample=supersample, point_size=point_size,
                            max_points=max(sample.n_points, 1))
    run = load_run(checkpoint, BackboneCache(clip_weights, device))
    rasterizer = worker_rasterizer(options.image_size * options.supersample, options.renderer)
    arrays = render_sample(sample, options, rasterizer)
    autocast = str(device).startswith("cuda")
    scored = score_arrays(arrays, {"class_name": CLASS_NAME, "sample_id": sample.sample_id}, run.backbone,
                          run.text, device, autocast=autocast)
    kept = flip_x180(sample.points) if prep.flip else sample.points
    return Detection(score=float(scored.score), points=input_points,
                     point_scores=to_input_points(input_points, kept, scored.point_scores), cloud=str(cloud),
                     checkpoint=str(checkpoint))


def detection_summary(result: Detection, vmin: float, vmax: float, threshold: float | None = None) -> dict:
    """What `scores.json` holds: the sample score, the number of points, the colour scale of scores.ply
    (blue = vmin, red = vmax) and, with a threshold, the verdict (anomalous when score >= threshold)."""
    summary = {"cloud": result.cloud, "checkpoint": result.checkpoint, "sample_score": float(result.score),
               "points": int(len(result.point_scores)),
               "colour_scale": {"vmin": float(vmin), "vmax": float(vmax),
                                "from": "threshold" if threshold is not None else "scores"},
               "threshold": None if threshold is None else float(threshold)}
    if threshold is not None:
        summary["anomalous"] = bool(result.score >= threshold)
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
        Path(tmp).write_text(json.dumps(detection_summary(result, vmin, vmax, threshold), indent=2) + "\n")
    return npy, ply, summary
