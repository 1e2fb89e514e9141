"""Output paths of `eval report` and `detect`, checked before any scoring: the wrong kind of path is a
one-line error naming it ("is a directory", "is not a folder"), not a traceback after minutes of work."""

from __future__ import annotations

from pathlib import Path

from ..shared.errors import PointADError


def _existing_ancestor_is_folder(path: Path) -> None:
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise PointADError(f"{parent}: is not a folder, cannot write {path} under it")
            return


def check_file_target(path, hint: str = "") -> None:
    """Raise PointADError unless `path` can be written as a file: not a directory, no file among its parents."""
    path = Path(path)
    if path.is_dir():
        raise PointADError(f"{path}: is a directory, not a file" + (f"; {hint}" if hint else ""))
    _existing_ancestor_is_folder(path)


def check_folder_target(path, hint: str, files=()) -> None:
    """Raise PointADError unless `path` is or can become a folder whose `files` can be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PointADError(f"{path}: is a file, not a folder; {hint}")
    _existing_ancestor_is_folder(path)
    for name in files:
        check_file_target(path / name)
