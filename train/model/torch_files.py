"""Read torch files as data only: `torch.load(weights_only=True)`, its failures said in plain words.

torch's own messages for a refused file advise re-running with `weights_only=False`, which would run the
file's code; they are never passed on. `load_data` raises `UnreadableFile` whose message is the reason
alone; the caller puts the path and what the file was meant to be in front.

What a small file can claim is bounded before anything trusts it (design §8): its zip entries unpack to
at most MAX_UNPACK_RATIO times its size (torch.save stores tensors uncompressed), its data nests at most
MAX_NESTING deep and holds at most MAX_OBJECTS objects with shared references expanded, and every tensor
is dense, strided, on the CPU, of a real or integer dtype, and no larger than its storage (a sparse,
meta or stride-0 tensor claims elements the file does not hold).
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from ...shared.errors import CheckpointMismatchError, PointADError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
MAX_UNPACK_RATIO = 2      # zip entries unpack to at most this times the file's size
MAX_NESTING = 32          # containers within containers (a checkpoint of ours: 5)
MAX_OBJECTS = 1_000_000   # containers, values and tensors, shared references expanded (ViT-L weights: ~600)


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
    """torch.load(path, weights_only=True) on the CPU, its data checked by `check_data`; UnreadableFile with
    the plain reason on failure."""
    path = Path(path)
    if path.is_dir():
        raise UnreadableFile("is a directory")
    try:
        if is_torchscript(path):
            raise UnreadableFile("a TorchScript archive (code and weights), not a data-only torch file")
        _check_unpacked_size(path)
        with warnings.catch_warnings():  # torch's notes on what it read (sparse invariants...): our checks say it
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except UnreadableFile:
        raise
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise UnreadableFile(plain_reason(exc)) from exc
    check_data(data)
    return data


def _check_unpacked_size(path: Path) -> None:
    """UnreadableFile if the zip's entries unpack to more than MAX_UNPACK_RATIO times the file (a zip bomb)."""
    if not zipfile.is_zipfile(path):
        return  # torch's legacy format: a pickle and raw storages, nothing compressed
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    size = path.stat().st_size
    if unpacked > MAX_UNPACK_RATIO * size:
        raise UnreadableFile(f"its entries unpack to {unpacked:,} bytes from {size:,}; torch.save stores tensors "
                             "uncompressed")


def check_data(data) -> None:
    """UnreadableFile unless `data` nests at most MAX_NESTING deep, holds at most MAX_OBJECTS objects with
    shared references expanded, holds no reference to itself, and every tensor in it is `check_tensor`'s.

    Each distinct object is visited once, without recursion: the cost is what the file holds, not what
    its shared references expand to. The reason names the first offending entry by its key path."""
    size, depth = {}, {}  # id(object) -> expanded size, nesting; set when its children are done
    open_ = set()         # containers entered and not finished: the ancestors of the one being entered
    stack = [(data, "", False)]
    while stack:
        value, where, finished = stack.pop()
        key = id(value)
        children = _children(value)
        if finished:
            open_.discard(key)
            size[key] = 1 + sum(size[id(child)] for _, child in children)
            depth[key] = 1 + max((depth[id(child)] for _, child in children), default=0)
            if size[key] > MAX_OBJECTS:
                raise UnreadableFile(f"{where or 'its data'} holds more than {MAX_OBJECTS:,} objects with its "
                                     "shared references expanded")
            if depth[key] > MAX_NESTING:
                raise UnreadableFile(f"{where or 'its data'} nests deeper than {MAX_NESTING} levels")
            continue
        if key in size:
            continue
        if isinstance(value, torch.Tensor):
            problem = tensor_problem(value)
            if problem:
                raise UnreadableFile(f"{where or 'its data'} {problem}")
        open_.add(key)
        stack.append((value, where, True))
        for name, child in reversed(children):  # popped in the file's order: the first problem is named
            if id(child) in open_:
                raise UnreadableFile(f"{where or 'its data'} holds a reference to itself")
            if id(child) not in size:
                stack.append((child, _join(where, name), False))


def _children(value) -> list[tuple[object, object]]:
    """(key, value) pairs of a container (keys count as objects too); [] for anything else."""
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in (("<key>", key), (key, item))]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(enumerate(value))
    return []


def _join(where: str, name) -> str:
    name = name if isinstance(name, (str, int)) else type(name).__name__
    text = str(name) if len(str(name)) <= 40 else str(name)[:37] + "..."
    return f"{where}.{text}" if where else text


_DTYPES = {torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16,
           torch.int8, torch.uint8, torch.bool}


def tensor_problem(tensor: torch.Tensor) -> str | None:
    """Why a tensor read from a file cannot be used as data ("is a sparse_coo tensor; ..."), None if it can:
    dense and strided, on the CPU, of a real, integer or bool dtype, and no more elements than its storage
    holds (a tensor of shared stride-0 elements would claim memory the file does not hold)."""
    if tensor.layout != torch.strided or tensor.is_quantized or getattr(tensor, "is_nested", False):
        kind = "quantized" if tensor.is_quantized else str(tensor.layout).replace("torch.", "")
        return f"is a {kind} tensor; a data-only file holds dense tensors"
    if tensor.device.type != "cpu":
        return f"is a tensor on device {tensor.device.type}, whose values the file does not hold"
    if tensor.dtype not in _DTYPES:
        return f"is a tensor of dtype {str(tensor.dtype).replace('torch.', '')}, not a real, integer or bool one"
    if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
        return (f"is a {tuple(tensor.shape)} tensor over {tensor.untyped_storage().nbytes():,} bytes of storage "
                "(overlapping elements)")
    return None


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
