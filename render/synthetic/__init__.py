"""The built-in `synthetic` datasets: deterministic from a seed, written in real on-disk formats.

`generate` writes a dataset folder atomically (temp folder, then rename) with its manifest, `synthetic.json`,
which marks the folder as ours: `overwrite` replaces only a folder whose manifest reads as a generator spec,
never a user's folder, a render store or a symlink's target (design §8). `materialize` gives a registry
entry with `generate:` its cached root, generating it on first use. The readers then read it through the
normal code path, exactly as they read MVTec 3D-AD, Eyecandies or Real3D-AD.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...shared import environment, strict
from ...shared.errors import ConfigError, PointADError
from ...shared.limits import check_fields, within
from ...shared.logging import get_logger
from ...shared.names import printable
from ...shared.registry import DatasetEntry
from . import formats, scanner_files
from .scene import CLASSES, DEFECTS, make_scene

log = get_logger("render.synthetic")

GENERATOR_VERSION = 2  # bump when the generated data changes, so caches are not reused
MANIFEST = "synthetic.json"
MAX_PER_CLASS = 100_000  # samples of one kind per class
MIN_GRID, MAX_GRID = 16, 4096
DEFAULT_GRID = {"mvtec3d": 400, "eyecandies": 256, "real3d": 200, "folder": 200}  # eyecandies: image pixels
WRITERS = {"mvtec3d": (formats.mvtec_grid, formats.mvtec_arrays, formats.write_mvtec),
           "eyecandies": (formats.eyecandies_grid, formats.eyecandies_arrays, formats.write_eyecandies),
           "real3d": (formats.mvtec_grid, formats.real3d_arrays, formats.write_real3d),
           "folder": (formats.mvtec_grid, formats.real3d_arrays, scanner_files.write_folder)}  # LAS, E57, PLY, ...


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """What to generate. Counts are per class; `grid` 0 means the format's default size."""

    format: str = "mvtec3d"
    seed: int = field(default=0, metadata=within(0, 2**32 - 1))
    classes: tuple[str, ...] = CLASSES
    defects: tuple[str, ...] = DEFECTS
    train: int = field(default=2, metadata=within(0, MAX_PER_CLASS))
    validation: int = field(default=1, metadata=within(0, MAX_PER_CLASS))
    test_good: int = field(default=2, metadata=within(0, MAX_PER_CLASS))
    per_defect: int = field(default=1, metadata=within(0, MAX_PER_CLASS))
    grid: int = field(default=0, metadata=within(0, MAX_GRID))

    def __post_init__(self):
        check_fields(self)
        if 0 < self.grid < MIN_GRID:  # the surface's gradients need a few cells
            raise ConfigError(f"--grid must be 0 (the format's default) or {MIN_GRID}..{MAX_GRID}, got {self.grid}")
        if self.format not in WRITERS:
            raise ConfigError(f"synthetic format {self.format!r} unknown; known: {', '.join(WRITERS)}")
        for name, known, kind in ((self.classes, CLASSES, "class"), (self.defects, DEFECTS, "defect")):
            unknown = [n for n in name if n not in known]
            if unknown:
                raise ConfigError(f"unknown synthetic {kind}(s) {', '.join(unknown)}; known: {', '.join(known)}")

    @classmethod
    def from_dict(cls, data: dict, source: str = "synthetic generator") -> SyntheticSpec:
        """Validate a mapping (a registry entry's `generate:`, a manifest); an unknown key is an error naming it."""
        return strict.from_dict(cls, data, source)

    @property
    def grid_size(self) -> int:
        return self.grid or DEFAULT_GRID[self.format]

    def digest(self) -> str:
        """Short hash of everything that determines the data, generator version included."""
        text = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PlannedSample:
    class_name: str
    split: str
    defect: str      # "good" or one of DEFECTS
    index: int       # file number within the format's folder for this sample


def plan(spec: SyntheticSpec) -> list[PlannedSample]:
    """Every sample the spec asks for, in writing order (Real3D-AD has no validation split)."""
    out = []
    for class_name in spec.classes:
        counters: dict[tuple, int] = {}

        def add(split, defect):
            # MVTec and folder datasets number files per defect folder; the other formats number them per split.
            key = (split, defect) if spec.format in ("mvtec3d", "folder") else (split,)
            out.append(PlannedSample(class_name, split, defect, counters.setdefault(key, 0)))
            counters[key] += 1

        for _ in range(spec.train):
            add("train", "good")
        for _ in range(spec.validation if spec.format != "real3d" else 0):
            add("validation", "good")
        for _ in range(spec.test_good):
            add("test", "good")
        for defect in spec.defects:
            for _ in range(spec.per_defect):
                add("test", defect)
    return out


def sample_arrays(spec: SyntheticSpec, planned: PlannedSample) -> dict:
    """The arrays of one planned sample (what gets written plus the truth), deterministic."""
    key = [spec.seed, CLASSES.index(planned.class_name), ("train", "validation", "test").index(planned.split),
           0 if planned.defect == "good" else 1 + DEFECTS.index(planned.defect), planned.index]
    rng = np.random.default_rng(np.random.SeedSequence(key))
    grid_fn, arrays_fn, _ = WRITERS[spec.format]
    x, y = grid_fn(spec.grid_size)
    scene = make_scene(planned.class_name, None if planned.defect == "good" else planned.defect, x, y, rng)
    return arrays_fn(scene, x, y, rng)


