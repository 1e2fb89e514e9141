"""Load one dataset file each, with a one-line `InputFileError` that names the file on any failure.

tifffile, Pillow, Open3D and numpy do the parsing; this module only checks what they return.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
import tifffile
import yaml
from PIL import Image, UnidentifiedImageError

from shared.errors import InputFileError

o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)


def _fail(path: Path, reason: str) -> InputFileError:
    return InputFileError(f"{path}: {reason}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _require(path: Path) -> None:
    if not path.is_file():
        raise _fail(path, "file not found")


def read_xyz_tiff(path: Path) -> np.ndarray:
    """(H, W, 3) float32 organized point cloud from a TIFF."""
    _require(path)
    try:
        array = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for corrupt files; all mean the same here
        raise _fail(path, f"unreadable TIFF ({_first_line(exc)})") from exc
    if array.ndim != 3 or array.shape[2] != 3:
        raise _fail(path, f"expected an H x W x 3 organized point cloud, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise _fail(path, f"expected float coordinates, got {array.dtype}")
    return array.astype(np.float32, copy=False)


def read_image(path: Path, mode: str) -> np.ndarray:
    """Image as an array: mode "RGB" -> (H, W, 3) uint8, "L" -> (H, W) uint8 (grey), "I" -> (H, W) int32.

    "I" keeps 16-bit depth values exact. A truncated file is an error, never a partial image.
    """
    _require(path)
    try:
        with Image.open(path) as image:
            image.load()
            if mode == "I" and image.mode not in ("I", "I;16", "I;16B", "I;16L"):
                raise _fail(path, f"expected a 16-bit single-channel image, got mode {image.mode}")
            return np.asarray(image.convert(mode) if image.mode != mode else image).astype(
                np.int32 if mode == "I" else np.uint8)
    except InputFileError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _fail(path, f"unreadable image ({_first_line(exc)})") from exc


def _pcd_points_present(path: Path) -> tuple[int, int] | None:
    """(points the PCD header declares, points the data section holds), None if not checkable.

    Open3D fills the missing rows of a truncated ASCII PCD with uninitialised memory instead of
    failing, so the count is checked here from the header and the data section's size.
    """
    header: dict[str, list[str]] = {}
    with open(path, "rb") as handle:
        for raw in handle:
            words = raw.decode("ascii", "replace").split()
            if words and not words[0].startswith("#"):
                header[words[0].upper()] = words[1:]
            if words and words[0].upper() == "DATA":
                break
        data = handle.read()
    try:
        declared = int(header["POINTS"][0])
        kind = header["DATA"][0].lower()
        step = sum(int(s) * int(c) for s, c in zip(header["SIZE"], header.get("COUNT", ["1"] * len(header["SIZE"]))))
    except (KeyError, IndexError, ValueError):
        return None
    if kind == "ascii":
        return declared, sum(1 for line in data.splitlines() if line.strip())
    if kind == "binary":
        return declared, len(data) // step
    return None  # binary_compressed: Open3D's decompression checks the size itself


def read_point_cloud(path: Path) -> np.ndarray:
    """(P, 3) float64 points of a .pcd or .ply file (Open3D), NaN and inf kept so they can be reported."""
    _require(path)
    cloud = o3d.io.read_point_cloud(str(path), remove_nan_points=False, remove_infinite_points=False)
    points = np.asarray(cloud.points)
    if len(points) == 0:
        raise _fail(path, "unreadable or empty point cloud")
    if path.suffix.lower() == ".pcd":
        counts = _pcd_points_present(path)
        if counts is not None and counts[1] < counts[0]:
            raise _fail(path, f"truncated: header declares {counts[0]} points, file holds {counts[1]}")
    return points


def read_label_txt(path: Path) -> np.ndarray:
    """(P, 4) float64 rows `x y z label` from a text file, whitespace or comma separated."""
    _require(path)
    try:
        with open(path) as handle:
            first = handle.readline()
        delimiter = "," if "," in first else None
        rows = np.loadtxt(path, delimiter=delimiter, ndmin=2, dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"unreadable label table ({_first_line(exc)})") from exc
    if rows.shape[0] == 0:
        raise _fail(path, "empty label table")
    if rows.shape[1] != 4:
        raise _fail(path, f"expected 4 columns (x y z label), got {rows.shape[1]}")
    labels = rows[:, 3]
    if not np.isin(labels, (0, 1)).all():
        raise _fail(path, "labels must be 0 or 1")
    return rows


def read_yaml(path: Path) -> dict:
    """A YAML mapping (safe_load)."""
    _require(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _fail(path, f"unreadable YAML ({_first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise _fail(path, "expected a YAML mapping")
    return data
