"""`eval report --export-maps DIR` (design §7.4): every test sample's anomaly map, per run and block, where
MVTec 3D-AD's evaluation script reads it, and the `mvtec-official` metrics computed from those files.

Layout, one tree per test dataset, run and block (point, rgb, multimodal), each one `anomaly_maps_dir` of the
official script:

    DIR/<dataset>/run-<k>/<block>/<class>/test/<defect>/<stem>.tiff   organized samples: float32 (H0, W0), deflate
    DIR/<dataset>/run-<k>/<block>/<class>/test/<defect>/<stem>.npy    unorganized: float32 (n,) per point
    DIR/<dataset>/manifest.json                                       runs, blocks, background values, protocol

(H0, W0) is the size of the sample's ground-truth PNG in the dataset, `<class>/test/<defect>/gt/<stem>.png`
next to the scan the store was rendered from (raw Eyecandies: `<id>_mask.png` beside `<id>_depth.png`, written
as `<class>/test/<good|bad>/<NNN>.tiff`; the store keeps only its resized grid, design §4): the export
reads the dataset's ground truth, checks it against the store's point labels (a wrong --root is an error, not
a wrong number), and keeps it for the protocol. The map is `official_protocol.original_map`; a `.npy` holds
the scores of the store's valid points in store order (`points/xyz` of the sample's row). TIFFs are deflate
(zlib level 1, TIFF compression 8: about 6x smaller than raw floats, and every tifffile reads it with Python's
zlib alone). Every file is written atomically, into a folder that was empty; the manifest last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import tifffile
from PIL import Image

from ..shared.errors import ConfigError, DatasetError, InputFileError, PointADError
from ..shared.io import atomic_path, os_error
from ..shared.layouts import ground_truth_files
from ..shared.names import printable, unique_component
from ..shared.registry import resolve_dataset
from .class_metrics import BLOCKS, block_arrays
from .official_protocol import MAX_FPR, background_below, cloud_metrics, official_metrics, original_map, store_grid_truth
from .output_paths import check_folder_target

MANIFEST = "manifest.json"
PROTOCOL = "mvtec-official"
LAYOUT = "<run>/<block>/<class>/test/<defect>/<stem>.tiff (organized: float32, the ground-truth PNG's size) or .npy " \
         "(unorganized: float32 per point, store order)"


def check_export_target(path) -> None:
    """PointADError unless `path` is a new or empty folder (an export never mixes with other files)."""
    path = Path(path)
    check_folder_target(path, "--export-maps takes a folder")
    if path.is_dir() and any(path.iterdir()):
        raise PointADError(f"{path}: holds other files; --export-maps writes into a new or empty folder")


@dataclass
class Truth:
    """One organized sample's ground truth on its original grid: truth (H0, W0) bool, read from `source`."""

    truth: np.ndarray
    source: str


@dataclass
class Exported:
    """What one run wrote of one class and block: files in sample order, their labels (the store's), whether
    organized, the background value, and the ground truth of each organized file."""

    files: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    organized: list = field(default_factory=list)
    truths: list = field(default_factory=list)
    background: float | None = None


