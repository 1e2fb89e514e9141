"""Load one dataset file each, with a one-line `InputFileError` that names the file on any failure.

tifffile, Pillow and numpy do the parsing and this module checks what they return; PLY and PCD clouds
are parsed against their header in `cloud_files` (Open3D accepts truncated ones, and crashes on some), LAS,
LAZ and E57 in `scanner_files`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import tifffile
import yaml
from PIL import Image, UnidentifiedImageError

from ...shared.errors import InputFileError, first_line
from ...shared.registry import YamlTooLarge
from ...shared.registry import read_yaml as bounded_yaml
from .cloud_files import CLOUD_SUFFIXES, read_cloud


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


POINT_SUFFIXES = (*CLOUD_SUFFIXES, ".xyz", ".npy")  # every unorganized cloud we read


def read_point_cloud(path: Path, extra: str | None = None) -> np.ndarray:
    """(P, 3) float64 points of an unorganized cloud (`POINT_SUFFIXES`): .ply, .pcd, .las, .laz and .e57 hold
    exactly as many as their header declares (see cloud_files, scanner_files); .xyz text and .npy arrays.
    extra: a per-point property (PLY vertex property, LAS dimension) returned as a fourth column.

    NaN and inf are kept so they can be reported.
    """
    _require(path)
    suffix = Path(path).suffix.lower()
    if suffix in (".xyz", ".npy"):
        if extra is not None:
            raise _fail(path, f"a {suffix} file carries no per-point property '{extra}' (only .ply and .las/.laz)")
        return read_xyz_text(path) if suffix == ".xyz" else read_npy_points(path)
    try:
        return read_cloud(path, extra)
    except OSError as exc:
        raise _fail(path, f"unreadable ({exc.strerror or first_line(exc)})") from exc
    except ValueError as exc:
        raise _fail(path, first_line(exc)) from exc


def read_xyz_text(path: Path) -> np.ndarray:
    """(P, 3) float64: the first three columns of a whitespace-separated text table (.xyz)."""
    try:
        with warnings.catch_warnings():  # an empty file is reported below, not warned about
            warnings.simplefilter("ignore", UserWarning)
            array = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"unreadable .xyz text ({first_line(exc)})") from exc
    if array.size == 0:
        raise _fail(path, "empty point cloud (0 points)")
    if array.shape[1] < 3:
        raise _fail(path, f"expected at least 3 columns (x y z), got {array.shape[1]}")
    return array[:, :3]


def read_npy_points(path: Path) -> np.ndarray:
    """(P, 3) float64 from a .npy array of shape (P, 3), any numeric dtype (no pickles)."""
    array = read_npy(path)
    if array.ndim != 2 or array.shape[1] != 3 or not np.issubdtype(array.dtype, np.number):
        raise _fail(path, f"expected a (P, 3) numeric array, got {array.shape} {array.dtype}")
    if array.shape[0] == 0:
        raise _fail(path, "empty point cloud (0 points)")
    with np.errstate(invalid="ignore"):  # NaN stays NaN, reported by the preprocessing with a count
        return array.astype(np.float64)


def read_npy(path: Path) -> np.ndarray:
    """One array from a .npy file (allow_pickle=False: no byte of it is ever executed)."""
    _require(path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises many types for a corrupt file (EOFError, tokenize errors, ...)
        raise _fail(path, f"unreadable .npy ({first_line(exc)})") from exc
    if not isinstance(array, np.ndarray):  # a zip (.npz) archive under a .npy name
        array.close()
        raise _fail(path, "expected one .npy array, got an .npz archive")
    return array


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


def read_label_values(path: Path) -> np.ndarray:
    """(P,) uint8 per-point labels, each 0 or 1: a .npy array of shape (P,) or (P, 1) (bool or numeric), or a
    text file of P values (one per line, or whitespace or comma separated)."""
    _require(path)
    if Path(path).suffix.lower() == ".npy":
        values = read_npy(path)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1 or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise _fail(path, f"expected a (P,) array of 0/1 labels, got {values.shape} {values.dtype}")
    else:
        try:
            text = Path(path).read_text().replace(",", " ")
            with warnings.catch_warnings():  # an empty table is reported below, not warned about
                warnings.simplefilter("ignore", UserWarning)
                values = np.loadtxt(text.split(), dtype=np.float64, ndmin=1, comments=None)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _fail(path, f"unreadable label file ({first_line(exc)})") from exc
    if values.size == 0:
        raise _fail(path, "empty label file")
    if not np.isin(values, (0, 1)).all():
        raise _fail(path, "labels must be 0 or 1")
    return values.astype(np.uint8)


def read_yaml(path: Path) -> dict:
    """A YAML mapping, read as the registry is (`shared.registry.read_yaml`: safe_load, bounded in bytes,
    nesting and alias expansion), so a hostile metadata file costs no more than a registry."""
    _require(path)
    try:
        data = bounded_yaml(path)
    except YamlTooLarge as exc:
        raise _fail(path, str(exc)) from None
    except OSError as exc:
        raise _fail(path, f"unreadable ({exc.strerror or exc})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _fail(path, f"unreadable YAML ({first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise _fail(path, "expected a YAML mapping")
    return data
