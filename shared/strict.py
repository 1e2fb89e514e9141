"""Mappings (JSON, YAML, store attributes) to dataclasses, strictly: the one reader of every config record.

`from_dict(Cls, data, source)` builds `Cls` only if `data` has no unknown keys, every field without a
default, and values of the annotated types; JSON lists become tuples for tuple fields and ints become
floats for float fields. Every refusal is one line naming the source and the key path, e.g.
`datasets.yaml: dataset 'a': 'options.preprocess' must be a mapping, got 3`. Constraints beyond types
(increasing block lists) stay in each class's `__post_init__`; ranges and finiteness are declared on the
fields (`shared/limits.py`), and a value outside them is named here by its key path like a wrong type.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError, PointADError
from .limits import OutOfRange

_NONE = type(None)


class _Refused(Exception):
    """One line without the source: a key path and what is wrong there."""


class _WrongType(_Refused):
    def __init__(self, path: str, tp, value):
        super().__init__(f"'{path}' must be {describe(tp)}, got {_short(value)}")
        self.path = path


def from_dict(cls, data, source: str, *, given: dict | None = None, error: type[PointADError] = ConfigError):
    """Return `cls(**data)` after checking `data` against the dataclass `cls`; raise `error` otherwise.

    source: where the mapping came from (a path, "model config"), first in every message.
    given: field values the caller supplies (a registry entry's name, its key in the file); the mapping may
    not hold them. A ValueError from the class's own checks is re-raised as `error` prefixed with the source
    (and key path, for a nested dataclass); a PointADError it raises already names its subject and passes as is.
    """
    if not isinstance(data, Mapping):
        raise error(f"{source}: expected a mapping, got {type(data).__name__}")
    try:
        return _build(cls, data, "", given or {})
    except _Refused as exc:
        raise error(f"{source}: {exc}") from None


@functools.cache
def _fields(cls) -> dict[str, tuple[object, bool]]:
    """{field name: (resolved annotation, required)} of the fields `cls(...)` takes."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls) if f.init}


def _build(cls, data: Mapping, path: str, given: dict):
    where = f"'{path}': " if path else ""
    known = {name: spec for name, spec in _fields(cls).items() if name not in given}
    unknown = sorted(map(str, set(data) - set(known)))
    if unknown:
        raise _Refused(f"{where}unknown key(s) {unknown}; known: {sorted(known)}")
    missing = [name for name, (_, required) in known.items() if required and name not in data]
    if missing:
        raise _Refused(f"{where}missing key(s) {missing}")
    values = {key: _convert(known[key][0], value, _join(path, key)) for key, value in data.items()}
    try:
        return cls(**given, **values)
    except OutOfRange as exc:  # `limits.check_fields` names the option; a file names the key path
        raise _Refused(f"'{_join(path, exc.key)}' {exc.reason}") from None
    except PointADError:
        raise
    except ValueError as exc:
        raise _Refused(f"{where}{exc}") from None


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def _convert(tp, value, path: str):
    """`value` as annotation `tp` wants it (list -> tuple, int -> float, str -> Path); _WrongType if it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any or tp is object:
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(tp, args, value, path)
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _WrongType(path, tp, value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise _WrongType(path, tp, value)
        return _build(tp, value, path, {})
    if tp in (list, tuple) or origin in (list, tuple):
        return _convert_sequence(tp, origin or tp, args, value, path)
    if tp is dict or origin is dict:
        return _convert_mapping(tp, args, value, path)
    if tp is _NONE:
        ok = value is None
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    elif tp is Path:
        ok = isinstance(value, (str, Path))
    else:
        raise TypeError(f"strict.from_dict: unsupported annotation {tp!r} at '{path}'")
    if not ok:
        raise _WrongType(path, tp, value)
    try:
        return tp(value) if tp in (int, float, Path) else value
    except OverflowError:  # an integer beyond float's range (JSON allows 1 followed by 400 zeros)
        raise _Refused(f"'{path}' must be a finite number, got {_short(value)}") from None


def _convert_union(tp, args, value, path: str):
    if value is None and _NONE in args:
        return None
    deeper = []
    for arm in args:
        try:
            return _convert(arm, value, path)
        except _WrongType as exc:
            if exc.path != path:
                deeper.append(exc)
        except _Refused as exc:
            deeper.append(exc)
    # the value had an arm's shape (a list, a mapping) but something inside it is wrong: name that
    if len(deeper) == 1:
        raise deeper[0]
    raise _WrongType(path, tp, value)


def _convert_sequence(tp, kind, args, value, path: str):
    if not isinstance(value, (list, tuple)):
        raise _WrongType(path, tp, value)
    if _homogeneous(kind, args):  # list[X], tuple[X, ...]
        items = [_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    elif args:  # tuple[A, B]: exactly these
        if len(value) != len(args):
            raise _WrongType(path, tp, value)
        items = [_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
    else:
        items = list(value)
    return kind(items)


def _homogeneous(kind, args) -> bool:
    return bool(args) and (kind is list or args[1:] == (Ellipsis,))


def _convert_mapping(tp, args, value, path: str):
    if not isinstance(value, Mapping):
        raise _WrongType(path, tp, value)
    key_type, value_type = args or (typing.Any, typing.Any)
    out = {}
    for key, item in value.items():
        try:
            key = _convert(key_type, key, path)
        except _WrongType:
            raise _Refused(f"'{path}' keys must be {describe(key_type)}, got {_short(key)}") from None
        out[key] = _convert(value_type, item, _join(path, key))
    return out


def describe(tp) -> str:
    """What an annotation asks for, in the words of the error messages: "int", "a list of str", "str or null"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in sorted(args, key=lambda a: a is _NONE))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if tp in (list, tuple) or origin in (list, tuple):
        if _homogeneous(origin, args):
            return f"a list of {describe(args[0])}"
        return f"a list [{', '.join(describe(a) for a in args)}]" if args else "a list"
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    names = {_NONE: "null", bool: "true or false", Path: "a path", typing.Any: "anything", object: "anything"}
    return names.get(tp) or getattr(tp, "__name__", str(tp))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
