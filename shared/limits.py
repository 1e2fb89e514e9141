"""Bounds of the numbers that enter from options and config files, declared once, on the dataclass fields.

A field states its range in its metadata: `views: int = field(default=9, metadata=within(1, 64))`.
`check_fields(obj)`, called first in the class's `__post_init__`, checks every field so declared (each
element of a tuple; None passes) and refuses NaN and +-inf in every float field, declared or not. A config
is therefore checked however it is made: from options, or from a file or a checkpoint through
`strict.from_dict`, which names the source and the key (`r.json: 'batch_size' must be in 1..4096, got 0`).
The command line derives its option types from the same declaration (`shared.command.range_type`), so
`--help` shows the range and a bad value is refused before any work.

Bounds are generous for real use and refuse what would only make an absurd allocation or a silently wrong
result (design §8, "Bounded and finite"). A number that is not a dataclass field (a worker count) is a
module-level `Range` beside the dataclass that would own it, checked with `check_value`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

KEY = "pointad.limits"  # the metadata key of a field's Range


@dataclass(frozen=True)
class Range:
    """lo..hi (None: unbounded on that side; *_open: the bound itself excluded); option: the command-line name
    when it is not `--<field-name>` (a field set by --mutual-radii, --rescore-k)."""

    lo: int | float | None = None
    hi: int | float | None = None
    lo_open: bool = False
    hi_open: bool = False
    option: str | None = None

    def describe(self, kind: type = float) -> str:
        """The range as the messages say it: "1..64" (closed, integers), "(0, 100]", ">= 0"."""
        if self.lo is None and self.hi is None:
            return "any finite value"
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi}"
        if kind is int and not (self.lo_open or self.hi_open):
            return f"{self.lo}..{self.hi}"
        return f"{'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"

    def problem(self, value, kind: type = float) -> str | None:
        """Why `value` is refused ("must be in 1..64, got 0", "must be a finite number, got nan"), None when
        it is fine. kind: int (whole numbers only) or float."""
        noun = "an integer" if kind is int else "a number"
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
                or (kind is int and not isinstance(value, numbers.Integral)):
            return f"must be {noun}, got {_short(value)}"
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):  # (an int of 400 digits is finite)
            return f"must be a finite number, got {value}"
        low = self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo))
        high = self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi))
        return f"must be in {self.describe(kind)}, got {_short(value)}" if low or high else None


FINITE = Range()


def within(lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False, option: str | None = None) -> dict:
    """Field metadata declaring the range lo..hi (see `Range`): `field(default=9, metadata=within(1, 64))`."""
    return {KEY: Range(lo, hi, lo_open, hi_open, option)}


class OutOfRange(ConfigError):
    """A number outside its declared range. key: the field; reason: "must be ... got ..." (what
    `strict.from_dict` puts after the key path and the source)."""

    def __init__(self, key: str, reason: str, label: str):
        super().__init__(f"{label} {reason}")
        self.key, self.reason = key, reason


def option_name(cls, name: str) -> str:
    """How the command line calls field `name` of `cls`: its Range's `option`, else `--<name>` with dashes."""
    spec = _specs(cls).get(name)
    return (spec[1].option if spec and spec[1] and spec[1].option else None) or "--" + name.replace("_", "-")


def bound(cls, name: str) -> tuple[type, Range]:
    """(int or float, Range) of field `name` of dataclass `cls` (FINITE for a float field without a range);
    ValueError for a field that holds no number, or an int field without a range (every int option has one)."""
    spec = _specs(cls).get(name)
    if spec is None or (spec[1] is None and spec[0] is int):
        raise ValueError(f"{cls.__name__}.{name} declares no range")
    return spec[0], spec[1] or FINITE


def check_fields(obj, where: str | None = None) -> None:
    """OutOfRange for the first field of dataclass `obj` outside its declared range, or a float field holding
    NaN or +-inf. Messages name the option (`--views must be ...`), or with `where` the key
    (`model config 'tiny': 'image_size' must be ...`)."""
    for name, (kind, rng, many) in _specs(type(obj)).items():
        value = getattr(obj, name)
        if value is None:
            continue
        items = value if many else (value,)
        if many and not isinstance(value, (tuple, list)):
            items = (value,)
        for item in items:
            if item is None:
                continue
            reason = (rng or FINITE).problem(item, kind)
            if reason is not None:
                if many:
                    reason = reason.replace("must be", "must each be", 1)
                label = f"{where}: '{name}'" if where else option_name(type(obj), name)
                raise OutOfRange(name, reason, label)


def check_value(value, rng: Range, label: str, kind: type = int, key: str | None = None) -> None:
    """OutOfRange ("`label` must be ...") unless `value` is a `kind` within `rng`: a number that is no dataclass
    field (label: its option, "--loader-workers"), or one inside a field's mapping (key: its path there, which
    `strict.from_dict` names)."""
    reason = rng.problem(value, kind)
    if reason is not None:
        raise OutOfRange(key or label.lstrip("-").replace("-", "_"), reason, label)


def finite_or_none(value):
    """`value` as a float if finite, else None (what JSON and CSV writers put for an undefined number)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def nonfinite(values) -> int:
    """How many entries of the array-like `values` are NaN or +-inf (0 for an empty one)."""
    array = np.asarray(values, dtype=np.float64)
    return int(array.size - np.count_nonzero(np.isfinite(array)))


@functools.cache
def _specs(cls) -> dict[str, tuple[type, Range | None, bool]]:
    """{field: (int or float, declared Range or None, holds a tuple)} of the number fields of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        rng = f.metadata.get(KEY)
        kind, many = _number_kind(hints[f.name])
        if kind is None:
            if rng is not None:
                raise TypeError(f"{cls.__name__}.{f.name}: a range on a field that holds no number")
            continue
        out[f.name] = (kind, rng, many)
    return out


def _number_kind(tp) -> tuple[type | None, bool]:
    """(int or float or None, is a tuple of them) of an annotation: int, float | None, tuple[int, ...],
    tuple[float, float]."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in args if a is not type(None)]
        return _number_kind(arms[0]) if len(arms) == 1 else (None, False)
    if origin in (tuple, list):
        kinds = {_number_kind(a)[0] for a in args if a is not Ellipsis}
        return (kinds.pop(), True) if len(kinds) == 1 and None not in kinds else (None, False)
    if tp is int or tp is float:
        return tp, False
    return None, False


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
