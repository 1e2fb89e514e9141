"""Which torch device a command runs on: `--device auto` takes the GPU when there is one."""

from __future__ import annotations

import torch

from ...shared.errors import ConfigError

SPELLINGS = "auto, cpu, cuda, cuda:N or mps"


def resolve_device(name) -> torch.device:
    """"auto" -> cuda if available else cpu; "cpu", "cuda", "cuda:N" as torch spells them (a torch.device
    passes as is). ConfigError in one line for anything else, or a GPU that is not there: found now, not
    at the first tensor moved after minutes of work."""
    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(str(name))
        except (RuntimeError, ValueError):
            raise ConfigError(f"--device {name!r}: not a device; use {SPELLINGS}") from None
    if device.type == "cpu":
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"--device {name}: no Apple MPS device is available here; use --device cpu or auto")
        return device
    if device.type != "cuda":
        raise ConfigError(f"--device {name}: device type '{device.type}' is not supported; use {SPELLINGS}")
    if not torch.cuda.is_available():
        build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        raise ConfigError(f"--device {name}: no CUDA GPU is available here ({build}); use --device cpu or auto")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"--device {name}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    return device
