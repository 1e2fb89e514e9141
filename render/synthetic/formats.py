"""Turn a synthetic `Scene` into the files of each real on-disk format.

Each `*_arrays` function is pure (scene -> arrays, plus the truth the tests compare against);
each `write_*` function writes those arrays where the format's reader looks for them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import tifffile
import yaml
from PIL import Image
from scipy import ndimage

from render.synthetic.scene import Scene

FIELD_OF_VIEW = 0.10       # metres across the grid
MVTEC_DISTANCE = 0.30      # sensor to plane centre
EYECANDIES_FOCAL = 711.11  # the raw release's camera
DROPOUT = 0.005            # fraction of pixels the scanner missed
NOISE = 5e-5               # depth noise, metres


def mvtec_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of each pixel centre of a size x size scanner grid, metres, centred."""
    coords = (np.arange(size) - size / 2 + 0.5) * (FIELD_OF_VIEW / size)
    return np.meshgrid(coords, coords)


def eyecandies_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) on the plane at the camera distance that makes the field of view FIELD_OF_VIEW wide."""
    coords = (np.arange(size) - size / 2) * (FIELD_OF_VIEW / size)
    return np.meshgrid(coords, coords)


def _plane_depth(x, y, distance, rng) -> np.ndarray:
    """Depth of a slightly tilted support plane (the background RANSAC has to find)."""
    slope = rng.uniform(-0.08, 0.08, size=2)
    return distance + slope[0] * x + slope[1] * y


def mvtec_arrays(scene: Scene, x, y, rng) -> dict:
    """xyz (H, W, 3) float32 with missing = 0, rgb, gt (0/255), and `object` (measured object pixels)."""
    z = _plane_depth(x, y, MVTEC_DISTANCE, rng) - scene.height + NOISE * rng.standard_normal(x.shape)
    xyz = np.stack([x, y, z], axis=-1).astype(np.float32)
    measured = rng.random(x.shape) >= DROPOUT
    xyz[~measured] = 0
    return {"xyz": xyz, "rgb": scene.texture, "gt": (scene.defect_mask * 255).astype(np.uint8),
            "object": scene.footprint & measured, "defect": scene.defect_mask & measured}


def eyecandies_arrays(scene: Scene, x, y, rng) -> dict:
    """16-bit normalised depth, its min/max, six lightings of the texture, mask (0/255)."""
    distance = FIELD_OF_VIEW * EYECANDIES_FOCAL / x.shape[1]
    depth = _plane_depth(x, y, distance, rng) - scene.height + NOISE * rng.standard_normal(x.shape)
    lo, hi = float(depth.min()), float(depth.max())
    depth16 = np.round((depth - lo) / (hi - lo) * 65535).astype(np.uint16)
    lights = (0.45, 0.6, 0.7, 0.8, 1.0, 0.55)  # image 4 is the fully lit one, as in the release
    images = [np.clip(scene.texture * f, 0, 255).astype(np.uint8) for f in lights]
    return {"depth16": depth16, "depth_min": lo, "depth_max": hi, "images": images,
            "mask": (scene.defect_mask * 255).astype(np.uint8),
            "object": scene.footprint, "defect": scene.defect_mask}


def real3d_arrays(scene: Scene, x, y, rng) -> dict:
    """A closed shell (top surface, side wall, bottom) as (P, 3) points with (P,) labels, shuffled."""
    top = scene.footprint
    rim = top & ~ndimage.binary_erosion(top)
    wall_levels = np.linspace(0.0, 1.0, 8)[1:-1]
    parts = [np.stack([x[top], y[top], scene.height[top]], axis=1),
             np.concatenate([np.stack([x[rim], y[rim], scene.height[rim] * t], axis=1) for t in wall_levels]),
             np.stack([x[top], y[top], np.zeros(int(top.sum()))], axis=1)]
    labels = [scene.defect_mask[top], np.zeros(len(parts[1]), bool), np.zeros(len(parts[2]), bool)]
    points = np.concatenate(parts) + NOISE * rng.standard_normal((sum(map(len, parts)), 3))
    order = rng.permutation(len(points))
    return {"points": points[order], "labels": np.concatenate(labels)[order].astype(np.uint8)}


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_mvtec(root: Path, class_name: str, split: str, defect: str, index: int, arrays: dict) -> None:
    """<class>/<split>/<defect>/{xyz,rgb,gt}/NNN.{tiff,png}; gt only in the test split."""
    folder = root / class_name / split / defect
    (folder / "xyz").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / "xyz" / f"{index:03d}.tiff", arrays["xyz"], photometric="rgb")
    _save_png(folder / "rgb" / f"{index:03d}.png", arrays["rgb"])
    if split == "test":
        _save_png(folder / "gt" / f"{index:03d}.png", arrays["gt"])


EYECANDIES_SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test_public"}


def write_eyecandies(root: Path, class_name: str, split: str, defect: str, index: int, arrays: dict) -> None:
    """<Cat>/<split>/data/NNN_{image_0..5.png, depth.png, info_depth.yaml, pose.txt, mask.png}."""
    folder = root / class_name / EYECANDIES_SPLIT_DIRS[split] / "data"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{index:03d}"
    for k, image in enumerate(arrays["images"]):
        _save_png(folder / f"{stem}_image_{k}.png", image)
    Image.fromarray(arrays["depth16"]).save(folder / f"{stem}_depth.png")
    info = {"normalization": {"min": arrays["depth_min"], "max": arrays["depth_max"]}}
    (folder / f"{stem}_info_depth.yaml").write_text(yaml.safe_dump(info))
    np.savetxt(folder / f"{stem}_pose.txt", np.eye(4))
    _save_png(folder / f"{stem}_mask.png", arrays["mask"])


def write_real3d(root: Path, class_name: str, split: str, defect: str, index: int, arrays: dict) -> None:
    """<class>/train/N_template.pcd, <class>/test/N_<defect|good>.pcd, <class>/gt/N_<defect>.txt."""
    name = f"{index}_template" if split == "train" else f"{index}_{defect}"
    folder = root / class_name / split
    folder.mkdir(parents=True, exist_ok=True)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(arrays["points"]))
    if not o3d.io.write_point_cloud(str(folder / f"{name}.pcd"), cloud, write_ascii=False):
        raise OSError(f"{folder / name}.pcd: Open3D could not write the point cloud")
    if defect != "good":
        (root / class_name / "gt").mkdir(exist_ok=True)
        table = np.column_stack([arrays["points"], arrays["labels"]])
        np.savetxt(root / class_name / "gt" / f"{name}.txt", table, fmt=["%.9g"] * 3 + ["%d"])
