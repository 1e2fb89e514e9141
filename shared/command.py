"""Command-line plumbing every command group uses (design §1: the bottom layer; imports no stage).

`PointADGroup` is the one place that turns a `PointADError` into `Error: <one line>` and exit 1.

Conventions every command follows (tests/test_cli.py checks them): an option's default is read from the
dataclass that owns it (`default_of`), never typed again here, and so is a number option's range
(`range_type`, from the field's `shared.limits.within`): `--help` shows it, and a value outside it is
refused in the words of the dataclass's own check (`Error: --views must be in 1..64, got 1000`, exit 1);
a list option is `list_option`: repeat it, or give several values comma-separated in one
(`--classes a --classes b` = `--classes a,b`); every option has help text; `--format` is a dataset's
on-disk format only.
"""

from __future__ import annotations

import dataclasses
import sys

import click

from . import limits
from .errors import PointADError
from .logging import setup_logging
from .names import printable


class StoreLocation(click.ParamType):
    """A render store given as a path or a URL (`s3://bucket/key`, any fsspec URL): a `Path` for a local one,
    exactly as `click.Path(path_type=Path)` gave, a `UPath` otherwise (`shared/location.py`)."""

    name = "path|url"

    def convert(self, value, param, ctx):
        from .location import as_location
        try:
            return as_location(value)
        except PointADError as exc:
            self.fail(str(exc), param, ctx)


STORE = StoreLocation()


def single_writer_option(func):
    """--single-writer on the commands that write a store: for a store on a service without conditional
    writes, the user's promise that no other writer runs (`shared/lease.py`)."""
    return click.option("--single-writer", is_flag=True,
                        help="Object storage without conditional writes only: promise that no other process writes "
                             "this store (the writer lease cannot be enforced there).")(func)


class PointADGroup(click.Group):
    """A click group whose commands report our errors as one line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PointADError as exc:
            click.echo(f"Error: {printable(exc)}", err=True)  # one line even when a name from data holds a newline
            sys.exit(1)


def verbosity_option(func):
    """-v on a group or command: set up logging before any command runs. The most -v given anywhere on the
    command line wins (`pointad -v eval report` and `eval -v report` both log at INFO)."""
    def callback(ctx, param, value):
        meta = ctx.find_root().meta
        meta["pointad.verbosity"] = max(meta.get("pointad.verbosity", 0), value)
        setup_logging(meta["pointad.verbosity"])
        return value
    return click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True, callback=callback,
                        help="Log progress to stderr: -v at INFO, -vv at DEBUG  [default: warnings only].")(func)


def default_of(cls, name: str):
    """The default of field `name` of dataclass `cls`: the one place a command-line default comes from."""
    for field in dataclasses.fields(cls):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            raise ValueError(f"{cls.__name__}.{name} has no default")
    raise ValueError(f"{cls.__name__} has no field {name!r}")


class _Bounded:
    """A click number type checked against a `limits.Range`: a value that is no number ('abc') is click's usage
    error; a number outside the range, or NaN or inf, is `limits.OutOfRange` (our one `Error:` line, exit 1,
    worded as the dataclass's own check words it). A click range type, so `--help` shows the range."""

    def __init__(self, rng: limits.Range, kind: type):
        super().__init__(rng.lo, rng.hi, min_open=rng.lo_open, max_open=rng.hi_open)
        self.rng, self.kind = rng, kind

    def convert(self, value, param, ctx):
        number = (click.INT if self.kind is int else click.FLOAT).convert(value, param, ctx)
        label = max((o for o in getattr(param, "opts", ()) if o.startswith("--")), key=len, default=None)
        limits.check_value(number, self.rng, label or "value", self.kind)
        return number

    def _describe_range(self) -> str:
        return "finite" if self.min is None and self.max is None else super()._describe_range()


class BoundedInt(_Bounded, click.IntRange):
    name = "integer"


class BoundedFloat(_Bounded, click.FloatRange):
    name = "float"


def number_type(kind: type, rng: limits.Range) -> click.ParamType:
    """The click type of numbers of `kind` (int or float) within `rng` (floats: finite whatever the range)."""
    return BoundedInt(rng, int) if kind is int else BoundedFloat(rng, float)


def range_type(cls, name: str) -> click.ParamType:
    """The click type of field `name` of dataclass `cls`, from its declared range (`shared.limits.within`):
    the one place an option's bounds come from, as `default_of` is for its default."""
    return number_type(*limits.bound(cls, name))


FINITE_FLOAT = number_type(float, limits.FINITE)  # a float option with no range of its own (--threshold)


class ListOption(click.Option):
    """A list option: repeatable, and each value may hold several items separated by commas. The value is a
    tuple of items converted by `item_type`; () when the option is not given and has no default."""

    def __init__(self, *args, item_type=click.STRING, **kwargs):
        self.item_type = click.types.convert_type(item_type)
        choices = getattr(self.item_type, "choices", None)
        kwargs.setdefault("metavar", f"{'|'.join(map(str, choices)) if choices else self.item_type.name.upper()}[,...]")
        super().__init__(*args, multiple=True, type=click.STRING, **kwargs)

    def type_cast_value(self, ctx, value):
        value = super().type_cast_value(ctx, value)  # a tuple of the strings given
        return tuple(self.item_type.convert(piece.strip(), self, ctx) for given in value or ()
                     for piece in str(given).split(",") if piece.strip())

    def get_help_extra(self, ctx):
        extra = super().get_help_extra(ctx)
        if isinstance(self.item_type, click.types._NumberRangeBase):  # each item's range, as a plain option's
            extra["range"] = self.item_type._describe_range()
        return extra


def list_option(*decls, type=click.STRING, **kwargs):
    """`click.option` for a list (see `ListOption`): --x A --x B, or --x A,B. `type` is each item's type."""
    return click.option(*decls, cls=ListOption, item_type=type, **kwargs)


def said(result: tuple):
    """A library result `(value, warning)`: each line of the warning to stderr as `WARNING: <line>`, the value
    back (library code returns its warnings; a command says them, e.g. `--model auto` substituting the tiny model)."""
    value, warning = result
    for line in (warning or "").splitlines():
        click.echo(f"WARNING: {line}", err=True)
    return value
