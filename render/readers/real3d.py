"""Real3D-AD layout: unorganized clouds, no RGB.

<class>/train/*.pcd        good templates (*_template.pcd)
<class>/test/*.pcd         names hold 'good' or a defect type (e.g. 12_bulge.pcd, 95_sink_cut.pcd, 31_bulge_copy.pcd);
                           files named *template* there are skipped, as the official loader skips them
<class>/gt/<stem>.txt      (or GT/) one `x y z label` row per point for anomalous samples (millimetres)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...shared.errors import InputFileError
from ...shared.registry import DatasetEntry, select_classes
from ...shared.sample import GOOD, Sample, SampleRef
from ..preprocess import PreprocessOptions, preprocess_unorganized
from .common import check_splits, relative_id, reraise_with_path
from .files import read_label_txt, read_point_cloud

CLOUD_SUFFIXES = (".pcd", ".ply")


VARIANT_WORDS = ("cut", "copy")  # a cut or copied variant of a sample keeps its stem's defect type


def defect_from_name(stem: str) -> str:
    """'good' if the file name says so, else its last alphabetic word that is not a variant marker
    (12_bulge -> bulge, 95_sink_cut -> sink, 31_bulge_copy -> bulge)."""
    words = [w.lower() for w in re.split(r"[^A-Za-z]+", stem) if w]
    if not words or GOOD in words:
        return GOOD
    kinds = [w for w in words if w not in VARIANT_WORDS]
    return kinds[-1] if kinds else words[-1]


def _is_template(path: Path) -> bool:
    return "template" in path.stem.lower()


def list_samples(entry: DatasetEntry, classes=None, splits=None) -> list[SampleRef]:
    """Every sample of the selected classes and splits (Real3D-AD has no validation split)."""
    refs = []
    for class_name in select_classes(entry, classes):
        class_dir = entry.root / class_name
        gt_dirs = [class_dir / "gt", class_dir / "GT"]
        for split in check_splits(splits):
            clouds = sorted(p for p in (class_dir / split).glob("*") if p.suffix.lower() in CLOUD_SUFFIXES)
            for cloud in clouds if split == "train" else [c for c in clouds if not _is_template(c)]:
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
            raise InputFileError(f"{ref.files['gt']}: {len(rows)} rows but {cloud_path.name} has {len(points)} points "
                                 "(one label row per point; labels are never guessed)")
        points, labels = rows[:, :3], rows[:, 3].astype(np.uint8)
    try:
        points, labels = preprocess_unorganized(points, labels, options)
    except ValueError as exc:
        source = ref.files.get("gt", cloud_path)
        raise reraise_with_path(source, exc) from exc
    return Sample(dataset=ref.dataset, class_name=ref.class_name, split=ref.split, defect_type=ref.defect_type,
                  sample_id=ref.sample_id, label=ref.label, points=points, point_labels=labels)
