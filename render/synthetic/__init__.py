"""The built-in `synthetic` datasets: deterministic from a seed, written in real on-disk formats.

`generate` writes a dataset folder atomically (temp folder, then rename); `materialize` gives a
registry entry with `generate:` its cached root, generating it on first use. The readers then
read it through the normal code path, exactly as they read MVTec 3D-AD, Eyecandies or Real3D-AD.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pointad.render.synthetic import formats
from pointad.render.synthetic.scene import CLASSES, DEFECTS, make_scene
from pointad.shared import config, strict
from pointad.shared.errors import ConfigError, PointADError
from pointad.shared.logging import get_logger
from pointad.shared.registry import DatasetEntry

log = get_logger("render.synthetic")

GENERATOR_VERSION = 2  # bump when the generated data changes, so caches are not reused
MANIFEST = "synthetic.json"
DEFAULT_GRID = {"mvtec3d": 400, "eyecandies": 256, "real3d": 200}  # eyecandies: image pixels (the release: 512)
WRITERS = {"mvtec3d": (formats.mvtec_grid, formats.mvtec_arrays, formats.write_mvtec),
           "eyecandies": (formats.eyecandies_grid, formats.eyecandies_arrays, formats.write_eyecandies),
           "real3d": (formats.mvtec_grid, formats.real3d_arrays, formats.write_real3d)}


@dataclass(frozen=True, kw_only=True)
class SyntheticSpec:
    """What to generate. Counts are per class; `grid` 0 means the format's default size."""

    format: str = "mvtec3d"
    seed: int = 0
    classes: tuple[str, ...] = CLASSES
    defects: tuple[str, ...] = DEFECTS
    train: int = 2
    validation: int = 1
    test_good: int = 2
    per_defect: int = 1
    grid: int = 0

    def __post_init__(self):
        if self.format not in WRITERS:
            raise ConfigError(f"synthetic format {self.format!r} unknown; known: {', '.join(WRITERS)}")
        for name, known, kind in ((self.classes, CLASSES, "class"), (self.defects, DEFECTS, "defect")):
            unknown = [n for n in name if n not in known]
            if unknown:
                raise ConfigError(f"unknown synthetic {kind}(s) {', '.join(unknown)}; known: {', '.join(known)}")

    @classmethod
    def from_dict(cls, data: dict, source: str = "synthetic generator") -> "SyntheticSpec":
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
            # MVTec numbers files per defect folder; the other formats number them per split.
            key = (split, defect) if spec.format == "mvtec3d" else (split,)
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
    """Write the dataset into `out` atomically; refuse to touch a non-empty folder unless `overwrite`.
    progress: optional callable (samples written, total), called after each sample."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PointADError(f"{out}: folder exists and is not empty (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
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
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def materialize(entry: DatasetEntry, progress=None) -> DatasetEntry:
    """For a generated registry entry, its cached root (generated on first use, `progress` as in `generate`);
    other entries unchanged."""
    if entry.generate is None:
        return entry
    spec = SyntheticSpec.from_dict(entry.generate, f"dataset '{entry.name}' generate")
    if spec.format != entry.format:
        raise ConfigError(f"dataset '{entry.name}': generate.format {spec.format} differs from format {entry.format}")
    root = config.cache_dir() / "synthetic" / f"{entry.name}-{spec.digest()}"
    if not (root / MANIFEST).exists():
        try:
            log.info("dataset '%s': first use, generating it into the cache", entry.name)
            generate(root, spec, progress=progress)
        except (PointADError, OSError):
            # Another process finished the same generation first; its result is identical.
            if not (root / MANIFEST).exists():
                raise
    return entry.with_root(root)
