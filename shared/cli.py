"""The umbrella `pointad` command: the render, train and eval groups and `pointad detect` (design §1: the command layer).

The groups load lazily, by module path, so `pointad render ...` never imports torch.
"""

from __future__ import annotations

import importlib

import click

from .command import PointADGroup, verbosity_option


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
        return getattr(importlib.import_module(module, __package__), attribute)


# `detect` is registered here only: `pointad detect` (the eval group lists it in its help, not as a command)
@click.group(cls=LazyGroup, lazy={"render": "..render.cli:render", "train": "..train.cli:train",
                                  "eval": "..eval.cli:eval_", "detect": "..eval.cli:detect"})
@click.version_option(package_name="pointad-toolkit")
@verbosity_option
def pointad():
    """Zero-shot 3D anomaly detection after PointAD: render -> train -> eval; detect scores one new cloud."""


def main():
    pointad()
