"""What every reader shares: selecting classes/splits and turning preprocessing failures into file errors."""

from __future__ import annotations

from pathlib import Path

from ...shared.errors import ConfigError, InputFileError
from ...shared.sample import SPLITS


def check_splits(splits) -> tuple[str, ...]:
    """Validate a split selection (None = all)."""
    if not splits:
        return SPLITS
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ConfigError(f"unknown split(s) {', '.join(unknown)}; known: {', '.join(SPLITS)}")
    return tuple(s for s in SPLITS if s in splits)


def relative_id(path: Path, root: Path) -> str:
    """A sample id: the path relative to the dataset root, with forward slashes."""
    return Path(path).relative_to(root).as_posix()


def reraise_with_path(path: Path, exc: ValueError) -> InputFileError:
    """Attach the file a preprocessing failure belongs to (the parser only knows the reason)."""
    if isinstance(exc, InputFileError):
        return exc
    return InputFileError(f"{path}: {exc}")
