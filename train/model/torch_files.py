"""Read torch files as data only: `torch.load(weights_only=True)`, its failures said in plain words.

torch's own messages for a refused file advise re-running with `weights_only=False`, which would run the
file's code; they are never passed on. `load_data` raises `UnreadableFile` whose message is the reason
alone; the caller puts the path and what the file was meant to be in front.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from pointad.shared.errors import CheckpointMismatchError, PointADError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UnreadableFile(ValueError):
    """A torch file that cannot be read as data; str() is the reason, without the path."""


def is_torchscript(path: Path) -> bool:
    """True if `path` is a zip with a TorchScript `code/` folder (what `torch.jit.save` writes)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def plain_reason(exc: BaseException) -> str:
    """What is wrong with a file that torch.load(weights_only=True) refused, in words that never advise
    weights_only=False."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in text:
        found = _GLOBAL.search(text)
        name = found.group(1) if found else "a Python object"
        return f"it refers to {name}, which loading would run; a data-only file holds tensors and plain values"
    if isinstance(exc, EOFError) or "failed finding central directory" in text or "truncated" in text.lower():
        return "the file is empty or truncated"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:  # not a zip parser's seek error
        return f"cannot be read ({exc.strerror})"
    return "the file is damaged or in another format"


def load_data(path: Path):
    """torch.load(path, weights_only=True) on the CPU; UnreadableFile with the plain reason on failure."""
    path = Path(path)
    if path.is_dir():
        raise UnreadableFile("is a directory")
    try:
        if is_torchscript(path):
            raise UnreadableFile("a TorchScript archive (code and weights), not a data-only torch file")
        return torch.load(path, map_location="cpu", weights_only=True)
    except UnreadableFile:
        raise
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise UnreadableFile(plain_reason(exc)) from exc


def load_checkpoint_file(path, what: str):
    """`load_data` for a file meant to be a checkpoint: a missing path or a folder is a PointADError, an
    unreadable file a CheckpointMismatchError `<path>: not a readable <what>: <reason>`."""
    path = Path(path)
    if path.is_dir():
        raise PointADError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise PointADError(f"{path}: checkpoint not found")
    try:
        return load_data(path)
    except UnreadableFile as exc:
        raise CheckpointMismatchError(f"{path}: not a readable {what}: {exc}") from exc
