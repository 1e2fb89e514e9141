"""`train` command group (SPEC 6). Its commands (`run`, `features`) land with the training stage."""

import click

from shared.cli import PointADGroup, verbosity_option


@click.group(cls=PointADGroup)
@verbosity_option
def train():
    """Learn PointAD prompts from a render store (frozen CLIP)."""


def main():
    train()
