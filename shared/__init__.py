"""Schema, store reader, registry, config and errors shared by every stage.

Public API: `open_store` (the render store reader), `load_registry` (datasets.yaml), `Sample` (what readers
yield). Imported on first use, so `import shared.errors` (every command line) does not load Zarr.
"""

from __future__ import annotations

import importlib

__all__ = ["open_store", "load_registry", "Sample"]
_HOMES = {"open_store": ".store", "load_registry": ".registry", "Sample": ".sample"}


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'shared' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name], __name__), name)


def __dir__():
    return sorted([*globals(), *__all__])
