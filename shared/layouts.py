"""Where the dataset formats keep a sample's files: path arithmetic only, shared by the render stage's readers
and the eval stage (`eval report --export-maps` finds ground truth by it; eval does not import the readers, which
load Open3D, design §1)."""

from __future__ import annotations

from pathlib import Path

EYECANDIES_RGB_IMAGE = 0  # all spotlights (render/readers/eyecandies.py says why)


def eyecandies_raw_files(sample: Path) -> dict[str, Path]:
    """The files of the raw Eyecandies sample `sample` (<Cat>/<split>/data/NNN, no suffix), by role."""
    folder, stem = sample.parent, sample.name
    return {"depth": folder / f"{stem}_depth.png", "info_depth": folder / f"{stem}_info_depth.yaml",
            "rgb": folder / f"{stem}_image_{EYECANDIES_RGB_IMAGE}.png", "gt": folder / f"{stem}_mask.png",
            "pose": folder / f"{stem}_pose.txt"}


def ground_truth_files(root: Path, sample_id: str) -> tuple[Path, Path]:
    """(ground-truth PNG, scan) of the organized sample `sample_id` (a path relative to the dataset folder
    `root`, checked by the caller), by the layout on disk: Eyecandies' raw release keeps <id>_mask.png beside
    <id>_depth.png; MVTec 3D-AD's layout (and Eyecandies converted to it) <class>/test/<defect>/gt/<stem>.png
    beside xyz/<stem>.tiff."""
    sample = root / sample_id
    raw = eyecandies_raw_files(sample)
    if raw["depth"].is_file():
        return raw["gt"], raw["depth"]
    return sample.parent.parent / "gt" / f"{sample.stem}.png", sample
