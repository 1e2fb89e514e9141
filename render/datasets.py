"""From a command's --dataset / --format / --root to a usable entry with its root on disk."""

from __future__ import annotations

from pathlib import Path

from render.synthetic import materialize
from shared.registry import DatasetEntry, resolve_dataset


def open_dataset(name: str | None = None, *, format: str | None = None, root: Path | None = None,
                 registry: dict | None = None) -> DatasetEntry:
    """The registry entry (or a custom one), with built-in synthetic data generated on first use."""
    return materialize(resolve_dataset(name, format=format, root=root, registry=registry))
