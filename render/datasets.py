"""From a command's --dataset / --format / --root to a usable entry with its root on disk, and the
render options a dataset adds (its variant of the released code's view plan)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..shared.registry import DatasetEntry, resolve_dataset
from .synthetic import materialize


def open_dataset(name: str | None = None, *, format: str | None = None, root: Path | None = None,
                 registry: dict | None = None, progress=None) -> DatasetEntry:
    """The registry entry (or a custom one), with built-in synthetic data generated on first use
    (`progress`: optional callable (samples written, total) while generating)."""
    return materialize(resolve_dataset(name, format=format, root=root, registry=registry), progress=progress)


def dataset_render_options(options, entry: DatasetEntry):
    """`options` (a RenderOptions) with the dataset's numbers for its view plan filled in.

    `--view-plan pointad-code` means the released code's views for this dataset: datasets.yaml's
    `view_plans: pointad-code:` of the entry (or of the format's own entry, for --format/--root data).
    The numbers end up in the store's render options and its recorded view plan.
    """
    if options.view_plan != "pointad-code" or options.code_plan is not None:
        return options
    numbers = entry.view_plans.get("pointad-code")
    return options if numbers is None else replace(options, code_plan=dict(numbers))
