"""Eyecandies, in either layout, detected per class.

Raw release:  <Cat>/{train,val,test_public}/data/NNN_{image_0..5.png, depth.png, info_depth.yaml, mask.png, ...}
  16-bit depth de-normalised with the yaml's min/max, then back-projected with the release's
  camera (focal 711.11 px, principal point at the image centre) into camera coordinates, as the
  community's conversion does (the pose file is not applied). RGB = image 4 (all lights on).
  Label: anomalous iff the mask has a nonzero pixel.
Converted (MVTec 3D-AD style): <Cat>/{train,validation,test}/{good,bad}/{xyz,rgb,gt}/ -- the mvtec3d reader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from render.preprocess import PreprocessOptions
from render.readers import mvtec3d
from render.readers.common import check_splits, relative_id
from render.readers.files import read_image, read_yaml
from shared.errors import InputFileError
from shared.registry import DatasetEntry, select_classes
from shared.sample import GOOD, Sample, SampleRef

FOCAL_LENGTH = 711.11
RGB_IMAGE = 4
RAW_SPLITS = {"train": "train", "validation": "val", "test": "test_public"}


def is_raw_class(class_dir: Path) -> bool:
    """True when a class folder holds the raw release (split/data/ folders) rather than the converted layout."""
    return any((class_dir / raw / "data").is_dir() for raw in RAW_SPLITS.values())


def list_samples(entry: DatasetEntry, classes=None, splits=None) -> list[SampleRef]:
    """Every sample of the selected classes and splits; reads masks only to label raw test samples."""
    refs = []
    for class_name in select_classes(entry, classes):
        if not is_raw_class(entry.root / class_name):
            refs += mvtec3d.list_samples(entry, [class_name], splits)
            continue
        for split in check_splits(splits):
            data_dir = entry.root / class_name / RAW_SPLITS[split] / "data"
            for depth in sorted(data_dir.glob("*_depth.png")):
                refs.append(_raw_ref(entry, class_name, split, depth))
    return refs


def _raw_ref(entry: DatasetEntry, class_name: str, split: str, depth: Path) -> SampleRef:
    stem = depth.name[: -len("_depth.png")]
    folder = depth.parent
    files = {"depth": depth, "info_depth": folder / f"{stem}_info_depth.yaml",
             "rgb": folder / f"{stem}_image_{RGB_IMAGE}.png", "gt": folder / f"{stem}_mask.png"}
    defect = GOOD
    if split == "test":
        # The raw release names no defect type; the mask says whether there is one. A missing or broken
        # mask fails this sample when it is read (naming the mask), not the listing of the whole build.
        defect = _defect_from_mask(files["gt"]) or "bad"
    return SampleRef(dataset=entry.name, class_name=class_name, split=split, defect_type=defect,
                     sample_id=relative_id(folder / stem, entry.root), files=files)


def _defect_from_mask(mask: Path) -> str | None:
    """'bad' if the mask has a nonzero pixel, 'good' if none, None if it cannot be read."""
    try:
        return "bad" if read_image(mask, "L").any() else GOOD
    except InputFileError:
        return None


def read(ref: SampleRef, options: PreprocessOptions) -> Sample:
    """Load and preprocess one sample of either layout."""
    if "xyz" in ref.files:
        return mvtec3d.read(ref, options)
    depth = read_image(ref.files["depth"], "I")
    info = read_yaml(ref.files["info_depth"])
    try:
        lo, hi = float(info["normalization"]["min"]), float(info["normalization"]["max"])
    except (KeyError, TypeError, ValueError):
        raise InputFileError(f"{ref.files['info_depth']}: missing normalization min/max") from None
    if not all(np.isfinite([lo, hi])) or max(abs(lo), abs(hi)) > 1e30:
        raise InputFileError(f"{ref.files['info_depth']}: normalization min/max must be finite depths, got {lo}, {hi}")
    xyz = depth_to_xyz(depth, lo, hi)
    rgb = read_image(ref.files["rgb"], "RGB")
    mask = ref.files["gt"]
    gt = read_image(mask, "L") if ref.split == "test" or mask.exists() else None
    if ref.split == "test" and int(gt.any()) != ref.label:
        raise InputFileError(f"{mask}: mask is {'empty' if ref.label else 'not empty'} now, but the sample was "
                             f"listed as {ref.defect_type} (the mask changed after the store was planned)")
    return mvtec3d.organized_sample(ref, xyz, rgb, gt, options)


def depth_to_xyz(depth: np.ndarray, depth_min: float, depth_max: float,
                 focal: float = FOCAL_LENGTH) -> np.ndarray:
    """(H, W, 3) float32 camera coordinates from a 16-bit normalised depth image.

    z = depth / 65535 * (max - min) + min; x = (u - W/2) z / f; y = (v - H/2) z / f.
    """
    height, width = depth.shape
    z = depth.astype(np.float64) / 65535.0 * (depth_max - depth_min) + depth_min
    v, u = np.mgrid[0:height, 0:width]
    xyz = np.stack([(u - width / 2) * z / focal, (v - height / 2) * z / focal, z], axis=-1)
    return xyz.astype(np.float32)
