"""Dataset readers: one module per on-disk format, looked up by the registry's `format`.

Listing (`list_samples`) is separate from loading (`read_sample`), so planning or resuming a
build reads no point data.
"""

from __future__ import annotations

from ...shared.registry import DatasetEntry
from ...shared.sample import Sample, SampleRef
from ..preprocess import PreprocessOptions, options_for_format, preprocess_unorganized
from . import eyecandies, folder, mvtec3d, real3d

READERS = {"mvtec3d": mvtec3d, "eyecandies": eyecandies, "real3d": real3d, "folder": folder}


def list_samples(entry: DatasetEntry, classes=None, splits=None) -> list[SampleRef]:
    """Samples of `entry` (root resolved) for the chosen classes and splits (None = all)."""
    return READERS[entry.format].list_samples(entry, classes, splits)


def preprocess_options(entry: DatasetEntry, class_name: str, **overrides) -> PreprocessOptions:
    """The format's defaults, then the registry's options for the class, then explicit overrides (a folder
    dataset's defaults are `folder.preprocess_defaults` in the unit of its files)."""
    from_registry = entry.options_for(class_name).get("preprocess", {})
    defaults = {}
    if entry.format == "folder":
        defaults = folder.preprocess_defaults(entry.folder_options(class_name).millimetres)
    return options_for_format(entry.format, {**defaults, **from_registry, **overrides},
                              source=f"dataset '{entry.name}' class '{class_name}' preprocess options")


def preprocess_cloud(format: str, points, labels, options: PreprocessOptions):
    """(points, labels) of an unorganized cloud, preprocessed as `format`'s reader does once it has read one (a
    folder dataset drops its background plane first); for `pointad detect --preprocess`."""
    if format == "folder":
        return folder.preprocess_cloud(points, labels, options)
    return preprocess_unorganized(points, labels, options)


def read_sample(entry: DatasetEntry, ref: SampleRef, options: PreprocessOptions | None = None) -> Sample:
    """Load and preprocess one listed sample; errors are `InputFileError` naming the file."""
    options = preprocess_options(entry, ref.class_name) if options is None else options
    if entry.format == "folder":  # its per-class folder options (ground truth property) live in the entry
        return folder.read(ref, options, entry)
    return READERS[entry.format].read(ref, options)


def survey(entry: DatasetEntry, classes=None) -> tuple[list[str], list[str]]:
    """(what was found, what the listing leaves out and why), for formats that say (`folder`); else ([], [])."""
    reader = READERS[entry.format]
    return reader.survey(entry, classes) if hasattr(reader, "survey") else ([], [])
