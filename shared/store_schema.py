"""Render store schema v2 (design §4): root attributes, the array table, and one sample's row as arrays.

No I/O here: `shared/store.py` creates, writes and reads stores from these definitions.
Letters: N samples (axis 0 of every array), V views, S image size, P max_points, k knn.
Every array carries Zarr v3 `dimension_names` (DIMENSIONS: never the name of a variable of its group, so
xarray opens each group as a Dataset) and attributes `meaning`, `units`, `fill_value`. Schema v1 stores
(no dimension names, no cameras, render options repeated) are read as they are and written only after
`render migrate`.
"""

from __future__ import annotations

import copy
import json
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from . import strict
from .errors import StoreSchemaError
from .names import printable

FORMAT = "pointad-renders"
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # v1: read-only until `render migrate` (MIGRATE_NOTE)
MIGRATE_NOTE = "schema_version 1 store, read-only in this version; run 'render migrate {path}' to upgrade it in place"
IDENTITY = ("dataset", "class_name", "split", "defect_type", "sample_id")
FAILURE_KEYS = ("dataset", "sample_id", "reason")
# The largest sizes a store may declare, those `render build` can make (render/options.py): a row's
# arrays are allocated from them, so a store declaring more is refused before any row is read (design §8)
MAX_SIZES = {"views": 64, "image_size": 2048, "max_points": 2048 * 2048, "knn": 64}
# the numbers of the root attribute `camera` the renderer uses: (low, high), both excluded; None = unbounded
CAMERA_RANGES = {"fov_degrees": (0, 180), "margin": (0, None)}


class _NotRecorded:
    """Default of every RenderRecord field: tells a key the store did not write from a null it wrote."""

    def __repr__(self) -> str:
        return "<not recorded>"


_NOT_RECORDED = _NotRecorded()
# Render options added after stores were first written, with what the builds before them did; a record
# without the key reads as this value (a store without `masks` rendered its masks).
BEFORE_OPTION = {"masks": "render", "code_plan": None, "normals": "open3d"}


@dataclass(frozen=True, kw_only=True)
class RenderRecord:
    """The store's root attribute `render`, parsed (design §4.1): the render options every row was drawn with
    (RenderOptions' fields, render/options.py; shared imports no stage, so a test checks both name the
    same options) and the point size of each class.

    point_sizes: "dataset/class" -> the point size that class's rows were drawn with, recorded by
    `render build` before it draws a row of the class. point_size: the build's size for a class the registry
    gives none (--point-size or RenderOptions' default), kept for stores that read it; it is NOT the size a
    class in point_sizes was drawn with. `drawn` resolves the two: read a class's options only through it.
    A key the store did not write reads None (masks, code_plan, normals: BEFORE_OPTION); to_dict gives back the
    mapping as given or read, an int stays an int, so a store's fingerprint does not change by being read.
    """

    views: int = _NOT_RECORDED
    view_plan: str = _NOT_RECORDED
    angle_shift: float = _NOT_RECORDED
    image_size: int = _NOT_RECORDED
    supersample: int = _NOT_RECORDED
    max_points: int = _NOT_RECORDED
    point_size: float = _NOT_RECORDED
    light: str = _NOT_RECORDED
    downsample: float = _NOT_RECORDED
    visibility: str = _NOT_RECORDED
    surface_tolerance: float = _NOT_RECORDED
    knn: int = _NOT_RECORDED
    fov_degrees: float = _NOT_RECORDED
    margin: float = _NOT_RECORDED
    renderer: str = _NOT_RECORDED
    masks: str | None = _NOT_RECORDED
    code_plan: dict | None = _NOT_RECORDED
    # not recorded before issue 24, whose builds drew with open3d (BEFORE_OPTION); since, what the build chose
    normals: str | None = _NOT_RECORDED
    point_sizes: dict[str, float] = _NOT_RECORDED

    def __post_init__(self):
        stored = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not _NOT_RECORDED}
        check_point_sizes(stored.get("point_sizes"))
        object.__setattr__(self, "_stored", stored)
        for f in fields(self):
            if f.name not in stored:
                object.__setattr__(self, f.name, {} if f.name == "point_sizes" else BEFORE_OPTION.get(f.name))

    @classmethod
    def from_dict(cls, data, source: str = "store") -> RenderRecord:
        """Parse the attribute `render` of the store at `source`: unknown keys and values of another type are
        one StoreSchemaError line naming the store and the key."""
        where = f"{source}: store attribute 'render'"
        if not isinstance(data, Mapping):
            raise StoreSchemaError(f"{source}: store attribute render must be a mapping, got {type(data).__name__}")
        try:
            check_point_sizes(data.get("point_sizes"))
        except ValueError as exc:
            raise StoreSchemaError(f"{source}: {exc}") from None
        record = strict.from_dict(cls, data, where, error=StoreSchemaError)
        object.__setattr__(record, "_stored", copy.deepcopy(dict(data)))  # as read: strict made its ints floats
        return record

    def to_dict(self) -> dict:
        """The recorded keys and their values as given or read (a copy)."""
        return copy.deepcopy(self._stored)

    def options(self) -> dict:
        """The recorded render options, RenderOptions' keyword arguments (point_size as recorded, see the class
        docstring); an option added after stores were first written is there with BEFORE_OPTION's value."""
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)
                if f.name != "point_sizes" and (f.name in self._stored or f.name in BEFORE_OPTION)}

    def drawn(self, dataset: str, class_name: str) -> dict:
        """RenderOptions' keyword arguments the rows of `dataset`/`class_name` were drawn with: `options()` with
        the class's own point size from point_sizes. A class without one (its rows written by a build older
        than the record, or none at all) keeps the recorded point_size. Plain values (JSON, a checkpoint)."""
        options = self.options()
        size = self.point_sizes.get(f"{dataset}/{class_name}")
        if size is not None:
            options["point_size"] = size
        return options


