"""`folder` layout: scans of one's own objects, on anomalib's folder-dataset conventions (design §2.5).

<class>/train/good/*                      good scans to train on (any cloud suffix of `POINT_SUFFIXES`)
<class>/validation/good/*                 optional
<class>/test/good/*, <class>/test/<defect>/*
<class>/ground_truth/<defect>/<stem>.npy  (or .txt) one 0/1 per point of test/<defect>/<stem>.*, in file order;
                                          else the PLY vertex property (LAS dimension) `label_property` names

Clouds are unorganized (no grid), read and preprocessed as Real3D-AD's: farthest-point sampled to max_points,
no flip; with `background: plane`, the largest plane (a table, a turntable) is found by RANSAC in the whole
cloud and its points dropped. Defaults (`PREPROCESS_DEFAULTS`) are in millimetres and converted to the
files' unit (`FolderOptions.units`). Files we do not read are left out of the listing and named by `survey`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...shared.errors import InputFileError
from ...shared.registry import DatasetEntry, select_classes
from ...shared.sample import GOOD, Sample, SampleRef
from ..preprocess import PreprocessOptions, check_finite_points, fit_plane, plane_distance, preprocess_unorganized
from .common import check_splits, relative_id, reraise_with_path
from .files import POINT_SUFFIXES, read_label_values, read_point_cloud

GROUND_TRUTH = "ground_truth"
LABEL_SUFFIXES = (".npy", ".txt")
# the folder format's preprocessing defaults; lengths in millimetres, converted to the files' unit
PREPROCESS_DEFAULTS = {"background": "none", "flip": False}
LENGTHS_MM = {"cluster_eps": 2.0, "plane_distance": 0.5}


def preprocess_defaults(millimetres_per_unit: float) -> dict:
    """The folder format's preprocess defaults for files whose unit is `millimetres_per_unit` mm."""
    return {**PREPROCESS_DEFAULTS, **{k: v / millimetres_per_unit for k, v in LENGTHS_MM.items()}}


def _clouds(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in POINT_SUFFIXES)


def _defect_dirs(split_dir: Path, split: str) -> list[Path]:
    """Folders of one split: test takes every folder, train and validation only `good`."""
    if not split_dir.is_dir():
        return []
    dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    return dirs if split == "test" else [d for d in dirs if d.name == GOOD]


def ground_truth_file(class_dir: Path, defect: str, stem: str) -> Path | None:
    """ground_truth/<defect>/<stem>.npy, else .txt, if one exists."""
    return next((p for p in (class_dir / GROUND_TRUTH / defect / f"{stem}{s}" for s in LABEL_SUFFIXES)
                 if p.is_file()), None)


def list_samples(entry: DatasetEntry, classes=None, splits=None) -> list[SampleRef]:
    """Every readable cloud of the selected classes and splits, in a stable order; reads no data."""
    refs = []
    for class_name in select_classes(entry, classes):
        class_dir = entry.root / class_name
        for split in check_splits(splits):
            for defect_dir in _defect_dirs(class_dir / split, split):
                for cloud in _clouds(defect_dir):
                    files = {"cloud": cloud}
                    gt = ground_truth_file(class_dir, defect_dir.name, cloud.stem) if defect_dir.name != GOOD else None
                    if gt is not None:
                        files["gt"] = gt
                    refs.append(SampleRef(dataset=entry.name, class_name=class_name, split=split,
                                          defect_type=defect_dir.name, sample_id=relative_id(cloud, entry.root),
                                          files=files))
    return refs


