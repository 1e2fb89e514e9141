"""Read the tensors of a TorchScript archive without running any of it (design §5): no code from a data file, ever.

`torch.jit.load` compiles the archive's `code/` and calls its `__setstate__` methods while loading: a
crafted file runs what it likes. OpenAI's own weights (ViT-L-14-336px.pt) are such archives, so this
module reads them as data:

- `<archive>/data.pkl` (the pickled top-level module) is read by `_ArchiveUnpickler`, whose `find_class`
  allows only tensor records (`torch._utils._rebuild_tensor_v2`, the storage types, the inert list and
  type-tag helpers of `torch.jit._pickle`, `collections.OrderedDict`) and turns TorchScript classes
  (`__torch__.*`) into inert `ScriptObject`s that only keep their attribute dict; every other global is
  refused. Storages (persistent ids `('storage', <type>, <key>, <location>, <numel>)`) are read from
  `<archive>/data/<key>` as bytes.
- Which attributes of a module are parameters and buffers is declared in the class definitions under
  `<archive>/code/` (`__parameters__ = ["weight", "bias", ]`, `__buffers__ = [...]`); those are parsed
  with `ast` as text, and only these two list literals are read.

The result is exactly the archive's `state_dict()`: parameters, then buffers, then submodules, recursively,
names joined with '.'; None parameters (a module without bias) are left out as nn.Module does.
"""

from __future__ import annotations

import ast
import collections
import io
import pickle
import zipfile
from dataclasses import dataclass

import torch

