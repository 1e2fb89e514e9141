"""A run folder's records (design §6.3): `config.json` is a `RunRecord`, `metrics.csv` one `EpochMetrics` per
epoch; the one reader and the one writer of each, used by `train run`, `train sweep`, `train import-released`
and `eval report`'s run discovery.

Light on purpose: no torch and no training loop at import (eval reads records). Both readers are strict: an
unknown, missing or mistyped key, a number out of range or not finite, a bad column or a row out of order is
one line naming the file and the key or line, with what to do.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..shared import strict
from ..shared.errors import ConfigError, PointADError
from ..shared.io import atomic_path
from ..shared.limits import FINITE, OutOfRange, check_fields, within
from .loss_terms import TERM_NAMES
from .model.model_config import ModelConfig
from .options import TrainConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
# what a run folder holds (and `.<one of these>.*`: their temp and lock files); a folder holding anything else
# is not a run's
RUN_FILES = (CONFIG_FILE, METRICS_FILE, "checkpoints", "features.zarr")
RUN_FORMAT, RUN_VERSION = "pointad-run", 1  # config.json without them: version 1, written before they were
NOT_RECORDED = ("cache_memory",)  # TrainConfig fields that are no part of a run (memory, never results)
MAX_FILE_BYTES = 64 * 2**20  # either file; a run of 10^6 rows records ~8 MB of row numbers
REWRITE = "move it away, then `train run --resume` with the run's settings writes it again"
_METRICS_FIX = "repair or delete it to resume (it is rewritten from the next epoch on)"


class RunRecordError(ConfigError):
    """A run folder's config.json that cannot be used. ours: it is a run record (a mapping with 'train' settings),
    damaged or of another version, rather than someone else's file."""

    def __init__(self, message: str, ours: bool = True):
        super().__init__(message)
        self.ours = ours


@dataclass(frozen=True, kw_only=True)
class ImportedFrom:
    """Where an imported run's prompts came from (`train import-released`): the file, its SHA-256, the layout
    read, how the deep prompts were taken, and the released keys read but not kept (key -> shape)."""

    file: str
    sha256: str
    layout: str
    deep_prompts: str
    dropped: dict[str, tuple[int, ...]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """A run folder's `config.json`: what was trained, on what, with which model.

    train: the run's settings (`cache_memory`, no part of a run, is not recorded and reads as its default);
    model: the frozen backbone's config; store_fingerprint: the store's content (`shared.store.store_fingerprint`,
    "" for an imported run); rows: the store rows trained on (N, in order); render: the store's render options
    for the trained class (`RenderRecord.drawn`; None for an imported run or a run written before they were
    recorded); imported: the released file of an imported run, None otherwise."""

    train: TrainConfig
    model: ModelConfig
    store_fingerprint: str
    rows: tuple[int, ...] = field(metadata=within(0, 2**40))
    render: dict[str, typing.Any] | None = None
    imported: ImportedFrom | None = None
    format: str = RUN_FORMAT
    version: int = RUN_VERSION

    def __post_init__(self):
        check_fields(self)
        if (self.format, self.version) != (RUN_FORMAT, RUN_VERSION):
            raise ConfigError(f"'format' {self.format!r} version {self.version}; this version of pointad reads "
                              f"{RUN_FORMAT!r} version {RUN_VERSION}")
        default = TrainConfig.cache_memory
        if self.train.cache_memory != default:  # not recorded: equal records whatever the memory budget was
            object.__setattr__(self, "train", dataclasses.replace(self.train, cache_memory=default))

    def to_dict(self) -> dict:
        """JSON-ready dict (the layout of config.json); `from_dict(to_dict())` gives an equal record."""
        train = {name: value for name, value in dataclasses.asdict(self.train).items() if name not in NOT_RECORDED}
        imported = None if self.imported is None else dataclasses.asdict(self.imported)
        data = {"format": self.format, "version": self.version, "train": train, "model": self.model.to_dict(),
                "store_fingerprint": self.store_fingerprint, "rows": list(self.rows), "render": self.render,
                "imported": imported}
        return json.loads(json.dumps(data, allow_nan=False))  # tuples -> lists, as the file holds them

    @classmethod
    def from_dict(cls, data, source: str = CONFIG_FILE) -> RunRecord:
        """Check a mapping (a config.json) and build the record; ConfigError naming `source` and the key
        otherwise. Every key of 'train' (but those `NOT_RECORDED`) and of 'model' must be there: a record
        is written whole, so a missing setting is damage, never a default."""
        if not isinstance(data, Mapping):
            raise RunRecordError(f"{source}: not a run record (expected a mapping, got {type(data).__name__})", False)
        if not isinstance(data.get("train"), Mapping) and "format" not in data:
            raise RunRecordError(f"{source}: not a run record (no 'train' settings)", ours=False)
        kind = (data.get("format", RUN_FORMAT), data.get("version", RUN_VERSION))
        if kind != (RUN_FORMAT, RUN_VERSION):
            raise RunRecordError(f"{source}: run record {_short(kind[0])} version {_short(kind[1])}; this version "
                                 f"of pointad reads "
                                 f"{RUN_FORMAT!r} version {RUN_VERSION} (or use the pointad that wrote it)")
        _refuse_nonfinite(data, "", source)
        sections = {"train": [f.name for f in dataclasses.fields(TrainConfig) if f.name not in NOT_RECORDED],
                    "model": [f.name for f in dataclasses.fields(ModelConfig)]}
        for key, names in sections.items():
            section = data.get(key)
            if not isinstance(section, Mapping):
                continue  # strict names it
            unknown = sorted(map(str, set(section) - set(names)))
            if unknown:
                raise RunRecordError(f"{source}: '{key}': unknown key(s) {unknown}; known: {sorted(names)}")
            missing = [name for name in names if name not in section]
            if missing:
                raise RunRecordError(f"{source}: '{key}': missing key(s) {missing}")
        try:
            return strict.from_dict(cls, data, source, error=RunRecordError)
        except RunRecordError:
            raise
        except ConfigError as exc:  # TrainConfig's and ModelConfig's own checks name the option or the model
            text = str(exc)
            raise RunRecordError(text if text.startswith(f"{source}: ") else f"{source}: {text}") from None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse_nonfinite(value, path: str, source: str) -> None:
    """RunRecordError naming the key path of the first NaN or +-inf (JSON readers take NaN, Infinity, 1e999)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise RunRecordError(f"{source}: '{path}' must be a finite number, got {value}")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _refuse_nonfinite(item, f"{path}.{key}" if path else str(key), source)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _refuse_nonfinite(item, f"{path}[{i}]", source)


def write_run_record(run_dir, record: RunRecord) -> Path:
    """Write `record` as run_dir/config.json (atomically: temp file, then rename); returns the path."""
    path = Path(run_dir) / CONFIG_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record.to_dict(), indent=2, allow_nan=False), encoding="utf-8")
    return path


def read_run_record(run_dir) -> RunRecord:
    """The `RunRecord` of run_dir/config.json; RunRecordError, one line naming the file and the key and saying
    what to do, if it is missing, unreadable, not a run record or damaged (`RunRecordError.ours` tells the last
    two apart)."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise RunRecordError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB, not a run record; {REWRITE}", False)
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise RunRecordError(f"{path}: missing; {REWRITE}") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise RunRecordError(f"{path}: unreadable run record ({reason}); {REWRITE}", ours=False) from None
    try:
        return RunRecord.from_dict(data, str(path))
    except RunRecordError as exc:
        raise RunRecordError(f"{exc}; {REWRITE}", exc.ours) from None


