"""Data-parallel set-up for `train run` under torchrun (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ..shared import environment
from ..shared.errors import ConfigError, first_line

LAUNCH = "launch with torchrun, or unset WORLD_SIZE for one process"


def world_env() -> tuple[int, int, int] | None:
    """`shared.environment.distributed_env()` checked: (rank, world size, local rank) with 0 <= rank < world size
    and local rank >= 0, or None for one process; ConfigError in one line for a partial or malformed set
    (WORLD_SIZE without RANK, a rank beyond the world), never a KeyError from deep inside the launch."""
    try:
        env = environment.distributed_env()
    except KeyError as exc:
        raise ConfigError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')} is set but {exc.args[0]} is not; "
                          f"{LAUNCH}") from None
    except ValueError:
        shown = ", ".join(f"{k}={os.environ[k]!r}" for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if k in os.environ)
        raise ConfigError(f"{shown}: torchrun's variables must be whole numbers; {LAUNCH}") from None
    if env is None:
        return None
    rank, world, local_rank = env
    if not 0 <= rank < world or local_rank < 0:
        raise ConfigError(f"RANK={rank}, LOCAL_RANK={local_rank} do not fit WORLD_SIZE={world} (need "
                          f"0 <= RANK < WORLD_SIZE); {LAUNCH}")
    return env


def process_rank() -> int:
    """This process's rank (0 without torchrun); ConfigError as `world_env` for a malformed environment."""
    env = world_env()
    return 0 if env is None else env[0]


@contextmanager
def distributed_session(device: str):
    """Yield (rank, device name); joins the process group when torchrun started several processes."""
    env = world_env()
    if env is None:
        yield 0, device
        return
    rank, world, local_rank = env
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world} is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                          f"not; {LAUNCH}")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK={local_rank}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          "start at most one process per GPU (torchrun --nproc_per_node)")
    try:
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    except (RuntimeError, ValueError) as exc:  # a port held by another program, an unreachable master
        raise ConfigError(f"cannot join the torchrun group (rank {rank} of {world}, master "
                          f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): "
                          f"{first_line(exc)}") from None
    try:
        if use_cuda:
            torch.cuda.set_device(local_rank)
        yield rank, f"cuda:{local_rank}" if use_cuda else "cpu"
    finally:
        dist.destroy_process_group()
