"""Render store schema v1 (SPEC 4): root attributes, the array table, and one sample's row as arrays.

No I/O here: `shared/store.py` creates, writes and reads stores from these definitions.
Letters: N samples (axis 0 of every array), V views, S image size, P max_points, k knn.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from shared.errors import StoreSchemaError

FORMAT = "pointad-renders"
SCHEMA_VERSION = 1
IDENTITY = ("dataset", "class_name", "split", "defect_type", "sample_id")
FAILURE_KEYS = ("dataset", "sample_id", "reason")


@dataclass(frozen=True, kw_only=True)
class StoreAttrs:
    """The store's root attributes besides `format` and `schema_version` (which to_dict adds).

    view_plan: {"name", "axes", "angles"}; camera: how each sample's camera is derived;
    software: {package: version}; failures: [{"dataset", "sample_id", "reason"}];
    render: the render options, free-form (recorded so a resumed build can refuse other options).
    """

    views: int
    image_size: int
    max_points: int
    knn: int
    view_plan: dict
    camera: dict
    software: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)
    render: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("views", "image_size", "max_points", "knn"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"store attribute {name} must be a positive integer, got {value!r}")
        for name in ("view_plan", "camera", "software", "render"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"store attribute {name} must be a mapping, got {type(getattr(self, name)).__name__}")
        check_failures(self.failures)

    def to_dict(self) -> dict:
        """JSON-ready attributes, `format` and `schema_version` first; raises TypeError if a value is not JSON."""
        data = {"format": FORMAT, "schema_version": SCHEMA_VERSION, **asdict(self)}
        # a JSON round trip turns tuples into lists now, so a written and re-read store compares equal
        return json.loads(json.dumps(data, allow_nan=False))

    @classmethod
    def from_dict(cls, data: dict, source: str = "store") -> "StoreAttrs":
        """Validate attributes read from the store at `source` (a path, named first in every error)."""
        if not isinstance(data, dict) or "format" not in data:
            raise StoreSchemaError(f"{source}: not a pointad render store (no 'format' attribute)")
        if data["format"] != FORMAT:
            raise StoreSchemaError(f"{source}: format {data['format']!r}, this version reads {FORMAT!r}; "
                                   "not a pointad render store")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise StoreSchemaError(f"{source}: schema_version {data.get('schema_version')}, this version reads "
                                   f"{SCHEMA_VERSION}; open it with the pointad version that wrote it, or render "
                                   "into another --out")
        known = {"format", "schema_version", *(f.name for f in fields(cls))}
        unknown = sorted(set(data) - known)
        if unknown:
            raise StoreSchemaError(f"{source}: unknown store attribute(s) {unknown}; known: {sorted(known)}")
        missing = sorted(known - set(data))
        if missing:
            raise StoreSchemaError(f"{source}: store attribute(s) {missing} missing; render into another --out")
        try:
            return cls(**{f.name: data[f.name] for f in fields(cls)})
        except ValueError as exc:
            raise StoreSchemaError(f"{source}: {exc}") from exc

    def dims(self) -> dict[str, int]:
        """Sizes of the letters used in the array table."""
        return {"V": self.views, "S": self.image_size, "P": self.max_points, "k": self.knn}


def check_failures(failures) -> None:
    """Raise ValueError unless `failures` is a list of {"dataset", "sample_id", "reason"} string mappings."""
    if not isinstance(failures, (list, tuple)):
        raise ValueError(f"store attribute failures must be a list, got {type(failures).__name__}")
    for entry in failures:
        if not isinstance(entry, dict) or set(entry) != set(FAILURE_KEYS) \
                or not all(isinstance(entry[k], str) for k in FAILURE_KEYS):
            raise ValueError(f"each failure must be {{'dataset', 'sample_id', 'reason'}} strings, got {entry!r}")


@dataclass(frozen=True)
class ArraySpec:
    """One array of the store: its path, row shape after N (letters resolved by StoreAttrs.dims), dtype,
    fill value, and the SampleArrays field a worker writes it from (None: written by the coordinator,
    or `samples/complete`, which write_sample sets itself)."""

    path: str
    row: tuple
    dtype: str
    fill: object
    field: str | None = None
    worker: bool = True

    def row_shape(self, attrs: StoreAttrs) -> tuple[int, ...]:
        dims = attrs.dims()
        return tuple(dims[d] if isinstance(d, str) else d for d in self.row)


# SPEC 4, in its order. Worker-written arrays are chunked 1 along N, the rest of the row in one chunk.
ARRAYS = (
    *(ArraySpec(f"samples/{name}", (), "str", "", worker=False) for name in IDENTITY),
    ArraySpec("samples/label", (), "uint8", 0, worker=False),
    ArraySpec("samples/n_points", (), "int32", 0, "n_points"),
    ArraySpec("samples/grid_hw", (2,), "int32", 0, "grid_hw"),
    ArraySpec("samples/complete", (), "bool", False),
    ArraySpec("views/image", ("V", "S", "S", 3), "uint8", 0, "image"),
    ArraySpec("views/mask", ("V", "S", "S"), "uint8", 0, "mask"),
    ArraySpec("points/pixel", ("V", "P", 2), "int16", 0, "pixel"),
    ArraySpec("points/visible", ("V", "P"), "bool", False, "visible"),
    ArraySpec("points/xyz", ("P", 3), "float32", 0.0, "xyz"),
    ArraySpec("points/valid", ("P",), "bool", False, "valid"),
    ArraySpec("points/label", ("P",), "uint8", 0, "label"),
    ArraySpec("points/grid_index", ("P",), "int32", -1, "grid_index"),
    ArraySpec("points/proxy", ("P",), "int32", -1, "proxy"),
    ArraySpec("points/knn", ("P", "k"), "int32", -1, "knn"),
    ArraySpec("points/knn_weight", ("P", "k"), "float16", 0.0, "knn_weight"),
    ArraySpec("rgb/image", ("S", "S", 3), "uint8", 0, "rgb"),
    ArraySpec("rgb/mask", ("S", "S"), "uint8", 0, "rgb_mask"),
)
BY_FIELD = {spec.field: spec for spec in ARRAYS if spec.field is not None}


@dataclass(frozen=True, kw_only=True, eq=False)
class SampleArrays:
    """One sample's worker-written row (padding slots hold the fill values of ARRAYS).

    n_points: valid points, int; grid_hw: (2,) int32, (0, 0) if unorganized.
    image: (V, S, S, 3) uint8; mask: (V, S, S) uint8 0/1.
    pixel: (V, P, 2) int16 (u = column, v = row); visible: (V, P) bool.
    xyz: (P, 3) float32; valid: (P,) bool; label: (P,) uint8; grid_index: (P,) int32, -1 = no grid cell;
    proxy: (P,) int32, -1 for padding (SPEC 3.7); knn: (P, k) int32, -1 = none; knn_weight: (P, k) float16.
    rgb: (S, S, 3) uint8, zeros if none; rgb_mask: (S, S) uint8.
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