def survey(entry: DatasetEntry, classes=None) -> tuple[list[str], list[str]]:
    """(what was found, what is left out and why): per class the clouds per split and suffix; files and folders
    the listing skips (suffixes we do not read, non-good training folders, unknown folders, ground truth with
    no test cloud, two clouds sharing a stem). Reads no point data."""
    found, skipped = [], []
    for class_name in select_classes(entry, classes):
        class_dir = entry.root / class_name
        counts, suffixes = {}, {}
        for split in ("train", "validation", "test"):
            split_dir = class_dir / split
            if not split_dir.is_dir():
                continue
            kept = _defect_dirs(split_dir, split)
            for other in sorted(p for p in split_dir.iterdir() if p not in kept and not p.name.startswith(".")):
                why = ("a folder other than good/ in a training split" if other.is_dir()
                       else "a file outside the defect folders")
                skipped.append(f"{other}: {why}")
            for defect_dir in kept:
                stems = {}
                for path in sorted(p for p in defect_dir.iterdir() if not p.name.startswith(".")):
                    if path.is_file() and path.suffix.lower() in POINT_SUFFIXES:
                        counts[(split, defect_dir.name)] = counts.get((split, defect_dir.name), 0) + 1
                        suffixes[path.suffix.lower()] = suffixes.get(path.suffix.lower(), 0) + 1
                        stems.setdefault(path.stem, []).append(path.name)
                    else:
                        skipped.append(f"{path}: not a cloud we read (we read {', '.join(POINT_SUFFIXES)})")
                for stem, names in stems.items():
                    if len(names) > 1 and defect_dir.name != GOOD:
                        skipped.append(f"{defect_dir}: {', '.join(names)} share the stem '{stem}', and so their "
                                       "ground truth file")
        for other in sorted(p for p in class_dir.iterdir() if not p.name.startswith(".")
                            and p.name not in ("train", "validation", "test", GROUND_TRUTH)):
            skipped.append(f"{other}: not part of the layout (train/, validation/, test/, {GROUND_TRUTH}/)")
        gt_root = class_dir / GROUND_TRUTH
        if gt_root.is_dir():
            for gt in sorted(p for p in gt_root.rglob("*") if p.is_file()):
                defect = gt.parent.name
                clouds = class_dir / "test" / defect
                has_cloud = clouds.is_dir() and any(c.stem == gt.stem for c in _clouds(clouds))
                if gt.suffix.lower() not in LABEL_SUFFIXES or gt.parent.parent != gt_root:
                    skipped.append(f"{gt}: not a ground truth file (ground_truth/<defect>/<stem>.npy or .txt)")
                elif not has_cloud:
                    skipped.append(f"{gt}: ground truth with no test cloud test/{defect}/{gt.stem}.*")
        by_split = ", ".join(f"{split}/{defect} {n}" for (split, defect), n in sorted(counts.items()))
        by_suffix = ", ".join(f"{s} {n}" for s, n in sorted(suffixes.items()))
        found.append(f"{class_name}: {sum(counts.values())} clouds ({by_split or 'none'}; {by_suffix or 'no suffix'})")
        if not counts.get(("train", GOOD)):
            skipped.append(f"{class_dir / 'train' / GOOD}: no training clouds")
    return found, skipped


def read(ref: SampleRef, options: PreprocessOptions, entry: DatasetEntry) -> Sample:
    """Load one cloud and its per-point ground truth, remove the background plane if asked, preprocess."""
    cloud = ref.files["cloud"]
    label_property = entry.folder_options(ref.class_name).label_property
    from_property = ref.label == 1 and "gt" not in ref.files and label_property is not None
    table = read_point_cloud(cloud, label_property if from_property else None)
    points, labels = table[:, :3], np.zeros(len(table), np.uint8)
    if ref.label == 1:
        if "gt" in ref.files:
            labels = read_label_values(ref.files["gt"])
            if len(labels) != len(points):
                raise InputFileError(f"{ref.files['gt']}: {len(labels)} labels but {cloud} has {len(points)} points "
                                     "(one 0/1 per point, in file order; labels are never guessed)")
        elif from_property:
            values = table[:, 3]
            if not np.isin(values, (0, 1)).all():
                raise InputFileError(f"{cloud}: per-point property '{label_property}' must be 0 or 1 per point")
            labels = values.astype(np.uint8)
        else:
            raise InputFileError(f"{cloud}: anomalous sample ({ref.defect_type}) has no ground truth (put "
                                 f"{GROUND_TRUTH}/{ref.defect_type}/{cloud.stem}.npy or .txt, one 0/1 per point, "
                                 "or name a per-point property with the folder option label_property)")
    try:
        points, labels = preprocess_cloud(points, labels, options)
    except ValueError as exc:
        raise reraise_with_path(cloud, exc) from exc
    return Sample(dataset=ref.dataset, class_name=ref.class_name, split=ref.split, defect_type=ref.defect_type,
                  sample_id=ref.sample_id, label=ref.label, points=points, point_labels=labels)


def preprocess_cloud(points: np.ndarray, labels: np.ndarray, options: PreprocessOptions) -> tuple[np.ndarray, np.ndarray]:
    """A read cloud's (points, labels) preprocessed as a folder dataset's: its background plane dropped if asked,
    then `preprocess_unorganized` (`pointad detect --preprocess` too). ValueError on a bad option or cloud."""
    if options.background == "plane":
        points, labels = drop_plane(points, labels, options)
    elif options.background != "none":
        raise ValueError(f"background '{options.background}' is for organized scans; a folder dataset takes "
                         "'plane' or 'none'")
    return preprocess_unorganized(points, labels, options)


def drop_plane(points: np.ndarray, labels: np.ndarray, options: PreprocessOptions) -> tuple[np.ndarray, np.ndarray]:
    """(points, labels) without those within options.plane_distance of the cloud's largest plane (RANSAC with a
    least-squares refit, `preprocess.fit_plane`): the table or turntable a part was scanned on."""
    check_finite_points(points)
    if len(points) < options.min_points:
        raise ValueError(f"{len(points)} points (need >= {options.min_points})")
    plane = fit_plane(points, options.plane_distance, options.plane_iterations, options.seed)
    keep = plane_distance(points, plane) > options.plane_distance
    if keep.sum() < options.min_points:
        raise ValueError(f"{int(keep.sum())} points after background removal (need >= {options.min_points})")
    return points[keep], labels[keep]
