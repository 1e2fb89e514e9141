"""Which torch device a command runs on: `--device auto` takes the GPU when there is one."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda if available else cpu; anything else ("cpu", "cuda:1") as torch spells it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
