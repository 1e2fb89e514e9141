"""`eval` command group (SPEC 7). Its commands (`report`, `detect`) land with the evaluation stage.

Installed as `eval`, but `eval` is a shell builtin in bash and zsh: use `pointad eval ...` there.
"""

import click

from shared.cli import PointADGroup, verbosity_option


@click.group(name="eval", cls=PointADGroup)
@verbosity_option
def eval_():
    """Score stores with trained prompts and report metrics."""


def main():
    eval_()
