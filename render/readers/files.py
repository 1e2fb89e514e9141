"""Load one dataset file each, with a one-line `InputFileError` that names the file on any failure.

tifffile, Pillow and numpy do the parsing and this module checks what they return; PLY and PCD clouds
are parsed against their header in `cloud_files` (Open3D accepts truncated ones, and crashes on some).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import tifffile
import yaml
from PIL import Image, UnidentifiedImageError

from ...shared.errors import InputFileError, first_line
from .cloud_files import read_cloud


def _fail(path: Path, reason: str) -> InputFileError:
    return InputFileError(f"{path}: {reason}")


def _require(path: Path) -> None:
    if path.is_dir():
        raise _fail(path, "is a directory, expected a file")
    if not path.is_file():
        raise _fail(path, "file not found")


def read_xyz_tiff(path: Path) -> np.ndarray:
    """(H, W, 3) float32 organized point cloud from a TIFF."""
    _require(path)
    try:
        array = tifffile.imread(path)
    except Exception as exc:  # tifffile raises many types for corrupt files; all mean the same here
        raise _fail(path, f"unreadable TIFF ({first_line(exc)})") from exc
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
        raise _fail(path, f"unreadable image ({first_line(exc)})") from exc


def read_point_cloud(path: Path) -> np.ndarray:
    """(P, 3) float64 points of a .pcd or .ply file, exactly as many as its header declares (see cloud_files).

    NaN and inf are kept so they can be reported.
    """
    _require(path)
    try:
        return read_cloud(path)
    except OSError as exc:
        raise _fail(path, f"unreadable ({exc.strerror or first_line(exc)})") from exc
    except ValueError as exc:
        raise _fail(path, first_line(exc)) from exc


def read_label_txt(path: Path) -> np.ndarray:
    """(P, 4) float64 rows `x y z label` from a text file, whitespace or comma separated."""
    _require(path)
    try:
        with open(path) as handle:
            first = handle.readline()
        delimiter = "," if "," in first else None
        with warnings.catch_warnings():  # an empty table is reported below, not warned about
            warnings.simplefilter("ignore", UserWarning)
            rows = np.loadtxt(path, delimiter=delimiter, ndmin=2, dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"unreadable label table ({first_line(exc)})") from exc
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
        raise _fail(path, f"unreadable YAML ({first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise _fail(path, "expected a YAML mapping")
    return data