def check_point_sizes(sizes) -> None:
    """ValueError unless `sizes` (the record's point_sizes; None: not recorded) maps names to finite sizes > 0."""
    if sizes is None:
        return
    if not isinstance(sizes, dict):
        raise ValueError(f"store attribute render.point_sizes must be a mapping, got {_short(sizes)}")
    for key, size in sizes.items():
        # the key is a name from the store: printed escaped, one line whatever it holds
        _check_number(f"render.point_sizes.{printable(key)}", size, 0, None)


@dataclass(frozen=True, kw_only=True)
class StoreAttrs:
    """The store's root attributes besides `format` and `schema_version` (which to_dict adds).

    view_plan: {"name", "axes", "angles"}; camera: how each sample's camera is derived;
    software: {package: version}; failures: [{"dataset", "sample_id", "reason"}];
    render: the render options (RenderRecord; a mapping given is parsed with RenderRecord.from_dict).
    In memory `render` also holds views, image_size, max_points, knn (and fov_degrees, margin from
    `camera`); on disk (v2) they are written once, as the top-level attributes and `camera`
    (RENDER_ELSEWHERE), and put back into `render` when read. schema_version: of the store read (1 or 2).
    """

    views: int
    image_size: int
    max_points: int
    knn: int
    view_plan: dict
    camera: dict
    software: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    render: RenderRecord = field(default_factory=RenderRecord)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        for name, most in MAX_SIZES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= most:
                raise ValueError(f"store attribute {name} must be an integer in 1..{most}, got {_short(value)}")
        for name in ("view_plan", "camera", "software"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"store attribute {name} must be a mapping, got {type(getattr(self, name)).__name__}")
        for name, (low, high) in CAMERA_RANGES.items():
            if name in self.camera:
                _check_number(f"camera.{name}", self.camera[name], low, high)
        render = self.render
        if isinstance(render, Mapping):
            render = RenderRecord.from_dict(render)
        if not isinstance(render, RenderRecord):
            raise ValueError(f"store attribute render must be a mapping, got {type(render).__name__}")
        check_failures(self.failures)
        recorded, stored = self._recorded_once(), render.to_dict()
        clash = sorted(k for k, v in recorded.items() if k in stored and stored[k] != v)
        if clash:
            raise ValueError(f"render option(s) {clash} differ from the store attributes "
                             f"{_short({k: recorded[k] for k in clash})}")
        object.__setattr__(self, "render", RenderRecord.from_dict({**stored, **recorded}))

    def _recorded_once(self) -> dict:
        """The render options written elsewhere than `render` on disk, with their values."""
        sizes = {"views": self.views, "image_size": self.image_size, "max_points": self.max_points, "knn": self.knn}
        return {**sizes, **{k: self.camera[k] for k in ("fov_degrees", "margin") if k in self.camera}}

    def _plain(self) -> dict:
        """The fields as plain values, `render` as recorded (RenderRecord.to_dict)."""
        return {**{f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}, "render": self.render.to_dict()}

    def to_dict(self) -> dict:
        """JSON-ready attributes as written (schema v2), `format` and `schema_version` first; TypeError if a
        value is not JSON."""
        data = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **self._plain()}
        data["schema_version"] = SCHEMA_VERSION  # read as v1, written as v2
        data["render"] = {k: v for k, v in data["render"].items() if k not in RENDER_ELSEWHERE}
        data["camera"] = {**CAMERA_CONVENTION, **self.camera}
        # a JSON round trip turns tuples into lists now, so a written and re-read store compares equal
        return json.loads(json.dumps(data, allow_nan=False))

    @classmethod
    def from_dict(cls, data: dict, source: str = "store") -> StoreAttrs:
        """Validate attributes read from the store at `source` (a path, named first in every error)."""
        if not isinstance(data, dict) or "format" not in data:
            raise StoreSchemaError(f"{source}: not a pointad render store (no 'format' attribute)")
        if data["format"] != FORMAT:
            raise StoreSchemaError(f"{source}: format {_short(data['format'])}, this version reads {FORMAT!r}; "
                                   "not a pointad render store")
        version = data.get("schema_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise StoreSchemaError(f"{source}: schema_version {_short(version)}, this version reads "
                                   f"{', '.join(map(str, READABLE_VERSIONS))}; open it with the pointad version that "
                                   "wrote it, or render into another --out")
        values = {k: v for k, v in data.items() if k != "format"}
        if isinstance(values.get("camera"), dict):  # the convention is this version's constant text
            values["camera"] = {k: v for k, v in values["camera"].items() if k not in CAMERA_CONVENTION}
        # every attribute is required: a store written by this code has them all
        missing = sorted(f.name for f in fields(cls) if f.name not in values)
        if missing:
            raise StoreSchemaError(f"{source}: missing key(s) {missing}; render into another --out")
        render = RenderRecord.from_dict(values.pop("render"), source)
        return strict.from_dict(cls, values, source, given={"render": render}, error=StoreSchemaError)

    def identity_form(self) -> dict:
        """The attributes in schema v1's form, less `failures`: what `store_fingerprint` hashes, the same
        for a v1 store and for it after `render migrate` (runs made before migrating resume after it)."""
        data = {"format": FORMAT, "schema_version": 1, **self._plain()}
        data["schema_version"] = 1
        data["camera"] = {k: v for k, v in self.camera.items() if k not in CAMERA_CONVENTION}
        del data["failures"]
        return json.loads(json.dumps(data, allow_nan=False))

    def dims(self) -> dict[str, int]:
        """Sizes of the letters used in the array table."""
        return {"V": self.views, "S": self.image_size, "P": self.max_points, "k": self.knn}


