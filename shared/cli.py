"""Command-line plumbing shared by every command group, and the umbrella `pointad` command.

`PointADGroup` is the one place that turns a `PointADError` into `Error: <one line>` and exit 1.
`pointad` loads its groups lazily by import path, so `shared` imports no stage package and
`pointad render ...` never imports torch.
"""

from __future__ import annotations

import importlib
import sys

import click

from pointad.shared.errors import PointADError
from pointad.shared.logging import setup_logging


class PointADGroup(click.Group):
    """A click group whose commands report our errors as one line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except PointADError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)


def verbosity_option(func):
    """-v / -q on a group: set up logging before any command runs."""
    def callback(ctx, param, value):
        setup_logging(value)
        return value
    return click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True, callback=callback,
                        help="More log output (-vv for debug).")(func)


def resolve_model(model: str, clip_weights) -> str:
    """`--model auto` resolved (the model library decides); a substitution of the tiny model is said loudly."""
    from pointad.train.model.weights import resolve_auto_model
    name, warning = resolve_auto_model(model, clip_weights)
    for line in (warning or "").splitlines():
        click.echo(f"WARNING: {line}", err=True)
    return name


class LazyGroup(PointADGroup):
    """Subcommands given as 'module:attribute', imported only when used."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx):
        return sorted(self.lazy)

    def get_command(self, ctx, name):
        if name not in self.lazy:
            return None
        module, attribute = self.lazy[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, lazy={"render": "pointad.render.cli:render", "train": "pointad.train.cli:train", "eval": "pointad.eval.cli:eval_",
                                  "detect": "pointad.eval.cli:detect"})
@click.version_option(package_name="pointad-toolkit")
def pointad():
    """Zero-shot 3D anomaly detection after PointAD: render -> train -> eval."""


def main():
    pointad()
