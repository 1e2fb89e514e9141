"""Real3D-AD layout: unorganized clouds, no RGB.

<class>/train/*.pcd        good templates
<class>/test/*.pcd         names hold 'good' or a defect type (e.g. 12_bulge.pcd)
<class>/gt/<stem>.txt      (or GT/) one `x y z label` row per point for anomalous samples
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from render.preprocess import PreprocessOptions, preprocess_unorganized
from render.readers.common import check_splits, relative_id, reraise_with_path
from render.readers.files import read_label_txt, read_point_cloud
from shared.errors import InputFileError
from shared.registry import DatasetEntry, select_classes
from shared.sample import GOOD, Sample, SampleRef

CLOUD_SUFFIXES = (".pcd", ".ply")


def defect_from_name(stem: str) -> str:
    """'good' if the file name says so, else the name's last alphabetic word (12_bulge -> bulge)."""
    words = [w for w in re.split(r"[^A-Za-z]+", stem) if w]
    if not words or any(w.lower() == GOOD for w in words):
        return GOOD
    return words[-1].lower()


def list_samples(entry: DatasetEntry, classes=None, splits=None) -> list[SampleRef]:
    """Every sample of the selected classes and splits (Real3D-AD has no validation split)."""
    refs = []
    for class_name in select_classes(entry, classes):
        class_dir = entry.root / class_name
        gt_dirs = [class_dir / "gt", class_dir / "GT"]
        for split in check_splits(splits):
            for cloud in sorted(p for p in (class_dir / split).glob("*") if p.suffix.lower() in CLOUD_SUFFIXES):
                defect = GOOD if split == "train" else defect_from_name(cloud.stem)
                files = {"cloud": cloud}
                if defect != GOOD:
                    files["gt"] = next((d / f"{cloud.stem}.txt" for d in gt_dirs if (d / f"{cloud.stem}.txt").exists()),
                                       gt_dirs[0] / f"{cloud.stem}.txt")
                refs.append(SampleRef(dataset=entry.name, class_name=class_name, split=split, defect_type=defect,
                                      sample_id=relative_id(cloud, entry.root), files=files))
    return refs


def read(ref: SampleRef, options: PreprocessOptions) -> Sample:
    """Load one cloud; anomalous samples take points and labels from their gt table (as the benchmark does)."""
    cloud_path = ref.files["cloud"]
    points = read_point_cloud(cloud_path)
    labels = np.zeros(len(points), np.uint8)
    if "gt" in ref.files:
        rows = read_label_txt(Path(ref.files["gt"]))
        if len(rows) != len(points):
            raise InputFileError(f"{ref.files['gt']}: {len(rows)} rows but {cloud_path.name} has {len(points)} points")
        points, labels = rows[:, :3], rows[:, 3].astype(np.uint8)
    try:
        points, labels = preprocess_unorganized(points, labels, options)
    except ValueError as exc:
        source = ref.files.get("gt", cloud_path)
        raise reraise_with_path(source, exc) from exc
    return Sample(dataset=ref.dataset, class_name=ref.class_name, split=ref.split, defect_type=ref.defect_type,
                  sample_id=ref.sample_id, label=ref.label, points=points, point_labels=labels)