_REPR = reprlib.Repr()  # the repr of a value read from a file, ~60 characters at most however large the value
_REPR.maxstring = _REPR.maxother = 50
_REPR.maxlevel = 2


def _short(value) -> str:
    return _REPR.repr(value)


def _check_number(name: str, value, low, high) -> None:
    """ValueError unless `value` is a finite number in (low, high) (None: unbounded)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(value) and (low is None or value > low) and (high is None or value < high)
    if not ok:
        where = f"in ({low}, {high})" if high is not None else f"> {low}"
        raise ValueError(f"store attribute {name} must be a finite number {where}, got {_short(value)}")


def check_failures(failures) -> None:
    """Raise ValueError unless `failures` is a list of {"dataset", "sample_id", "reason"} string mappings."""
    if not isinstance(failures, (list, tuple)):
        raise ValueError(f"store attribute failures must be a list, got {type(failures).__name__}")
    for entry in failures:
        if not isinstance(entry, dict) or set(entry) != set(FAILURE_KEYS) \
                or not all(isinstance(entry[k], str) for k in FAILURE_KEYS):
            raise ValueError(f"each failure must be {{'dataset', 'sample_id', 'reason'}} strings, got {_short(entry)}")


# render options a v2 store writes once outside `render` (StoreAttrs docstring)
RENDER_ELSEWHERE = ("views", "image_size", "max_points", "knn", "fov_degrees", "margin")
# written once, in the root attribute `camera`: how to read cameras/intrinsic and cameras/extrinsic
CAMERA_CONVENTION = {
    "convention": "OpenCV pinhole: camera x right, y down, z forward; pixel centres at integer (u = column, "
                  "v = row)",
    "intrinsic": "cameras/intrinsic (N, 3, 3) K at image_size: [[f, 0, cu], [0, f, cv], [0, 0, 1]], "
                 "cu = cv = image_size / 2 - 0.5",
    "extrinsic": "cameras/extrinsic (N, V, 4, 4) world-to-camera [R | t]: X_cam = R X + t, X in points/xyz units; "
                 "pixel = K X_cam / z_cam, rounded half to even",
}

# Dimension names of the letters (and fixed sizes) of the array table; none is a variable's name.
DIMENSIONS = {"N": "sample", "V": "view", "P": "point", "k": "neighbour"}


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store: its path, row shape after N (letters resolved by StoreAttrs.dims), dtype,
    fill value, the SampleArrays field a worker writes it from (None: written by the coordinator, or
    `samples/complete`, which write_sample sets itself), dimension names after `sample`, what it means
    and its units."""

    path: str
    row: tuple
    dtype: str
    fill: object
    field: str | None = None
    worker: bool = True
    dims: tuple = ()
    meaning: str = ""
    units: str = "1"

    def row_shape(self, attrs: StoreAttrs) -> tuple[int, ...]:
        dims = attrs.dims()
        return tuple(dims[d] if isinstance(d, str) else d for d in self.row)

    def dimension_names(self) -> tuple[str, ...]:
        """Zarr v3 `dimension_names`: `sample` then one name per row axis."""
        return ("sample", *self.dims)

    def attributes(self) -> dict:
        """The array's descriptive attributes (JSON): meaning, units, fill value (NaN as "NaN")."""
        fill = self.fill
        if isinstance(fill, float) and np.isnan(fill):
            fill = "NaN"
        return {"meaning": self.meaning, "units": self.units, "fill_value": fill}