# `torch.<Name>Storage` -> dtype, the storage types TorchScript's pickler writes
STORAGE_DTYPES = {f"{name}Storage": dtype for name, dtype in {
    "Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool, "ComplexFloat": torch.complex64, "ComplexDouble": torch.complex128}.items()}
_PICKLE_HELPERS = ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist")


class ArchiveError(ValueError):
    """The archive is not one this reader understands; the message says why (the caller adds the path)."""


class ScriptObject:
    """An inert stand-in for an instance of a TorchScript class: its qualified name and pickled state."""

    qualified_name = ""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):  # called by pickle's BUILD; stores, never runs anything
        self.state = state


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    """A tensor viewing `storage` (a 1-D tensor of its dtype) as torch._utils._rebuild_tensor_v2 does."""
    if not isinstance(storage, torch.Tensor):
        raise ArchiveError(f"tensor record without a storage ({type(storage).__name__})")
    size, stride = tuple(size), tuple(stride)
    if not (isinstance(storage_offset, int) and len(size) == len(stride)
            and all(isinstance(v, int) and v >= 0 for v in (storage_offset, *size, *stride))):
        raise ArchiveError(f"bad tensor record (offset {storage_offset!r}, size {size!r}, stride {stride!r})")
    if 0 not in size:
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= storage.numel():
            raise ArchiveError(f"tensor of size {size} reaches element {last} of a storage of {storage.numel()}")
        return torch.as_strided(storage, size, stride, storage_offset)
    return torch.empty(size, dtype=storage.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


def _identity_list(data):
    return data


def _restore_type_tag(value, type_str):
    return value


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript data.pkl allowing tensor records only (module docstring)."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, torch.Tensor] = {}
        self.script_classes: dict[str, type] = {}

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(STORAGE_DTYPES[name])
        if module == "torch.jit._pickle" and name in _PICKLE_HELPERS:
            return _identity_list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return _restore_type_tag
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.script_classes:
                self.script_classes[qualified] = type(name, (ScriptObject,), {"qualified_name": qualified})
            return self.script_classes[qualified]
        raise ArchiveError(f"data.pkl calls {module}.{name}, which is not a tensor record; it is not run")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise ArchiveError(f"unknown persistent record {str(pid)[:80]}")
        _, kind, key, _location, numel = pid
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                info = self.archive.getinfo(name)
            except KeyError:
                raise ArchiveError(f"storage {name} is missing") from None
            itemsize = torch.empty((), dtype=kind.dtype).element_size()
            if info.file_size != numel * itemsize:
                raise ArchiveError(f"storage {name} holds {info.file_size} bytes, its record says "
                                   f"{numel} x {itemsize}")
            raw = torch.empty(info.file_size, dtype=torch.uint8)  # owned by torch; filled in place
            with self.archive.open(info) as f, memoryview(raw.numpy()) as view:
                if f.readinto(view) != info.file_size:
                    raise ArchiveError(f"storage {name} is truncated")
            self.storages[key] = raw.view(kind.dtype)
        storage = self.storages[key]
        if storage.dtype != kind.dtype:
            raise ArchiveError(f"storage {key} is read as {storage.dtype} and {kind.dtype}")
        return storage


@dataclass(frozen=True)
class _ClassInfo:
    is_module: bool
    parameters: tuple[str, ...]
    buffers: tuple[str, ...]


def _string_list(node: ast.expr, where: str) -> tuple[str, ...]:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ArchiveError(f"{where} is not a list of names")
    return tuple(value)


def _class_table(archive: zipfile.ZipFile, prefix: str) -> dict[str, _ClassInfo]:
    """{qualified class name: _ClassInfo} from the class definitions under <prefix>code/ (parsed, not run)."""
    table = {}
    code = f"{prefix}code/"
    for member in archive.namelist():
        if not (member.startswith(code) and member.endswith(".py")):
            continue
        module = member[len(code):-len(".py")].replace("/", ".")
        try:
            tree = ast.parse(archive.read(member).decode("utf-8"), filename=member)
        except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
            raise ArchiveError(f"{member} is not readable TorchScript code ({type(exc).__name__})") from None
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            lists = {"__parameters__": (), "__buffers__": ()}
            for statement in node.body:
                if (isinstance(statement, ast.Assign) and len(statement.targets) == 1
                        and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id in lists):
                    lists[statement.targets[0].id] = _string_list(statement.value,
                                                                  f"{member}: {node.name}.{statement.targets[0].id}")
            is_module = any(isinstance(base, ast.Name) and base.id == "Module" for base in node.bases)
            table[f"{module}.{node.name}"] = _ClassInfo(is_module, lists["__parameters__"], lists["__buffers__"])
    return table


def _archive_prefix(archive: zipfile.ZipFile) -> str:
    tops = {name.split("/", 1)[0] for name in archive.namelist() if "/" in name}
    if len(tops) != 1:
        raise ArchiveError("not a TorchScript archive (expected one top folder)")
    prefix = f"{tops.pop()}/"
    if f"{prefix}data.pkl" not in archive.namelist():
        raise ArchiveError(f"not a TorchScript archive (no {prefix}data.pkl)")
    return prefix


def _collect(obj, classes: dict[str, _ClassInfo], name: str, state: dict, depth: int = 0) -> None:
    """Add the parameters, then buffers, then submodules (recursively) of module `obj` to `state`."""
    if depth > 100:
        raise ArchiveError("modules nested more than 100 deep")
    info = classes.get(obj.qualified_name)
    if info is None or not info.is_module:
        raise ArchiveError(f"{obj.qualified_name} has no module definition under code/")
    attributes = obj.state
    if not isinstance(attributes, dict):
        raise ArchiveError(f"{name or 'the top module'} ({obj.qualified_name}) has no attribute dict")
    for wanted in (info.parameters, info.buffers):
        for key in wanted:
            if key not in attributes:
                raise ArchiveError(f"{obj.qualified_name} declares {key} but {name or 'the top module'} lacks it")
        for key, value in attributes.items():
            if key not in wanted or value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise ArchiveError(f"{name}{key} is {type(value).__name__}, not a tensor")
            state[f"{name}{key}"] = value
    for key, value in attributes.items():
        if isinstance(value, ScriptObject) and classes.get(value.qualified_name, _ClassInfo(False, (), ())).is_module:
            _collect(value, classes, f"{name}{key}.", state, depth + 1)


def read_torchscript_state_dict(archive: zipfile.ZipFile) -> dict[str, torch.Tensor]:
    """{name: CPU tensor}, the archive's state_dict(), read without running anything; raises ArchiveError."""
    prefix = _archive_prefix(archive)
    classes = _class_table(archive, prefix)
    unpickler = _ArchiveUnpickler(archive.read(f"{prefix}data.pkl"), archive, prefix)
    try:
        top = unpickler.load()
    except ArchiveError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError, KeyError,
            RecursionError, MemoryError) as exc:  # a damaged or foreign pickle
        raise ArchiveError(f"data.pkl is damaged ({type(exc).__name__})") from None
    if not isinstance(top, ScriptObject):
        raise ArchiveError(f"data.pkl holds {type(top).__name__}, not a TorchScript module")
    state: dict[str, torch.Tensor] = {}
    _collect(top, classes, "", state)
    return state
