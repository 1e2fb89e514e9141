"""MVTec 3D-AD layout (also Eyecandies converted to it): organized xyz TIFF + RGB PNG + gt PNG.

<class>/{train,validation}/good/{xyz,rgb}/NNN.{tiff,png}
<class>/test/<defect or good>/{xyz,rgb,gt}/NNN.{tiff,png,png}
"""

from __future__ import annotations

from pathlib import Path

from ...shared.errors import InputFileError
from ...shared.registry import DatasetEntry, select_classes
from ...shared.sample import Sample, SampleRef
from ..preprocess import PreprocessOptions, preprocess_organized
from .common import check_splits, relative_id, reraise_with_path
from .files import read_image, read_xyz_tiff


def list_samples(entry: DatasetEntry, classes=None, splits=None) -> list[SampleRef]:
    """Every sample of the selected classes and splits, in a stable order; reads no data."""
    refs = []
    for class_name in select_classes(entry, classes):
        for split in check_splits(splits):
            split_dir = entry.root / class_name / split
            if not split_dir.is_dir():
                continue
            for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                refs += _list_defect(entry, class_name, split, defect_dir)
    return refs


def _list_defect(entry: DatasetEntry, class_name: str, split: str, defect_dir: Path) -> list[SampleRef]:
    refs = []
    for xyz in sorted((defect_dir / "xyz").glob("*.tif*")):
        files = {"xyz": xyz, "rgb": defect_dir / "rgb" / f"{xyz.stem}.png"}
        gt = defect_dir / "gt" / f"{xyz.stem}.png"
        if gt.exists():
            files["gt"] = gt
        refs.append(SampleRef(dataset=entry.name, class_name=class_name, split=split,
                              defect_type=defect_dir.name, sample_id=relative_id(xyz, entry.root), files=files))
    return refs


def read(ref: SampleRef, options: PreprocessOptions) -> Sample:
    """Load and preprocess one sample (design §2)."""
    xyz_path = ref.files["xyz"]
    xyz = read_xyz_tiff(xyz_path)
    rgb = read_image(ref.files["rgb"], "RGB") if ref.files["rgb"].exists() else None
    gt = read_image(ref.files["gt"], "L") if "gt" in ref.files else None
    return organized_sample(ref, xyz, rgb, gt, options)


def organized_sample(ref: SampleRef, xyz, rgb, gt, options: PreprocessOptions, pose=None) -> Sample:
    """Shared by every organized format: check shapes against the xyz grid, preprocess, build the Sample.

    pose: optional 4 x 4 rigid transform for the kept points (see `preprocess_organized`)."""
    xyz_path = ref.files.get("xyz") or ref.files["depth"]
    grid_hw = xyz.shape[:2]
    for role, array in (("rgb", rgb), ("gt", gt)):
        if array is not None and array.shape[:2] != grid_hw:
            raise InputFileError(f"{ref.files[role]}: shape {array.shape[:2]} does not match "
                                 f"{xyz_path.name} grid {grid_hw}")
    if ref.label == 1 and gt is None:
        raise InputFileError(f"{xyz_path}: anomalous sample ({ref.defect_type}) has no ground-truth mask")
    try:
        result = preprocess_organized(xyz, rgb, gt, options, pose)
    except ValueError as exc:
        raise reraise_with_path(xyz_path, exc) from exc
    size = options.image_size
    return Sample(dataset=ref.dataset, class_name=ref.class_name, split=ref.split, defect_type=ref.defect_type,
                  sample_id=ref.sample_id, label=ref.label, points=result.points, point_labels=result.point_labels,
                  grid_hw=(size, size), grid_index=result.grid_index, rgb=result.rgb, grid_mask=result.grid_mask)