# design §4, in its order. Worker-written arrays are chunked 1 along N, the rest of the row in one chunk.
_IDENTITY_MEANING = {"dataset": "dataset name in datasets.yaml", "class_name": "object class",
                     "split": "train, validation or test", "defect_type": "defect type ('good' if none)",
                     "sample_id": "source file relative to the dataset root"}
_UNITS = "points/xyz units (the dataset's, after preprocessing)"
ARRAYS = (
    *(ArraySpec(f"samples/{name}", (), "str", "", worker=False, meaning=_IDENTITY_MEANING[name]) for name in IDENTITY),
    ArraySpec("samples/label", (), "uint8", 0, worker=False, meaning="1 anomalous sample, 0 good"),
    ArraySpec("samples/n_points", (), "int32", 0, "n_points", meaning="valid points: the first n_points point slots"),
    ArraySpec("samples/grid_hw", (2,), "int32", 0, "grid_hw", dims=("hw",),
              meaning="organized grid (height, width); (0, 0) if the cloud is unorganized", units="pixel"),
    ArraySpec("samples/complete", (), "bool", False,
              meaning="True once a worker wrote the whole row (written last); read only complete rows"),
    ArraySpec("views/image", ("V", "S", "S", 3), "uint8", 0, "image", dims=("view", "row", "col", "channel"),
              meaning="rendered view, grey points shaded, RGB 0..255"),
    ArraySpec("views/mask", ("V", "S", "S"), "uint8", 0, "mask", dims=("view", "row", "col"),
              meaning="rendered ground truth per view: 1 anomalous pixel"),
    ArraySpec("points/pixel", ("V", "P", 2), "int16", 0, "pixel", dims=("view", "point", "uv"),
              meaning="projection of each point per view (u = column, v = row), clipped to the image; 0 on padding",
              units="pixel"),
    ArraySpec("points/visible", ("V", "P"), "bool", False, "visible", dims=("view", "point"),
              meaning="point seen in the view (depth test); False on padding"),
    ArraySpec("points/xyz", ("P", 3), "float32", 0.0, "xyz", dims=("point", "axis"),
              meaning="preprocessed point coordinates (x, y, z); 0 on padding", units=_UNITS),
    ArraySpec("points/valid", ("P",), "bool", False, "valid", dims=("point",),
              meaning="True for the first n_points slots, False on padding"),
    ArraySpec("points/label", ("P",), "uint8", 0, "label", dims=("point",), meaning="1 anomalous point, 0 good"),
    ArraySpec("points/grid_index", ("P",), "int32", -1, "grid_index", dims=("point",),
              meaning="row * width + col in the organized grid; -1 if none or padding"),
    ArraySpec("points/proxy", ("P",), "int32", -1, "proxy", dims=("point",),
              meaning="nearest point seen in some view (design §3.7); -1 on padding"),
    ArraySpec("points/knn", ("P", "k"), "int32", -1, "knn", dims=("point", "neighbour"),
              meaning="smoothing graph: neighbour point slots, the point itself first; -1 = none"),
    ArraySpec("points/knn_weight", ("P", "k"), "float16", 0.0, "knn_weight", dims=("point", "neighbour"),
              meaning="weights of points/knn, summing to 1 per valid point; 0 = none"),
    ArraySpec("rgb/image", ("S", "S", 3), "uint8", 0, "rgb", dims=("row", "col", "channel"),
              meaning="source RGB on the organized grid; zeros if none"),
    ArraySpec("rgb/mask", ("S", "S"), "uint8", 0, "rgb_mask", dims=("row", "col"),
              meaning="2D ground truth on the organized grid: 1 anomalous"),
    ArraySpec("cameras/intrinsic", (3, 3), "float64", float("nan"), "intrinsic", dims=("row3", "col3"),
              meaning="pinhole K at image_size (root attribute camera); NaN = not recorded", units="pixel"),
    ArraySpec("cameras/extrinsic", ("V", 4, 4), "float64", float("nan"), "extrinsic",
              dims=("view", "row4", "col4"),
              meaning="world-to-camera transform per view (root attribute camera); NaN = not recorded",
              units=_UNITS),
)
BY_FIELD = {spec.field: spec for spec in ARRAYS if spec.field is not None}
V2_ONLY = ("cameras/intrinsic", "cameras/extrinsic")  # arrays a v1 store lacks


