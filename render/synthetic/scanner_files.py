"""The synthetic `folder` dataset: Real3D-AD's closed shells (millimetres) written as scanners and tools write
clouds, one suffix after another, by the libraries that own the formats (laspy, pye57, Open3D).

<class>/<split>/<defect>/NNN.<suffix>           the cloud, points shuffled as `formats.real3d_arrays` makes them
<class>/ground_truth/<defect>/NNN.{npy,txt}     one 0/1 per point in file order (.npy or .txt, by turns)

PLY files also carry the labels as a `label` vertex property (what the folder option `label_property` reads).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...shared.errors import PointADError
from .scene import CLASSES, DEFECTS

SUFFIXES = (".ply", ".las", ".e57", ".laz", ".pcd")  # the cycle the files follow, by split and number
SPLIT_SHIFT = {"train": 0, "validation": 3, "test": 1}
LAS_SCALE = 1e-4  # mm: 0.1 micrometre steps, far below the synthetic scans' noise


def turn(class_name: str, split: str, defect: str, index: int) -> int:
    """Where a sample is in the cycle of suffixes: every kind of sample meets every suffix across a dataset."""
    return (CLASSES.index(class_name) + SPLIT_SHIFT[split] + (0 if defect == "good" else 1 + DEFECTS.index(defect))
            + index)


def suffix_for(class_name: str, split: str, defect: str, index: int) -> str:
    """The cloud's suffix; its ground truth is .npy on even turns, .txt on odd ones."""
    return SUFFIXES[turn(class_name, split, defect, index) % len(SUFFIXES)]


def write_folder(root: Path, class_name: str, split: str, defect: str, index: int, arrays: dict) -> None:
    """One sample of the folder layout (see the module docstring)."""
    folder = root / class_name / split / defect
    folder.mkdir(parents=True, exist_ok=True)
    points, labels = arrays["points"], arrays["labels"]
    path = folder / f"{index:03d}{suffix_for(class_name, split, defect, index)}"
    WRITE[path.suffix](path, points, labels)
    if defect != "good":
        gt = root / class_name / "ground_truth" / defect
        gt.mkdir(parents=True, exist_ok=True)
        if turn(class_name, split, defect, index) % 2 == 0:
            np.save(gt / f"{index:03d}.npy", labels.astype(np.uint8))
        else:
            np.savetxt(gt / f"{index:03d}.txt", labels, fmt="%d")


def write_ply(path: Path, points: np.ndarray, labels: np.ndarray) -> None:
    """Binary little-endian PLY: double x, y, z and a uchar `label` per vertex."""
    records = np.empty(len(points), [("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("label", "u1")])
    records["x"], records["y"], records["z"] = points.T
    records["label"] = labels
    header = (f"ply\nformat binary_little_endian 1.0\ncomment pointad synthetic folder dataset\n"
              f"element vertex {len(points)}\nproperty double x\nproperty double y\nproperty double z\n"
              "property uchar label\nend_header\n")
    path.write_bytes(header.encode() + records.tobytes())


def _library(name: str):
    """The writing library, or a one-line error naming the install extra that brings it."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError:
        raise PointADError(f"writing a synthetic folder dataset needs the '{name}' package: pip install "
                           "'pointad-toolkit[scanners]'") from None


def write_las(path: Path, points: np.ndarray, labels: np.ndarray) -> None:
    """LAS 1.2 point format 0 (.las) or its LAZ compression (.laz, lazrs), scale LAS_SCALE."""
    laspy = _library("laspy")
    header = laspy.LasHeader(point_format=0, version="1.2")
    header.scales = [LAS_SCALE] * 3
    header.offsets = np.floor(points.min(axis=0))
    las = laspy.LasData(header)
    las.x, las.y, las.z = points.T
    las.write(str(path), do_compress=path.suffix == ".laz")


def write_e57(path: Path, points: np.ndarray, labels: np.ndarray) -> None:
    """One scan of single-precision cartesian coordinates (pye57's writer)."""
    pye57 = _library("pye57")
    with pye57.E57(str(path), mode="w") as e57:
        e57.write_scan_raw({"cartesianX": points[:, 0], "cartesianY": points[:, 1], "cartesianZ": points[:, 2]})


def write_pcd(path: Path, points: np.ndarray, labels: np.ndarray) -> None:
    import open3d as o3d
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    if not o3d.io.write_point_cloud(str(path), cloud, write_ascii=False):
        raise OSError(f"{path}: Open3D could not write the point cloud")


WRITE = {".ply": write_ply, ".las": write_las, ".laz": write_las, ".e57": write_e57, ".pcd": write_pcd}
