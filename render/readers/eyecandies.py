"""Eyecandies, in either layout, detected per class.

Raw release:  <Cat>/{train,val,test_public}/data/NNN_{image_0..5.png, depth.png, info_depth.yaml, pose.txt, mask.png}
  16-bit depth de-normalised with the yaml's min/max (Blender units: a candy is about one unit across),
  back-projected with the release's camera (focal 711.11 px, principal point at (W/2, H/2)) into camera
  coordinates. Background: the belt box (`render.background.belt_box`), as the released preprocessing
  does it, with lengths per dataset in datasets.yaml.
  Pose: `NNN_pose.txt` is the camera's 4 x 4 pose; the toolkit's `depth2pc` and the community conversion
  both apply it (the conversion as its inverse). It is a rigid transform: no distance, label or
  belt-box threshold changes with it, and views are defined relative to the sensor, so by default it is
  not applied; preprocess option `apply_pose: true` moves the kept points by it (camera to world).
  RGB: the release has six lights, image_0 all spotlights, image_1..4 a single spot each (bottom, right,
  top, left), image_5 the light box. We use image_0: the released PointAD pipeline colours its clouds with
  the toolkit's `depth2pc` default, image_0.
  Label: anomalous iff the mask has a nonzero pixel.
Converted (MVTec 3D-AD style, the community conversion): <Cat>/{train,validation,test}/{good,bad}/{xyz,rgb,gt}/,
  read by the mvtec3d reader. The conversion already removed the background, writing one constant point
  (0, a, b) there, which is recognised as missing; no background is removed again.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ...shared.errors import InputFileError, first_line
from ...shared.layouts import eyecandies_raw_files
from ...shared.registry import DatasetEntry, select_classes
from ...shared.sample import GOOD, Sample, SampleRef
from ..background import rigid_transform
from ..preprocess import PreprocessOptions
from . import mvtec3d
from .common import check_splits, relative_id
from .files import read_image, read_yaml

FOCAL_LENGTH = 711.11
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
    sample = depth.with_name(depth.name[: -len("_depth.png")])
    files = eyecandies_raw_files(sample)
    defect = GOOD
    if split == "test":
        # The raw release names no defect type; the mask says whether there is one. A missing or broken
        # mask fails this sample when it is read (naming the mask), not the listing of the whole build.
        defect = _defect_from_mask(files["gt"]) or "bad"
    return SampleRef(dataset=entry.name, class_name=class_name, split=split, defect_type=defect,
                     sample_id=relative_id(sample, entry.root), files=files)


def _defect_from_mask(mask: Path) -> str | None:
    """'bad' if the mask has a nonzero pixel, 'good' if none, None if it cannot be read."""
    try:
        return "bad" if read_image(mask, "L").any() else GOOD
    except InputFileError:
        return None


def read(ref: SampleRef, options: PreprocessOptions) -> Sample:
    """Load and preprocess one sample of either layout."""
    if "xyz" in ref.files:
        return mvtec3d.read(ref, layout_options(options, raw=False))
    xyz = read_raw_xyz(ref.files["depth"], ref.files["info_depth"])
    rgb = read_image(ref.files["rgb"], "RGB")
    mask = ref.files["gt"]
    gt = read_image(mask, "L") if ref.split == "test" or mask.exists() else None
    if ref.split == "test" and int(gt.any()) != ref.label:
        raise InputFileError(f"{mask}: mask is {'empty' if ref.label else 'not empty'} now, but the sample was "
                             f"listed as {ref.defect_type} (the mask changed after the store was planned)")
    pose = read_pose(ref.files["pose"]) if options.apply_pose else None
    return mvtec3d.organized_sample(ref, xyz, rgb, gt, options, pose)


def layout_options(options: PreprocessOptions, raw: bool) -> PreprocessOptions:
    """The options a sample of the raw release (raw) or of the converted layout is preprocessed with: the
    conversion removed the background already, so none is removed again."""
    return options if raw else replace(options, background="none")


def read_raw_xyz(depth_path: Path, info_path: Path) -> np.ndarray:
    """(H, W, 3) float32 camera coordinates of a raw sample: its 16-bit depth PNG de-normalised with the min/max
    of its info_depth.yaml; errors name the file."""
    depth = read_image(depth_path, "I")
    info = read_yaml(info_path)
    try:
        lo, hi = float(info["normalization"]["min"]), float(info["normalization"]["max"])
    except (KeyError, TypeError, ValueError):
        raise InputFileError(f"{info_path}: missing normalization min/max") from None
    if not all(np.isfinite([lo, hi])) or max(abs(lo), abs(hi)) > 1e30:
        raise InputFileError(f"{info_path}: normalization min/max must be finite depths, got {lo}, {hi}")
    return depth_to_xyz(depth, lo, hi)


def read_pose(path: Path) -> np.ndarray:
    """The 4 x 4 camera pose of a raw sample (text, one row per line); anything else is an error naming the file."""
    if not path.is_file():
        raise InputFileError(f"{path}: file not found (apply_pose needs each sample's pose)")
    try:
        pose = np.loadtxt(path, ndmin=2)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{path}: unreadable pose ({first_line(exc)})") from None
    if pose.shape != (4, 4):
        raise InputFileError(f"{path}: expected a 4 x 4 pose, got shape {pose.shape}")
    try:
        rigid_transform(np.zeros((1, 3)), pose)
    except ValueError as exc:
        raise InputFileError(f"{path}: {exc}") from None
    return pose


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