def check_run_dir(run_dir) -> None:
    """PointADError unless run_dir is absent, or a folder where a run's files may go: never a file, a Zarr store,
    a folder whose config.json is not a run record (we would overwrite it), or, without a config.json, a folder
    holding anything but what a run writes (`RUN_FILES`: the current directory full of the user's files, `--out
    .`, would otherwise be filled with ours) or a metrics.csv that `read_metrics` does not read. A damaged run
    record of ours is its own line (`read_run_record`), saying how to write it again."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise PointADError(f"{run_dir}: is a file; --out takes a run directory")
    if (run_dir / "zarr.json").exists():
        raise PointADError(f"{run_dir}: is a Zarr store, not a run directory; choose another --out")
    if (run_dir / CONFIG_FILE).exists():
        try:
            read_run_record(run_dir)
        except RunRecordError as exc:
            if exc.ours:
                raise
            raise PointADError(f"{run_dir}: holds a {CONFIG_FILE} that is not a training run's; choose another "
                               f"--out") from None
        return  # a run's folder may hold the user's notes
    others = sorted(p.name for p in run_dir.iterdir()
                    if p.name not in RUN_FILES and not p.name.startswith(tuple(f".{f}." for f in RUN_FILES)))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise PointADError(f"{run_dir}: holds files that are not a training run's ({shown}); --out takes a new or "
                           f"empty folder, or a run to --resume")
    try:
        read_metrics(run_dir)
    except PointADError:
        raise PointADError(f"{run_dir}: holds a {METRICS_FILE} that is not a training run's; choose another "
                           f"--out") from None


# -- metrics.csv --------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class EpochMetrics:
    """One row of metrics.csv: an epoch's mean losses over the class's samples ("total", then the enabled loss
    terms in `loss_terms.TERM_NAMES` order), the point AUROC of its training scores (None: undefined, the points all
    of one label) and its wall time. Columns: epoch, total, <terms>, point_auroc, seconds."""

    epoch: int = field(metadata=within(1, 100_000))  # TrainConfig.epochs' range
    losses: dict[str, float]
    point_auroc: float | None = field(default=None, metadata=within(0, 1))
    seconds: float = field(default=0.0, metadata=within(0))

    def __post_init__(self):
        check_fields(self)
        names = list(self.losses)
        if names != loss_columns(names[1:]):
            raise ValueError(f"loss columns {names}: expected 'total', then loss terms in the order "
                             f"{', '.join(TERM_NAMES)}")
        for name, value in self.losses.items():
            reason = FINITE.problem(value)
            if reason is not None:
                raise OutOfRange(name, reason, f"'{name}'")

    @classmethod
    def of(cls, epoch: int, metrics: dict) -> EpochMetrics:
        """From `Trainer.run_epoch`'s dict (its point_auroc NaN when undefined)."""
        auroc = metrics.get("point_auroc")
        return cls(epoch=epoch, losses={k: float(v) for k, v in metrics.items() if k not in ("point_auroc", "seconds")},
                   point_auroc=None if auroc is None or not math.isfinite(auroc) else float(auroc),
                   seconds=float(metrics.get("seconds", 0.0)))

    def columns(self) -> list[str]:
        return ["epoch", *self.losses, "point_auroc", "seconds"]

    def to_row(self) -> dict[str, str]:
        """{column: text}: numbers in Python's shortest exact spelling, an undefined AUROC empty."""
        return {"epoch": str(self.epoch), **{k: repr(v) for k, v in self.losses.items()},
                "point_auroc": "" if self.point_auroc is None else repr(self.point_auroc),
                "seconds": repr(self.seconds)}