class MapExport:
    """The export of one report's test dataset into `folder`/<dataset> (module docstring).

    root: the dataset's folder (the ground truth of organized samples), None for the registry's; square: how
    preprocessing made the grid square (None: the registry entry's option, else "pad")."""

    def __init__(self, folder, dataset: str, root=None, square: str | None = None):
        self.base = Path(folder) / unique_component(dataset)
        check_export_target(self.base)
        self.dataset = dataset
        self.root = Path(root) if root is not None else None
        self.square = square
        self._entry = None
        self._truths: dict[str, Truth] = {}
        self.manifest: dict = {}  # folder -> {"run", "block", "classes": {class: {...}}}

    # --- the dataset's ground truth ----------------------------------------------------------------------------

    def _dataset_entry(self):
        if self._entry is None:
            try:
                self._entry = resolve_dataset(self.dataset, root=self.root)
            except (ConfigError, DatasetError):  # not in the registry: the root given, options default
                self._entry = False
        return self._entry or None

    def _square_of(self, class_name: str) -> str:
        if self.square is not None:
            return self.square
        entry = self._dataset_entry()
        options = entry.options_for(class_name).get("preprocess", {}) if entry is not None else {}
        return str(options.get("square", "pad"))

    def _dataset_root(self) -> Path:
        root = self.root
        if root is None:
            entry = self._dataset_entry()
            root = entry.root if entry is not None else None
        if root is None or not root.is_dir():
            raise PointADError(f"{root or self.dataset}: dataset '{printable(self.dataset)}' not found; --export-maps "
                               "reads its ground-truth PNGs (each map's size): pass --root, its folder")
        return root

    def _files(self, identity: dict) -> tuple[Path, Path]:
        """(ground-truth PNG, scan) of a sample, in MVTec 3D-AD's layout or raw Eyecandies' (`ground_truth_files`)."""
        sample_id = identity["sample_id"]
        relative = PurePosixPath(sample_id)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise PointADError(f"{self.dataset}: sample id {printable(sample_id)!r} is not a path inside the dataset")
        return ground_truth_files(self._dataset_root(), str(relative))

    def check_ground_truth(self, store, rows) -> None:
        """Before any scoring: the ground truth of every organized row (a good sample's scan, if it has none) is on
        disk and opens (header only); an InputFileError naming the first that is not."""
        rows = np.asarray(rows, np.int64)
        if not rows.size:
            return
        for row, grid_hw in zip(rows, store.read_batch(rows, ["grid_hw"])["grid_hw"]):
            if min(int(x) for x in grid_hw) > 0:
                identity = store.identity(int(row))
                gt, scan = self._files(identity)
                if gt.is_file():
                    _open_image(gt, lambda image: image.size)
                elif identity["label"] == 0 and scan.is_file():
                    _scan_shape(scan)
                else:
                    raise _missing(gt)

    def truth_of(self, result) -> Truth:
        """The ground truth of one organized sample (`SampleScores`), read once per class and checked against the
        store's point labels."""
        sample_id = result.identity["sample_id"]
        if sample_id in self._truths:
            return self._truths[sample_id]
        gt, scan = self._files(result.identity)
        if gt.is_file():
            truth = _open_image(gt, _truth)
        elif result.identity["label"] == 0 and scan.is_file():  # a good sample may come without a PNG
            truth = np.zeros(_scan_shape(scan), bool)
        else:
            raise _missing(gt)
        square = self._square_of(result.identity["class_name"])
        expected = store_grid_truth(truth, result.grid_hw, square).ravel()[result.grid_index]
        differ = int(np.count_nonzero(expected != (np.asarray(result.point_labels) != 0)))
        if differ:
            raise InputFileError(f"{gt}: does not match the store's labels of sample {printable(sample_id)} ({differ} "
                                 f"of {expected.size} points differ, grid squared by {square}); is --root the "
                                 "folder this store was rendered from?")
        self._truths[sample_id] = Truth(truth, str(gt))
        return self._truths[sample_id]

    def start_class(self) -> None:
        """Forget the previous class's ground truth (one class is held at a time)."""
        self._truths = {}

    # --- writing ------------------------------------------------------------------------------------------------

    def write(self, number: int, label: str, class_name: str, results) -> dict[str, Exported]:
        """Write run `number`'s maps of one class, every block its samples have; return block -> `Exported`."""
        out = {}
        for block in BLOCKS:
            samples, _, point_scores = block_arrays(results, block)
            if not samples:
                out[block] = Exported()
                continue
            folder = f"run-{number}/{block}"
            exported = Exported(background=background_below(point_scores))
            for sample, scores in zip(samples, point_scores):
                identity = sample.identity
                path = (self.base / folder / unique_component(identity["class_name"]) / "test"
                        / unique_component(identity["defect_type"]) / unique_component(Path(identity["sample_id"]).stem))
                if sample.organized:
                    truth = self.truth_of(sample)
                    values = original_map(scores, sample.grid_index, sample.grid_hw, truth.truth.shape,
                                          self._square_of(identity["class_name"]), exported.background)
                    path = path.with_name(path.name + ".tiff")
                    _write(path, lambda tmp, v=values: tifffile.imwrite(tmp, v, compression="zlib",
                                                                         compressionargs={"level": 1}))
                    exported.truths.append(truth.truth)
                else:
                    path = path.with_name(path.name + ".npy")
                    _write(path, lambda tmp, v=np.asarray(scores, np.float32): np.save(tmp, v))
                    exported.truths.append(None)
                exported.files.append(path)
                exported.labels.append(int(identity["label"]))
                exported.organized.append(sample.organized)
            entry = self.manifest.setdefault(folder, {"run": label, "block": block, "folder": folder, "classes": {}})
            entry["classes"][class_name] = {"samples": len(samples), "background": exported.background,
                                            "organized": all(exported.organized)}
            out[block] = exported
        return out

    def finish(self, header: dict) -> Path:
        """Write the manifest (last: a tree with a manifest is complete); return its path."""
        manifest = {"format": "pointad-anomaly-maps", "version": 1, "dataset": self.dataset,
                    "model": header.get("model"), "method": header.get("method"), "protocol": PROTOCOL,
                    "pro_integration_limit": MAX_FPR, "layout": LAYOUT,
                    "background": "each class's maps hold 'background' where the store has no point: below every "
                                  "score of the class",
                    "maps": list(self.manifest.values())}
        path = self.base / MANIFEST
        _write(path, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
        return path


def class_metrics(exported: Exported) -> dict[str, float]:
    """The `mvtec-official` metrics of one run, class and block, read back from the written files: organized
    classes `official_metrics` of the TIFFs and the ground truth, unorganized ones `cloud_metrics` of the .npy."""
    if exported.files and all(exported.organized):
        return official_metrics([tifffile.imread(f) for f in exported.files], exported.truths)
    return cloud_metrics([np.load(f, allow_pickle=False) for f in exported.files], exported.labels)


def _missing(gt: Path) -> InputFileError:
    return InputFileError(f"{gt}: ground truth not found; --export-maps reads MVTec 3D-AD's layout "
                          "<class>/test/<defect>/gt/<stem>.png beside xyz/, or raw Eyecandies' <id>_mask.png beside "
                          "<id>_depth.png (is --root the dataset's folder?)")


def _open_image(path: Path, read, what: str = "ground truth"):
    """read(the opened PIL image), a broken or unreadable file an InputFileError naming it."""
    try:
        with Image.open(path) as image:
            return read(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputFileError(f"{path}: unreadable {what} ({exc})") from None


def _truth(image) -> np.ndarray:
    """(H0, W0) bool: a ground-truth PNG's nonzero pixels (any channel)."""
    array = np.asarray(image)
    return (array != 0).any(axis=2) if array.ndim == 3 else array != 0


def _scan_shape(path: Path) -> tuple[int, int]:
    """(H0, W0) of a scan: an xyz TIFF's, or a raw Eyecandies depth PNG's."""
    if path.suffix.lower() == ".png":
        return _open_image(path, lambda image: (image.height, image.width), "scan")
    try:
        with tifffile.TiffFile(path) as tiff:
            return tuple(int(x) for x in tiff.pages[0].shape[:2])
    except (OSError, ValueError, IndexError, tifffile.TiffFileError) as exc:
        raise InputFileError(f"{path}: unreadable scan ({exc})") from None


def _write(path: Path, save) -> None:
    try:
        with atomic_path(path) as tmp:
            save(tmp)
    except OSError as exc:
        raise os_error(exc, path) from None