def generate(out: Path, spec: SyntheticSpec, overwrite: bool = False, progress=None) -> Path:
    """Write the dataset into `out` atomically: built in a temp sibling, then renamed into place.

    `out` may be new or an empty folder; a folder holding a synthetic dataset of ours (`read_manifest`) is
    replaced only with `overwrite`, anything else never (PointADError). A symlink as `out` is refused, never
    followed. The old dataset is checked again once moved aside, so a folder put there meanwhile is not lost.
    progress: optional callable (samples written, total), called after each sample."""
    out = Path(out)
    _check_replaceable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    # '.tmp-synth-': never a `shared.io.temp_sibling` name, whose stale copies other code removes by pid
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-synth-", dir=out.parent))
    try:
        _, _, write = WRITERS[spec.format]
        planned_samples = plan(spec)
        log.info("writing %d %s samples of %d classes into %s", len(planned_samples), spec.format,
                 len(spec.classes), out)
        for done, planned in enumerate(planned_samples, 1):
            write(tmp, planned.class_name, planned.split, planned.defect, planned.index,
                  sample_arrays(spec, planned))
            if progress is not None:
                progress(done, len(planned_samples))
        (tmp / MANIFEST).write_text(json.dumps({**asdict(spec), "version": GENERATOR_VERSION}, indent=2))
        _swap_in(tmp, out, _check_replaceable(out, overwrite))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(folder) -> SyntheticSpec | None:
    """The spec in `folder`'s manifest if it is a synthetic dataset of ours, else None: the manifest must be
    a plain file whose JSON is a generator spec plus an integer `version` (what `generate` writes)."""
    path = Path(folder) / MANIFEST
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.pop("version", None), int):
            return None
        return SyntheticSpec.from_dict(data, str(path))
    except (OSError, ValueError, PointADError):
        return None


def _check_replaceable(out: Path, overwrite: bool) -> bool:
    """Whether writing `out` replaces a folder (True: a synthetic dataset of ours, with `overwrite`) or fills
    a new or empty one (False); a PointADError for everything else, which stays as it is."""
    if out.name in ("", ".", ".."):
        raise PointADError(f"{out}: give the dataset folder by its name, not '.' or '..'")
    if out.is_symlink():
        raise PointADError(f"{out}: is a symbolic link (to {printable(os.readlink(out))}); give the folder itself "
                           f"(a link is never followed into writing or replacing what it points to)")
    if not out.exists():
        return False
    if not out.is_dir():
        raise PointADError(f"{out}: exists and is not a folder; give a folder (new or empty) for the dataset")
    if not any(out.iterdir()):
        return False
    if read_manifest(out) is None:
        raise PointADError(f"{out}: folder exists and is not empty, and is not a synthetic dataset of ours (no "
                           f"{MANIFEST} written by 'render synth'), so even --overwrite leaves it alone; choose "
                           f"another --out, or delete the folder yourself if you no longer need it")
    if not overwrite:
        raise PointADError(f"{out}: folder exists and is not empty (a synthetic dataset: --overwrite replaces it)")
    return True


def _swap_in(tmp: Path, out: Path, replace: bool) -> None:
    """Rename the finished `tmp` to `out`; if `replace`, first move the old dataset aside (checked again once
    moved, so a folder put there meanwhile goes back untouched), then delete it."""
    try:
        if replace:
            old = _move_aside(out)
            try:
                os.rename(tmp, out)
            except OSError:
                os.rename(old, out)  # the old dataset back in place
                raise
            shutil.rmtree(old, ignore_errors=True)  # fd-based: a link inside is unlinked, never followed
        else:
            os.rename(tmp, out)  # POSIX: replaces an empty folder, fails on a non-empty one
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise PointADError(f"{out}: filled by another process meanwhile; run again") from None
        raise PointADError(f"{out}: cannot put the dataset in place ({exc.strerror})") from None


def _move_aside(out: Path) -> Path:
    """Rename the dataset `out` to a new hidden sibling and return it, if it still is a dataset of ours."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-synth-", dir=out.parent))
    try:
        os.rename(out, old)  # POSIX: replaces the empty `old`
    except OSError:
        old.rmdir()
        raise
    if old.is_symlink() or read_manifest(old) is None:
        os.rename(old, out)
        raise PointADError(f"{out}: changed while the dataset was generated and is no longer a synthetic dataset "
                           f"of ours; left as it is")
    return old


def materialize(entry: DatasetEntry, progress=None) -> DatasetEntry:
    """For a generated registry entry, its cached root (generated on first use, `progress` as in `generate`);
    other entries unchanged."""
    if entry.generate is None:
        return entry
    spec = SyntheticSpec.from_dict(entry.generate, f"dataset '{entry.name}' generate")
    if spec.format != entry.format:
        raise ConfigError(f"dataset '{entry.name}': generate.format {spec.format} differs from format {entry.format}")
    root = environment.cache_dir() / "synthetic" / f"{entry.name}-{spec.digest()}"
    if not (root / MANIFEST).exists():
        try:
            log.info("dataset '%s': first use, generating it into the cache", entry.name)
            generate(root, spec, progress=progress)
        except (PointADError, OSError):
            # Another process finished the same generation first; its result is identical.
            if not (root / MANIFEST).exists():
                raise
    return entry.with_root(root)