def loss_columns(terms) -> list[str]:
    """["total", *terms] if `terms` are loss term names in canonical order without repeats, else []."""
    order = TERM_NAMES
    terms = list(terms)
    ranks = [order.index(t) if t in order else -1 for t in terms]
    return ["total", *terms] if -1 not in ranks and ranks == sorted(set(ranks)) else []


def read_metrics(run_dir) -> list[EpochMetrics]:
    """The rows of run_dir/metrics.csv ([] if there is none), checked: the columns of `EpochMetrics`, numbers
    in every cell, finite (an empty or "nan" point_auroc is undefined: "nan" is how runs spelled it before this
    record), epochs increasing; PointADError naming the file and the line and column otherwise."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []

    def damaged(reason: str):
        raise PointADError(f"{path}: damaged metrics file ({reason}); {_METRICS_FIX}")
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            damaged(f"larger than {MAX_FILE_BYTES >> 20} MiB")
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            lines = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PointADError(f"{path}: unreadable metrics file ({exc}); {_METRICS_FIX}") from None
    if "epoch" not in header:
        damaged("no 'epoch' column")
    parsed = []  # first every cell a number (a parser's error), then the columns and values (the record's)
    for line, cells in lines:
        if len(cells) != len(header):
            damaged(f"line {line} has {len(header)} columns in the header but not in the row")
        row = {}
        for key, text in zip(header, cells):
            try:
                row[key] = int(text) if key == "epoch" else (None if text in ("", "nan") and key == "point_auroc"
                                                             else float(text))
            except ValueError:
                damaged(f"line {line}, {key}: {text[:40]!r} is not a number")
        parsed.append((line, row))
    if header[:2] != ["epoch", "total"] or header[-2:] != ["point_auroc", "seconds"] \
            or not loss_columns(header[2:-2]):
        damaged(f"columns {header[:12]}; expected epoch, total, the loss terms in the order "
                f"{', '.join(TERM_NAMES)}, point_auroc, seconds")
    rows: list[EpochMetrics] = []
    for line, row in parsed:
        try:
            record = EpochMetrics(epoch=row["epoch"], losses={k: row[k] for k in header[1:-2]},
                                  point_auroc=row["point_auroc"], seconds=row["seconds"])
        except OutOfRange as exc:
            damaged(f"line {line}, {exc.key}: {exc.reason}")
        if rows and record.epoch <= rows[-1].epoch:
            damaged(f"line {line}: epoch {record.epoch} after epoch {rows[-1].epoch}; one row per epoch, in order")
        rows.append(record)
    return rows


def append_metrics(run_dir, row: EpochMetrics) -> None:
    """Write `row` as the last line of run_dir/metrics.csv, after the rows of earlier epochs (a re-run epoch
    replaces its row and those after it); the file is rewritten atomically, so a kill never leaves half a line."""
    kept = [r for r in read_metrics(run_dir) if r.epoch < row.epoch] + [row]
    columns = row.columns()
    if any(r.columns() != columns for r in kept):
        raise PointADError(f"{Path(run_dir) / METRICS_FILE}: holds columns {kept[0].columns()}, this run writes "
                           f"{columns}; {_METRICS_FIX}")
    with atomic_path(Path(run_dir) / METRICS_FILE) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(r.to_row() for r in kept)
