"""Data-parallel set-up for `train run` under torchrun (gloo on CPU, NCCL on CUDA)."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist

from pointad.shared import config


@contextmanager
def distributed_session(device: str):
    """Yield (rank, device name); joins the process group when torchrun started several processes."""
    env = config.distributed_env()
    if env is None:
        yield 0, device
        return
    rank, world, local_rank = env
    use_cuda = device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    try:
        if use_cuda:
            torch.cuda.set_device(local_rank)
        yield rank, f"cuda:{local_rank}" if use_cuda else "cpu"
    finally:
        dist.destroy_process_group()