@dataclass(frozen=True, kw_only=True, eq=False)
class SampleArrays:
    """One sample's worker-written row (padding slots hold the fill values of ARRAYS).

    n_points: valid points, int; grid_hw: (2,) int32, (0, 0) if unorganized.
    image: (V, S, S, 3) uint8; mask: (V, S, S) uint8 0/1.
    pixel: (V, P, 2) int16 (u = column, v = row); visible: (V, P) bool.
    xyz: (P, 3) float32; valid: (P,) bool; label: (P,) uint8; grid_index: (P,) int32, -1 = no grid cell;
    proxy: (P,) int32, -1 for padding (design §3.7); knn: (P, k) int32, -1 = none; knn_weight: (P, k) float16.
    rgb: (S, S, 3) uint8, zeros if none; rgb_mask: (S, S) uint8.
    intrinsic: (3, 3) float64 K at S; extrinsic: (V, 4, 4) float64 world-to-camera (CAMERA_CONVENTION);
    None only in rows read from a schema v1 store, which has no cameras.
    """

    n_points: int
    grid_hw: np.ndarray
    image: np.ndarray
    mask: np.ndarray
    pixel: np.ndarray
    visible: np.ndarray
    xyz: np.ndarray
    valid: np.ndarray
    label: np.ndarray
    grid_index: np.ndarray
    proxy: np.ndarray
    knn: np.ndarray
    knn_weight: np.ndarray
    rgb: np.ndarray
    rgb_mask: np.ndarray
    intrinsic: np.ndarray | None
    extrinsic: np.ndarray | None

    def validate(self, attrs: StoreAttrs) -> None:
        """Raise ValueError naming the first array whose shape or dtype differs from the store's schema."""
        n = self.n_points
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= attrs.max_points:
            raise ValueError(f"n_points must be an integer in [0, {attrs.max_points}], got {n!r}")
        for name, spec in BY_FIELD.items():
            if name == "n_points":
                continue
            value = getattr(self, name)
            want = spec.row_shape(attrs)
            if not isinstance(value, np.ndarray) or value.shape != want or value.dtype != np.dtype(spec.dtype):
                got = f"{value.shape} {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
                raise ValueError(f"{spec.path} ({name}) must be {want} {spec.dtype}, got {got}")
        if int(self.valid.sum()) != n:
            raise ValueError(f"points/valid (valid) has {int(self.valid.sum())} True, but n_points is {n}")


@dataclass(frozen=True, kw_only=True, eq=False)
class StoredSample(SampleArrays):
    """One complete row read back from a store: its identity, then the arrays of SampleArrays."""

    index: int
    dataset: str
    class_name: str
    split: str
    defect_type: str
    sample_id: str
    sample_label: int  # samples/label: 1 anomalous; `label` is the per-point array


SAMPLE_FIELDS = tuple(f.name for f in fields(SampleArrays))
