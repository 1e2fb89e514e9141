"""Logging set-up for the command line: one format, verbosity from -v / -q."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def get_logger(name: str) -> logging.Logger:
    """Logger under the `pointad` namespace, so one call configures all of ours."""
    return logging.getLogger(f"pointad.{name}")


def setup_logging(verbosity: int = 0) -> None:
    """0 = warnings, 1 = info, 2+ = debug. Safe to call more than once."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger("pointad")
    root.setLevel(level)
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
